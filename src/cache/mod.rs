//! The response cache: a chat call whose request was answered before is answered again without a
//! provider call, at cost 0, and booked as a hit beside what it saved.
//!
//! - Exact: the request's [`key::Fingerprint`] (tenant, policy, plan, messages, sampling
//!   parameters) matches a fresh entry. One Postgres round trip, shared by every call looked up
//!   at the same time ([`lookup`]).
//! - Semantic: on an exact miss, a single-turn prompt up to a configured size is embedded (a
//!   booked call) and matched against the tenant's cached prompts that share everything else (the
//!   fingerprint's scope) in the vector store ([`semantic`]); the nearest at or above the
//!   threshold answers.
//!
//! Caching is off unless a job, its policy or its tenant's plan asks for it ([`CacheConfig::settings`]).
//! Entries live in Postgres ([`store`]), keyed by tenant: no lookup reads another tenant's entry,
//! and a semantic match is read back by (tenant, id). They expire by TTL and are trimmed to a
//! bound per tenant by [`upkeep`].

mod handle;
pub mod key;
pub mod lookup;
pub mod semantic;
pub mod store;
pub mod upkeep;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use handle::{Answer, ResponseCache};

/// What a cache setting asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Exact,
    Semantic,
    Off,
}

/// How a call was answered from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HitKind {
    Exact,
    Semantic,
}

impl HitKind {
    /// As `provider_calls.cache_hit` holds it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exact => "exact",
            Self::Semantic => "semantic",
        }
    }
}

/// `cache = {...}` as a job, a routing policy or a plan writes it. Each field unset falls through
/// to the next level (job, then policy, then plan), then to the `[cache]` defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// How long an answer stays fresh, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_s: Option<u64>,
    /// Cosine similarity a semantic match needs, in (0, 1].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_similarity: Option<f32>,
}

/// The longest TTL an entry may have: a year.
pub const MAX_TTL_S: u64 = 365 * 86_400;

impl CacheRequest {
    /// The rules on its values; `at` names where it was written.
    pub fn check(&self, at: &str) -> Result<(), String> {
        if self.ttl_s.is_some_and(|t| !(1..=MAX_TTL_S).contains(&t)) {
            return Err(format!("{at}.ttl_s: between 1 and {MAX_TTL_S} seconds"));
        }
        if (self.min_similarity).is_some_and(|s| !(s > 0.0 && s <= 1.0)) {
            return Err(format!("{at}.min_similarity: in (0, 1]"));
        }
        Ok(())
    }

    /// Each field of `self`, else of `under`.
    fn over(self, under: Option<&CacheRequest>) -> CacheRequest {
        let under = under.copied().unwrap_or_default();
        CacheRequest {
            mode: self.mode.or(under.mode),
            ttl_s: self.ttl_s.or(under.ttl_s),
            min_similarity: self.min_similarity.or(under.min_similarity),
        }
    }
}

/// The cache as it applies to one job: on, in a mode.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    pub semantic: bool,
    pub ttl: Duration,
    pub min_similarity: f32,
}

/// `[cache]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCache {
    pub default_ttl_s: u64,
    pub default_min_similarity: f32,
    /// Calls with a temperature above 0 are neither looked up nor stored.
    pub skip_sampled: bool,
    /// The embeddings model semantic lookups use (default: retrieval's).
    pub embedding_model: Option<String>,
    /// The vector store collection that holds cached prompts' vectors (reserved: no job may name it).
    pub collection: String,
    /// Longest prompt (bytes of its user message) a semantic lookup embeds.
    pub semantic_max_prompt_bytes: usize,
    /// Answers longer than this are not stored.
    pub max_entry_bytes: usize,
    /// Most entries a tenant keeps; the oldest go first.
    pub max_entries_per_tenant: u64,
    /// How often expired entries and entries beyond the bound are removed.
    pub sweep_interval_ms: u64,
}

impl Default for RawCache {
    fn default() -> Self {
        Self {
            default_ttl_s: 86_400,
            default_min_similarity: 0.95,
            skip_sampled: false,
            embedding_model: None,
            collection: "ragq-response-cache".into(),
            semantic_max_prompt_bytes: 4096,
            max_entry_bytes: 64 * 1024,
            max_entries_per_tenant: 100_000,
            sweep_interval_ms: 60_000,
        }
    }
}

