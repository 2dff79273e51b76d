//! The configuration exactly as written: serde types with defaults, unknown keys refused.
//!
//! Nothing here is trusted; [`RawConfig::validate`](super::RawConfig::validate) turns it into runtime
//! types. Defaults describe this machine's services and the sim provider on loopback, so every
//! command works with no file at all.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::routing::catalog::raw::{
    default_capabilities, default_provider_timeout_ms, default_quality_tier, default_region,
};
pub use crate::routing::catalog::raw::{
    default_provider_max_response_bytes, RawAbArm, RawModel, RawPolicy, RawProvider, RawShadow,
};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    pub database: RawDatabase,
    pub queue: RawQueue,
    pub worker: RawWorker,
    pub api: RawApi,
    pub webhooks: RawWebhooks,
    pub retry: RawRetry,
    pub spend: RawSpend,
    pub scheduler: RawScheduler,
    pub retrieval: RawRetrieval,
    pub telemetry: RawTelemetry,
    pub providers: Vec<RawProvider>,
    pub models: Vec<RawModel>,
    pub policies: BTreeMap<String, RawPolicy>,
    pub plans: BTreeMap<String, crate::tenants::plans::RawPlan>,
    pub secrets: RawSecrets,
    pub retention: RawRetention,
    pub redaction: crate::redaction::RawRedaction,
    pub cache: crate::cache::RawCache,
    /// What one render of a saved prompt template may use.
    pub prompts: crate::prompts::render::Limits,
}

/// How long tenant content is kept: a finished job's input, result and webhook payloads are
/// purged after `jobs_days` (0: kept for ever); the ledger and aggregates are kept.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRetention {
    pub jobs_days: u32,
    /// What `ragq tenant delete` does with the tenant's ledger rows: `anonymize` or `keep`.
    pub erased_ledger: String,
}

impl Default for RawRetention {
    fn default() -> Self {
        Self {
            jobs_days: 30,
            erased_ledger: "anonymize".into(),
        }
    }
}

