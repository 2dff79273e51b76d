//! The model catalog: providers, models with prices, and named routing policies, validated together.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

pub mod raw;

use crate::providers::ProviderEndpoint;
use crate::secret::Secret;
use crate::spend::Price;
use raw::{RawModel, RawPolicy, RawProvider};

/// Every problem found in the catalog section of the config.
#[derive(Debug)]
pub struct CatalogError(pub Vec<String>);

/// The API shape a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    OpenAi,
    Anthropic,
}

#[derive(Debug, Clone)]
pub struct ProviderSpec {
    pub kind: ProviderKind,
    pub endpoint: ProviderEndpoint,
}

/// One model as jobs see it through policies.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    pub name: String,
    pub provider: String,
    pub model_id: String,
    pub price: Price,
    pub context_window: u32,
    pub quality_tier: u8,
    pub region: String,
    /// Whether it answers chat requests (policies list only these).
    pub chat: bool,
    /// The vector size, for a model that makes embeddings.
    pub embedding_dimensions: Option<usize>,
    /// Requests and tokens per minute the provider allows (all workers together).
    pub rpm: Option<u32>,
    pub tpm: Option<u64>,
}

/// How a policy ranks the candidates left after its constraints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// As listed.
    Ordered,
    /// Lowest expected cost: the call's worst-case cost, with the observed chance of failing over.
    Cost,
    /// Lowest observed p95 latency (untried models first, to learn them).
    Latency,
    /// Lowest observed failure rate.
    Reliable,
}

/// A named policy: candidate models, ranking and constraints.
#[derive(Debug, Clone)]
pub struct RoutingPolicy {
    pub name: String,
    pub models: Vec<String>,
    pub strategy: Strategy,
    pub min_quality: Option<u8>,
    pub regions: Option<Vec<String>>,
    pub providers: Option<Vec<String>>,
    pub fallback_depth: Option<usize>,
    /// Plan name -> the only models tenants on that plan may use (plans not listed: any).
    pub plans: BTreeMap<String, Vec<String>>,
    /// (model, share of calls copied to it).
    pub shadow: Option<(String, f64)>,
    /// (model, weight): which candidate goes first, split by weight.
    pub ab: Vec<(String, u32)>,
}

#[derive(Debug, Clone, Default)]
pub struct Catalog {
    providers: Vec<ProviderSpec>,
    models: HashMap<String, ModelSpec>,
    /// Model names in the order the config lists them.
    order: Vec<String>,
    policies: HashMap<String, RoutingPolicy>,
}

impl Catalog {
    pub fn from_raw(
        providers: &[RawProvider],
        models: &[RawModel],
        policies: &BTreeMap<String, RawPolicy>,
    ) -> Result<Self, CatalogError> {
        let mut problems = Vec::new();
        let mut catalog = Catalog::default();
        for p in providers {
            match provider_spec(p) {
                Ok(spec) if catalog.provider(&p.name).is_none() => catalog.providers.push(spec),
                Ok(_) => problems.push(format!("providers: `{}` is defined twice", p.name)),
                Err(e) => problems.push(e),
            }
        }
        for m in models {
            if catalog.provider(&m.provider).is_none() {
                problems.push(format!(
                    "models.{}.provider: unknown provider `{}`",
                    m.name, m.provider
                ));
            }
            let spec = model_spec(m, &mut problems);
            catalog.order.push(m.name.clone());
            if catalog.models.insert(m.name.clone(), spec).is_some() {
                problems.push(format!("models: `{}` is defined twice", m.name));
            }
        }
        for (name, policy) in policies {
            let spec = catalog.policy_spec(name, policy, &mut problems);
            catalog.policies.insert(name.clone(), spec);
        }
        if problems.is_empty() {
            Ok(catalog)
        } else {
            Err(CatalogError(problems))
        }
    }

    pub fn provider(&self, name: &str) -> Option<&ProviderSpec> {
        self.providers.iter().find(|p| p.endpoint.name == name)
    }

    pub fn providers(&self) -> &[ProviderSpec] {
        &self.providers
    }

    pub fn model_names(&self) -> impl Iterator<Item = &str> {
        self.models.keys().map(String::as_str)
    }

    /// The first embeddings model in the catalog's order, if any.
    pub fn first_embeddings_model(&self) -> Option<&ModelSpec> {
        self.order
            .iter()
            .filter_map(|n| self.models.get(n))
            .find(|m| m.embedding_dimensions.is_some())
    }

    pub fn model(&self, name: &str) -> Option<&ModelSpec> {
        self.models.get(name)
    }

    /// Catalog model name -> vendor model id, for one provider's models.
    pub fn model_ids(&self, provider: &str) -> std::collections::BTreeMap<String, String> {
        self.models
            .values()
            .filter(|m| m.provider == provider)
            .map(|m| (m.name.clone(), m.model_id.clone()))
            .collect()
    }

