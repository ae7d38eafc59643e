//! Usage kept across restarts and upgrades: each model's use count, last use, tokens, width
//! and habits (uses by hour of week) in `state_dir/usage.json`, written atomically (a synced
//! temporary file renamed over the old one), read back at start. A missing file is a first start; a corrupt one is logged and
//! ignored: usage is advice to the memory policy and the operator, never a reason not to
//! serve.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The file's format; a file of another format is ignored like a corrupt one.
const FORMAT: u32 = 1;

/// One model's usage as stored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Requests served.
    pub use_count: u64,
    /// Last request, in seconds since the Unix epoch.
    pub last_use: Option<u64>,
    /// Tokens embedded.
    pub tokens: u64,
    /// Width of its vectors, from its last verified package: what an alternative must match
    /// while the package is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<usize>,
    /// Whether it is a reranker (with `dimensions`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reranker: bool,
    /// Whether it is a sparse model (with `dimensions`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sparse: bool,
    /// Whether it is a multi-vector model (with `dimensions`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub multi_vector: bool,
    /// When it tends to be used (for predictive preloading).
    #[serde(default, skip_serializing_if = "super::habits::Habits::is_empty")]
    pub habits: super::habits::Habits,
}

impl Record {
    /// Its kind as the fallback rules compare them.
    pub fn kind(&self) -> crate::config::fallback::Kind {
        use crate::config::fallback::Kind;
        match (self.reranker, self.sparse, self.multi_vector) {
            (true, ..) => Kind::Reranker,
            (_, true, _) => Kind::Sparse,
            (.., true) => Kind::MultiVector,
            _ => Kind::Embedding,
        }
    }

    /// `last_use` as a time.
    pub fn last_use_time(&self) -> Option<SystemTime> {
        self.last_use
            .and_then(|s| UNIX_EPOCH.checked_add(Duration::from_secs(s)))
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsageFile {
    format: u32,
    models: BTreeMap<String, Record>,
}

/// The name a write starts as, before its rename into place.
const TMP_PREFIX: &str = ".usage-";

/// Where the usage of the daemon with `state_dir` is kept.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("usage.json")
}

/// The records in `path`: empty when it does not exist; empty, with a warning naming the file
/// and the fault, when it cannot be read or parsed (then `false`: the file must be rewritten).
/// Temporary files a cut write left beside it are removed.
pub fn read(path: &Path) -> (BTreeMap<String, Record>, bool) {
    remove_leftovers(path);
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (BTreeMap::new(), true),
        Err(e) => {
            ignored(path, &format!("cannot read it: {e}"));
            return (BTreeMap::new(), false);
        }
    };
    match serde_json::from_slice::<UsageFile>(&bytes) {
        Ok(f) if f.format == FORMAT => (f.models, true),
        Ok(f) => {
            ignored(
                path,
                &format!("it has format {}, this caxtond reads {FORMAT}", f.format),
            );
            (BTreeMap::new(), false)
        }
        Err(e) => {
            ignored(path, &format!("it is not valid usage JSON: {e}"));
            (BTreeMap::new(), false)
        }
    }
}

/// Removes the `.usage-*` temporary files of writes a power cut interrupted (only this
/// process writes them, and it is not writing yet).
fn remove_leftovers(path: &Path) {
    let dir = path.parent().unwrap_or(Path::new("."));
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

fn ignored(path: &Path, why: &str) {
    tracing::warn!(
        caxton_event = "usage_state_ignored",
        caxton_file = %path.display(),
        "model usage in {} is ignored ({why}); use counts start from zero and the file is rewritten",
        path.display()
    );
}

/// Writes `models` to `path` atomically: readers see the old file or the new one, whole.
pub fn write(path: &Path, models: &BTreeMap<String, Record>) -> std::io::Result<()> {
    let body = serde_json::to_vec_pretty(&UsageFile {
        format: FORMAT,
        models: models.clone(),
    })
    .map_err(std::io::Error::other)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(TMP_PREFIX)
        .tempfile_in(dir)?;
    tmp.write_all(&body)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_a_write_and_a_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = path(dir.path());
        let mut models = BTreeMap::new();
        models.insert(
            "m".to_string(),
            Record {
                use_count: 7,
                last_use: Some(1_700_000_000),
                tokens: 91,
                dimensions: Some(384),
                reranker: false,
                sparse: false,
                multi_vector: false,
                habits: {
                    let mut h = super::super::habits::Habits::default();
                    h.record(472_222);
                    h
                },
            },
        );
        write(&p, &models).expect("write");
        assert_eq!(read(&p), (models.clone(), true));
        assert_eq!(
            models["m"].last_use_time(),
            UNIX_EPOCH.checked_add(Duration::from_secs(1_700_000_000))
        );
        // No temporary file is left beside it.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("usage.json")]);
    }

    #[test]
    fn a_missing_corrupt_or_foreign_file_reads_as_no_usage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = path(dir.path());
        // Missing: nothing to rewrite.
        assert_eq!(read(&p), (BTreeMap::new(), true));
        // Torn (a power cut), foreign or of another format: empty, and to be rewritten.
        std::fs::write(&p, b"{\"format\": 1, \"models\": {\"m\": {\"use_count\": ").expect("w");
        assert_eq!(read(&p), (BTreeMap::new(), false));
        std::fs::write(&p, b"{\"format\": 2, \"models\": {}}").expect("w");
        assert_eq!(read(&p), (BTreeMap::new(), false));
        std::fs::write(&p, b"[]").expect("w");
        assert_eq!(read(&p), (BTreeMap::new(), false));
    }

    #[test]
    fn temporary_files_of_cut_writes_are_removed_when_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = path(dir.path());
        std::fs::write(dir.path().join(".usage-a1b2c3"), b"{\"format\"").expect("w");
        std::fs::write(dir.path().join("other"), b"kept").expect("w");
        read(&p);
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        names.sort();
        assert_eq!(names, vec![std::ffi::OsString::from("other")]);
    }
}