/// Where the key sealing secrets at rest comes from (never the key itself): an environment
/// variable or a file holding 32 bytes in base64; and files of retired keys that still open
/// values sealed before a key change.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSecrets {
    pub key_env: Option<String>,
    pub key_file: Option<String>,
    pub retired_key_files: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawDatabase {
    pub url: String,
    pub max_connections: u32,
    pub migrate_on_start: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawQueue {
    pub url: String,
    pub prefetch: u16,
    pub intake_prefetch: u16,
    pub delivery_limit: u32,
    pub max_message_bytes: usize,
    pub retry_delays_ms: Vec<u64>,
    pub trusted_publishers: Vec<String>,
    pub dead_letter_ttl_days: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawWorker {
    pub max_attempts: u32,
    pub shutdown_grace_ms: u64,
    pub commit_batch_max: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawApi {
    pub listen: String,
    pub max_body_bytes: usize,
    /// The environment variable holding the dashboard's operator key (all tenants); unset: the
    /// dashboard has tenant views only.
    pub operator_key_env: Option<String>,
    pub dashboard_cookie_secure: bool,
    /// Requests per second per API key (a burst of one second's worth); 0: unlimited.
    pub rate_limit_per_s: u32,
    /// A request running longer gets 503.
    pub request_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawWebhooks {
    pub timeout_ms: u64,
    pub max_attempts: u32,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    pub concurrency: usize,
    pub claim_lease_ms: u64,
    pub poll_interval_ms: u64,
    /// Address ranges tenants' URLs may reach although they are not public (`127.0.0.0/8`).
    pub allow_private: Vec<String>,
    /// Refuse plain http URLs.
    pub https_only: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRetry {
    pub initial_interval_ms: u64,
    pub max_interval_ms: u64,
    pub max_elapsed_ms: u64,
    /// The longest a call waits in-process for its slot under a model's rate limit; a later slot
    /// sends the call to the next candidate, or the job back to the queue with that delay.
    pub pace_max_wait_ms: u64,
    pub multiplier: f64,
    pub randomization_factor: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSpend {
    pub default_max_output_tokens: u32,
    pub reservation_ttl_ms: u64,
    pub ledger_retention_months: u32,
    pub maintenance_interval_ms: u64,
    pub bill_byok: bool,
}

/// Metrics: where workers and schedulers serve `/metrics` (off when unset; the api serves it on
/// its own port), and how many tenants and features keep their own label values.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTelemetry {
    pub metrics_listen: Option<String>,
    /// OTLP/HTTP base URL traces are sent to (`/v1/traces` is added); the standard
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` works too.
    pub otlp_endpoint: Option<String>,
    pub max_tenant_labels: usize,
    pub max_feature_labels: usize,
}

impl Default for RawTelemetry {
    fn default() -> Self {
        let limits = crate::telemetry::metrics::LabelLimits::default();
        Self {
            metrics_listen: None,
            otlp_endpoint: None,
            max_tenant_labels: limits.tenants,
            max_feature_labels: limits.features,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawScheduler {
    pub tick_ms: u64,
    pub lease_ttl_ms: u64,
    /// The shortest gap a pipeline's cron may leave between two slots.
    pub min_cron_interval_s: u64,
    pub max_pipelines_per_tenant: u32,
}

/// Retrieval: the vector store, the embedding model, chunking, and `rag.answer` prompts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRetrieval {
    /// `embedded` (qdrant-edge under `path`) or `qdrant` (a server at `qdrant_url`).
    pub store: String,
    pub path: String,
    pub qdrant_url: String,
    /// Environment variable holding the Qdrant API key, if the server wants one.
    pub qdrant_api_key_env: Option<String>,
    /// HNSW beam width at search time (recall against speed).
    pub hnsw_ef: usize,
    /// The catalog model (capability `embeddings`) every collection is embedded with; when unset,
    /// the catalog's first embeddings model, and with none, retrieval jobs fail saying so.
    pub embedding_model: Option<String>,
    /// Texts per embeddings call.
    pub embed_batch: usize,
    pub chunk_tokens: usize,
    pub chunk_overlap_tokens: usize,
    pub max_document_bytes: usize,
    pub max_documents_per_job: usize,
    pub default_top_k: usize,
    pub max_top_k: usize,
    /// `max_tokens` of a `rag.answer` call when the job sets none.
    pub answer_max_tokens: u32,
    /// Prompt templates by name; `user` must contain `{context}` and `{question}`.
    pub templates: BTreeMap<String, RawTemplate>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTemplate {
    pub system: String,
    pub user: String,
}

impl Default for RawRetrieval {
    fn default() -> Self {
        Self {
            store: "embedded".into(),
            path: "data/vectors".into(),
            qdrant_url: "http://127.0.0.1:6334".into(),
            qdrant_api_key_env: None,
            hnsw_ef: 128,
            embedding_model: None,
            embed_batch: 64,
            chunk_tokens: 256,
            chunk_overlap_tokens: 32,
            max_document_bytes: 512 * 1024,
            max_documents_per_job: 1_000,
            default_top_k: 5,
            max_top_k: 50,
            answer_max_tokens: 512,
            templates: BTreeMap::from([(
                "default".to_string(),
                RawTemplate {
                    system:
                        "Answer the question using only the numbered context passages. \
                             Cite passages as [n]. If the context does not hold the answer, say so."
                            .into(),
                    user: "Context:\n{context}\n\nQuestion: {question}".into(),
                },
            )]),
        }
    }
}

impl Default for RawScheduler {
    fn default() -> Self {
        Self {
            tick_ms: 1_000,
            lease_ttl_ms: 10_000,
            min_cron_interval_s: 60,
            max_pipelines_per_tenant: 100,
        }
    }
}

/// A provider endpoint. `api_key_env` / `api_key_file` name where the key lives, never the key.
impl Default for RawConfig {
    fn default() -> Self {
        Self {
            database: RawDatabase::default(),
            queue: RawQueue::default(),
            worker: RawWorker::default(),
            api: RawApi::default(),
            webhooks: RawWebhooks::default(),
            retry: RawRetry::default(),
            spend: RawSpend::default(),
            scheduler: RawScheduler::default(),
            retrieval: RawRetrieval::default(),
            telemetry: RawTelemetry::default(),
            secrets: RawSecrets::default(),
            retention: RawRetention::default(),
            redaction: Default::default(),
            prompts: Default::default(),
            cache: Default::default(),
            providers: vec![RawProvider {
                name: "sim".into(),
                kind: "openai".into(),
                base_url: "http://127.0.0.1:8089/v1".into(),
                api_key_env: None,
                api_key_file: None,
                timeout_ms: default_provider_timeout_ms(),
                max_response_bytes: default_provider_max_response_bytes(),
            }],
            models: vec![
                sim_model("sim-small", 150_000, 600_000, 16_384),
                sim_model("sim-large", 2_500_000, 10_000_000, 128_000),
                RawModel {
                    capabilities: vec!["embeddings".into()],
                    dimensions: Some(256),
                    output_price_micros_per_mtok: 0,
                    ..sim_model("sim-embed", 20_000, 0, 8_191)
                },
            ],
            policies: BTreeMap::from([
                (
                    "cost-optimized".to_string(),
                    RawPolicy::ordered(&["sim-small", "sim-large"]),
                ),
                (
                    "reliable".to_string(),
                    RawPolicy::ordered(&["sim-large", "sim-small"]),
                ),
            ]),
            plans: BTreeMap::new(),
        }
    }
}

fn sim_model(name: &str, input: u64, output: u64, context_window: u32) -> RawModel {
    RawModel {
        name: name.into(),
        provider: "sim".into(),
        model_id: name.into(),
        input_price_micros_per_mtok: input,
        output_price_micros_per_mtok: output,
        context_window,
        quality_tier: default_quality_tier(),
        region: default_region(),
        capabilities: default_capabilities(),
        dimensions: None,
        rpm: None,
        tpm: None,
    }
}

impl Default for RawDatabase {
    fn default() -> Self {
        Self {
            url: "postgres://postgres@127.0.0.1:5432/ragq".into(),
            max_connections: 16,
            migrate_on_start: true,
        }
    }
}

impl Default for RawQueue {
    fn default() -> Self {
        Self {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            prefetch: 64,
            intake_prefetch: 512,
            delivery_limit: 10,
            max_message_bytes: 1 << 20,
            retry_delays_ms: vec![1_000, 5_000, 30_000, 120_000, 600_000],
            trusted_publishers: vec!["guest".into()],
            dead_letter_ttl_days: 14,
        }
    }
}

impl Default for RawWorker {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            shutdown_grace_ms: 30_000,
            commit_batch_max: 256,
        }
    }
}

impl Default for RawApi {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            max_body_bytes: 1 << 20,
            operator_key_env: None,
            dashboard_cookie_secure: false,
            rate_limit_per_s: 50,
            request_timeout_ms: 30_000,
        }
    }
}

impl Default for RawWebhooks {
    fn default() -> Self {
        Self {
            timeout_ms: 10_000,
            max_attempts: 8,
            initial_backoff_ms: 1_000,
            max_backoff_ms: 3_600_000,
            concurrency: 64,
            claim_lease_ms: 60_000,
            poll_interval_ms: 1_000,
            allow_private: Vec::new(),
            https_only: false,
        }
    }
}

impl Default for RawSpend {
    fn default() -> Self {
        Self {
            default_max_output_tokens: 1024,
            reservation_ttl_ms: 900_000,
            ledger_retention_months: 0,
            maintenance_interval_ms: 30_000,
            bill_byok: false,
        }
    }
}

impl Default for RawRetry {
    fn default() -> Self {
        Self {
            initial_interval_ms: 200,
            max_interval_ms: 5_000,
            max_elapsed_ms: 30_000,
            pace_max_wait_ms: 30_000,
            multiplier: 2.0,
            randomization_factor: 0.5,
        }
    }
}
