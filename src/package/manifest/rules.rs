//! The rules a parsed manifest must follow, each field checked with the reason it names.

use std::collections::BTreeSet;

use super::{
    FORMAT, FileEntry, MANIFEST_NAME, MAX_FILE_BYTES, MAX_PROMPT_BYTES, MAX_SEQ_LENGTH,
    MAX_TOTAL_BYTES, Manifest, ManifestError, ModelKind, Pooling, REQUIRED_FILES, invalid,
};

/// Checks that `path` is a plain relative path: no absolute root, no `.`/`..` or empty
/// components, no backslashes or control characters. Returns the reason when it is not.
pub fn check_entry_path(path: &str) -> Result<(), &'static str> {
    if path.is_empty() {
        return Err("the path is empty");
    }
    if path.len() > 255 {
        return Err("the path is longer than 255 bytes");
    }
    if path.starts_with('/') {
        return Err("the path is absolute");
    }
    if path.contains('\\') || path.chars().any(char::is_control) {
        return Err("the path contains a backslash or a control character");
    }
    for part in path.split('/') {
        match part {
            ".." => return Err("the path contains `..`"),
            "." | "" => return Err("the path has an empty or `.` component"),
            _ => {}
        }
    }
    Ok(())
}

impl Manifest {
    /// Checks every rule a parsed manifest must follow.
    pub fn validate(&self) -> Result<(), ManifestError> {
        self.validate_prompts()?;
        self.validate_kind()?;
        self.validate_image_text()?;
        self.validate_late_interaction()?;
        self.validate_outputs()?;
        self.validate_head()?;
        self.validate_identity()?;
        if !(1..=65536).contains(&self.dimensions) {
            return Err(invalid("dimensions", "must be between 1 and 65536"));
        }
        if !(2..=MAX_SEQ_LENGTH).contains(&self.max_seq_length) {
            return Err(invalid(
                "max_seq_length",
                format!("must be between 2 and {MAX_SEQ_LENGTH}"),
            ));
        }
        self.validate_files()
    }

    /// Prompt names and lengths, and a default prompt that is one of them.
    fn validate_prompts(&self) -> Result<(), ManifestError> {
        for (name, text) in &self.prompts {
            if name.is_empty()
                || name.len() > 64
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            {
                return Err(invalid(
                    "prompts",
                    format!("prompt name {name:?} is not 1 to 64 of [A-Za-z0-9._-]"),
                ));
            }
            if text.len() > MAX_PROMPT_BYTES {
                return Err(invalid(
                    "prompts",
                    format!(
                        "prompt {name:?} is {} bytes; at most {MAX_PROMPT_BYTES}",
                        text.len()
                    ),
                ));
            }
        }
        if let Some(d) = &self.default_prompt
            && !self.prompts.contains_key(d)
        {
            return Err(invalid(
                "default_prompt",
                format!("{d:?} is not one of the manifest's prompts"),
            ));
        }
        Ok(())
    }

    /// The format this build reads, and a well-formed id and version.
    fn validate_identity(&self) -> Result<(), ManifestError> {
        if self.format != FORMAT {
            return Err(invalid(
                "format",
                format!(
                    "format {} is not supported (this build reads format {FORMAT})",
                    self.format
                ),
            ));
        }
        if !crate::config::is_valid_model_id(&self.id) {
            return Err(invalid(
                "id",
                format!("{:?} is not 1 to 128 of [A-Za-z0-9._-]", self.id),
            ));
        }
        if !is_valid_version(&self.version) {
            return Err(invalid(
                "version",
                format!(
                    "{:?} is not 1 to 64 of [A-Za-z0-9.+_-] starting with a letter or digit",
                    self.version
                ),
            ));
        }
        Ok(())
    }

    /// Each file at a safe path, once, within the size bounds, with a sha256; the total
    /// bounded; the files the engine needs all listed.
    fn validate_files(&self) -> Result<(), ManifestError> {
        if self.files.is_empty() {
            return Err(invalid("files", "the list is empty"));
        }
        let mut seen = BTreeSet::new();
        for (i, f) in self.files.iter().enumerate() {
            validate_file(i, f, &mut seen)?;
        }
        if self.declared_bytes() > MAX_TOTAL_BYTES {
            return Err(invalid(
                "files",
                format!("the files add up to more than {MAX_TOTAL_BYTES} bytes"),
            ));
        }
        for required in REQUIRED_FILES {
            if !seen.contains(required) {
                return Err(invalid(
                    "files",
                    format!("{required} is required but not listed"),
                ));
            }
        }
        Ok(())
    }

