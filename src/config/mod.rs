//! One typed configuration tree for every ragq process.
//!
//! Read from an optional TOML file and `RAGQ_`-prefixed environment variables (`__` separates levels:
//! `RAGQ_QUEUE__PREFETCH=128`), with unknown keys refused. The raw tree ([`raw`]) is then validated into
//! the runtime [`Config`], reporting every problem at once with the key that holds it. Secrets are never
//! written in the file: providers name the environment variable or file that holds their key.

mod load;
pub mod raw;

use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Toml};
use figment::Figment;

use crate::routing::catalog::{Catalog, CatalogError};
use crate::secret::Secret;
use crate::webhooks::url_policy::UrlPolicy;

pub use crate::api::ApiConfig;
pub use crate::db::DatabaseConfig;
pub use crate::queue::QueueConfig;
pub use crate::routing::RetryConfig;
pub use crate::spend::SpendConfig;
pub use crate::webhooks::WebhookConfig;
pub use raw::RawConfig;

/// Why the configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not a `#[source]`: the message already holds the cause, and a chain would print it twice.
    #[error("cannot read configuration file {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("cannot read configuration: {0}")]
    Parse(Box<figment::Error>),
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

/// Validated configuration, ready to wire processes from.
#[derive(Debug, Clone)]
pub struct Config {
    pub database: DatabaseConfig,
    pub queue: QueueConfig,
    pub worker: WorkerConfig,
    pub api: ApiConfig,
    pub webhooks: WebhookConfig,
    pub retry: RetryConfig,
    pub spend: SpendConfig,
    pub scheduler: crate::scheduler::SchedulerConfig,
    pub retrieval: crate::retrieval::RetrievalConfig,
    pub telemetry: TelemetryConfig,
    pub catalog: Catalog,
    pub plans: crate::tenants::plans::Plans,
    /// Seals webhook secrets and tenants' provider keys at rest.
    pub secrets: crate::keyring::Keyring,
    pub retention: RetentionConfig,
    /// PII redaction policies and where they apply.
    pub redaction: crate::redaction::RedactionConfig,
    /// The response cache: its defaults, bounds, and the policies' and plans' settings.
    pub cache: crate::cache::CacheConfig,
    /// What one render of a saved prompt template may use.
    pub prompts: crate::prompts::render::Limits,
}

/// The validated parts `into_config` assembles beside the catalog, retrieval and plans.
type ConfigParts = (
    Option<Secret>,
    UrlPolicy,
    crate::keyring::Keyring,
    crate::redaction::RedactionConfig,
    crate::cache::CacheConfig,
);

#[derive(Debug, Clone, Copy)]
pub struct RetentionConfig {
    /// Finished jobs' content is purged this long after they finish; none: kept for ever.
    pub jobs: Option<Duration>,
    /// `ragq tenant delete` keeps the tenant's ledger rows as they are (else anonymizes them).
    pub keep_erased_ledger: bool,
}

#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// Where a worker or scheduler serves `/metrics`; none: it does not.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Where traces go (OTLP/HTTP base URL); none: the standard environment variables decide.
    pub otlp_endpoint: Option<String>,
    pub labels: crate::telemetry::metrics::LabelLimits,
}

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub max_attempts: u32,
    pub shutdown_grace: Duration,
    pub commit_batch_max: usize,
}

impl Config {
    /// Loads the file (if any) and the environment, then validates.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let text = match path {
            Some(path) => Some(
                std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                })?,
            ),
            None => None,
        };
        let figment = Figment::new()
            .merge(Toml::string(text.as_deref().unwrap_or_default()))
            .merge(Env::prefixed("RAGQ_").split("__"));
        Self::from_figment(figment, text.as_deref())
    }

    /// Parses TOML text (no environment); used by tests and the demo.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Self::from_figment(Figment::new().merge(Toml::string(text)), Some(text))
    }

    fn from_figment(figment: Figment, text: Option<&str>) -> Result<Self, ConfigError> {
        let tree: serde_json::Value = figment
            .extract()
            .map_err(|e| ConfigError::Parse(Box::new(e)))?;
        load::raw_config(tree, text)?.validate()
    }
}

