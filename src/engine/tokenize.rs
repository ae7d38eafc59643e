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

/// Which end of an over-long text is cut (TEI's `truncation_direction`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Cut {
    /// Keep the beginning, cut the end (sentence-transformers' behaviour).
    #[default]
    End,
    /// Keep the end, cut the beginning.
    Start,
}

/// One token as `POST /tokenize` reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Token {
    /// Its id in the vocabulary.
    pub id: u32,
    /// The text it covers, or the special token itself.
    pub text: String,
    /// Whether the tokenizer added it (`[CLS]`, `[SEP]`, `<s>`, ...).
    pub special: bool,
    /// Byte offset of its first byte in the text (`None` for special tokens).
    pub start: Option<usize>,
    /// Byte offset one past its last byte.
    pub stop: Option<usize>,
}

/// A tokenizer configured for one model.
pub struct TextTokenizer {
    /// Truncates at the end (the default).
    inner: Tokenizer,
    /// Truncates at the start; built on first use (few clients ask for it).
    from_start: std::sync::OnceLock<Result<Tokenizer, String>>,
    /// No truncation, for `POST /tokenize`; built on first use.
    whole: std::sync::OnceLock<Tokenizer>,
    max_len: usize,
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
        Ok(TextTokenizer {
            inner,
            from_start: std::sync::OnceLock::new(),
            whole: std::sync::OnceLock::new(),
            max_len,
        })
    }

    /// Tokenizes one text, adding the model's special tokens; an over-long text loses its end.
    pub fn encode(&self, text: &str) -> Result<Encoded, String> {
        self.encode_cut(text, Cut::End)
    }

    /// Tokenizes one text, adding the model's special tokens; an over-long text loses the
    /// side `cut` says.
    pub fn encode_cut(&self, text: &str, cut: Cut) -> Result<Encoded, String> {
        self.run(self.truncating(cut)?, text)
    }

    /// Tokenizes a query–document pair as one sequence for a cross-encoder, with the model's
    /// special tokens and segment ids (BERT: `[CLS] query [SEP] document [SEP]`, the document
    /// of type 1). An over-long pair loses tokens from the longer of the two first, as
    /// transformers' `truncation=True` (longest first) does, at the side `cut` says.
    pub fn encode_pair(&self, query: &str, document: &str, cut: Cut) -> Result<Encoded, String> {
        // Each side whole, then the truncating tokenizer's own post-processing (longest-first
        // truncation, then the pair template). tokenizers 0.23.2 stops tokenizing a sequence
        // once it passes max_length when truncation is set; with a pair that changes which
        // side longest-first cuts when both are long (transformers, on Python's tokenizers
        // 0.23.3, which reverted it, gives the odd token to the document).
        let whole = self.untruncated();
        let side = |text: &str| {
            whole
                .encode(text, false)
                .map_err(|e| format!("tokenization failed: {e}"))
        };
        let enc = self
            .truncating(cut)?
            .post_process(side(query)?, Some(side(document)?), true)
            .map_err(|e| format!("tokenization failed: {e}"))?;
        Ok(Self::encoded(&enc))
    }

    fn run<'s>(
        &self,
        tokenizer: &Tokenizer,
        input: impl Into<tokenizers::EncodeInput<'s>>,
    ) -> Result<Encoded, String> {
        let enc = tokenizer
            .encode(input, true)
            .map_err(|e| format!("tokenization failed: {e}"))?;
        Ok(Self::encoded(&enc))
    }

    fn encoded(enc: &tokenizers::Encoding) -> Encoded {
        Encoded {
            ids: enc.get_ids().to_vec(),
            type_ids: enc.get_type_ids().to_vec(),
            truncated: !enc.get_overflowing().is_empty(),
        }
    }

    /// The tokenizer without truncation, built on first use.
    fn untruncated(&self) -> &Tokenizer {
        self.whole.get_or_init(|| {
            let mut t = self.inner.clone();
            // Cannot fail: no truncation has no parameters to refuse.
            let _ = t.with_truncation(None);
            t
        })
    }

    /// The tokenizer that cuts over-long input at the side `cut` says.
    fn truncating(&self, cut: Cut) -> Result<&Tokenizer, String> {
        match cut {
            Cut::End => Ok(&self.inner),
            Cut::Start => self
                .from_start
                .get_or_init(|| {
                    let mut t = self.inner.clone();
                    t.with_truncation(Some(TruncationParams {
                        max_length: self.max_len,
                        strategy: TruncationStrategy::LongestFirst,
                        stride: 0,
                        direction: TruncationDirection::Left,
                    }))
                    .map_err(|e| format!("cannot truncate at the start: {e}"))?;
                    Ok(t)
                })
                .as_ref()
                .map_err(Clone::clone),
        }
    }

    /// Every token of `text`, untruncated, with the model's special tokens when
    /// `special_tokens`: what `POST /tokenize` answers.
    pub fn tokens(&self, text: &str, special_tokens: bool) -> Result<Vec<Token>, String> {
        let enc = self
            .untruncated()
            .encode(text, special_tokens)
            .map_err(|e| format!("tokenization failed: {e}"))?;
        Ok(enc
            .get_ids()
            .iter()
            .zip(enc.get_tokens())
            .zip(enc.get_offsets())
            .zip(enc.get_special_tokens_mask())
            .map(|(((&id, token), &(start, stop)), &special)| {
                let special = special == 1;
                match text.get(start..stop).filter(|_| !special) {
                    Some(covered) => Token {
                        id,
                        text: covered.to_string(),
                        special,
                        start: Some(start),
                        stop: Some(stop),
                    },
                    None => Token {
                        id,
                        text: token.clone(),
                        special,
                        start: None,
                        stop: None,
                    },
                }
            })
            .collect())
    }
}
