//! `caxton config`: every effective value with the file or variable that set it.

use std::path::Path;

use figment::Figment;

use super::{ConfigError, Settings, figment};

/// One effective setting and where its value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explained {
    /// Dotted key.
    pub key: String,
    /// Effective value, as YAML.
    pub value: String,
    /// `default`, a file path, or the environment variable that set it.
    pub source: String,
}

/// The effective configuration of `dir`, key by key, with the source of every value.
pub fn explain(dir: &Path) -> Result<Vec<Explained>, ConfigError> {
    let fig = figment(dir)?;
    let settings = Settings::load(dir)?;
    let value = serde_yaml::to_value(&settings).map_err(|e| ConfigError::Invalid {
        key: "(all)".into(),
        reason: e.to_string(),
    })?;
    let mut out = Vec::new();
    collect(&value, "", &fig, &mut out);
    Ok(out)
}

fn collect(v: &serde_yaml::Value, prefix: &str, fig: &Figment, out: &mut Vec<Explained>) {
    // An empty mapping (memory.models with no rules) is shown as a value of its own.
    if let serde_yaml::Value::Mapping(m) = v
        && !m.is_empty()
    {
        for (k, v) in m {
            let key = format!("{prefix}{}", k.as_str().unwrap_or_default());
            collect(v, &format!("{key}."), fig, out);
        }
        return;
    }
    let key = prefix.trim_end_matches('.').to_string();
    let source = match fig.find_metadata(&key) {
        Some(md) => match &md.source {
            Some(figment::Source::File(path)) => path.display().to_string(),
            _ if md.name.contains("environment") => {
                format!("env CAXTON_{}", key.to_ascii_uppercase().replace('.', "__"))
            }
            _ => "default".to_string(),
        },
        None => "default".to_string(),
    };
    // A list on one line, as YAML's flow style writes it (`[127.0.0.1:9464]`), not a block.
    let value = match v {
        serde_yaml::Value::Sequence(items) => format!(
            "[{}]",
            items
                .iter()
                .map(|i| serde_yaml::to_string(i)
                    .unwrap_or_default()
                    .trim_end()
                    .to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        _ => serde_yaml::to_string(v)
            .unwrap_or_default()
            .trim_end()
            .to_string(),
    };
    out.push(Explained { key, value, source });
}
