//! Text to token ids with the package's `tokenizer.json`, truncated at the model's
//! `max_seq_length` and never padded (padding is the batcher's business).

use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::package::PairTemplate;

/// One tokenized text, ready for the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// Token ids, special tokens included.
    pub ids: Vec<u32>,
    /// Segment ids (all zero for a single sentence).
    pub type_ids: Vec<u32>,
    /// Whether the text was cut at `max_seq_length`.
    pub truncated: bool,
    /// Tokens at the end that no token attends to, though each gets its vector (ColBERT's
    /// query expansion); 0 for every other text.
    pub unattended: usize,
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
    /// Where truncation cuts: the model's length, less a pair template's fixed tokens.
    max_len: usize,
    /// A decoder reranker's pair template, its fixed parts tokenized.
    framed: Option<Framed>,
    /// The id every text is padded with to `max_len` (SigLIP's text tower), if any.
    pad: Option<u32>,
}

/// A pair template with its prefix and suffix tokenized once (they never change, and are
/// never cut).
struct Framed {
    template: PairTemplate,
    prefix: Vec<u32>,
    suffix: Vec<u32>,
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
            framed: None,
            pad: None,
        })
    }

    /// The tokenizer of a model trained on texts padded to its length (SigLIP's text tower,
    /// as its processor's `padding="max_length"` makes them): every text padded with `id`.
    pub fn with_padding(self, id: u32) -> Self {
        TextTokenizer {
            pad: Some(id),
            ..self
        }
    }

    /// The most tokens a text keeps.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// The tokenizer of a decoder reranker: a pair becomes `template`'s one text, cut to what
    /// the model's length leaves after the prefix's and suffix's tokens, between them. The
    /// prefix and suffix are tokenized without the tokenizer's special tokens, the pair with
    /// them, as Qwen3-Reranker's model card does.
    pub fn with_pair_template(self, template: &PairTemplate) -> Result<Self, String> {
        let fixed = |text: &str| {
            self.untruncated()
                .encode(text, false)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| format!("tokenizer.json cannot encode the pair template: {e}"))
        };
        let (prefix, suffix) = (fixed(&template.prefix)?, fixed(&template.suffix)?);
        let fixed_len = prefix.len() + suffix.len();
        let total = self.max_len;
        let budget = total.saturating_sub(fixed_len);
        if budget < 2 {
            return Err(format!(
                "pair_template: its prefix and suffix take {fixed_len} of the {total} tokens of max_seq_length, leaving no room for a pair"
            ));
        }
        let mut inner = self.inner;
        inner
            .with_truncation(Some(TruncationParams {
                max_length: budget,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| format!("tokenizer.json: cannot truncate at {budget}: {e}"))?;
        Ok(TextTokenizer {
            inner,
            from_start: std::sync::OnceLock::new(),
            whole: self.whole,
            max_len: budget,
            framed: Some(Framed {
                template: template.clone(),
                prefix,
                suffix,
            }),
            pad: self.pad,
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

    /// Tokenizes one text without the model's special tokens (an inference-free sparse
    /// model's query side, as sentence-transformers' `SparseStaticEmbedding` tokenizes), cut to
    /// `max_seq_length` tokens at the side `cut` says.
    pub fn encode_plain(&self, text: &str, cut: Cut) -> Result<Encoded, String> {
        let enc = self
            .untruncated()
            .encode(text, false)
            .map_err(|e| format!("tokenization failed: {e}"))?;
        let mut ids = enc.get_ids().to_vec();
        let truncated = ids.len() > self.max_len;
        if truncated {
            match cut {
                Cut::End => ids.truncate(self.max_len),
                Cut::Start => {
                    ids.drain(..ids.len() - self.max_len);
                }
            }
        }
        Ok(Encoded {
            type_ids: vec![0; ids.len()],
            ids,
            truncated,
            unattended: 0,
        })
    }

    /// Tokenizes a query–document pair as one sequence for a cross-encoder, with the model's
    /// special tokens and segment ids (BERT: `[CLS] query [SEP] document [SEP]`, the document
    /// of type 1). An over-long pair loses tokens from the longer of the two first, as
    /// transformers' `truncation=True` (longest first) does, at the side `cut` says.
    ///
    /// With a pair template (a decoder reranker), the pair is the template's text with
    /// `instruction` (or the template's own) and cut at the side `cut` says, between the
    /// template's prefix and suffix. A cross-encoder has no instruction: the caller refuses
    /// one (`instruction` is then ignored here).
    pub fn encode_pair(
        &self,
        query: &str,
        document: &str,
        instruction: Option<&str>,
        cut: Cut,
    ) -> Result<Encoded, String> {
        if let Some(f) = &self.framed {
            let text = f.template.render(instruction, query, document);
            // Whole, then cut: tokenizers 0.23.2's early stop at the limit leaves no overflow
            // to tell a cut from an exact fit when the tokenizer adds no tokens of its own
            // (Qwen's), and a cut pair must say so.
            let whole = self
                .untruncated()
                .encode(text.as_str(), false)
                .map_err(|e| format!("tokenization failed: {e}"))?;
            let pair = Self::encoded(
                &self
                    .truncating(cut)?
                    .post_process(whole, None, true)
                    .map_err(|e| format!("tokenization failed: {e}"))?,
            );
            let ids: Vec<u32> = [f.prefix.as_slice(), &pair.ids, &f.suffix].concat();
            return Ok(Encoded {
                type_ids: vec![0; ids.len()],
                ids,
                truncated: pair.truncated,
                unattended: 0,
            });
        }
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
        let mut encoded = Self::encoded(&enc);
        if let Some(id) = self.pad
            && encoded.ids.len() < self.max_len
        {
            encoded.ids.resize(self.max_len, id);
            encoded.type_ids.resize(self.max_len, 0);
        }
        Ok(encoded)
    }

    fn encoded(enc: &tokenizers::Encoding) -> Encoded {
        Encoded {
            ids: enc.get_ids().to_vec(),
            type_ids: enc.get_type_ids().to_vec(),
            truncated: !enc.get_overflowing().is_empty(),
            unattended: 0,
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

    /// Whether `id` names a token of the vocabulary (added tokens included).
    pub fn has_id(&self, id: u32) -> bool {
        self.untruncated().id_to_token(id).is_some()
    }

    /// How many tokens the vocabulary has, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.untruncated().get_vocab_size(true)
    }

    /// The text of `ids` as the tokenizer's decoder joins them (word pieces glued, byte-level
    /// pieces made text again), without the special tokens when `skip_special`: what
    /// `POST /decode` answers. Every id must pass [`TextTokenizer::has_id`].
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, String> {
        self.untruncated()
            .decode(ids, skip_special)
            .map_err(|e| format!("decoding failed: {e}"))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The Qwen3 reranker fixture's tokenizer (byte-level BPE, Qwen's chat tokens).
    fn qwen_tokenizer(max_len: usize) -> TextTokenizer {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/architectures/qwen3-reranker/tokenizer.json"
        );
        let bytes = std::fs::read(path).expect("fixture tokenizer");
        TextTokenizer::from_bytes(&bytes, max_len).expect("tokenizer")
    }

    fn ids(t: &TextTokenizer, text: &str) -> Vec<u32> {
        t.untruncated()
            .encode(text, false)
            .expect("encode")
            .get_ids()
            .to_vec()
    }

    #[test]
    fn a_padding_tokenizer_pads_every_text_to_its_length_after_the_cut() {
        let plain = qwen_tokenizer(12);
        let padded = qwen_tokenizer(12).with_padding(7);
        let short = plain.encode("a few words").expect("short");
        let got = padded.encode("a few words").expect("padded");
        assert_eq!(got.ids[..short.len()], short.ids[..]);
        assert_eq!(got.ids[short.len()..], vec![7; 12 - short.len()][..]);
        assert_eq!(
            (got.len(), got.type_ids.len(), got.truncated),
            (12, 12, false)
        );
        let long = "word ".repeat(40);
        let cut = padded.encode(&long).expect("long");
        let plain_cut = plain.encode(&long).expect("plain");
        assert_eq!(cut.len(), 12);
        assert_eq!(
            (cut.ids, cut.truncated),
            (plain_cut.ids, plain_cut.truncated)
        );
    }

    #[test]
    fn a_templated_pair_is_prefix_pair_suffix() {
        let template = PairTemplate::qwen3_reranker();
        let t = qwen_tokenizer(512)
            .with_pair_template(&template)
            .expect("fits");
        let got = t
            .encode_pair("Where is it?", "Here.", Some("Find it"), Cut::End)
            .expect("pair");
        let want = [
            ids(&t, &template.prefix),
            ids(
                &t,
                "<Instruct>: Find it\n<Query>: Where is it?\n<Document>: Here.",
            ),
            ids(&t, &template.suffix),
        ]
        .concat();
        assert_eq!(got.ids, want);
        assert_eq!(got.type_ids, vec![0; want.len()]);
        assert!(!got.truncated);
        // The chat tokens are single tokens.
        let im_start = t.untruncated().token_to_id("<|im_start|>").expect("token");
        assert_eq!(got.ids[0], im_start);
    }

    #[test]
    fn an_over_long_pair_is_cut_between_the_fixed_parts() {
        let template = PairTemplate::qwen3_reranker();
        let t = qwen_tokenizer(120)
            .with_pair_template(&template)
            .expect("fits");
        let (prefix, suffix) = (ids(&t, &template.prefix), ids(&t, &template.suffix));
        let long = "the same words again and again ".repeat(40);
        for cut in [Cut::End, Cut::Start] {
            let got = t.encode_pair("q", &long, None, cut).expect("pair");
            assert_eq!(got.len(), 120, "{cut:?}");
            assert!(got.truncated, "{cut:?}");
            assert_eq!(got.ids[..prefix.len()], prefix[..], "{cut:?}");
            assert_eq!(got.ids[120 - suffix.len()..], suffix[..], "{cut:?}");
            let start = ids(&t, "<Instruct>");
            let kept_start = got.ids[prefix.len()..prefix.len() + start.len()] == start[..];
            // The end cut keeps the pair's start; the start cut drops it.
            assert_eq!(kept_start, cut == Cut::End, "{cut:?}");
        }
    }

    #[test]
    fn a_template_that_leaves_no_room_is_refused() {
        let template = PairTemplate::qwen3_reranker();
        let fixed = {
            let t = qwen_tokenizer(8);
            ids(&t, &template.prefix).len() + ids(&t, &template.suffix).len()
        };
        let err = qwen_tokenizer(fixed + 1)
            .with_pair_template(&template)
            .err();
        assert_eq!(
            err,
            Some(format!(
                "pair_template: its prefix and suffix take {fixed} of the {} tokens of max_seq_length, leaving no room for a pair",
                fixed + 1
            ))
        );
        assert!(
            qwen_tokenizer(fixed + 2)
                .with_pair_template(&template)
                .is_ok()
        );
    }
}
