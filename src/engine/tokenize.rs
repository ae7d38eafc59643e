//! Text to token ids with the package's `tokenizer.json`, truncated at the model's
//! `max_seq_length` and never padded (padding is the batcher's business).

use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

/// One tokenized text, ready for the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// Token ids, special tokens included.
    pub ids: Vec<u32>,
    /// Segment ids (all zero for a single sentence).
    pub type_ids: Vec<u32>,
    /// Whether the text was cut at `max_seq_length`.
    pub truncated: bool,
}

impl Encoded {
    /// Number of tokens the model sees for this text.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether there are no tokens at all (never the case for BERT: `[CLS]` and `[SEP]`).
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// A tokenizer configured for one model.
pub struct TextTokenizer {
    inner: Tokenizer,
}

impl TextTokenizer {
    /// Builds the tokenizer from `tokenizer.json` bytes, replacing whatever truncation and
    /// padding the file carries with truncation at `max_len` and no padding.
    pub fn from_bytes(bytes: &[u8], max_len: usize) -> Result<Self, String> {
        let mut inner = Tokenizer::from_bytes(bytes).map_err(|e| format!("tokenizer.json: {e}"))?;
        inner
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| format!("tokenizer.json: cannot truncate at {max_len}: {e}"))?;
        inner.with_padding(None);
        Ok(TextTokenizer { inner })
    }

    /// Tokenizes one text, adding the model's special tokens.
    pub fn encode(&self, text: &str) -> Result<Encoded, String> {
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| format!("tokenization failed: {e}"))?;
        Ok(Encoded {
            ids: enc.get_ids().to_vec(),
            type_ids: enc.get_type_ids().to_vec(),
            truncated: !enc.get_overflowing().is_empty(),
        })
    }
}
