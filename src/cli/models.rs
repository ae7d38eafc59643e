//! `caxton models`: every model and package the daemon knows, as a table or its JSON.

use std::path::Path;
use std::process::ExitCode;

use hyper::Method;

use super::remote::call;

/// `caxton models [--json]`.
pub(super) fn models(socket: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let v = call(socket, Method::GET, "/api/models")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", models_table(&v));
    }
    Ok(ExitCode::SUCCESS)
}

/// A plain-text table of `GET /api/models`.
fn models_table(v: &serde_json::Value) -> String {
    let rows: Vec<[String; 8]> = v["data"]
        .as_array()
        .map(|a| a.iter().map(model_row).collect())
        .unwrap_or_default();
    let header = [
        "ID",
        "VERSION",
        "KIND",
        "STATE",
        "SOURCE",
        "MEMORY",
        "PRECISION",
        "FILE",
    ]
    .map(str::to_string);
    render(&header, &rows)
}

/// One model's row, in the header's order.
fn model_row(m: &serde_json::Value) -> [String; 8] {
    let text = |k: &str| match &m[k] {
        serde_json::Value::Null => "-".to_string(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let memory = m["memory_bytes"]
        .as_u64()
        .map_or("-".to_string(), |b| format!("{} MiB", b >> 20));
    // What it runs in when loaded (saying so when that is not what the config asks), else
    // what it will load in.
    let precision = match (&m["loaded_precision"], &m["precision"]) {
        (serde_json::Value::String(l), serde_json::Value::String(c)) if l != c => {
            format!("{l} ({c} configured)")
        }
        (serde_json::Value::String(l), _) => l.clone(),
        _ => text("precision"),
    };
    let detail = match m["state"].as_str() {
        Some("rejected") => format!("{} ({})", text("file"), text("reason")),
        Some("failed") => format!(
            "{} (load failed: {})",
            text("file"),
            m["failure"]["reason"].as_str().unwrap_or("?")
        ),
        _ => text("file"),
    };
    // A model loaded on a prediction says so until a request uses it.
    let state = match m["preloaded_by"].as_str() {
        Some(by) => format!("{} (preloaded by {by})", text("state")),
        None => text("state"),
    };
    let kind = match (m["kind"].as_str(), m["activation"].as_str()) {
        (Some(k), Some(a)) => format!("{k} ({a})"),
        _ => text("kind"),
    };
    [
        text("id"),
        text("version"),
        kind,
        state,
        text("source"),
        memory,
        precision,
        detail,
    ]
}

/// The rows under the header, each column as wide as its widest cell but the last, which is
/// left as long as it is.
fn render(header: &[String; 8], rows: &[[String; 8]]) -> String {
    let mut widths = [0usize; 7];
    for row in std::iter::once(header).chain(rows.iter()) {
        for (w, cell) in widths.iter_mut().zip(row.iter()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(header).chain(rows.iter()) {
        for (w, cell) in widths.iter().zip(row.iter()) {
            out.push_str(&format!("{cell:w$}  "));
        }
        out.push_str(&row[7]);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::models_table;

    #[test]
    fn the_models_table_says_what_each_model_runs_in() {
        let v = serde_json::json!({"data": [
            {"id": "a", "version": "1", "kind": "embedding", "state": "loaded", "source": "bundled", "file": "a.tar.zst",
             "memory_bytes": 104857600u64, "precision": "bf16", "loaded_precision": "bf16"},
            {"id": "b", "version": "1", "kind": "reranker", "activation": "sigmoid", "state": "loaded", "source": "bundled", "file": "b.tar.zst",
             "memory_bytes": 1048576u64, "precision": "bf16", "loaded_precision": "f32"},
            {"id": "c", "version": "2", "kind": "embedding", "state": "available", "source": "side-loaded",
             "file": "c.tar.zst", "precision": "f32", "loaded_precision": null},
            {"id": null, "state": "rejected", "source": "side-loaded", "file": "d.tar.zst",
             "reason": "sha256 mismatch"},
            {"id": "e", "version": "1", "kind": "embedding", "state": "failed", "source": "side-loaded",
             "file": "e.tar.zst", "precision": "f32", "loaded_precision": null,
             "failure": {"reason": "self-test at load failed: value 0 of the vector is NaN"}},
            {"id": "g", "version": "1", "kind": "embedding", "state": "loaded", "source": "side-loaded",
             "file": "g.tar.zst", "memory_bytes": 1048576u64, "precision": "f32",
             "loaded_precision": "f32", "preloaded_by": "prediction"},
        ]});
        let table = models_table(&v);
        let lines: Vec<Vec<&str>> = table
            .lines()
            .map(|l| {
                l.split("  ")
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .collect()
            })
            .collect();
        assert_eq!(
            lines[0],
            [
                "ID",
                "VERSION",
                "KIND",
                "STATE",
                "SOURCE",
                "MEMORY",
                "PRECISION",
                "FILE"
            ]
        );
        assert_eq!(lines[1][2..4], ["embedding", "loaded"]);
        assert_eq!(lines[1][6], "bf16");
        assert_eq!(lines[2][2], "reranker (sigmoid)");
        assert_eq!(lines[2][6], "f32 (bf16 configured)");
        assert_eq!(lines[3][5..], ["-", "f32", "c.tar.zst"]);
        assert_eq!(lines[4][2..4], ["-", "rejected"]);
        assert_eq!(lines[4][6..], ["-", "d.tar.zst (sha256 mismatch)"]);
        assert_eq!(lines[5][3], "failed");
        assert_eq!(
            lines[5][7],
            "e.tar.zst (load failed: self-test at load failed: value 0 of the vector is NaN)"
        );
        assert_eq!(lines[6][3], "loaded (preloaded by prediction)");
    }
}
