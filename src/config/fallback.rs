//! `models.fallbacks`, `models.fallback_strategy` and `models.allow_dimension_mismatch`: which
//! verified model may answer for one that cannot. What a fallback list may name is checked
//! here as far as the configuration alone tells; the widths of the models it names are
//! checked against the verified packages where they are known (`reload`, `server`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// When a request's model cannot serve, who may answer instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FallbackStrategy {
    /// Never substitute: the request gets the model's error.
    #[default]
    Strict,
    /// Only the alternatives `models.fallbacks` lists for the model.
    Listed,
    /// The listed alternatives, then the bundled default model (`models.default`).
    Auto,
}

impl FallbackStrategy {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            FallbackStrategy::Strict => "strict",
            FallbackStrategy::Listed => "listed",
            FallbackStrategy::Auto => "auto",
        }
    }
}

/// Checks what serde cannot: ids, a model listed for itself, a model listed twice.
/// `(key, reason)` of the first violation.
pub fn validate(fallbacks: &BTreeMap<String, Vec<String>>) -> Result<(), (String, String)> {
    for (id, list) in fallbacks {
        let key = format!("models.fallbacks.{id}");
        if !super::is_valid_model_id(id) {
            return Err((
                key,
                format!("{id:?} is not a model id (1 to 128 of [A-Za-z0-9._-])"),
            ));
        }
        if list.is_empty() {
            return Err((
                key,
                "the list is empty; name the alternatives in order, or remove the entry".into(),
            ));
        }
        for (i, alt) in list.iter().enumerate() {
            if !super::is_valid_model_id(alt) {
                return Err((
                    format!("{key}[{i}]"),
                    format!("{alt:?} is not a model id (1 to 128 of [A-Za-z0-9._-])"),
                ));
            }
            if alt == id {
                return Err((
                    format!("{key}[{i}]"),
                    format!("{id} is listed as its own alternative"),
                ));
            }
            if list[..i].contains(alt) {
                return Err((format!("{key}[{i}]"), format!("{alt} is listed twice")));
            }
        }
    }
    Ok(())
}

/// What is known of a model's package: its kind and width (from its verified package, or
/// remembered from the last one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// What the model makes.
    pub kind: Kind,
    /// Vector width (embedding models).
    pub dimensions: usize,
}

/// What a model makes, as far as standing in for another goes (the manifest's `kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Vectors.
    Embedding,
    /// Scores of pairs.
    Reranker,
    /// Term weights.
    Sparse,
    /// A vector per token.
    MultiVector,
    /// Vectors of texts and images in one space (CLIP, SigLIP).
    ImageText,
}

impl Kind {
    /// "an embedding model", "a reranker", "a sparse model", "a multi-vector model".
    pub fn described(self) -> &'static str {
        match self {
            Kind::Embedding => "an embedding model",
            Kind::Reranker => "a reranker",
            Kind::Sparse => "a sparse model",
            Kind::MultiVector => "a multi-vector model",
            Kind::ImageText => "an image-text model",
        }
    }
}

/// The first fallback list naming a model that cannot stand in for the one it is listed for:
/// another kind always, another width unless `allow_mismatch`. Models whose shape is unknown
/// (never installed here) are checked when they are used. The message names both models and
/// their widths.
pub fn check_shapes(
    fallbacks: &BTreeMap<String, Vec<String>>,
    allow_mismatch: bool,
    shape: impl Fn(&str) -> Option<Shape>,
) -> Result<(), String> {
    for (id, list) in fallbacks {
        let Some(primary) = shape(id) else { continue };
        for (i, alt) in list.iter().enumerate() {
            let Some(s) = shape(alt) else { continue };
            let key = format!("models.fallbacks.{id}[{i}]");
            if s.kind != primary.kind {
                return Err(format!(
                    "{key}: {alt} is {} and {id} is {}; an alternative must be of its model's kind",
                    s.kind.described(),
                    primary.kind.described()
                ));
            }
            if primary.kind != Kind::Reranker
                && s.dimensions != primary.dimensions
                && !allow_mismatch
            {
                return Err(format!(
                    "{key}: {alt} produces {}-dimensional vectors and {id} {}-dimensional ones; vectors of another width would corrupt a caller's index. List a model of width {}, or set models.allow_dimension_mismatch: true",
                    s.dimensions, primary.dimensions, primary.dimensions
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lists(pairs: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    #[test]
    fn lists_are_checked_for_ids_self_references_and_repeats() {
        assert_eq!(validate(&lists(&[("a", &["b", "c"])])), Ok(()));
        assert_eq!(
            validate(&lists(&[("a", &["b", "a"])])),
            Err((
                "models.fallbacks.a[1]".into(),
                "a is listed as its own alternative".into()
            ))
        );
        assert_eq!(
            validate(&lists(&[("a", &["b", "b"])])),
            Err(("models.fallbacks.a[1]".into(), "b is listed twice".into()))
        );
        assert_eq!(
            validate(&lists(&[("a", &["b c"])])),
            Err((
                "models.fallbacks.a[0]".into(),
                "\"b c\" is not a model id (1 to 128 of [A-Za-z0-9._-])".into()
            ))
        );
        assert_eq!(
            validate(&lists(&[("a", &[])])),
            Err((
                "models.fallbacks.a".into(),
                "the list is empty; name the alternatives in order, or remove the entry".into()
            ))
        );
    }

    #[test]
    fn widths_and_kinds_are_checked_where_known() {
        let shape = |id: &str| match id {
            "mini" => Some(Shape {
                kind: Kind::Embedding,
                dimensions: 384,
            }),
            "mini2" => Some(Shape {
                kind: Kind::Embedding,
                dimensions: 384,
            }),
            "mpnet" => Some(Shape {
                kind: Kind::Embedding,
                dimensions: 768,
            }),
            "ce" => Some(Shape {
                kind: Kind::Reranker,
                dimensions: 1,
            }),
            "splade" => Some(Shape {
                kind: Kind::Sparse,
                dimensions: 30522,
            }),
            "splade2" => Some(Shape {
                kind: Kind::Sparse,
                dimensions: 30522,
            }),
            _ => None,
        };
        let l = lists(&[("mpnet", &["gone", "mini"])]);
        assert_eq!(
            check_shapes(&l, false, shape),
            Err("models.fallbacks.mpnet[1]: mini produces 384-dimensional vectors and mpnet 768-dimensional ones; vectors of another width would corrupt a caller's index. List a model of width 768, or set models.allow_dimension_mismatch: true".into())
        );
        assert_eq!(check_shapes(&l, true, shape), Ok(()));
        assert_eq!(
            check_shapes(&lists(&[("mini", &["mini2"])]), false, shape),
            Ok(())
        );
        assert_eq!(
            check_shapes(&lists(&[("gone", &["mpnet"])]), false, shape),
            Ok(())
        );
        assert_eq!(
            check_shapes(&lists(&[("mini", &["ce"])]), true, shape),
            Err("models.fallbacks.mini[0]: ce is a reranker and mini is an embedding model; an alternative must be of its model's kind".into())
        );
        // A sparse model stands in only for a sparse model of the same vocabulary.
        assert_eq!(
            check_shapes(&lists(&[("splade", &["mini"])]), true, shape),
            Err("models.fallbacks.splade[0]: mini is an embedding model and splade is a sparse model; an alternative must be of its model's kind".into())
        );
        assert_eq!(
            check_shapes(&lists(&[("splade", &["splade2"])]), false, shape),
            Ok(())
        );
    }
}