impl RawConfig {
    /// Turns the raw tree into runtime settings, collecting every problem.
    pub fn validate(self) -> Result<Config, ConfigError> {
        let mut problems: Vec<String> = self
            .limits()
            .iter()
            .filter(|(ok, _)| !ok)
            .map(|(_, m)| m.to_string())
            .collect();
        let catalog = match Catalog::from_raw(&self.providers, &self.models, &self.policies) {
            Ok(c) => Some(c),
            Err(CatalogError(list)) => {
                problems.extend(list);
                None
            }
        };
        if let Some(listen) = &self.telemetry.metrics_listen {
            if listen.parse::<std::net::SocketAddr>().is_err() {
                problems.push(format!(
                    "telemetry.metrics_listen: `{listen}` is not an address and port like 127.0.0.1:9464"
                ));
            }
        }
        let retrieval = match &catalog {
            Some(catalog) => retrieval_config(&self.retrieval, catalog, &mut problems),
            None => None,
        };
        let plans = crate::tenants::plans::Plans::from_raw(
            &self.plans,
            |p| self.policies.contains_key(p),
            &mut problems,
        );
        let cache = cache_config(&self, catalog.as_ref(), retrieval.as_ref(), &mut problems);
        let operator_key = operator_key(self.api.operator_key_env.as_deref(), &mut problems);
        let secrets = keyring(&self.secrets, &mut problems);
        let redaction = crate::redaction::RedactionConfig::from_raw(&self.redaction, &mut problems);
        if !matches!(self.retention.erased_ledger.as_str(), "anonymize" | "keep") {
            problems.push(format!(
                "retention.erased_ledger: `anonymize` or `keep`, not `{}`",
                self.retention.erased_ledger
            ));
        }
        let url_policy = match UrlPolicy::parse_ranges(&self.webhooks.allow_private) {
            Ok(ranges) => UrlPolicy::new(ranges, self.webhooks.https_only),
            Err(e) => {
                problems.push(format!("webhooks.allow_private: {e}"));
                UrlPolicy::default()
            }
        };
        match (catalog, retrieval) {
            (Some(catalog), Some(retrieval)) if problems.is_empty() => {
                let parts = (operator_key, url_policy, secrets, redaction, cache);
                Ok(self.into_config(catalog, retrieval, plans, parts))
            }
            _ => Err(ConfigError::Invalid(problems)),
        }
    }

