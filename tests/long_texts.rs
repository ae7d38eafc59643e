//! Issue 30: an 8,192-token text through the real daemon within the memory admission set
//! aside for it. The model is the ModernBERT fixture at its real width (768, 12 heads, GeGLU
//! of 1,152), side-loaded; `/api/models` says what a pass over its longest text needs
//! (`longest_pass_bytes`), a load is admitted only with that room beside it, and the daemon's
//! peak RSS while it embeds an 8,192-token text stays within the estimate.

mod common;

use common::{Daemon, model_entry, write_config};
use serde_json::json;

const ID: &str = "modernbert-8k";

/// A daemon with the ModernBERT fixture side-loaded as `ID`; its reference's longest text.
fn daemon(extra: &str) -> (Daemon, String) {
    let extra = extra.to_string();
    let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let longest = text.clone();
    let d = Daemon::start_with(
        move |dir| {
            write_config(dir, &extra);
            let work = tempfile::tempdir().expect("tempdir");
            let folder = work.path().join("modernbert");
            let r = common::fixtures::family_folder("modernbert", &folder);
            let i = (0..r.tokens.len())
                .max_by_key(|&i| r.tokens[i])
                .expect("texts");
            assert_eq!(r.tokens[i], 8192);
            *longest.lock().expect("lock") = r.texts[i].clone();
            std::fs::create_dir_all(dir.join("packages")).expect("mkdir");
            common::fixtures::pack_folder(&folder, ID, &dir.join(format!("packages/{ID}.tar.zst")));
            let _ = std::fs::remove_file(caxton::package::pack::provenance_path(
                &dir.join(format!("packages/{ID}.tar.zst")),
            ));
        },
        &[],
    );
    let text = text.lock().expect("lock").clone();
    (d, text)
}

/// `(field, value in KiB)` lines of the daemon's /proc status.
fn status_kib(d: &Daemon, field: &str) -> u64 {
    let pid = d.child.as_ref().expect("child").id();
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("{field}"))
}

#[test]
fn an_8k_text_stays_within_what_admission_set_aside() {
    let (d, text) = daemon("");
    let entry = model_entry(&d, ID).expect("entry");
    assert_eq!(entry["state"], "available");
    let expected = entry["expected_memory_bytes"].as_u64().expect("expected");
    let pass = entry["longest_pass_bytes"].as_u64().expect("pass");
    // The activations of 8,192 tokens at width 768: far more than the 256-token MiniLM's.
    assert!(pass > 150 << 20, "longest pass {pass}");
    let minilm = model_entry(&d, "all-MiniLM-L6-v2").expect("minilm");
    assert!(minilm["longest_pass_bytes"].as_u64().expect("pass") < 8 << 20);

    // The peak from here on: the load, then the pass.
    let pid = d.child.as_ref().expect("child").id();
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("reset the peak RSS");
    let before = status_kib(&d, "VmRSS:") << 10;
    let (s, v) = d.request(
        "POST",
        "/v1/embeddings",
        &json!({"model": ID, "input": text, "truncate": true}).to_string(),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["usage"]["prompt_tokens"], 8192);
    let peak = status_kib(&d, "VmHWM:") << 10;
    let grown = peak.saturating_sub(before);
    println!(
        "RSS {} MiB before; peak {} MiB: grew {} MiB for an estimate of {} MiB (model) + {} MiB (longest pass)",
        before >> 20,
        peak >> 20,
        grown >> 20,
        expected >> 20,
        pass >> 20
    );
    // The request's own buffers (its JSON, tokens) are a few MiB beside the model's.
    assert!(
        grown <= expected + pass + (16 << 20),
        "grew {grown} bytes, estimated {expected} + {pass}"
    );
    // And the pass really was part of the peak (the estimate is not padding).
    assert!(grown > expected + pass / 2, "grew {grown} bytes");
}

#[test]
fn a_budget_without_room_for_the_longest_pass_refuses_the_load() {
    let (d, text) = daemon("memory:\n  budget: 200MiB\n  pressure:\n    source: off\n");
    let entry = model_entry(&d, ID).expect("entry");
    let expected = entry["expected_memory_bytes"].as_u64().expect("expected");
    let pass = entry["longest_pass_bytes"].as_u64().expect("pass");
    let minilm = model_entry(&d, "all-MiniLM-L6-v2").expect("minilm")["memory_bytes"]
        .as_u64()
        .expect("loaded");
    // The model alone would fit beside MiniLM; with its longest pass it does not.
    assert!(minilm + expected < 200 << 20 && minilm + expected + pass > 200 << 20);
    let (s, v) = d.request(
        "POST",
        "/v1/embeddings",
        &json!({"model": ID, "input": text, "truncate": true}).to_string(),
    );
    assert_eq!(s, 503, "{v}");
    assert_eq!(v["error"]["code"], "insufficient_memory");
    let message = v["error"]["message"].as_str().expect("message");
    assert!(message.contains(ID), "{message}");
    assert_eq!(model_entry(&d, ID).expect("entry")["state"], "available");
}
