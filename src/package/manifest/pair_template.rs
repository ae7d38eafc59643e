//! How a decoder reranker reads a query–document pair: not as two segments with separator
//! tokens, as a cross-encoder does, but as one text its prompt template makes (Qwen3-Reranker:
//! a system turn, the instruction, query and document as the user's turn, the start of the
//! assistant's answer), whose last token's logits are read.

use serde::{Deserialize, Serialize};

use super::{MAX_PROMPT_BYTES, ManifestError, invalid};

/// The manifest's `pair_template`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairTemplate {
    /// Text before the pair (its tokens are never cut).
    pub prefix: String,
    /// The pair: `{query}` and `{document}` once each, and `{instruction}` at most once.
    pub pair: String,
    /// Text after the pair (its tokens are never cut).
    pub suffix: String,
    /// What `{instruction}` becomes when a request gives none; required when `pair` has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instruction: Option<String>,
}

/// A placeholder of [`PairTemplate::pair`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Instruction,
    Query,
    Document,
}

const SLOTS: [(&str, Slot); 3] = [
    ("{instruction}", Slot::Instruction),
    ("{query}", Slot::Query),
    ("{document}", Slot::Document),
];

impl PairTemplate {
    /// Qwen3-Reranker's template, as its model card formats a pair.
    pub fn qwen3_reranker() -> PairTemplate {
        PairTemplate {
            prefix: "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n<|im_start|>user\n".into(),
            pair: "<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {document}".into(),
            suffix: "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n".into(),
            instruction: Some(
                "Given a web search query, retrieve relevant passages that answer the query".into(),
            ),
        }
    }

    /// Whether a request may give its own instruction.
    pub fn takes_instruction(&self) -> bool {
        self.pair.contains("{instruction}")
    }

    /// The pair text: the placeholders replaced in one pass, so a query that contains
    /// `{document}` stays as it is. `instruction`: the request's, else the template's own.
    pub fn render(&self, instruction: Option<&str>, query: &str, document: &str) -> String {
        let instruction = instruction.or(self.instruction.as_deref()).unwrap_or("");
        let mut out = String::with_capacity(self.pair.len() + query.len() + document.len());
        let mut rest = self.pair.as_str();
        while let Some((at, name, slot)) = next_slot(rest) {
            out.push_str(&rest[..at]);
            out.push_str(match slot {
                Slot::Instruction => instruction,
                Slot::Query => query,
                Slot::Document => document,
            });
            rest = &rest[at + name.len()..];
        }
        out.push_str(rest);
        out
    }

    /// The rules of the manifest's `pair_template`.
    pub(super) fn validate(&self) -> Result<(), ManifestError> {
        let field = |name: &str| format!("pair_template.{name}");
        for (name, text) in [
            ("prefix", Some(&self.prefix)),
            ("pair", Some(&self.pair)),
            ("suffix", Some(&self.suffix)),
            ("instruction", self.instruction.as_ref()),
        ] {
            if let Some(text) = text
                && text.len() > MAX_PROMPT_BYTES
            {
                return Err(invalid(
                    field(name),
                    format!("{} bytes; at most {MAX_PROMPT_BYTES}", text.len()),
                ));
            }
        }
        let mut counts = [0usize; 3];
        let mut rest = self.pair.as_str();
        while let Some((at, name, slot)) = next_slot(rest) {
            counts[slot as usize] += 1;
            rest = &rest[at + name.len()..];
        }
        let [instruction, query, document] = counts;
        for (placeholder, n) in [("{query}", query), ("{document}", document)] {
            if n != 1 {
                return Err(invalid(
                    field("pair"),
                    format!("must hold {placeholder} once (it holds it {n} times)"),
                ));
            }
        }
        if instruction > 1 {
            return Err(invalid(
                field("pair"),
                format!("may hold {{instruction}} once at most (it holds it {instruction} times)"),
            ));
        }
        match (instruction, &self.instruction) {
            (1, None) => Err(invalid(
                field("instruction"),
                "the pair has {instruction}: give the instruction used when a request has none",
            )),
            (0, Some(_)) => Err(invalid(
                field("instruction"),
                "the pair has no {instruction} to put it in",
            )),
            _ => Ok(()),
        }
    }
}

/// The first placeholder in `text`: its byte offset, its spelling and which it is.
fn next_slot(text: &str) -> Option<(usize, &'static str, Slot)> {
    SLOTS
        .iter()
        .filter_map(|&(name, slot)| text.find(name).map(|at| (at, name, slot)))
        .min_by_key(|&(at, _, _)| at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_model_cards_text() {
        let t = PairTemplate::qwen3_reranker();
        t.validate().expect("valid");
        assert!(t.takes_instruction());
        assert_eq!(
            t.render(None, "What is the capital of China?", "Beijing."),
            "<Instruct>: Given a web search query, retrieve relevant passages that answer the query\n<Query>: What is the capital of China?\n<Document>: Beijing."
        );
        assert_eq!(
            t.render(Some("Find code"), "q", "d"),
            "<Instruct>: Find code\n<Query>: q\n<Document>: d"
        );
    }

    #[test]
    fn placeholders_inside_a_request_stay_as_they_are() {
        let t = PairTemplate::qwen3_reranker();
        assert_eq!(
            t.render(Some("{query}"), "{document}", "{instruction}"),
            "<Instruct>: {query}\n<Query>: {document}\n<Document>: {instruction}"
        );
    }

    #[test]
    fn broken_templates_are_refused_by_field() {
        let with = |pair: &str, instruction: Option<&str>| {
            PairTemplate {
                prefix: String::new(),
                pair: pair.into(),
                suffix: String::new(),
                instruction: instruction.map(str::to_string),
            }
            .validate()
            .err()
            .map(|e| e.to_string())
        };
        assert_eq!(with("{query} {document}", None), None);
        assert_eq!(
            with("{query}", None).as_deref(),
            Some("pair_template.pair: must hold {document} once (it holds it 0 times)")
        );
        assert_eq!(
            with("{query} {query} {document}", None).as_deref(),
            Some("pair_template.pair: must hold {query} once (it holds it 2 times)")
        );
        assert_eq!(
            with("{instruction}{instruction} {query} {document}", Some("i")).as_deref(),
            Some("pair_template.pair: may hold {instruction} once at most (it holds it 2 times)")
        );
        assert_eq!(
            with("{instruction} {query} {document}", None).as_deref(),
            Some(
                "pair_template.instruction: the pair has {instruction}: give the instruction used when a request has none"
            )
        );
        assert_eq!(
            with("{query} {document}", Some("i")).as_deref(),
            Some("pair_template.instruction: the pair has no {instruction} to put it in")
        );
        let long = "x".repeat(MAX_PROMPT_BYTES + 1);
        assert_eq!(
            with(&format!("{long}{{query}}{{document}}"), None).as_deref(),
            Some("pair_template.pair: 1042 bytes; at most 1024")
        );
    }
}
