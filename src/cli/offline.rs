//! The commands that work without the daemon, with the code it uses: `pack`, `verify`,
//! `config`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};

use crate::package::pack::{PackOptions, pack};
use crate::package::verify::{DiscardSink, verify_file};

/// `caxton pack MODEL_DIR -o FILE`: the package, then its load as the daemon would load it; a
/// package that would not load (a tensor the architecture needs missing or of another shape)
/// is removed again, and the error names why.
pub(super) fn pack_folder(opts: PackOptions, output: &Path) -> anyhow::Result<ExitCode> {
    let summary =
        pack(&opts, output).with_context(|| format!("cannot pack {}", opts.model_dir.display()))?;
    if let Err(why) = loads(output) {
        let _ = std::fs::remove_file(output);
        let _ = std::fs::remove_file(crate::package::pack::provenance_path(output));
        bail!(
            "cannot pack {}: the package made of it would not load: {why}; {} was not written",
            opts.model_dir.display(),
            output.display()
        );
    }
    let m = &summary.manifest;
    let what = match (m.kind, m.activation) {
        (crate::package::ModelKind::Reranker, Some(activation)) => format!(
            "{} reranker, pairs of up to {} tokens, {} of its logit",
            m.architecture.as_str(),
            m.max_seq_length,
            activation.as_str()
        ),
        _ => format!(
            "{}, {} dimensions, {} pooling",
            m.architecture.as_str(),
            m.dimensions,
            m.pooling.as_str()
        ),
    };
    println!(
        "{}: {} version {} ({what}), {} bytes, sha256 {}",
        output.display(),
        m.id,
        m.version,
        summary.package_size,
        summary.package_sha256
    );
    let known = crate::package::known::KNOWN
        .iter()
        .any(|k| k.id == m.id && k.weights_sha256 == Some(summary.source_weights_sha256.as_str()));
    println!(
        "source weights sha256 {}{}",
        summary.source_weights_sha256,
        if known { " (the known release)" } else { "" }
    );
    for w in &summary.warnings {
        eprintln!("caxton pack: warning: {w}");
    }
    for n in &summary.notes {
        eprintln!("caxton pack: note: {n}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether the package at `path` loads as the daemon loads it: verified into a scratch store,
/// built in f32 (every tensor the architecture needs, at its shape), its self-test passed. A
/// package that `caxton verify` passes but the daemon could never load was only found at the
/// first request (issue 61: a SPLADE whose LayerNorms were named `gamma`/`beta`).
fn loads(path: &Path) -> Result<(), String> {
    let scratch = tempfile::tempdir().map_err(|e| format!("no scratch directory: {e}"))?;
    let store = crate::package::Store::open(scratch.path()).map_err(|e| e.to_string())?;
    let stored = store
        .install(path, &crate::package::signature::SignaturePolicy::none())
        .map_err(|e| e.to_string())?;
    crate::engine::LoadedModel::load(
        &stored,
        crate::engine::EngineOptions::default(),
        Default::default(),
        crate::engine::Precision::F32,
    )
    .map(drop)
    .map_err(|e| e.to_string())
}

/// `caxton config`: every effective value and what set it.
pub(super) fn config(config_dir: &Path) -> anyhow::Result<ExitCode> {
    let all = crate::config::explain(config_dir)
        .with_context(|| format!("invalid configuration in {}", config_dir.display()))?;
    let width = all
        .iter()
        .map(|e| e.key.len() + e.value.len() + 3)
        .max()
        .unwrap_or(0);
    for e in all {
        let line = format!("{} = {}", e.key, e.value);
        println!("{line:width$}  # {}", e.source);
    }
    Ok(ExitCode::SUCCESS)
}

/// `caxton verify [--key PUB]... FILE...`: exit 1 when any file is rejected.
pub(super) fn verify(
    keys: &[PathBuf],
    files: Vec<PathBuf>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let policy = if keys.is_empty() {
        crate::package::signature::SignaturePolicy::none()
    } else {
        crate::package::signature::SignaturePolicy {
            required: Some(crate::package::signature::TrustedKeys::from_files(keys)),
        }
    };
    if let Some(Err(reason)) = &policy.required {
        bail!("{reason}");
    }
    let mut ok = true;
    for file in files {
        let verdict =
            verify_file(&file, &mut DiscardSink).and_then(|v| policy.check(&file).map(|()| v));
        // One JSON object per file and line, for tooling (packaging/model-package reads it).
        let line = match (&verdict, json) {
            (Ok(v), true) => serde_json::json!({
                "file": file, "ok": true, "package_sha256": v.package_sha256, "manifest": v.manifest,
            })
            .to_string(),
            (Err(e), true) => serde_json::json!({
                "file": file, "ok": false, "kind": e.kind(), "reason": e.to_string(),
            })
            .to_string(),
            (Ok(v), false) => format!(
                "{}: ok: {} version {}, {} files, sha256 {}",
                file.display(),
                v.manifest.id,
                v.manifest.version,
                v.manifest.files.len(),
                v.package_sha256
            ),
            (Err(e), false) => format!("{}: rejected ({}): {e}", file.display(), e.kind()),
        };
        if verdict.is_ok() || json {
            println!("{line}");
        } else {
            eprintln!("{line}");
        }
        ok &= verdict.is_ok();
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
