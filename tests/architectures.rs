//! Issue 7: every architecture the engine runs is proved against Hugging Face transformers on
//! a tiny model of that architecture (random weights, since real ones are not all to be had
//! offline). The weights are regenerated here from the seeded stream that
//! tests/fixtures/architectures/generate.py used, so none are committed; the folder is packed
//! with `caxton pack` (which must recognise the architecture), verified into a store, loaded
//! and run alone and in padded batches.

mod common;

use common::fixtures::fixture;

use caxton::engine::Precision;
use caxton::package::Architecture;
use serde::Deserialize;

#[derive(Deserialize)]
struct Reference {
    texts: Vec<String>,
    tokens: Vec<usize>,
    vectors: Vec<Vec<f32>>,
}

fn check(arch: &str, expected: Architecture) {
    let r: Reference = serde_json::from_slice(
        &std::fs::read(fixture(arch).join("reference.json")).expect("reference.json"),
    )
    .expect("reference JSON");
    let tmp = tempfile::tempdir().expect("tempdir");
    let folder = tmp.path().join(arch);
    std::fs::create_dir(&folder).expect("mkdir");
    common::fixtures::embedding_folder(arch, &folder);

    let package = tmp.path().join(format!("{arch}.tar.zst"));
    let summary = common::fixtures::pack_folder(&folder, &format!("tiny-{arch}"), &package);
    assert_eq!(summary.manifest.architecture, expected);
    assert_eq!(summary.manifest.max_seq_length, 32);
    assert_eq!(
        summary.manifest.prompts,
        [("query".to_string(), "query: ".to_string())].into()
    );
    assert_eq!(summary.manifest.default_prompt.as_deref(), Some("query"));

    let run = common::engine::run_package(
        &package,
        &tmp.path().join("state"),
        &r.texts,
        Precision::F32,
    );
    assert_eq!(
        run.tokens, r.tokens,
        "{arch}: token counts differ from the reference tokenizer"
    );
    let worst = common::engine::min_cosine(&run.singles, &r.vectors);
    let worst_batched = common::engine::min_cosine(&run.batched, &r.vectors);
    println!("{arch}: min cosine vs transformers: single {worst:.9}, batched {worst_batched:.9}");
    assert!(worst >= 0.9999, "{arch}: single-text min cosine {worst}");
    assert!(
        worst_batched >= 0.9999,
        "{arch}: batched min cosine {worst_batched}"
    );

    // bf16 linear layers: within the 0.999 of the reference, and still independent
    // of what else shares the forward pass.
    let bf16 = common::engine::run_package(
        &package,
        &tmp.path().join("state-bf16"),
        &r.texts,
        Precision::Bf16,
    );
    let ran = if common::engine::bf16_runs_here() {
        Precision::Bf16
    } else {
        Precision::F32
    };
    assert_eq!(bf16.precision, ran);
    bf16.holds(&r.vectors, 0.999, arch);

    // int8 linear layers (and word table): the same promise, on every CPU.
    let int8 = common::engine::run_package(
        &package,
        &tmp.path().join("state-int8"),
        &r.texts,
        Precision::Int8,
    );
    assert_eq!(int8.precision, Precision::Int8);
    int8.holds(&r.vectors, 0.999, arch);

    // int8-fast: 8-bit activations, within its documented floor.
    let fast = common::engine::run_package(
        &package,
        &tmp.path().join("state-int8-fast"),
        &r.texts,
        Precision::Int8Fast,
    );
    assert_eq!(fast.precision, Precision::Int8Fast);
    fast.holds(&r.vectors, 0.997, arch);
}

#[test]
fn pack_warns_when_a_folder_claims_a_known_id_it_is_not() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let folder = tmp.path().join("fake");
    std::fs::create_dir(&folder).expect("mkdir");
    common::fixtures::embedding_folder("bert", &folder);
    let summary = common::fixtures::pack_folder(
        &folder,
        "all-MiniLM-L6-v2",
        &tmp.path().join("fake.tar.zst"),
    );
    assert_eq!(summary.warnings.len(), 2, "{:?}", summary.warnings);
    let record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(caxton::package::pack::provenance_path(
            &tmp.path().join("fake.tar.zst"),
        ))
        .expect("provenance record"),
    )
    .expect("JSON");
    assert_eq!(record["known_release"], false);
    assert_eq!(
        record["source_weights_sha256"],
        summary.source_weights_sha256
    );
    assert_eq!(
        record["differences_from_known_release"][0],
        summary.warnings[0]
    );
    assert_eq!(
        summary.warnings[0],
        "all-MiniLM-L6-v2 has 384 dimensions, but this folder has 32"
    );
    assert!(
        summary.warnings[1].starts_with(&format!(
            "model.safetensors (sha256 {}) is not the known all-MiniLM-L6-v2 release",
            summary.source_weights_sha256
        )),
        "{:?}",
        summary.warnings
    );
}

#[test]
fn bert_matches_transformers() {
    check("bert", Architecture::Bert);
}

#[test]
fn distilbert_matches_transformers() {
    check("distilbert", Architecture::DistilBert);
}

#[test]
fn xlm_roberta_matches_transformers() {
    check("xlm-roberta", Architecture::XlmRoberta);
}

#[test]
fn mpnet_matches_transformers() {
    check("mpnet", Architecture::Mpnet);
}
