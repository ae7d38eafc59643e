//! In-process runs of a package, for fidelity tests that compare vectors with a reference
//! implementation without a daemon in between.

use std::path::Path;
use std::sync::{Arc, RwLock};

use caxton::engine::{BatchLimits, EngineOptions, LoadedModel, Precision, VectorShape};
use caxton::package::Store;
use caxton::package::signature::SignaturePolicy;

/// Normalised vectors at the model's full width.
pub const UNIT: VectorShape = VectorShape {
    normalize: true,
    width: None,
};

/// What a model made of a list of texts.
pub struct Run {
    /// The precision the model ran in (bf16 falls back to f32 without AMX).
    pub precision: Precision,
    /// Tokens per text after truncation, special tokens included.
    pub tokens: Vec<usize>,
    /// Each text embedded on its own (normalised).
    pub singles: Vec<Vec<f32>>,
    /// The texts of `batched_texts` in one job, batched by the engine (normalised).
    pub batched: Vec<Vec<f32>>,
    /// Which text each of `batched` is (an index into the texts given).
    pub batched_texts: Vec<usize>,
}

impl Run {
    /// `all`'s entries for the texts that were batched, in `batched`'s order.
    pub fn batched_of(&self, all: &[Vec<f32>]) -> Vec<Vec<f32>> {
        self.batched_texts.iter().map(|&i| all[i].clone()).collect()
    }
}

/// Verifies `package` into a store under `state` and loads it in `precision`.
pub fn load_package(package: &Path, state: &Path, precision: Precision) -> LoadedModel {
    let store = Store::open(state).expect("store");
    let stored = store
        .install(package, &SignaturePolicy::none())
        .expect("verified");
    LoadedModel::load(
        &stored,
        EngineOptions::default(),
        Arc::new(RwLock::new(BatchLimits::default())),
        precision,
    )
    .expect("loads")
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Verifies `package` into a store under `state`, loads it in `precision`, and embeds `texts`
/// alone and together.
pub fn run_package(package: &Path, state: &Path, texts: &[String], precision: Precision) -> Run {
    run_package_batching(package, state, texts, precision, usize::MAX)
}

/// As [`run_package`], but the batched job takes only the texts of at most `batch_tokens`
/// tokens. A text long enough to fill the engine's batch on its own is batched alone, which is
/// the single run again: leaving it out saves the longest pass of a long-text test.
pub fn run_package_batching(
    package: &Path,
    state: &Path,
    texts: &[String],
    precision: Precision,
    batch_tokens: usize,
) -> Run {
    let model = load_package(package, state, precision);
    let rt = runtime();
    let encoded: Vec<_> = texts
        .iter()
        .map(|t| model.tokenizer.encode(t).expect("tokenize"))
        .collect();
    let singles = encoded
        .iter()
        .map(|e| {
            rt.block_on(model.embed(vec![e.clone()], UNIT))
                .expect("embed")
                .remove(0)
        })
        .collect();
    let batched_texts: Vec<usize> = (0..encoded.len())
        .filter(|&i| encoded[i].len() <= batch_tokens)
        .collect();
    let batch = batched_texts.iter().map(|&i| encoded[i].clone()).collect();
    let batched = rt.block_on(model.embed(batch, UNIT)).expect("embed");
    Run {
        precision: model.precision,
        tokens: encoded.iter().map(|e| e.len()).collect(),
        singles,
        batched,
        batched_texts,
    }
}

/// What a reranker made of query–document pairs.
pub struct PairRun {
    /// The precision it ran in.
    pub precision: Precision,
    /// Tokens per pair after truncation, special tokens included.
    pub tokens: Vec<usize>,
    /// Each pair's logit, scored on its own.
    pub singles: Vec<f32>,
    /// Each pair's logit, all pairs in one job.
    pub batched: Vec<f32>,
}

/// Loads the reranker `package` in `precision` and scores `pairs` alone and together.
pub fn score_package(
    package: &Path,
    state: &Path,
    pairs: &[(String, String)],
    precision: Precision,
) -> PairRun {
    let model = load_package(package, state, precision);
    let rt = runtime();
    let encoded: Vec<_> = pairs
        .iter()
        .map(|(q, d)| {
            model
                .tokenizer
                .encode_pair(q, d, None, caxton::engine::Cut::End)
                .expect("tokenize")
        })
        .collect();
    let one = |logits: Vec<f32>| {
        assert_eq!(logits.len(), 1, "one logit per pair");
        logits[0]
    };
    let singles = encoded
        .iter()
        .map(|e| {
            one(rt
                .block_on(model.score(vec![e.clone()]))
                .expect("score")
                .remove(0))
        })
        .collect();
    let batched = rt
        .block_on(model.score(encoded.clone()))
        .expect("score")
        .into_iter()
        .map(one)
        .collect();
    PairRun {
        precision: model.precision,
        tokens: encoded.iter().map(|e| e.len()).collect(),
        singles,
        batched,
    }
}

/// The largest absolute difference between paired values.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "value counts differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

impl Run {
    /// Asserts the promise of a precision: every text within `min` cosine of `reference`
    /// (embedded alone), and batches equal to singles (0.99999); prints both after `label`.
    pub fn holds(&self, reference: &[Vec<f32>], min: f64, label: &str) {
        let precision = self.precision;
        let worst = min_cosine(&self.singles, reference);
        let batched_vs_single = min_cosine(&self.batched, &self.batched_of(&self.singles));
        println!(
            "{label} ({precision}): min cosine vs the reference {worst:.9}; batched vs single {batched_vs_single:.9}"
        );
        assert!(
            worst >= min,
            "{label} in {precision}: min cosine {worst} < {min}"
        );
        assert!(
            batched_vs_single >= 0.99999,
            "{label} in {precision}: batched vs single {batched_vs_single}"
        );
    }
}

/// Whether this machine runs bf16 (Intel AMX); the reason when not, printed so a test log
/// says which of its checks ran.
pub fn bf16_runs_here() -> bool {
    match Precision::Bf16.on_this_machine() {
        (Precision::Bf16, _) => true,
        (_, reason) => {
            println!("bf16 falls back to f32 here: {reason:?}");
            false
        }
    }
}

/// The smallest cosine between paired vectors.
pub fn min_cosine(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    assert_eq!(a.len(), b.len(), "vector counts differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| super::cosine(x, y))
        .fold(1.0, f64::min)
}