    pub fn policy(&self, name: &str) -> Option<&RoutingPolicy> {
        self.policies.get(name)
    }
}

/// A model's runtime spec; problems with it are added to `problems`.
fn model_spec(m: &RawModel, problems: &mut Vec<String>) -> ModelSpec {
    if m.context_window == 0 {
        problems.push(format!("models.{}.context_window must be positive", m.name));
    }
    for c in &m.capabilities {
        if c != "chat" && c != "embeddings" {
            problems.push(format!(
                "models.{}.capabilities: `{c}` is not one of chat, embeddings",
                m.name
            ));
        }
    }
    let embeddings = m.capabilities.iter().any(|c| c == "embeddings");
    if embeddings && m.dimensions.is_none_or(|d| d == 0) {
        problems.push(format!(
            "models.{}.dimensions: an embeddings model must give its vector size",
            m.name
        ));
    }
    if m.rpm == Some(0) || m.tpm == Some(0) {
        problems.push(format!("models.{}: rpm and tpm must be positive", m.name));
    }
    ModelSpec {
        name: m.name.clone(),
        provider: m.provider.clone(),
        model_id: m.model_id.clone(),
        price: Price {
            input_micros_per_mtok: m.input_price_micros_per_mtok,
            output_micros_per_mtok: m.output_price_micros_per_mtok,
        },
        context_window: m.context_window,
        quality_tier: m.quality_tier,
        region: m.region.clone(),
        chat: m.capabilities.iter().any(|c| c == "chat"),
        embedding_dimensions: m.dimensions.filter(|_| embeddings),
        rpm: m.rpm,
        tpm: m.tpm,
    }
}

fn strategy(name: &str, raw: &str, problems: &mut Vec<String>) -> Strategy {
    match raw {
        "ordered" => Strategy::Ordered,
        "cost" => Strategy::Cost,
        "latency" => Strategy::Latency,
        "reliable" => Strategy::Reliable,
        other => {
            problems.push(format!(
                "policies.{name}.strategy: `{other}` is not one of ordered, cost, latency, reliable"
            ));
            Strategy::Ordered
        }
    }
}

impl Catalog {
    /// A policy's runtime spec, checked against the models and providers already read.
    fn policy_spec(
        &self,
        name: &str,
        policy: &RawPolicy,
        problems: &mut Vec<String>,
    ) -> RoutingPolicy {
        if policy.models.is_empty() {
            problems.push(format!("policies.{name}.models must not be empty"));
        }
        for model in &policy.models {
            match self.models.get(model) {
                None => problems.push(format!("policies.{name}.models: unknown model `{model}`")),
                Some(m) if !m.chat => problems.push(format!(
                    "policies.{name}.models: `{model}` has no chat capability"
                )),
                Some(_) => {}
            }
        }
        if policy.fallback_depth == Some(0) {
            problems.push(format!("policies.{name}.fallback_depth must be at least 1"));
        }
        self.check_variants(name, policy, problems);
        for p in policy.providers.iter().flatten() {
            if self.provider(p).is_none() {
                problems.push(format!("policies.{name}.providers: unknown provider `{p}`"));
            }
        }
        RoutingPolicy {
            name: name.to_string(),
            models: policy.models.clone(),
            strategy: strategy(name, &policy.strategy, problems),
            min_quality: policy.min_quality,
            regions: policy.regions.clone(),
            providers: policy.providers.clone(),
            fallback_depth: policy.fallback_depth,
            plans: policy.plans.clone(),
            shadow: policy.shadow.as_ref().map(|s| (s.model.clone(), s.share)),
            ab: policy
                .ab
                .iter()
                .map(|a| (a.model.clone(), a.weight))
                .collect(),
        }
    }

    /// The policy's shadow model, A/B arms and plan lists name models it may use.
    fn check_variants(&self, name: &str, policy: &RawPolicy, problems: &mut Vec<String>) {
        if let Some(shadow) = &policy.shadow {
            if !self.models.contains_key(&shadow.model) {
                problems.push(format!(
                    "policies.{name}.shadow.model: unknown model `{}`",
                    shadow.model
                ));
            }
            if !(shadow.share > 0.0 && shadow.share <= 1.0) {
                problems.push(format!("policies.{name}.shadow.share must be in (0, 1]"));
            }
        }
        for arm in &policy.ab {
            if !policy.models.contains(&arm.model) {
                problems.push(format!(
                    "policies.{name}.ab: `{}` is not one of the policy's models",
                    arm.model
                ));
            }
            if arm.weight == 0 {
                problems.push(format!(
                    "policies.{name}.ab: the weight of `{}` must be positive",
                    arm.model
                ));
            }
        }
        for (plan, models) in &policy.plans {
            for m in models.iter().filter(|m| !policy.models.contains(m)) {
                problems.push(format!(
                    "policies.{name}.plans.{plan}: `{m}` is not one of the policy's models"
                ));
            }
        }
    }
}