    /// The rules on single settings outside the catalog and retrieval: (holds, what breaks it).
    /// Long because it is a table, one rule per entry.
    fn limits(&self) -> [(bool, &'static str); 26] {
        let (q, w, h, r, sp, sc) = (
            &self.queue,
            &self.worker,
            &self.webhooks,
            &self.retry,
            &self.spend,
            &self.scheduler,
        );
        let delays = &q.retry_delays_ms;
        [
            (q.prefetch >= 1, "queue.prefetch must be at least 1"),
            (
                q.intake_prefetch >= 1,
                "queue.intake_prefetch must be at least 1",
            ),
            (
                q.delivery_limit >= 1,
                "queue.delivery_limit must be at least 1",
            ),
            (
                q.max_message_bytes >= 1024,
                "queue.max_message_bytes must be at least 1024",
            ),
            (
                !delays.is_empty() && delays.windows(2).all(|w| w[0] < w[1]),
                "queue.retry_delays_ms must be a non-empty ascending list",
            ),
            (
                delays.first().is_none_or(|d| *d >= 10),
                "queue.retry_delays_ms entries must be at least 10 ms",
            ),
            (
                self.database.max_connections >= 2,
                "database.max_connections must be at least 2",
            ),
            (
                w.max_attempts >= 1,
                "worker.max_attempts must be at least 1",
            ),
            (
                w.commit_batch_max >= 1,
                "worker.commit_batch_max must be at least 1",
            ),
            (
                h.max_attempts >= 1,
                "webhooks.max_attempts must be at least 1",
            ),
            (
                h.concurrency >= 1,
                "webhooks.concurrency must be at least 1",
            ),
            (
                h.initial_backoff_ms <= h.max_backoff_ms,
                "webhooks.initial_backoff_ms must not exceed webhooks.max_backoff_ms",
            ),
            (r.multiplier >= 1.0, "retry.multiplier must be at least 1.0"),
            (
                (0.0..=1.0).contains(&r.randomization_factor),
                "retry.randomization_factor must be between 0 and 1",
            ),
            (
                r.initial_interval_ms <= r.max_interval_ms,
                "retry.initial_interval_ms must not exceed retry.max_interval_ms",
            ),
            (
                sp.default_max_output_tokens >= 1,
                "spend.default_max_output_tokens must be at least 1",
            ),
            (
                sp.reservation_ttl_ms >= 1_000,
                "spend.reservation_ttl_ms must be at least 1000",
            ),
            (
                sp.maintenance_interval_ms >= 100,
                "spend.maintenance_interval_ms must be at least 100",
            ),
            (sc.tick_ms >= 10, "scheduler.tick_ms must be at least 10"),
            (
                sc.lease_ttl_ms >= 3 * sc.tick_ms,
                "scheduler.lease_ttl_ms must be at least 3 ticks (scheduler.tick_ms)",
            ),
            (
                self.api.max_body_bytes >= 1024,
                "api.max_body_bytes must be at least 1024",
            ),
            (h.timeout_ms >= 1, "webhooks.timeout_ms must be positive"),
            (
                self.api.request_timeout_ms >= 100,
                "api.request_timeout_ms must be at least 100",
            ),
            (
                sc.max_pipelines_per_tenant >= 1,
                "scheduler.max_pipelines_per_tenant must be at least 1",
            ),
            (
                self.prompts.fuel >= 1_000 && self.prompts.max_output_bytes >= 1_024,
                "prompts.fuel must be at least 1000 and prompts.max_output_bytes at least 1024",
            ),
            (
                (1..=64).contains(&self.prompts.max_depth),
                "prompts.max_depth must be between 1 and 64",
            ),
        ]
    }

    fn into_config(
        self,
        catalog: Catalog,
        retrieval: crate::retrieval::RetrievalConfig,
        plans: crate::tenants::plans::Plans,
        (operator_key, url_policy, secrets, redaction, cache): ConfigParts,
    ) -> Config {
        let ms = Duration::from_millis;
        let pipelines = crate::scheduler::pipeline::PipelineLimits {
            max_message_bytes: self.queue.max_message_bytes,
            min_interval: Duration::from_secs(self.scheduler.min_cron_interval_s),
            max_per_tenant: self.scheduler.max_pipelines_per_tenant,
            prompts: self.prompts,
        };
        Config {
            database: DatabaseConfig {
                url: self.database.url,
                max_connections: self.database.max_connections,
                migrate_on_start: self.database.migrate_on_start,
                sealing: secrets.clone(),
            },
            queue: QueueConfig {
                url: self.queue.url,
                prefetch: self.queue.prefetch,
                intake_prefetch: self.queue.intake_prefetch,
                delivery_limit: self.queue.delivery_limit,
                max_message_bytes: self.queue.max_message_bytes,
                retry_delays: self.queue.retry_delays_ms.iter().map(|d| ms(*d)).collect(),
                trusted_publishers: self.queue.trusted_publishers,
                dead_letter_ttl: (self.queue.dead_letter_ttl_days > 0).then(|| {
                    Duration::from_secs(u64::from(self.queue.dead_letter_ttl_days) * 86_400)
                }),
            },
            worker: WorkerConfig {
                max_attempts: self.worker.max_attempts,
                shutdown_grace: ms(self.worker.shutdown_grace_ms),
                commit_batch_max: self.worker.commit_batch_max,
            },
            telemetry: TelemetryConfig {
                metrics_listen: (self.telemetry.metrics_listen.as_deref())
                    .and_then(|a| a.parse().ok()),
                otlp_endpoint: self.telemetry.otlp_endpoint,
                labels: crate::telemetry::metrics::LabelLimits {
                    tenants: self.telemetry.max_tenant_labels,
                    features: self.telemetry.max_feature_labels,
                },
            },
            api: ApiConfig {
                plans: plans.clone(),
                operator_key,
                url_policy: url_policy.clone(),
                listen: self.api.listen,
                max_body_bytes: self.api.max_body_bytes,
                dashboard_cookie_secure: self.api.dashboard_cookie_secure,
                rate_limit_per_s: self.api.rate_limit_per_s,
                request_timeout: ms(self.api.request_timeout_ms),
                pipelines,
                redaction: redaction.clone(),
                keyring: secrets.clone(),
                providers: (catalog.providers().iter())
                    .map(|p| p.endpoint.name.clone())
                    .collect(),
                prompts: self.prompts,
            },
            webhooks: WebhookConfig {
                url_policy,
                timeout: ms(self.webhooks.timeout_ms),
                max_attempts: self.webhooks.max_attempts,
                initial_backoff: ms(self.webhooks.initial_backoff_ms),
                max_backoff: ms(self.webhooks.max_backoff_ms),
                concurrency: self.webhooks.concurrency,
                claim_lease: ms(self.webhooks.claim_lease_ms),
                poll_interval: ms(self.webhooks.poll_interval_ms),
                keyring: secrets.clone(),
            },
            retry: RetryConfig {
                initial_interval: ms(self.retry.initial_interval_ms),
                max_interval: ms(self.retry.max_interval_ms),
                max_elapsed: ms(self.retry.max_elapsed_ms),
                pace_max_wait: ms(self.retry.pace_max_wait_ms),
                multiplier: self.retry.multiplier,
                randomization_factor: self.retry.randomization_factor,
            },
            spend: SpendConfig {
                default_max_output_tokens: self.spend.default_max_output_tokens,
                reservation_ttl: ms(self.spend.reservation_ttl_ms),
                ledger_retention_months: self.spend.ledger_retention_months,
                maintenance_interval: ms(self.spend.maintenance_interval_ms),
                bill_byok: self.spend.bill_byok,
            },
            scheduler: crate::scheduler::SchedulerConfig {
                tick: ms(self.scheduler.tick_ms),
                lease_ttl: chrono::Duration::milliseconds(
                    i64::try_from(self.scheduler.lease_ttl_ms).unwrap_or(i64::MAX),
                ),
                pipelines,
            },
            retrieval,
            catalog,
            plans,
            secrets,
            redaction,
            cache,
            prompts: self.prompts,
            retention: RetentionConfig {
                jobs: (self.retention.jobs_days > 0)
                    .then(|| Duration::from_secs(u64::from(self.retention.jobs_days) * 86_400)),
                keep_erased_ledger: self.retention.erased_ledger == "keep",
            },
        }
    }
}

/// `[cache]`, with the cache settings of the policies and plans; a named embeddings model must be
/// the catalog's.
fn cache_config(
    raw: &RawConfig,
    catalog: Option<&Catalog>,
    retrieval: Option<&crate::retrieval::RetrievalConfig>,
    problems: &mut Vec<String>,
) -> crate::cache::CacheConfig {
    let levels = crate::cache::Levels {
        policies: (raw.policies.iter())
            .filter_map(|(name, p)| Some((name.clone(), p.cache?)))
            .collect(),
        plans: (raw.plans.iter())
            .filter_map(|(name, p)| Some((name.clone(), p.cache?)))
            .collect(),
    };
    if let (Some(name), Some(catalog)) = (&raw.cache.embedding_model, catalog) {
        if catalog
            .model(name)
            .and_then(|m| m.embedding_dimensions)
            .is_none()
        {
            problems.push(format!(
                "cache.embedding_model: `{name}` is not an embeddings model of the catalog"
            ));
        }
    }
    let default_model = retrieval.and_then(|r| r.embedding_model.as_deref());
    crate::cache::CacheConfig::from_raw(&raw.cache, levels, default_model, problems)
}

/// The keyring of `[secrets]`: the current key from `key_env` or `key_file` (not both), retired
/// keys from `retired_key_files`.
fn keyring(raw: &raw::RawSecrets, problems: &mut Vec<String>) -> crate::keyring::Keyring {
    use crate::keyring::Keyring;
    let mut read = |what: String, text: Result<String, String>| match text
        .and_then(|t| Keyring::parse_key(&t))
    {
        Ok(key) => Some(key),
        Err(e) => {
            problems.push(format!("{what}: {e}"));
            None
        }
    };
    let file =
        |path: &str| std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"));
    let current = match (&raw.key_env, &raw.key_file) {
        (Some(_), Some(_)) => read(
            "secrets".into(),
            Err("give key_env or key_file, not both".into()),
        ),
        (Some(var), None) => read(
            "secrets.key_env".into(),
            std::env::var(var).map_err(|_| format!("environment variable {var} is not set")),
        ),
        (None, Some(path)) => read("secrets.key_file".into(), file(path)),
        (None, None) => None,
    };
    let retired: Vec<[u8; 32]> = (raw.retired_key_files.iter())
        .filter_map(|path| read("secrets.retired_key_files".into(), file(path)))
        .collect();
    Keyring::new(current, &retired)
}

/// The dashboard's operator key, from the environment variable `api.operator_key_env` names.
fn operator_key(var: Option<&str>, problems: &mut Vec<String>) -> Option<Secret> {
    let var = var?;
    match std::env::var(var) {
        Ok(key) if key.trim().len() >= 16 => Some(Secret::new(key.trim())),
        Ok(_) => {
            problems.push(format!(
                "api.operator_key_env: the key in {var} is shorter than 16 characters"
            ));
            None
        }
        Err(_) => {
            problems.push(format!(
                "api.operator_key_env: environment variable {var} is not set"
            ));
            None
        }
    }
}

/// Validates `[retrieval]` against the catalog, adding every problem to `problems`.
fn retrieval_config(
    raw: &raw::RawRetrieval,
    catalog: &Catalog,
    problems: &mut Vec<String>,
) -> Option<crate::retrieval::RetrievalConfig> {
    use crate::retrieval::{chunk::ChunkSpec, PromptTemplate, RetrievalConfig};
    let start = problems.len();
    let store = store_config(raw, problems);
    let model = embedding_model(raw, catalog, problems);
    check_retrieval_limits(raw, problems);
    let store = store.filter(|_| problems.len() == start)?;
    let templates = raw.templates.iter().map(|(k, t)| {
        let template = PromptTemplate {
            system: t.system.clone(),
            user: t.user.clone(),
        };
        (k.clone(), template)
    });
    Some(RetrievalConfig {
        store,
        embedding_model: model.map(|m| m.name.clone()),
        dimensions: model.and_then(|m| m.embedding_dimensions).unwrap_or(0),
        embed_batch: raw.embed_batch,
        chunk: ChunkSpec {
            tokens: raw.chunk_tokens,
            overlap: raw.chunk_overlap_tokens,
        },
        max_document_bytes: raw.max_document_bytes,
        max_documents_per_job: raw.max_documents_per_job,
        default_top_k: raw.default_top_k,
        max_top_k: raw.max_top_k,
        answer_max_tokens: raw.answer_max_tokens,
        templates: templates.collect(),
    })
}

/// The vector store: embedded on local disk, or a Qdrant server with its key from the environment.
fn store_config(
    raw: &raw::RawRetrieval,
    problems: &mut Vec<String>,
) -> Option<crate::retrieval::StoreConfig> {
    use crate::retrieval::StoreConfig;
    match raw.store.as_str() {
        "embedded" => {
            let path = PathBuf::from(&raw.path);
            // The other workers of the machine reach the store through a socket inside it.
            let socket = path.join(crate::retrieval::shared::SOCKET_FILE);
            if let Err(e) = crate::retrieval::shared::check_socket_path(&socket) {
                problems.push(format!("retrieval.path: {e}"));
            }
            Some(StoreConfig::Embedded {
                path,
                hnsw_ef: raw.hnsw_ef,
            })
        }
        "qdrant" => {
            let api_key = raw.qdrant_api_key_env.as_ref().and_then(|var| {
                let key = std::env::var(var).ok().map(crate::secret::Secret::new);
                if key.is_none() {
                    problems.push(format!(
                        "retrieval.qdrant_api_key_env: environment variable {var} is not set"
                    ));
                }
                key
            });
            Some(StoreConfig::Qdrant {
                url: raw.qdrant_url.clone(),
                api_key,
                hnsw_ef: raw.hnsw_ef,
            })
        }
        other => {
            problems.push(format!(
                "retrieval.store: `{other}` is not one of embedded, qdrant"
            ));
            None
        }
    }
}

/// The model collections are embedded with: the one named, or the catalog's first embeddings
/// model; it must have a vector size and an API shape that serves embeddings.
fn embedding_model<'c>(
    raw: &raw::RawRetrieval,
    catalog: &'c Catalog,
    problems: &mut Vec<String>,
) -> Option<&'c crate::routing::catalog::ModelSpec> {
    let model = match &raw.embedding_model {
        Some(name) => {
            let found = catalog.model(name);
            if found.is_none() {
                problems.push(format!("retrieval.embedding_model: unknown model `{name}`"));
            }
            found
        }
        None => catalog.first_embeddings_model(),
    }?;
    let shape = catalog.provider(&model.provider).map(|p| p.kind);
    if model.embedding_dimensions.is_none() {
        problems.push(format!(
            "retrieval.embedding_model: `{}` has no embeddings capability",
            model.name
        ));
    } else if shape != Some(crate::routing::catalog::ProviderKind::OpenAi) {
        problems.push(format!(
            "retrieval.embedding_model: `{}` is served by an API shape without embeddings (use an openai-shaped provider)",
            model.name
        ));
    }
    Some(model)
}

