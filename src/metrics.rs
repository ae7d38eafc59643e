//! Prometheus metrics (`GET /metrics`): one process-wide registry, since the engine threads,
//! the registry and the HTTP layer all record into it.

use std::sync::OnceLock;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
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

/// Label set for request durations: the route and the model that served (empty when none).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointModelLabels {
    /// Route template, e.g. `/v1/embeddings`.
    pub endpoint: String,
    /// Model id, or empty for requests no model served.
    pub model: String,
}

/// Label set for per-model failures.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelReasonLabels {
    /// Model id.
    pub model: String,
    /// The failure's stable code (`unusable_model`, `self_test_failed`, ...).
    pub reason: String,
}

/// Label set for substituted requests.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FallbackLabels {
    /// The model the request asked for.
    pub requested: String,
    /// The model that answered.
    pub served: String,
    /// Why the requested one did not (`missing`, `failed`, `insufficient_memory`,
    /// `memory_pressure`).
    pub reason: String,
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
    /// `caxton_request_duration_seconds{endpoint,model}`.
    pub request_duration: Family<EndpointModelLabels, Histogram, fn() -> Histogram>,
    /// `caxton_embedded_texts_total{model}`.
    pub texts: Family<ModelLabel, Counter>,
    /// `caxton_embedded_tokens_total{model}`: tokens the model saw, special tokens included.
    pub tokens: Family<ModelLabel, Counter>,
    /// `caxton_batch_size{model}`: texts per forward pass.
    pub batch_size: Family<ModelLabel, Histogram, fn() -> Histogram>,
    /// `caxton_engine_queue_depth{model}`: jobs waiting for the model's engine thread.
    pub engine_queue: Family<ModelLabel, Gauge>,
    /// `caxton_batches_total`: forward passes run.
    pub batches: Counter,
    /// `caxton_model_load_time_seconds{model}`: duration of the last load.
    pub load_time: Family<ModelLabel, Gauge<f64, AtomicU64>>,
    /// `caxton_model_load_duration_seconds{model}`: every load's duration.
    pub load_duration: Family<ModelLabel, Histogram, fn() -> Histogram>,
    /// `caxton_model_load_failures_total{model,reason}`.
    pub load_failures: Family<ModelReasonLabels, Counter>,
    /// `caxton_model_cache_size_bytes`: bytes of the verified store on disk.
    pub store_bytes: Gauge,
    /// `caxton_model_cache_entries`: packages unpacked in the verified store.
    pub store_entries: Gauge,
    /// `caxton_model_cache_max_bytes`: `store.max_size` in force.
    pub store_bound: Gauge,
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
    /// `caxton_fallback_total{requested,served,reason}`: requests answered by an alternative.
    pub fallbacks: Family<FallbackLabels, Counter>,
}

impl Metrics {
    fn new() -> Metrics {
        let m = Metrics {
            requests: Family::default(),
            request_duration: Family::new_with_constructor(request_buckets),
            texts: Family::default(),
            tokens: Family::default(),
            batch_size: Family::new_with_constructor(batch_buckets),
            engine_queue: Family::default(),
            load_duration: Family::new_with_constructor(load_buckets),
            load_failures: Family::default(),
            store_bytes: Gauge::default(),
            store_entries: Gauge::default(),
            store_bound: Gauge::default(),
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
            fallbacks: Family::default(),
            registry: Registry::default(),
        };
        let mut registry = Registry::default();
        m.register_requests(&mut registry);
        m.register_engine(&mut registry);
        m.register_models(&mut registry);
        m.register_memory(&mut registry);
        m.register_store(&mut registry);
        Metrics { registry, ..m }
    }

    /// What requests got: their answers, their durations, and substitutions.
    fn register_requests(&self, registry: &mut Registry) {
        registry.register(
            "caxton_fallback",
            "Requests answered by an alternative model (models.fallbacks), by the model asked for, the one that served and why",
            self.fallbacks.clone(),
        );
        registry.register(
            "caxton_requests",
            "HTTP requests by endpoint and status",
            self.requests.clone(),
        );
        registry.register(
            "caxton_request_duration_seconds",
            "Time from request to response, by route and the model that served",
            self.request_duration.clone(),
        );
    }

