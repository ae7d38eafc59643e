//! Issue 50: folders exactly as sentence-transformers 6 saves them
//! (tests/fixtures/architectures/st6.py), served by the real daemon. sentence-transformers 6
//! writes no `max_seq_length` into `sentence_bert_config.json`, only the tokenizer's
//! `model_max_length` (48 here, under 128 positions): `caxton pack` must take that length, so
//! that with `truncate: true` the texts longer than it come out as sentence-transformers'
//! vectors (cut at the same token), and without it they are refused naming that limit. The
//! Gemma 3 folder scales its attention by `query_pre_attn_scalar` 72 over heads of 32, which
//! the engine once refused.

mod common;

use caxton::package::Architecture;
use common::{Daemon, fixtures, write_config};
use serde_json::json;

const FAMILIES: [(&str, Architecture); 3] = [
    ("modernbert", Architecture::ModernBert),
    ("gemma3", Architecture::Gemma3),
    ("qwen3", Architecture::Qwen3),
];

#[test]
fn folders_saved_by_sentence_transformers_6_keep_its_length_and_its_vectors_with_truncate() {
    let work = tempfile::tempdir().expect("tempdir");
    let packages = work.path().join("packages");
    std::fs::create_dir_all(&packages).expect("mkdir");
    let mut references = Vec::new();
    for (arch, expected) in FAMILIES {
        let folder = work.path().join(arch);
        let r = fixtures::family_folder(&format!("st6/{arch}"), &folder);
        let package = packages.join(format!("st6-{arch}.tar.zst"));
        let m = fixtures::pack_folder(&folder, &format!("st6-{arch}"), &package).manifest;
        let _ = std::fs::remove_file(caxton::package::pack::provenance_path(&package));
        assert_eq!(m.architecture, expected);
        assert_eq!(
            m.max_seq_length, r.max_seq_length,
            "{arch}: the tokenizer's model_max_length, as sentence-transformers 6 reads it (not the positions)"
        );
        assert!(
            r.tokens.iter().all(|&t| t <= r.max_seq_length),
            "{arch}: the reference cut every text at the limit"
        );
        references.push((arch, r));
    }
    let from = packages.clone();
    let d = Daemon::start_with(
        move |dir| {
            write_config(dir, "");
            std::fs::create_dir_all(dir.join("packages")).expect("mkdir");
            for entry in std::fs::read_dir(&from).expect("packages") {
                let entry = entry.expect("entry");
                std::fs::copy(entry.path(), dir.join("packages").join(entry.file_name()))
                    .expect("copy");
            }
        },
        &[],
    );
    for (arch, r) in &references {
        let id = format!("st6-{arch}");
        let (status, v) = d.request(
            "POST",
            "/v1/embeddings",
            &json!({"model": id, "input": r.texts, "truncate": true}).to_string(),
        );
        assert_eq!(status, 200, "{arch}: {v}");
        let got: Vec<Vec<f32>> = v["data"]
            .as_array()
            .expect("data")
            .iter()
            .map(|e| {
                e["embedding"]
                    .as_array()
                    .expect("embedding")
                    .iter()
                    .map(|x| x.as_f64().expect("number") as f32)
                    .collect()
            })
            .collect();
        let worst = common::engine::min_cosine(&got, &r.vectors);
        println!("{arch}: min cosine to sentence-transformers 6.2 with truncate: {worst:.9}");
        assert!(worst >= 0.9999, "{arch}: min cosine {worst}");
        assert_eq!(
            v["usage"]["prompt_tokens"],
            r.tokens.iter().sum::<usize>(),
            "{arch}: {v}"
        );

        // Without truncate, a text past the limit is refused, naming it.
        let long = r.texts.len() - 1;
        let (status, v) = d.request(
            "POST",
            "/v1/embeddings",
            &json!({"model": id, "input": r.texts[long], "truncate": false}).to_string(),
        );
        assert_eq!(status, 413, "{arch}: {v}");
        assert_eq!(
            v["error"]["message"],
            format!(
                "input 0 is longer than the {} tokens model {id} accepts; shorten it or set \"truncate\": true",
                r.max_seq_length
            ),
            "{arch}"
        );
    }
}