/// The cache's validated settings.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub defaults: Settings,
    pub skip_sampled: bool,
    /// None when the catalog has no embeddings model: semantic settings then act as exact ones.
    pub embedding_model: Option<String>,
    pub collection: String,
    pub semantic_max_prompt_bytes: usize,
    pub max_entry_bytes: usize,
    pub max_entries_per_tenant: u64,
    pub sweep_interval: Duration,
    policies: BTreeMap<String, CacheRequest>,
    plans: BTreeMap<String, CacheRequest>,
}

/// The cache settings routing policies and plans carry, by name.
#[derive(Debug, Clone, Default)]
pub struct Levels {
    pub policies: BTreeMap<String, CacheRequest>,
    pub plans: BTreeMap<String, CacheRequest>,
}

impl CacheConfig {
    /// Validates `[cache]` and the policies' and plans' settings; `embedding_model` is the one
    /// retrieval uses (checked against the catalog there), the default for semantic lookups.
    pub fn from_raw(
        raw: &RawCache,
        levels: Levels,
        embedding_model: Option<&str>,
        problems: &mut Vec<String>,
    ) -> Self {
        let defaults = CacheRequest {
            mode: None,
            ttl_s: Some(raw.default_ttl_s),
            min_similarity: Some(raw.default_min_similarity),
        };
        let checks = std::iter::once(("cache.default".to_string(), &defaults))
            .chain(
                levels
                    .policies
                    .iter()
                    .map(|(n, r)| (format!("policies.{n}.cache"), r)),
            )
            .chain(
                levels
                    .plans
                    .iter()
                    .map(|(n, r)| (format!("plans.{n}.cache"), r)),
            );
        for (at, request) in checks {
            if let Err(e) = request.check(&at) {
                problems.push(e);
            }
        }
        if let Err(e) = crate::retrieval::check_collection_name(&raw.collection) {
            problems.push(format!("cache.collection: {e}"));
        }
        if raw.sweep_interval_ms < 100 {
            problems.push("cache.sweep_interval_ms must be at least 100".into());
        }
        Self {
            defaults: Settings {
                semantic: false,
                ttl: Duration::from_secs(raw.default_ttl_s),
                min_similarity: raw.default_min_similarity,
            },
            skip_sampled: raw.skip_sampled,
            embedding_model: raw
                .embedding_model
                .clone()
                .or(embedding_model.map(Into::into)),
            collection: raw.collection.clone(),
            semantic_max_prompt_bytes: raw.semantic_max_prompt_bytes,
            max_entry_bytes: raw.max_entry_bytes,
            max_entries_per_tenant: raw.max_entries_per_tenant.max(1),
            sweep_interval: Duration::from_millis(raw.sweep_interval_ms),
            policies: levels.policies,
            plans: levels.plans,
        }
    }

    /// Whether a request may be cached at all: a sampled one (temperature above 0) not, if
    /// `cache.skip_sampled` says so.
    pub fn takes(&self, request: &crate::providers::ChatRequest) -> bool {
        !(self.skip_sampled && request.temperature.is_some_and(|t| t > 0.0))
    }

    /// The cache for a job: its own setting, over its policy's, over its tenant's plan's; off
    /// unless one of them names a mode other than `off`.
    pub fn settings(
        &self,
        job: Option<&CacheRequest>,
        policy: &str,
        plan: Option<&str>,
    ) -> Option<Settings> {
        let plan = plan.and_then(|p| self.plans.get(p));
        let merged = (job.copied().unwrap_or_default())
            .over(self.policies.get(policy))
            .over(plan);
        let semantic = match merged.mode? {
            Mode::Off => return None,
            Mode::Exact => false,
            Mode::Semantic => true,
        };
        Some(Settings {
            semantic: semantic && self.embedding_model.is_some(),
            ttl: merged.ttl_s.map_or(self.defaults.ttl, Duration::from_secs),
            min_similarity: merged
                .min_similarity
                .unwrap_or(self.defaults.min_similarity),
        })
    }
}