fn provider_spec(p: &RawProvider) -> Result<ProviderSpec, String> {
    let kind = match p.kind.as_str() {
        "openai" => ProviderKind::OpenAi,
        "anthropic" => ProviderKind::Anthropic,
        other => {
            return Err(format!(
                "providers.{}.kind: unknown API shape `{other}` (expected `openai` or `anthropic`)",
                p.name
            ))
        }
    };
    if !(p.base_url.starts_with("http://") || p.base_url.starts_with("https://")) {
        return Err(format!(
            "providers.{}.base_url must start with http:// or https://",
            p.name
        ));
    }
    if p.max_response_bytes == 0 {
        return Err(format!(
            "providers.{}.max_response_bytes must be positive",
            p.name
        ));
    }
    let api_key = resolve_key(p)?;
    Ok(ProviderSpec {
        kind,
        endpoint: ProviderEndpoint {
            name: p.name.clone(),
            base_url: p.base_url.clone(),
            api_key,
            timeout: Duration::from_millis(p.timeout_ms),
            max_response_bytes: p.max_response_bytes,
        },
    })
}

/// Reads a provider key from the environment variable or file the config names.
fn resolve_key(p: &RawProvider) -> Result<Option<Secret>, String> {
    match (&p.api_key_env, &p.api_key_file) {
        (Some(_), Some(_)) => Err(format!(
            "providers.{}: set api_key_env or api_key_file, not both",
            p.name
        )),
        (Some(var), None) => std::env::var(var)
            .map(|v| Some(Secret::new(v.trim())))
            .map_err(|_| {
                format!(
                    "providers.{}.api_key_env: environment variable {var} is not set",
                    p.name
                )
            }),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map(|v| Some(Secret::new(v.trim())))
            .map_err(|e| format!("providers.{}.api_key_file: cannot read {path}: {e}", p.name)),
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::raw::{RawModel, RawPolicy, RawProvider};
    use super::*;

    fn provider(name: &str, kind: &str) -> RawProvider {
        RawProvider {
            name: name.into(),
            kind: kind.into(),
            base_url: "http://127.0.0.1:9/v1".into(),
            api_key_env: None,
            api_key_file: None,
            timeout_ms: 1000,
            max_response_bytes: 1 << 20,
        }
    }

    fn model(name: &str, provider: &str) -> RawModel {
        let toml = format!(
            "name = \"{name}\"\nprovider = \"{provider}\"\nmodel_id = \"{name}\"\n\
             input_price_micros_per_mtok = 1\noutput_price_micros_per_mtok = 1\ncontext_window = 100\n"
        );
        toml_edit::de::from_str(&toml).unwrap()
    }

    #[test]
    fn a_valid_catalog_keeps_order_prices_and_policies() {
        let mut policies = BTreeMap::new();
        policies.insert("p".to_string(), RawPolicy::ordered(&["b", "a"]));
        let c = Catalog::from_raw(
            &[provider("sim", "openai")],
            &[model("a", "sim"), model("b", "sim")],
            &policies,
        )
        .unwrap();
        let mut names: Vec<&str> = c.model_names().collect();
        names.sort_unstable();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(c.policy("p").unwrap().models, ["b", "a"]);
        assert_eq!(c.model("a").unwrap().price.input_micros_per_mtok, 1);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let mut zero = model("zero", "sim");
        zero.context_window = 0;
        zero.capabilities = vec!["telepathy".into()];
        let mut bad = RawPolicy::ordered(&["nope", "zero"]);
        bad.strategy = "random".into();
        bad.fallback_depth = Some(0);
        bad.plans.insert("free".into(), vec!["ghost".into()]);
        let mut policies = BTreeMap::new();
        policies.insert("bad".to_string(), bad);
        policies.insert("empty".to_string(), RawPolicy::ordered(&[]));
        let err = Catalog::from_raw(
            &[
                provider("sim", "openai"),
                provider("sim", "openai"),
                provider("x", "grpc"),
            ],
            &[model("a", "missing"), zero, model("a", "sim")],
            &policies,
        )
        .unwrap_err();
        let all = err.0.join("\n");
        for expected in [
            "providers: `sim` is defined twice",
            "providers.x.kind: unknown API shape `grpc`",
            "models.a.provider: unknown provider `missing`",
            "models.zero.context_window must be positive",
            "models.zero.capabilities: `telepathy` is not one of chat, embeddings",
            "models: `a` is defined twice",
            "policies.bad.models: unknown model `nope`",
            "policies.bad.models: `zero` has no chat capability",
            "policies.bad.strategy: `random` is not one of",
            "policies.bad.fallback_depth must be at least 1",
            "policies.bad.plans.free: `ghost` is not one of the policy's models",
            "policies.empty.models must not be empty",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
        }
        assert_eq!(err.0.len(), 12, "{all}");
    }
}
