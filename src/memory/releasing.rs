//! Memory on its way back: models unloaded whose engine thread has not freed them yet
//! (in-flight requests still hold them), counted as held until their signal turns true.

use std::sync::{Mutex, MutexGuard};

/// An unloaded model whose memory is on its way back.
struct Model {
    id: String,
    bytes: u64,
    freed: tokio::sync::watch::Receiver<bool>,
}

/// The unloaded models whose memory is not back yet; one per daemon, in the governor.
#[derive(Default)]
pub struct Releasing(Mutex<Vec<Model>>);

impl Releasing {
    fn pending(&self) -> MutexGuard<'_, Vec<Model>> {
        let mut r = self.0.lock().unwrap_or_else(|p| p.into_inner());
        r.retain(|m| !*m.freed.borrow());
        r
    }

    /// Records an unloaded model whose memory comes back when `freed` turns true.
    pub fn add(&self, id: &str, bytes: u64, freed: tokio::sync::watch::Receiver<bool>) {
        self.pending().push(Model {
            id: id.to_string(),
            bytes,
            freed,
        });
    }

    /// Bytes of unloaded models not back yet.
    pub fn bytes(&self) -> u64 {
        self.pending().iter().map(|m| m.bytes).sum()
    }

    /// The unloaded models whose memory is not back yet, with their bytes.
    pub fn models(&self) -> Vec<(String, u64)> {
        self.pending()
            .iter()
            .map(|m| (m.id.clone(), m.bytes))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unloaded_memory_counts_until_its_engine_has_freed_it() {
        let r = Releasing::default();
        let (tx, rx) = tokio::sync::watch::channel(false);
        r.add("m-1", 96 << 20, rx);
        assert_eq!(r.bytes(), 96 << 20);
        assert_eq!(r.models(), [("m-1".to_string(), 96 << 20)]);
        tx.send(true).expect("send");
        assert_eq!(r.bytes(), 0);
        assert!(r.models().is_empty());
    }
}
