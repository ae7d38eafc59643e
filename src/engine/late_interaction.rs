//! A multi-vector (ColBERT) model's two sides: queries cut to their length and padded by
//! query expansion, documents cut to theirs, and which of a document's token vectors are kept.

use std::collections::HashSet;

use super::tokenize::{Cut, Encoded, TextTokenizer};
use crate::package::{LateInteraction, QueryExpansion};

/// Which side of a late-interaction model a text is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// A search query: cut at `query_length`, padded by query expansion.
    Query,
    /// A document: cut at `document_length`, its skip-list tokens dropped.
    Document,
}

/// The tokenizers of both sides and the rules between the pass and the vectors.
pub struct LateTokenizers {
    query: TextTokenizer,
    document: TextTokenizer,
    expansion: Option<QueryExpansion>,
    skiplist: HashSet<u32>,
    drop_first: bool,
}

impl LateTokenizers {
    /// Builds both sides from `tokenizer.json` bytes and the manifest's settings.
    pub fn new(bytes: &[u8], li: &LateInteraction) -> Result<Self, String> {
        Ok(LateTokenizers {
            query: TextTokenizer::from_bytes(bytes, li.query_length)?,
            document: TextTokenizer::from_bytes(bytes, li.document_length)?,
            expansion: li.query_expansion,
            skiplist: li.skiplist.iter().copied().collect(),
            drop_first: li.drop_first,
        })
    }

    /// The most tokens a text of `side` keeps.
    pub fn max_len(&self, side: Side) -> usize {
        self.of(side).max_len()
    }

    fn of(&self, side: Side) -> &TextTokenizer {
        match side {
            Side::Query => &self.query,
            Side::Document => &self.document,
        }
    }

    /// Tokenizes `text` (its prompt already before it) as `side`: cut at the side's length at
    /// the end `cut` says; a query shorter than the expansion's length padded to it with the
    /// expansion token after its last (`[SEP]`), unattended unless the model attends to them,
    /// as sentence-transformers' Transformer does.
    pub fn encode(&self, text: &str, side: Side, cut: Cut) -> Result<Encoded, String> {
        let mut e = self.of(side).encode_cut(text, cut)?;
        if let (Side::Query, Some(x)) = (side, self.expansion) {
            let pad = x.length.saturating_sub(e.len());
            e.ids.extend(std::iter::repeat_n(x.token_id, pad));
            e.type_ids.extend(std::iter::repeat_n(0, pad));
            if !x.attend {
                e.unattended = pad;
            }
        }
        Ok(e)
    }

    /// Whether each token of `ids` (a text of `side`) keeps its vector: a document's skip-list
    /// tokens do not (sentence-transformers' MultiVectorMask, whose default applies the list
    /// to documents only); every query token does, the expansion's included.
    /// bge-m3's first token (`[CLS]`) has none on either side.
    pub fn kept(&self, ids: &[u32], side: Side) -> Vec<bool> {
        ids.iter()
            .enumerate()
            .map(|(i, id)| {
                !(self.drop_first && i == 0) && (side == Side::Query || !self.skiplist.contains(id))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::package::LateSimilarity;

    fn tokenizers(attend: bool) -> LateTokenizers {
        let bytes = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/architectures/colbert/tokenizer.json"),
        )
        .expect("the colbert fixture's tokenizer");
        LateTokenizers::new(
            &bytes,
            &LateInteraction {
                query_length: 8,
                document_length: 6,
                query_expansion: Some(QueryExpansion {
                    token_id: 4,
                    length: 8,
                    attend,
                }),
                skiplist: vec![1],
                similarity: LateSimilarity::Maxsim,
                drop_first: false,
            },
        )
        .expect("tokenizers")
    }

    #[test]
    fn a_query_is_padded_with_unattended_expansion_tokens_and_a_document_is_cut() {
        let t = tokenizers(false);
        let q = t.encode("hello", Side::Query, Cut::End).expect("query");
        // [CLS] hello's pieces [SEP] (id 3), then [MASK]s (id 4) no token attends to.
        assert_eq!(q.ids.len(), 8);
        let sep = q.ids.iter().position(|&i| i == 3).expect("[SEP]");
        assert!(sep < 7, "{:?}", q.ids);
        assert!(q.ids[sep + 1..].iter().all(|&i| i == 4), "{:?}", q.ids);
        assert_eq!((q.unattended, q.truncated), (7 - sep, false));
        assert_eq!(q.type_ids, vec![0; 8]);
        let attended = tokenizers(true)
            .encode("hello", Side::Query, Cut::End)
            .expect("query");
        assert_eq!((attended.ids, attended.unattended), (q.ids, 0));

        let long = "machine learning is the capital of quantum entanglement";
        let q = t.encode(long, Side::Query, Cut::End).expect("query");
        assert_eq!((q.ids.len(), q.unattended, q.truncated), (8, 0, true));
        let d = t.encode(long, Side::Document, Cut::End).expect("document");
        assert_eq!((d.ids.len(), d.unattended, d.truncated), (6, 0, true));
        assert_eq!(t.kept(&[2, 1, 7], Side::Document), [true, false, true]);
        assert_eq!(t.kept(&[2, 1, 7], Side::Query), [true, true, true]);
    }
}