    /// What the engines did: texts, tokens, forward passes and their queues.
    fn register_engine(&self, registry: &mut Registry) {
        registry.register(
            "caxton_embedded_texts",
            "Texts embedded, by model",
            self.texts.clone(),
        );
        registry.register(
            "caxton_embedded_tokens",
            "Tokens embedded (special tokens included), by model",
            self.tokens.clone(),
        );
        registry.register(
            "caxton_batch_size",
            "Texts per forward pass, by model",
            self.batch_size.clone(),
        );
        registry.register(
            "caxton_engine_queue_depth",
            "Jobs waiting for the model's engine thread",
            self.engine_queue.clone(),
        );
        registry.register("caxton_batches", "Forward passes run", self.batches.clone());
    }

    /// Models coming and going: loads, their failures, unloads, and the packages refused.
    fn register_models(&self, registry: &mut Registry) {
        registry.register(
            "caxton_model_load_duration_seconds",
            "Duration of each model load (self-test included)",
            self.load_duration.clone(),
        );
        registry.register(
            "caxton_model_load_failures",
            "Model loads that failed, by model and reason",
            self.load_failures.clone(),
        );
        registry.register(
            "caxton_model_load_time_seconds",
            "Duration of the model's last load",
            self.load_time.clone(),
        );
        registry.register(
            "caxton_model_validation_failures",
            "Packages rejected, by reason",
            self.validation_failures.clone(),
        );
        registry.register(
            "caxton_models_unloaded",
            "Model unloads",
            self.unloads.clone(),
        );
        registry.register(
            "caxton_model_loads",
            "Model loads finished",
            self.loads.clone(),
        );
        registry.register(
            "caxton_load_queue_waiting",
            "Requests waiting for their model to load",
            self.queue_waiting.clone(),
        );
    }

    /// Memory: what models hold, the budget, pressure, and what was shed or refused for it.
    fn register_memory(&self, registry: &mut Registry) {
        registry.register(
            "caxton_model_memory_usage_bytes",
            "Bytes of weights the model holds in memory",
            self.memory.clone(),
        );
        registry.register(
            "caxton_models_shed",
            "Models unloaded to free memory (pressure, or room for another model)",
            self.sheds.clone(),
        );
        registry.register(
            "caxton_model_loads_refused",
            "Model loads refused because memory did not allow them",
            self.admission_refusals.clone(),
        );
        registry.register(
            "caxton_memory_budget_bytes",
            "Bytes the loaded models may hold together",
            self.budget.clone(),
        );
        registry.register(
            "caxton_memory_pressure_level",
            "Last pressure reading: 0 normal, 1 pressure, 2 critical",
            self.pressure_level.clone(),
        );
    }

    /// The verified store on disk.
    fn register_store(&self, registry: &mut Registry) {
        registry.register(
            "caxton_model_cache_size_bytes",
            "Bytes of the verified store (unpacked packages) on disk",
            self.store_bytes.clone(),
        );
        registry.register(
            "caxton_model_cache_entries",
            "Packages unpacked in the verified store",
            self.store_entries.clone(),
        );
        registry.register(
            "caxton_model_cache_max_bytes",
            "The bound on the verified store (store.max_size)",
            self.store_bound.clone(),
        );
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

/// Request durations: 1 ms (one short text) to 30 s (a full batch on a slow board).
fn request_buckets() -> Histogram {
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ])
}

/// Texts per forward pass: powers of two up to the largest `limits.max_texts` one sets.
fn batch_buckets() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        1.0, 2.0, 10,
    ))
}

/// Load durations: 50 ms (a small int8 model) to 2 min (a large one on a slow board).
fn load_buckets() -> Histogram {
    Histogram::new([0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0])
}

/// The process-wide metrics.
pub fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}
