//! A causal language model made a reranker's head (Qwen3-Reranker): the score is the softmax
//! of the last token's `yes` and `no` logits, which is the sigmoid of their difference, and
//! that difference is one dot product with the `yes` row of the language-model head less its
//! `no` row. `caxton pack` stores that one row as `score.weight` (the name
//! transformers' `Qwen3ForSequenceClassification` gives its head) and drops the head's other
//! 151,667 rows (in Qwen3-Reranker-0.6B the head is the word table itself, which stays).

use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use super::super::error::PackageError;
use super::infer::unusable;
use super::storage::widen;

/// Where a checkpoint keeps its language-model head: its own tensor, or (tied embeddings)
/// the word table, under `Qwen3ForCausalLM`'s names or without the `model.` prefix.
const HEADS: [&str; 3] = [
    "lm_head.weight",
    "model.embed_tokens.weight",
    "embed_tokens.weight",
];

/// The name of the row [`score_row`] writes.
pub(super) const SCORE: &str = "score.weight";

/// `model.safetensors` (`bytes`) with `score.weight` = head row `yes` − head row `no` in
/// f32 (`[1, hidden]`), and without a separate `lm_head.weight`.
pub(super) fn score_row(bytes: &[u8], yes: u32, no: u32) -> Result<Vec<u8>, PackageError> {
    let bad = |e: safetensors::SafeTensorError| unusable(format!("model.safetensors: {e}"));
    let (_, metadata) = SafeTensors::read_metadata(bytes).map_err(bad)?;
    let tensors = SafeTensors::deserialize(bytes).map_err(bad)?;
    if tensors.names().contains(&SCORE) {
        return Err(unusable(format!(
            "model.safetensors already has {SCORE}; a causal language model's reranker head is made from its yes and no rows, and would replace it"
        )));
    }
    let (table, view) = HEADS
        .iter()
        .find_map(|&name| tensors.tensor(name).ok().map(|v| (name, v)))
        .ok_or_else(|| {
            unusable(format!(
                "model.safetensors has none of {} to read the yes and no rows of the reranker's head from",
                HEADS.join(", ")
            ))
        })?;
    let [vocab, hidden] = view.shape() else {
        return Err(unusable(format!(
            "model.safetensors: {table} has shape {:?}, not [vocabulary, hidden]",
            view.shape()
        )));
    };
    let (vocab, hidden) = (*vocab, *hidden);
    let width = view.dtype().bitsize() / 8 * hidden;
    let row = |token: u32, word: &str| {
        let t = token as usize;
        if t >= vocab {
            return Err(unusable(format!(
                "tokenizer.json's {word:?} is token {token}, past the {vocab} rows of {table}"
            )));
        }
        widen(view.dtype(), &view.data()[t * width..(t + 1) * width]).ok_or_else(|| {
            unusable(format!(
                "model.safetensors: {table} is {:?}, not a float type",
                view.dtype()
            ))
        })
    };
    let (y, n) = (row(yes, "yes")?, row(no, "no")?);
    let score: Vec<u8> = y
        .iter()
        .zip(&n)
        .flat_map(|(a, b)| (a - b).to_le_bytes())
        .collect();
    let mut views = Vec::with_capacity(tensors.len() + 1);
    for (name, v) in tensors.tensors() {
        if name != "lm_head.weight" {
            views.push((name, v));
        }
    }
    views.push((
        SCORE.to_string(),
        TensorView::new(Dtype::F32, vec![1, hidden], &score).map_err(bad)?,
    ));
    safetensors::serialize(views, metadata.metadata().clone()).map_err(bad)
}

#[cfg(test)]
mod tests {
    use super::super::safetensors_file as file;
    use super::*;

    fn f32s(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn score_of(bytes: &[u8]) -> Vec<f32> {
        let t = SafeTensors::deserialize(bytes).unwrap();
        let v = t.tensor(SCORE).unwrap();
        assert_eq!((v.dtype(), v.shape()), (Dtype::F32, &[1usize, 2][..]));
        widen(Dtype::F32, v.data()).unwrap()
    }

    #[test]
    fn the_row_is_yes_less_no_of_a_tied_table() {
        // Three tokens of width 2, bf16 as Qwen ships them; no lm_head: the table is the head.
        let table: Vec<u8> = [1.0f32, 2.0, 0.5, -1.0, 4.0, 8.0]
            .iter()
            .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
            .collect();
        let src = file(&[("model.embed_tokens.weight", Dtype::BF16, vec![3, 2], table)]);
        let out = score_row(&src, 2, 0).expect("row");
        assert_eq!(score_of(&out), vec![3.0, 6.0]);
        let t = SafeTensors::deserialize(&out).unwrap();
        assert!(
            t.tensor("model.embed_tokens.weight").is_ok(),
            "the table stays"
        );
    }

    #[test]
    fn a_separate_head_is_read_then_dropped() {
        let src = file(&[
            (
                "model.embed_tokens.weight",
                Dtype::F32,
                vec![2, 2],
                f32s(&[9.0; 4]),
            ),
            (
                "lm_head.weight",
                Dtype::F32,
                vec![2, 2],
                f32s(&[1.0, 1.0, 0.25, 3.0]),
            ),
        ]);
        let out = score_row(&src, 0, 1).expect("row");
        assert_eq!(score_of(&out), vec![0.75, -2.0]);
        let t = SafeTensors::deserialize(&out).unwrap();
        assert!(t.tensor("lm_head.weight").is_err());
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn what_cannot_make_a_row_is_refused_by_name() {
        let err = |src: Vec<u8>, yes| score_row(&src, yes, 0).err().map(|e| e.to_string());
        let table = || ("lm_head.weight", Dtype::F32, vec![2, 2], f32s(&[0.0; 4]));
        assert_eq!(
            err(file(&[table()]), 2).as_deref(),
            Some(
                "unusable model: tokenizer.json's \"yes\" is token 2, past the 2 rows of lm_head.weight"
            )
        );
        assert_eq!(
            err(file(&[("other", Dtype::F32, vec![1], f32s(&[0.0]))]), 1).as_deref(),
            Some(
                "unusable model: model.safetensors has none of lm_head.weight, model.embed_tokens.weight, embed_tokens.weight to read the yes and no rows of the reranker's head from"
            )
        );
        assert_eq!(
            err(
                file(&[table(), (SCORE, Dtype::F32, vec![1, 2], f32s(&[0.0; 2]))]),
                1
            )
            .as_deref(),
            Some(
                "unusable model: model.safetensors already has score.weight; a causal language model's reranker head is made from its yes and no rows, and would replace it"
            )
        );
    }
}
