//! Issue 52, goal 2: ColBERT folders in the layouts most ColBERT models are downloaded in,
//! saved before sentence-transformers' MultiVectorEncoder: PyLate's (GTE-ModernColBERT-v1 and
//! the other lightonai models; here on BERT and on a windowed ModernBERT) and Stanford-NLP's
//! (answerai-colbert-small-v1, colbertv2.0).
//! The tiny ColBERT of tests/fixtures/architectures/colbert_legacy.py in each layout, packed
//! with `caxton pack` and served, against what sentence-transformers 6.2 makes of the same
//! folder when it loads it.

mod common;

use caxton::package::{Architecture, ModelKind, Pooling};
use common::colbert::{legacy_folder, legacy_package, legacy_reference, measure};
use common::fixtures::{f32_safetensors, try_pack_folder};
use common::{Daemon, write_config};

#[test]
fn pylate_and_stanford_folders_answer_as_sentence_transformers_converts_them() {
    let r = legacy_reference();
    let d = Daemon::start_with(
        |dir| {
            write_config(dir, "");
            let packages = dir.join("packages");
            let (_, m) = legacy_package("tiny-pylate", &packages, "pylate");
            assert_eq!(
                (m.kind, m.pooling, m.dimensions, m.normalize),
                (ModelKind::MultiVector, Pooling::Tokens, 16, true)
            );
            // PyLate's markers become the prompts ("[Q] " is a token PyLate added).
            assert_eq!(
                (m.prompts.get("query"), m.prompts.get("document")),
                (Some(&"[Q] ".to_string()), Some(&"[D] ".to_string()))
            );
            let li = m.late_interaction.expect("late_interaction");
            // query_length is the expansion's; documents are cut at 24, one past the saved
            // max_seq_length (23), which is raised to fit as sentence-transformers runs it.
            assert_eq!(
                (li.query_length, li.document_length, m.max_seq_length),
                (12, 24, 24)
            );
            let x = li.query_expansion.expect("expansion");
            assert_eq!((x.token_id, x.length, x.attend), (4, 12, false));
            // Its own five skiplist_words (not the 32 of the punctuation default).
            assert!((1..=5).contains(&li.skiplist.len()), "{:?}", li.skiplist);

            // GTE-ModernColBERT-v1's layout: windows of 8 tokens clamped to the attended keys.
            let (_, m) = legacy_package("tiny-modern-colbert", &packages, "pylate-modernbert");
            assert_eq!(
                (m.architecture, m.kind, m.dimensions),
                (Architecture::ModernBert, ModelKind::MultiVector, 16)
            );

            let (_, m) = legacy_package("tiny-stanford", &packages, "stanford");
            assert_eq!(
                (m.kind, m.dimensions, m.normalize),
                (ModelKind::MultiVector, 16, true)
            );
            assert_eq!(
                (m.prompts.get("query"), m.prompts.get("document")),
                (
                    Some(&"[unused0] ".to_string()),
                    Some(&"[unused1] ".to_string())
                )
            );
            let li = m.late_interaction.expect("late_interaction");
            assert_eq!((li.query_length, li.document_length), (12, 20));
            let x = li.query_expansion.expect("expansion");
            assert_eq!((x.length, x.attend), (12, false));
            // The projection left the encoder's file for a Dense module of its own.
            assert_eq!(m.dense.len(), 1);
            assert_eq!((m.dense[0].inputs, m.dense[0].outputs), (32, 16));
        },
        &[],
    );
    // Every text has the reference's count of vectors (a marker split into pieces would add
    // three to each document), each within the floor.
    for (layout, id) in [
        ("pylate", "tiny-pylate"),
        ("pylate-modernbert", "tiny-modern-colbert"),
        ("stanford", "tiny-stanford"),
    ] {
        let (cos, score) = measure(&d, id, &r.variants[layout].reference);
        println!(
            "{layout} f32: worst token cosine {cos:.7}, worst MaxSim relative difference {score:.2e}"
        );
        assert!(cos >= 0.9999, "{layout}: {cos}");
        assert!(score <= 1e-4, "{layout}: {score}");
    }
}

/// The rules `caxton pack` reads from the PyLate folder with `config` as its
/// config_sentence_transformers.json.
fn pylate_rules(config: &str) -> caxton::package::LateInteraction {
    let work = tempfile::tempdir().expect("tempdir");
    let folder = work.path().join("m");
    legacy_folder(&folder, "pylate");
    std::fs::write(folder.join("config_sentence_transformers.json"), config).expect("write");
    match try_pack_folder(&folder, "m", &work.path().join("m.tar.zst")) {
        Ok(summary) => summary.manifest.late_interaction.expect("late_interaction"),
        Err(e) => panic!("{config}: {e}"),
    }
}

