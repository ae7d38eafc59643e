//! The benchmark's texts, the same on every run: 1,000 short texts (~19 tokens) sent 32 per
//! request sorted by length; 256 texts of 256 tokens sent 16 per request; single short texts
//! one at a time; the short texts again one per request from 64 clients at once.

use serde_json::json;

const WORDS: &[&str] = &[
    "the",
    "device",
    "sensor",
    "reports",
    "a",
    "temperature",
    "of",
    "degrees",
    "while",
    "battery",
    "level",
    "drops",
    "slowly",
    "during",
    "night",
    "shift",
    "operator",
    "checks",
    "valve",
    "pressure",
    "pump",
    "station",
    "north",
    "river",
    "water",
    "quality",
    "alarm",
    "was",
    "raised",
    "after",
    "maintenance",
    "window",
    "closed",
    "network",
    "offline",
    "local",
    "cache",
    "holds",
    "recent",
    "readings",
    "for",
    "analysis",
    "model",
    "predicts",
];

/// Texts per request of the short workload.
pub const SHORT_BATCH: usize = 32;
/// Texts per request of the long workload.
pub const LONG_BATCH: usize = 16;
/// Concurrent one-text clients.
pub const CLIENTS: usize = 64;

/// Deterministic pseudo-random words (xorshift), so every run embeds the same texts.
fn text(seed: u64, words: usize) -> String {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..words)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            WORDS[(x % WORDS.len() as u64) as usize]
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The three workloads' texts.
pub struct Workload {
    /// Sorted by length, as a client batching a backlog would send them.
    pub short: Vec<String>,
    /// 400 words each, cut at the model's 256 tokens.
    pub long: Vec<String>,
    pub single: Vec<String>,
}

impl Workload {
    /// The full workloads, or with `quick` smaller ones (320 short texts, 32 long, 50 single).
    pub fn new(quick: bool) -> Workload {
        let (n_short, n_long, n_single) = if quick {
            (320, 32, 50)
        } else {
            (1000, 256, 300)
        };
        let mut short: Vec<String> = (0..n_short)
            .map(|i| text(i, 10 + (i as usize % 12)))
            .collect();
        short.sort_by_key(String::len);
        Workload {
            short,
            long: (0..n_long).map(|i| text(10_000 + i, 400)).collect(),
            single: (0..n_single).map(|i| text(50_000 + i, 12)).collect(),
        }
    }

    /// The texts as a peer reads them (`--texts FILE`).
    pub fn texts_json(&self) -> serde_json::Value {
        json!({
            "short": self.short, "short_batch": SHORT_BATCH,
            "long": self.long, "long_batch": LONG_BATCH,
            "single": self.single, "concurrent_clients": CLIENTS,
        })
    }

    /// A few texts whose vectors a peer checks its own against: a single one, the longest
    /// short one, a long one (cut).
    pub fn check_texts(&self) -> [String; 3] {
        [
            self.single[0].clone(),
            self.short[self.short.len() - 1].clone(),
            self.long[0].clone(),
        ]
    }
}
