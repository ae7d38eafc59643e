//! Prometheus metrics (`GET /metrics`): one process-wide registry, since the engine threads,
//! the registry and the HTTP layer all record into it.

use std::sync::OnceLock;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Label set for per-model metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabel {
    /// Model id.
    pub model: String,
}

/// Label set for requests.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Route template, e.g. `/v1/embeddings`.
    pub endpoint: String,
    /// HTTP status code.
    pub status: u16,
}

/// Label set for package rejections.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// The rejection's `reason_code`.
    pub reason: String,
}

/// Every metric Caxton exports.
pub struct Metrics {
    registry: Registry,
    /// `caxton_requests_total{endpoint,status}`.
    pub requests: Family<RequestLabels, Counter>,
    /// `caxton_embedded_texts_total`.
    pub texts: Counter,
    /// `caxton_batches_total`: forward passes run.
    pub batches: Counter,
    /// `caxton_model_load_time_seconds{model}`: duration of the last load.
    pub load_time: Family<ModelLabel, Gauge<f64, AtomicU64>>,
    /// `caxton_model_memory_usage_bytes{model}`: weights held in memory (0 when unloaded).
    pub memory: Family<ModelLabel, Gauge>,
    /// `caxton_model_validation_failures_total{reason}`: packages rejected.
    pub validation_failures: Family<ReasonLabel, Counter>,
    /// `caxton_models_unloaded_total{model}`.
    pub unloads: Family<ModelLabel, Counter>,
    /// `caxton_model_loads_total{model}`: loads finished (a bound on thrashing to watch).
    pub loads: Family<ModelLabel, Counter>,
    /// `caxton_load_queue_waiting`: requests waiting for their model to load.
    pub queue_waiting: Gauge,
    /// `caxton_models_shed_total{model}`: unloads to free memory (pressure or room).
    pub sheds: Family<ModelLabel, Counter>,
    /// `caxton_model_loads_refused_total`: loads refused for lack of memory.
    pub admission_refusals: Counter,
    /// `caxton_memory_budget_bytes`.
    pub budget: Gauge,
    /// `caxton_memory_pressure_level`: 0 normal, 1 pressure, 2 critical.
    pub pressure_level: Gauge,
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            requests: Family::default(),
            texts: Counter::default(),
            batches: Counter::default(),
            load_time: Family::default(),
            memory: Family::default(),
            validation_failures: Family::default(),
            unloads: Family::default(),
            loads: Family::default(),
            queue_waiting: Gauge::default(),
            sheds: Family::default(),
            admission_refusals: Counter::default(),
            budget: Gauge::default(),
            pressure_level: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "caxton_requests",
            "HTTP requests by endpoint and status",
            m.requests.clone(),
        );
        registry.register("caxton_embedded_texts", "Texts embedded", m.texts.clone());
        registry.register("caxton_batches", "Forward passes run", m.batches.clone());
        registry.register(
            "caxton_model_load_time_seconds",
            "Duration of the model's last load",
            m.load_time.clone(),
        );
        registry.register(
            "caxton_model_memory_usage_bytes",
            "Bytes of weights the model holds in memory",
            m.memory.clone(),
        );
        registry.register(
            "caxton_model_validation_failures",
            "Packages rejected, by reason",
            m.validation_failures.clone(),
        );
        registry.register("caxton_models_unloaded", "Model unloads", m.unloads.clone());
        registry.register(
            "caxton_model_loads",
            "Model loads finished",
            m.loads.clone(),
        );
        registry.register(
            "caxton_load_queue_waiting",
            "Requests waiting for their model to load",
            m.queue_waiting.clone(),
        );
        registry.register(
            "caxton_models_shed",
            "Models unloaded to free memory (pressure, or room for another model)",
            m.sheds.clone(),
        );
        registry.register(
            "caxton_model_loads_refused",
            "Model loads refused because memory did not allow them",
            m.admission_refusals.clone(),
        );
        registry.register(
            "caxton_memory_budget_bytes",
            "Bytes the loaded models may hold together",
            m.budget.clone(),
        );
        registry.register(
            "caxton_memory_pressure_level",
            "Last pressure reading: 0 normal, 1 pressure, 2 critical",
            m.pressure_level.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// Per-model label.
    pub fn model(id: &str) -> ModelLabel {
        ModelLabel {
            model: id.to_string(),
        }
    }
}

/// The process-wide metrics.
pub fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}