    /// A reranker needs its labels and activation, reads the first token (`pooling: cls`), or
    /// with a pair template the last (`last_token`), and makes no vectors (`normalize: false`); an embedding model has neither field.
    fn validate_kind(&self) -> Result<(), ManifestError> {
        match self.kind {
            ModelKind::Embedding
            | ModelKind::Sparse
            | ModelKind::MultiVector
            | ModelKind::ImageText => {
                for (field, present) in [
                    ("labels", self.labels.is_some()),
                    ("activation", self.activation.is_some()),
                    ("pair_template", self.pair_template.is_some()),
                ] {
                    if present {
                        return Err(invalid(
                            field,
                            "only a reranker (kind: reranker) has it; remove it or set kind: reranker",
                        ));
                    }
                }
                self.validate_sparse()?;
            }
            ModelKind::Reranker => {
                match self.labels {
                    None => {
                        return Err(invalid(
                            "labels",
                            "a reranker must say how many labels its head has",
                        ));
                    }
                    // What text-embeddings-inference and sentence-transformers' `rank` serve:
                    // a head of several labels classifies pairs, it does not rank them.
                    Some(n) if n != 1 => {
                        return Err(invalid(
                            "labels",
                            format!(
                                "{n} labels make a classifier; only one-label cross-encoders (rerankers) are served"
                            ),
                        ));
                    }
                    Some(_) => {}
                }
                if self.activation.is_none() {
                    return Err(invalid(
                        "activation",
                        "a reranker must say what its scores apply to the logits (sigmoid, identity or tanh)",
                    ));
                }
                // A cross-encoder's head reads the first token; a decoder reranker's, the
                // last (the only one that saw the whole pair).
                match (&self.pair_template, self.pooling) {
                    (None, Pooling::Cls) => {}
                    (None, _) => {
                        return Err(invalid(
                            "pooling",
                            "a cross-encoder's head reads the first token: pooling must be cls (last_token goes with a pair_template)",
                        ));
                    }
                    (Some(t), Pooling::LastToken) => t.validate()?,
                    (Some(_), _) => {
                        return Err(invalid(
                            "pooling",
                            "a reranker with a pair_template reads its last token: pooling must be last_token",
                        ));
                    }
                }
                if self.normalize {
                    return Err(invalid(
                        "normalize",
                        "a reranker makes scores, not vectors: normalize must be false",
                    ));
                }
                if !self.prompts.is_empty() {
                    return Err(invalid("prompts", "a reranker takes no prompts"));
                }
            }
        }
        Ok(())
    }
}

impl Manifest {
    /// A sparse model pools term weights (`max` or `sum`) after its activation, makes no unit
    /// vectors and no Matryoshka cut; an embedding model has none of its fields.
    fn validate_sparse(&self) -> Result<(), ManifestError> {
        let sparse = self.kind == ModelKind::Sparse;
        let term_pooling = matches!(self.pooling, Pooling::Max | Pooling::Sum);
        if !sparse {
            if term_pooling {
                return Err(invalid(
                    "pooling",
                    format!(
                        "{} pools a sparse model's term weights; an embedding model pools with mean, cls or last_token (or set kind: sparse)",
                        self.pooling.as_str()
                    ),
                ));
            }
            for (field, present) in [
                ("sparse_activation", self.sparse_activation.is_some()),
                ("query_weights", self.query_weights.is_some()),
            ] {
                if present {
                    return Err(invalid(
                        field,
                        "only a sparse model (kind: sparse) has it; remove it or set kind: sparse",
                    ));
                }
            }
            return Ok(());
        }
        if !term_pooling {
            return Err(invalid(
                "pooling",
                format!(
                    "a sparse model pools its term weights with max or sum, not {}",
                    self.pooling.as_str()
                ),
            ));
        }
        if self.sparse_activation.is_none() {
            return Err(invalid(
                "sparse_activation",
                "a sparse model must say what it applies to its logits (relu or log1p_relu)",
            ));
        }
        if let Some(path) = &self.query_weights
            && !self.files.iter().any(|f| &f.path == path)
        {
            return Err(invalid(
                "query_weights",
                format!("{path:?} is not one of the package's files"),
            ));
        }
        for (field, present) in [
            ("normalize", self.normalize),
            ("matryoshka", self.matryoshka.is_some()),
            ("dense", !self.dense.is_empty()),
        ] {
            if present {
                return Err(invalid(
                    field,
                    "a sparse model makes term weights, not a dense vector: remove it",
                ));
            }
        }
        Ok(())
    }
}

/// The manifest's `i`th file: a safe path, not the manifest, not in `seen` (which it joins),
/// within [`MAX_FILE_BYTES`], with a sha256.
fn validate_file<'a>(
    i: usize,
    f: &'a FileEntry,
    seen: &mut BTreeSet<&'a str>,
) -> Result<(), ManifestError> {
    check_entry_path(&f.path).map_err(|r| invalid(format!("files[{i}].path"), r))?;
    if f.path == MANIFEST_NAME {
        return Err(invalid(
            format!("files[{i}].path"),
            "the manifest cannot list itself",
        ));
    }
    if !seen.insert(f.path.as_str()) {
        return Err(invalid(
            format!("files[{i}].path"),
            format!("{:?} is listed twice", f.path),
        ));
    }
    if f.size > MAX_FILE_BYTES {
        return Err(invalid(
            format!("files[{i}].size"),
            format!(
                "{} bytes is more than the {MAX_FILE_BYTES} a file may have",
                f.size
            ),
        ));
    }
    if f.sha256.len() != 64
        || !f
            .sha256
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(invalid(
            format!("files[{i}].sha256"),
            "must be 64 lower-case hex digits",
        ));
    }
    Ok(())
}

fn is_valid_version(v: &str) -> bool {
    (1..=64).contains(&v.len())
        && v.as_bytes()[0].is_ascii_alphanumeric()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'+' | b'_' | b'-'))
}
