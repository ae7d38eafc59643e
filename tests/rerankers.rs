//! Issue 20: cross-encoders (BERT and XLM-RoBERTa) packed with `caxton pack` from the folders
//! sentence-transformers' CrossEncoder saves, scored in process, against transformers' logits
//! and `CrossEncoder.predict`'s scores (tests/fixtures/architectures/generate.py; random
//! weights, since no registry package ships real cross-encoder weights), in f32 and int8,
//! one pair at a time and batched.

mod common;

use caxton::engine::Precision;
use caxton::package::{Architecture, ModelKind, Pooling, ScoreActivation};
use common::engine::{max_abs_diff, score_package};
use common::fixtures::{reranker_package, reranker_reference};

/// The bound on f32 scores against the reference.
const F32_TOLERANCE: f32 = 1e-4;
/// int8's, on these logits (activations in int16, weights in int8 blocks of 32).
const INT8_TOLERANCE: f32 = 1e-3;

fn check(arch: &str, expected: Architecture) {
    let r = reranker_reference(arch);
    let tmp = tempfile::tempdir().expect("tempdir");
    let (package, manifest) = reranker_package(arch, &format!("tiny-{arch}-reranker"), tmp.path());
    assert_eq!(manifest.architecture, expected);
    assert_eq!(manifest.kind, ModelKind::Reranker);
    assert_eq!(manifest.labels, Some(1));
    assert_eq!(manifest.activation, Some(ScoreActivation::Sigmoid));
    assert_eq!(manifest.pooling, Pooling::Cls);
    assert!(!manifest.normalize);
    assert_eq!(
        manifest.max_seq_length, 32,
        "tokenizer_config.json's model_max_length"
    );

    for (precision, tolerance) in [
        (Precision::F32, F32_TOLERANCE),
        (Precision::Int8, INT8_TOLERANCE),
    ] {
        let run = score_package(
            &package,
            &tmp.path().join(format!("state-{precision}")),
            &r.pairs,
            precision,
        );
        assert_eq!(
            run.tokens, r.tokens,
            "{arch}: pair token counts differ from transformers' tokenizer (longest-first truncation)"
        );
        let logits = max_abs_diff(&run.singles, &r.logits);
        let mut scores = run.singles.clone();
        ScoreActivation::Sigmoid.apply(&mut scores);
        let score_diff = max_abs_diff(&scores, &r.scores);
        let batched = max_abs_diff(&run.batched, &run.singles);
        println!(
            "{arch} reranker ({}): {} pairs; max |logit - transformers| {logits:.2e}, max |score - CrossEncoder.predict| {score_diff:.2e}, max |batched - single| {batched:.2e}",
            run.precision,
            r.pairs.len()
        );
        assert!(
            logits <= tolerance,
            "{arch} {precision}: logits off by {logits}"
        );
        assert!(
            score_diff <= tolerance,
            "{arch} {precision}: scores off by {score_diff}"
        );
        assert!(
            batched <= 1e-5,
            "{arch} {precision}: batched vs single {batched}"
        );
    }
}

#[test]
fn a_bert_cross_encoder_scores_as_sentence_transformers_does() {
    check("bert", Architecture::Bert);
}

#[test]
fn an_xlm_roberta_cross_encoder_scores_as_sentence_transformers_does() {
    check("xlm-roberta", Architecture::XlmRoberta);
}
