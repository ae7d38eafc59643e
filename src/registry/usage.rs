//! Usage kept across restarts: what was read from `state_dir` at start, what is remembered of
//! models whose package is gone meanwhile (given back when it returns), and the file it is
//! written to when it changes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use super::usage_file::{self, Record};

/// Where usage is kept, and what was last written there (`None`: the file was damaged and
/// must be rewritten even if nothing changed).
type Written = (PathBuf, Option<BTreeMap<String, Record>>);

/// The usage of models not in the registry now, and the file all usage is kept in.
#[derive(Default)]
pub(super) struct UsageKeeper {
    /// Usage read at start, and of models whose package is gone: a model's slot takes its
    /// record when its package appears; the file keeps it until then.
    remembered: Mutex<BTreeMap<String, Record>>,
    /// Set by [`UsageKeeper::restore`].
    file: Mutex<Option<Written>>,
}

impl UsageKeeper {
    /// Reads the usage kept under `state_dir` and keeps it there from now on.
    pub(super) fn restore(&self, state_dir: &Path) {
        let path = usage_file::path(state_dir);
        let (records, sound) = usage_file::read(&path);
        if !records.is_empty() {
            tracing::info!(
                caxton_event = "usage_restored",
                "usage of {} models restored from {}",
                records.len(),
                path.display()
            );
        }
        *self.remembered() = records.clone();
        // A damaged file is rewritten at the next save even when nothing changed.
        let written = sound.then_some(records);
        *self.file.lock().unwrap_or_else(|p| p.into_inner()) = Some((path, written));
    }

    /// What is remembered of models not in the registry (to take from, or add to).
    pub(super) fn remembered(&self) -> MutexGuard<'_, BTreeMap<String, Record>> {
        self.remembered.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes `records` when they changed since the last write; a failure is logged (with the
    /// file and the reason) and tried again at the next call.
    pub(super) fn save(&self, records: BTreeMap<String, Record>) {
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let Some((path, written)) = file.as_mut() else {
            return;
        };
        if written.as_ref() == Some(&records) {
            return;
        }
        match usage_file::write(path, &records) {
            Ok(()) => *written = Some(records),
            Err(e) => tracing::warn!(
                caxton_event = "usage_state_unwritable",
                caxton_file = %path.display(),
                "cannot write model usage to {}: {e}; it is kept in memory and tried again",
                path.display()
            ),
        }
    }
}
