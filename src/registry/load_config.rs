//! How models load and rank, as the configuration in force says: the engine's options and
//! batch limits, each model's precision (`models.precision`), and the default model (shed
//! last among those of its priority).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use crate::engine::{BatchLimits, EngineOptions, Precision};

/// The load settings every model's slot reads when it loads.
pub(super) struct LoadConfig {
    pub(super) options: EngineOptions,
    /// Shared with loaded engines, so a change reaches them without a reload of the model.
    pub(super) batch: Arc<RwLock<BatchLimits>>,
    precision: RwLock<BTreeMap<String, Precision>>,
    default: RwLock<String>,
}

impl LoadConfig {
    pub(super) fn new(options: EngineOptions) -> LoadConfig {
        LoadConfig {
            batch: Arc::new(RwLock::new(options.batch)),
            options,
            precision: RwLock::new(BTreeMap::new()),
            default: RwLock::new(String::new()),
        }
    }

    pub(super) fn set_batch_limits(&self, limits: BatchLimits) {
        *self.batch.write().unwrap_or_else(|p| p.into_inner()) = limits;
    }

    pub(super) fn set_precision(&self, precision: BTreeMap<String, Precision>) {
        *self.precision.write().unwrap_or_else(|p| p.into_inner()) = precision;
    }

    /// The configured precision of `id` (f32 when absent).
    pub(super) fn precision_of(&self, id: &str) -> Precision {
        self.precision
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .copied()
            .unwrap_or_default()
    }

    pub(super) fn set_default(&self, id: &str) {
        *self.default.write().unwrap_or_else(|p| p.into_inner()) = id.to_string();
    }

    /// `models.default`.
    pub(super) fn default(&self) -> String {
        self.default
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}
