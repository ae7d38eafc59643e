//! The `store` section: how much disk the verified store (`state_dir/store`, the unpacked
//! packages) may keep beyond the models in use.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::units::ByteSize;

/// `store.*`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSettings {
    /// The most the store keeps: previous versions are dropped, oldest first, to stay within
    /// it; the version of each model that serves is always kept.
    pub max_size: StoreBound,
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            max_size: StoreBound::Auto,
        }
    }
}

/// `store.max_size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreBound {
    /// A quarter of the filesystem that holds `state_dir`.
    Auto,
    /// A fixed number of bytes.
    Bytes(ByteSize),
}

/// The share of its filesystem `store.max_size: auto` gives the store.
pub const AUTO_SHARE: u64 = 4;

impl StoreBound {
    /// The bound in bytes, given the size of the filesystem that holds the store.
    pub fn bytes(self, filesystem_bytes: u64) -> u64 {
        match self {
            StoreBound::Auto => filesystem_bytes / AUTO_SHARE,
            StoreBound::Bytes(b) => b.0,
        }
    }
}

impl fmt::Display for StoreBound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreBound::Auto => f.write_str("auto"),
            StoreBound::Bytes(b) => b.fmt(f),
        }
    }
}

impl Serialize for StoreBound {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for StoreBound {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        super::units::auto_or_size(d, "for a quarter of the filesystem")
            .map(|size| size.map_or(StoreBound::Auto, StoreBound::Bytes))
    }
}