/// The numeric limits and the templates.
fn check_retrieval_limits(raw: &raw::RawRetrieval, problems: &mut Vec<String>) {
    let rules = [
        (
            (1..=4096).contains(&raw.hnsw_ef),
            "retrieval.hnsw_ef must be between 1 and 4096",
        ),
        (
            (1..=2048).contains(&raw.embed_batch),
            "retrieval.embed_batch must be between 1 and 2048",
        ),
        (
            (16..=8192).contains(&raw.chunk_tokens),
            "retrieval.chunk_tokens must be between 16 and 8192",
        ),
        (
            raw.chunk_overlap_tokens < raw.chunk_tokens / 2,
            "retrieval.chunk_overlap_tokens must be under half of retrieval.chunk_tokens",
        ),
        (
            raw.max_document_bytes >= 1024,
            "retrieval.max_document_bytes must be at least 1024",
        ),
        (
            raw.max_documents_per_job >= 1,
            "retrieval.max_documents_per_job must be at least 1",
        ),
        (
            raw.default_top_k >= 1 && raw.default_top_k <= raw.max_top_k,
            "retrieval.default_top_k must be between 1 and retrieval.max_top_k",
        ),
        (
            raw.answer_max_tokens >= 1,
            "retrieval.answer_max_tokens must be at least 1",
        ),
        (
            raw.templates.contains_key("default"),
            "retrieval.templates must define `default`",
        ),
    ];
    problems.extend(
        rules
            .iter()
            .filter(|(ok, _)| !ok)
            .map(|(_, m)| m.to_string()),
    );
    for (name, t) in &raw.templates {
        if !(t.user.contains("{context}") && t.user.contains("{question}")) {
            problems.push(format!(
                "retrieval.templates.{name}.user must contain {{context}} and {{question}}"
            ));
        }
    }
}

