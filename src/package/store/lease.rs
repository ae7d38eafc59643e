//! Leases on store entries. A model slot holds one on the entry it loads from, for as long as
//! anything holds the slot, so pruning ([`Store::retain`]) never takes an entry away from a
//! load reading it: an hour of the soak had a load answered 503 ("cannot open
//! …/store/<hash>/config.json") when a rescan pruned a superseded version under it (issue 50).
//! An entry pruned while leased stays until its last lease ends, and goes then.
//!
//! Leases are counted per entry directory in one table for the process (stores are opened
//! anew by each scan, the slots outlive them). Taking a lease and pruning an entry both hold
//! the table's lock while they look at the entry, so a lease is either taken on an entry that
//! stays, or refused because the entry is already gone.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex, MutexGuard};

use super::super::manifest::MANIFEST_NAME;
use super::{Store, finish_removal, hide_entry};

/// An entry's leases, and whether a prune wanted it gone meanwhile.
#[derive(Debug, Default)]
struct Held {
    count: usize,
    doomed: bool,
}

static LEASES: LazyLock<Mutex<HashMap<PathBuf, Held>>> = LazyLock::new(Mutex::default);

fn table() -> MutexGuard<'static, HashMap<PathBuf, Held>> {
    LEASES.lock().unwrap_or_else(|p| p.into_inner())
}

/// A hold on one store entry: while it lives, [`Store::retain`] leaves the entry in place.
#[derive(Debug)]
pub struct Lease {
    dir: PathBuf,
}

impl Lease {
    /// A lease on the entry `dir`, or `None` when it is not in the store (never unpacked, or
    /// already pruned).
    pub(super) fn take(dir: &Path) -> Option<Lease> {
        let mut leases = table();
        if !dir.join(MANIFEST_NAME).is_file() {
            return None;
        }
        leases.entry(dir.to_path_buf()).or_default().count += 1;
        Some(Lease {
            dir: dir.to_path_buf(),
        })
    }
}

/// The store keeps the entry `dir` (again): a lease on it no longer removes it when it ends
/// (its package came back while it was doomed).
pub(super) fn keep(dir: &Path) {
    if let Some(held) = table().get_mut(dir) {
        held.doomed = false;
    }
}

/// Prunes the entry `dir`, which the store no longer keeps: hidden at once (under the table's
/// lock, so no lease can be taken on it from then on), or, when a lease holds it, doomed: its
/// last lease removes it.
pub(super) fn prune(dir: &Path) -> Pruned {
    let mut leases = table();
    match leases.get_mut(dir) {
        Some(held) => {
            held.doomed = true;
            Pruned::Leased
        }
        None => Pruned::Hidden(hide_entry(dir)),
    }
}

/// What [`prune`] did.
pub(super) enum Pruned {
    /// A lease holds it: it goes when the last lease ends.
    Leased,
    /// Renamed out of the store (to this staging name, to be deleted), or the rename's error.
    Hidden(std::io::Result<PathBuf>),
}

impl Drop for Lease {
    fn drop(&mut self) {
        let hidden = {
            let mut leases = table();
            let Some(held) = leases.get_mut(&self.dir) else {
                return;
            };
            held.count -= 1;
            if held.count > 0 {
                return;
            }
            let doomed = leases.remove(&self.dir).is_some_and(|h| h.doomed);
            if !doomed {
                return;
            }
            hide_entry(&self.dir)
        };
        let dir = self.dir.clone();
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let finish = move || match hidden.and_then(|gone| finish_removal(&dir, &gone)) {
            Ok(()) => tracing::info!(
                caxton_event = "store_entry_removed",
                caxton_file = %dir.display(),
                "store entry {name} removed: no package version the daemon keeps refers to it, and the model that was loading from it is done with it"
            ),
            Err(e) => tracing::warn!(
                "cannot remove unused store entry {}: {e}; the next scan tries again",
                dir.display()
            ),
        };
        // The last holder may be a task on an async worker, which must not wait on the disk.
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(finish)),
            Err(_) => finish(),
        }
    }
}

impl Store {
    /// Leases held on this store's entries now (for its tests).
    #[cfg(test)]
    pub(super) fn leased(&self) -> usize {
        table().keys().filter(|d| d.starts_with(&self.root)).count()
    }
}