/// What sentence-transformers 6.2 assumes of a PyLate save depends on what the save says of
/// itself: PyLate 3's `model_type` or a marker means PyLate's punctuation skip-list; a
/// PyLate key means query expansion; a save marked only by its `pylate.` Dense has neither.
#[test]
fn pylate_s_defaults_follow_what_the_save_says_of_itself() {
    let punctuation = pylate_rules(r#"{"model_type": "ColBERT", "query_prefix": "[Q] "}"#);
    assert!(punctuation.skiplist.len() > 5, "{:?}", punctuation.skiplist);
    let x = punctuation.query_expansion.expect("a PyLate key: expanded");
    assert_eq!(
        (x.length, x.attend, punctuation.query_length),
        (32, false, 32)
    );
    let v3 = pylate_rules(r#"{"model_type": "ColBERT"}"#);
    assert_eq!(v3.skiplist, punctuation.skiplist);
    assert!(v3.query_expansion.is_none(), "no PyLate key: no expansion");
    let bare = pylate_rules("{}");
    assert!(bare.skiplist.is_empty() && bare.query_expansion.is_none());
    let off = pylate_rules(r#"{"query_prefix": null, "do_query_expansion": false}"#);
    assert_eq!(
        (off.skiplist.len(), off.query_expansion.is_none()),
        (punctuation.skiplist.len(), true)
    );
}

/// colbertv2.0 and other Stanford checkpoints may come as `pytorch_model.bin` only: packed
/// from it, the encoder and the projection split out of it are the same as from
/// `model.safetensors`.
#[test]
fn a_stanford_checkpoint_as_pytorch_model_bin_packs_as_from_safetensors() {
    let work = tempfile::tempdir().expect("tempdir");
    let folder = work.path().join("m");
    legacy_folder(&folder, "stanford");
    let shas = |name: &str| {
        let summary = match try_pack_folder(&folder, "m", &work.path().join(name)) {
            Ok(s) => s,
            Err(e) => panic!("{name}: {e}"),
        };
        let mut files: Vec<(String, String)> = summary
            .manifest
            .files
            .iter()
            .map(|f| (f.path.clone(), f.sha256.clone()))
            .collect();
        files.sort();
        files
    };
    let from_safetensors = shas("a.tar.zst");
    let bin = common::torch_pt::of_safetensors(
        "pytorch_model",
        &std::fs::read(folder.join("model.safetensors")).expect("read"),
    );
    std::fs::remove_file(folder.join("model.safetensors")).expect("rm");
    std::fs::write(folder.join("pytorch_model.bin"), &bin).expect("write");
    assert_eq!(shas("b.tar.zst"), from_safetensors);
}

/// `caxton pack`'s refusal of the `layout` folder after `edit`.
fn refusal(layout: &str, edit: impl FnOnce(&std::path::Path)) -> String {
    let work = tempfile::tempdir().expect("tempdir");
    let folder = work.path().join("m");
    legacy_folder(&folder, layout);
    edit(&folder);
    match try_pack_folder(&folder, "m", &work.path().join("m.tar.zst")) {
        Ok(_) => panic!("{layout}: packed"),
        Err(e) => e,
    }
}

#[test]
fn legacy_folders_that_cannot_be_read_are_refused_naming_the_file() {
    let write = |path: std::path::PathBuf, text: &str| std::fs::write(path, text).expect("write");
    assert_eq!(
        refusal("stanford", |f| {
            let lone = vec![(
                "bert.embeddings.word_embeddings.weight".to_string(),
                vec![2, 32],
                vec![0.0; 64],
            )];
            std::fs::write(f.join("model.safetensors"), f32_safetensors(lone)).expect("write");
        }),
        "unusable model: model.safetensors: no linear.weight; a Stanford ColBERT checkpoint (architectures HF_ColBERT) keeps its projection there"
    );
    assert_eq!(
        refusal("stanford", |f| {
            let wrong = vec![("linear.weight".to_string(), vec![16, 8], vec![0.0; 128])];
            std::fs::write(f.join("model.safetensors"), f32_safetensors(wrong)).expect("write");
        }),
        "unusable model: model.safetensors: linear.weight is [16, 8]; it must be [outputs, 32] (the encoder's width)"
    );
    assert_eq!(
        refusal("stanford", |f| {
            std::fs::rename(f.join("model.safetensors"), f.join("pytorch_model.bin")).expect("mv");
        }),
        "unusable model: pytorch_model.bin: cannot read it as a PyTorch state dict (torch.save's zip format; save it again with torch 1.6 or later, or as model.safetensors): invalid Zip archive: Could not find EOCD"
    );
    assert_eq!(
        refusal("pylate", |f| write(
            f.join("modules.json"),
            r#"[{"path": "", "type": "sentence_transformers.models.Transformer"},
                {"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]"#
        )),
        "unusable model: modules.json: module sentence_transformers.models.Pooling at position 1 is not supported in a PyLate ColBERT (supported: a Transformer, then Dense modules)"
    );
    assert_eq!(
        refusal("pylate", |f| write(
            f.join("config_sentence_transformers.json"),
            r#"{"model_type": "ColBERT", "query_prefix": "[Q] ", "query_length": "32"}"#
        )),
        "unusable model: config_sentence_transformers.json: query_length is \"32\"; it must be a whole number of tokens"
    );
    assert_eq!(
        refusal("pylate", |f| write(
            f.join("config_sentence_transformers.json"),
            r#"{"model_type": "ColBERT", "query_prefix": 7}"#
        )),
        "unusable model: config_sentence_transformers.json: query_prefix is 7; it must be the marker's text (\"[Q] \")"
    );
    assert_eq!(
        refusal("pylate", |f| write(
            f.join("config_sentence_transformers.json"),
            r#"{"model_type": "ColBERT", "document_length": 65}"#
        )),
        "unusable model: config_sentence_transformers.json: the document_length 65 exceeds the model's 64 positions"
    );
}