/// Where the config file is looked for when `--config` is not given.
pub fn default_path() -> Option<PathBuf> {
    let p = PathBuf::from("ragq.toml");
    p.exists().then_some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let cfg = Config::from_toml("").expect("defaults validate");
        assert_eq!(cfg.queue.prefetch, 64);
        assert!(cfg.catalog.policy("cost-optimized").is_some());
    }

    #[test]
    fn unknown_key_is_refused_by_name() {
        let err = Config::from_toml("[queue]\nprefetchh = 3\n").expect_err("unknown key");
        let text = err.to_string();
        assert!(text.contains("prefetchh"), "{text}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let err = Config::from_toml(
            "[queue]\nprefetch = 0\nretry_delays_ms = [5000, 1000]\n[worker]\nmax_attempts = 0\n",
        )
        .expect_err("invalid");
        let text = err.to_string();
        assert!(text.contains("queue.prefetch"), "{text}");
        assert!(text.contains("queue.retry_delays_ms"), "{text}");
        assert!(text.contains("worker.max_attempts"), "{text}");
    }

    #[test]
    fn retrieval_takes_the_first_embeddings_model_or_stays_off_without_one() {
        let cfg = Config::from_toml("").expect("defaults");
        assert_eq!(cfg.retrieval.embedding_model.as_deref(), Some("sim-embed"));
        assert_eq!(cfg.retrieval.dimensions, 256);
        let chat_only = "[[providers]]\nname = \"p\"\nkind = \"openai\"\nbase_url = \"http://x/v1\"\n\
            [[models]]\nname = \"m\"\nprovider = \"p\"\nmodel_id = \"m\"\n\
            input_price_micros_per_mtok = 1\noutput_price_micros_per_mtok = 1\ncontext_window = 100\n\
            [policies.cost-optimized]\nmodels = [\"m\"]\n";
        let cfg = Config::from_toml(chat_only).expect("a chat-only catalog is valid");
        assert_eq!(cfg.retrieval.embedding_model, None);
        let named = format!("{chat_only}[retrieval]\nembedding_model = \"m\"\n");
        let err = Config::from_toml(&named).expect_err("not an embeddings model");
        assert!(
            err.to_string().contains("no embeddings capability"),
            "{err}"
        );
    }

    #[test]
    fn an_embedded_store_too_deep_for_its_socket_is_refused() {
        let deep = format!("[retrieval]\npath = \"/{}\"\n", "d".repeat(100));
        let err = Config::from_toml(&deep).expect_err("socket path over the limit");
        assert!(err.to_string().contains("retrieval.path"), "{err}");
        assert!(err.to_string().contains("107-byte limit"), "{err}");
        Config::from_toml("[retrieval]\npath = \"/var/lib/ragq/vectors\"\n").expect("valid");
    }

    #[test]
    fn policy_naming_unknown_model_is_refused() {
        let err =
            Config::from_toml("[policies.cheap]\nmodels = [\"nope\"]\n").expect_err("invalid");
        assert!(err.to_string().contains("policies.cheap"), "{err}");
    }
}
