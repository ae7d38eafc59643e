//! The texts int8-fast calibrates on at load: what each input channel of each linear layer
//! reaches over them sets that channel's smoothing (`kernels::int8_fast::smoothing`). Built in,
//! so a model's int8-fast weights are the same on every device and at every load. They mix
//! what an appliance embeds (sentences, questions, logs, code, numbers, several scripts) and
//! none of the reference texts the fidelity tests hold the vectors to.

use super::tokenize::{Cut, Encoded, TextTokenizer};
use crate::package::ModelKind;

/// The calibration texts.
pub const TEXTS: &[&str] = &[
    "The quick brown fox jumps over the lazy dog.",
    "Sensor 14 reported a temperature of 81 degrees at the north pump station.",
    "How do I reset the device to its factory settings?",
    "Machine learning models turn text into vectors that capture meaning.",
    "Das Wetter ist heute schön, aber morgen soll es regnen.",
    "東京は日本の首都です。",
    "error: connection refused (os error 111) while reading /var/lib/caxton/usage.json",
    "def embed(texts): return [model.encode(t) for t in texts]",
    "Quarterly revenue rose 12% year over year, driven by strong demand in Europe and Asia.",
    "A patient presenting with chest pain should receive an ECG within ten minutes of arrival.",
    "Please find attached the invoice for March; payment is due within 30 days.",
    "The committee will meet on Tuesday to discuss the proposed changes to the bylaws, \
     including the new rules for electing officers and the budget for the coming year.",
];

/// [`TEXTS`] tokenized for a model of `kind`: each alone for an embedding model, as query and
/// document pairs (each text with the next) for a reranker.
pub fn encode(tokenizer: &TextTokenizer, kind: ModelKind) -> Result<Vec<Encoded>, String> {
    let encoded: Result<Vec<Encoded>, String> = match kind {
        ModelKind::Embedding
        | ModelKind::Sparse
        | ModelKind::MultiVector
        | ModelKind::ImageText => TEXTS.iter().map(|t| tokenizer.encode(t)).collect(),
        ModelKind::Reranker => TEXTS
            .iter()
            .zip(TEXTS.iter().cycle().skip(1))
            .map(|(q, d)| tokenizer.encode_pair(q, d, None, Cut::End))
            .collect(),
    };
    encoded.map_err(|e| format!("the tokenizer cannot encode int8-fast's calibration texts: {e}"))
}
