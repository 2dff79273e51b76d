//! The model catalog exactly as written in the configuration (`providers`, `models`, `policies`):
//! serde types with defaults and unknown keys refused, validated by [`super::Catalog::from_raw`].
//! Routing owns them; the configuration tree embeds them.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    pub name: String,
    /// API shape: `openai` (chat completions) or `anthropic` (messages).
    pub kind: String,
    pub base_url: String,
    #[serde(default)]
    pub api_key_env: Option<String>,
    #[serde(default)]
    pub api_key_file: Option<String>,
    #[serde(default = "default_provider_timeout_ms")]
    pub timeout_ms: u64,
    /// Largest response body read from the provider; a bigger one fails the call.
    #[serde(default = "default_provider_max_response_bytes")]
    pub max_response_bytes: usize,
}

/// A model in the catalog. Prices are integer micro-dollars per million tokens.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    pub name: String,
    pub provider: String,
    /// The vendor's model id sent on the wire.
    pub model_id: String,
    pub input_price_micros_per_mtok: u64,
    pub output_price_micros_per_mtok: u64,
    pub context_window: u32,
    /// Higher is better; policies may require a minimum.
    #[serde(default = "default_quality_tier")]
    pub quality_tier: u8,
    /// Where the model runs (`eu`, `us`, ...); policies may restrict regions.
    #[serde(default = "default_region")]
    pub region: String,
    /// What the model does: `chat` (the default) and/or `embeddings`.
    #[serde(default = "default_capabilities")]
    pub capabilities: Vec<String>,
    /// Vector size of an embeddings model.
    #[serde(default)]
    pub dimensions: Option<usize>,
    /// The provider's requests-per-minute limit for this model, shared by all live workers.
    #[serde(default)]
    pub rpm: Option<u32>,
    /// The provider's tokens-per-minute limit (input plus maximum output), shared likewise.
    #[serde(default)]
    pub tpm: Option<u64>,
}

pub fn default_capabilities() -> Vec<String> {
    vec!["chat".into()]
}

/// A named routing policy: the candidate models, how to rank them, and constraints.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    pub models: Vec<String>,
    /// `ordered` (as listed), `cost`, `latency` or `reliable`.
    #[serde(default = "default_strategy")]
    pub strategy: String,
    #[serde(default)]
    pub min_quality: Option<u8>,
    #[serde(default)]
    pub regions: Option<Vec<String>>,
    #[serde(default)]
    pub providers: Option<Vec<String>>,
    /// Candidates tried per call at most (the first plus fallbacks).
    #[serde(default)]
    pub fallback_depth: Option<usize>,
    /// Plan name -> the only models tenants on that plan may use.
    #[serde(default)]
    pub plans: BTreeMap<String, Vec<String>>,
    /// Copy a share of calls to a candidate model: booked, timed, never returned.
    #[serde(default)]
    pub shadow: Option<RawShadow>,
    /// Weighted split of which model is tried first.
    #[serde(default)]
    pub ab: Vec<RawAbArm>,
    /// The response cache for the policy's calls (see [`crate::cache`]).
    #[serde(default)]
    pub cache: Option<crate::cache::CacheRequest>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShadow {
    pub model: String,
    /// Share of calls copied, in (0, 1].
    pub share: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAbArm {
    pub model: String,
    pub weight: u32,
}

pub fn default_quality_tier() -> u8 {
    1
}

pub fn default_region() -> String {
    "global".into()
}

pub fn default_strategy() -> String {
    "ordered".into()
}

pub fn default_provider_timeout_ms() -> u64 {
    60_000
}

/// 16 MiB: far above any chat or embeddings answer ragq asks for (a 256-input embeddings batch
/// of 3,072 floats is about 8 MB of JSON).
pub fn default_provider_max_response_bytes() -> usize {
    16 << 20
}

impl RawPolicy {
    /// A policy trying `models` in the listed order, without constraints.
    pub fn ordered(models: &[&str]) -> Self {
        Self {
            models: models.iter().map(|m| m.to_string()).collect(),
            strategy: default_strategy(),
            min_quality: None,
            regions: None,
            providers: None,
            fallback_depth: None,
            plans: BTreeMap::new(),
            shadow: None,
            ab: Vec::new(),
            cache: None,
        }
    }
}