/// Why the cache could not be read or written (the call then goes to a provider as if it missed).
#[derive(Debug, Clone, thiserror::Error)]
pub enum CacheError {
    #[error("database: {0}")]
    Database(String),
    #[error("vector store: {0}")]
    Store(#[from] crate::retrieval::StoreError),
    #[error("the cache lookup task stopped")]
    Stopped,
}

impl From<sqlx::Error> for CacheError {
    fn from(e: sqlx::Error) -> Self {
        Self::Database(e.to_string())
    }
}

/// A call answered from the cache, as its completion shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CacheHit {
    pub hit: HitKind,
    /// The match's cosine similarity (semantic hits).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub similarity: Option<f32>,
    pub entry_id: uuid::Uuid,
    pub age_s: u64,
    /// What the call would have cost at the answering model's price now.
    pub saved_micros: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> CacheConfig {
        let levels = Levels {
            policies: BTreeMap::from([
                (
                    "cached".to_string(),
                    CacheRequest {
                        mode: Some(Mode::Exact),
                        ttl_s: Some(60),
                        min_similarity: None,
                    },
                ),
                (
                    "never".to_string(),
                    CacheRequest {
                        mode: Some(Mode::Off),
                        ..CacheRequest::default()
                    },
                ),
            ]),
            plans: BTreeMap::from([(
                "pro".to_string(),
                CacheRequest {
                    mode: Some(Mode::Semantic),
                    min_similarity: Some(0.9),
                    ..CacheRequest::default()
                },
            )]),
        };
        let mut problems = Vec::new();
        let c = CacheConfig::from_raw(&RawCache::default(), levels, Some("embed"), &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        c
    }

    #[test]
    fn off_unless_asked_and_each_field_falls_through_job_policy_plan_defaults() {
        let c = config();
        assert_eq!(c.settings(None, "plain", Some("free")), None);
        let by_policy = c.settings(None, "cached", Some("free")).unwrap();
        assert!(!by_policy.semantic);
        assert_eq!(by_policy.ttl, Duration::from_secs(60));
        assert_eq!(by_policy.min_similarity, 0.95);
        let by_plan = c.settings(None, "plain", Some("pro")).unwrap();
        assert!(by_plan.semantic);
        assert_eq!(by_plan.min_similarity, 0.9);
        assert_eq!(by_plan.ttl, Duration::from_secs(86_400));
        // The policy's mode wins over the plan's; the plan still gives its threshold.
        let both = c.settings(None, "cached", Some("pro")).unwrap();
        assert!(!both.semantic);
        assert_eq!(both.min_similarity, 0.9);
        let job = CacheRequest {
            mode: Some(Mode::Off),
            ..CacheRequest::default()
        };
        assert_eq!(c.settings(Some(&job), "cached", Some("pro")), None);
        assert_eq!(c.settings(None, "never", Some("pro")), None);
    }

    #[test]
    fn semantic_acts_as_exact_without_an_embeddings_model() {
        let mut problems = Vec::new();
        let c = CacheConfig::from_raw(&RawCache::default(), Levels::default(), None, &mut problems);
        let job = CacheRequest {
            mode: Some(Mode::Semantic),
            ..CacheRequest::default()
        };
        assert!(!c.settings(Some(&job), "p", None).unwrap().semantic);
    }

    #[test]
    fn sampled_calls_skip_the_cache_only_when_configured() {
        let raw = RawCache {
            skip_sampled: true,
            ..RawCache::default()
        };
        let mut problems = Vec::new();
        let skipping = CacheConfig::from_raw(&raw, Levels::default(), None, &mut problems);
        let request = |temperature| crate::providers::ChatRequest {
            messages: Vec::new(),
            max_tokens: Some(10),
            temperature,
            call_id: None,
            counted_input_tokens: None,
            credential: None,
        };
        assert!(skipping.takes(&request(None)));
        assert!(skipping.takes(&request(Some(0.0))));
        assert!(!skipping.takes(&request(Some(0.7))));
        assert!(config().takes(&request(Some(0.7))), "off by default");
    }

    #[test]
    fn bad_values_are_named() {
        let bad = CacheRequest {
            mode: None,
            ttl_s: Some(0),
            min_similarity: Some(1.5),
        };
        assert_eq!(
            bad.check("cache").unwrap_err(),
            "cache.ttl_s: between 1 and 31536000 seconds"
        );
        let bad = CacheRequest { ttl_s: None, ..bad };
        assert_eq!(
            bad.check("cache").unwrap_err(),
            "cache.min_similarity: in (0, 1]"
        );
    }
}
