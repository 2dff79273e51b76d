//! Which models may answer a call and in what order: the policy's candidates filtered by
//! capability, context fit, the tenant's plan, the budget's cost cap and circuit state, ranked by
//! the policy's strategy (cost including the chance of failing over, latency, or as listed), with
//! the A/B arm a call falls in moved first. Pure given the health the router has learned.

use super::catalog::{ModelSpec, RoutingPolicy, Strategy};
use std::time::Duration;

use super::{candidate, health, CallScope, CandidateTrace, Router};
use crate::providers::{ChatRequest, ProviderClient};

/// A model that may answer a call, with its client and worst-case (or, for cost ranking,
/// expected) cost in micro-dollars.
#[derive(Clone, Copy)]
pub(super) struct Candidate<'a> {
    pub model: &'a ModelSpec,
    pub client: &'a ProviderClient,
    pub cost_micros: i64,
}

impl Router {
    /// The policy's candidates for this request, constraints applied (each skip traced with its
    /// reason), ranked by its strategy, cut to its fallback depth.
    pub(super) fn candidates<'a>(
        &'a self,
        policy: &RoutingPolicy,
        request: &ChatRequest,
        scope: CallScope<'_>,
        trace: &mut Vec<CandidateTrace>,
    ) -> Vec<Candidate<'a>> {
        let mut out = Vec::with_capacity(policy.models.len());
        for name in &policy.models {
            let Some((model, client)) = self.resolve(name) else {
                continue;
            };
            let worst = request.worst_case_micros(&model.price);
            match skip_reason(policy, model, request, scope, worst) {
                Some(why) => trace.push(candidate(model, 0, why)),
                None => out.push(Candidate {
                    model,
                    client,
                    cost_micros: worst,
                }),
            }
        }
        if policy.strategy == Strategy::Cost && out.len() > 1 {
            // Cost ranking uses the expected cost: prompt tokens counted (once per call, only
            // when there is a choice to make), `max_tokens` of output.
            let usage = crate::money::Usage {
                input_tokens: request
                    .counted_input_tokens
                    .unwrap_or_else(|| crate::providers::count_tokens(&request.messages)),
                output_tokens: u64::from(request.max_tokens.unwrap_or(0)),
            };
            for c in out.iter_mut() {
                c.cost_micros = c.model.price.cost_micros(usage);
            }
        }
        self.rank(policy.strategy, &mut out);
        if !policy.ab.is_empty() {
            ab_first(&policy.ab, request.call_id.as_deref(), &mut out);
        }
        out.truncate(policy.fallback_depth.unwrap_or(usize::MAX));
        out
    }

    /// Orders candidates by `strategy` from what health knows.
    pub(super) fn rank(&self, strategy: Strategy, candidates: &mut [Candidate<'_>]) {
        let rate = |m: &ModelSpec| self.with_health(&m.name, |h| h.failure_rate());
        match strategy {
            Strategy::Ordered => {}
            Strategy::Cost => {
                // The cheapest alternative to each candidate: the cheapest overall, or the second
                // cheapest for the cheapest itself (two passes, not a sort per candidate).
                let mut two = [i64::MAX; 2];
                for c in candidates.iter() {
                    if c.cost_micros < two[0] {
                        two = [c.cost_micros, two[0]];
                    } else if c.cost_micros < two[1] {
                        two[1] = c.cost_micros;
                    }
                }
                let cheapest_other = |own: i64| {
                    let other = if own == two[0] { two[1] } else { two[0] };
                    if other == i64::MAX {
                        own
                    } else {
                        other
                    }
                };
                let mut keyed: Vec<(f64, usize)> = candidates
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        let other = cheapest_other(c.cost_micros);
                        let expected = health::expected_cost(c.cost_micros, rate(c.model), other);
                        (expected, i)
                    })
                    .collect();
                keyed.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                reorder(candidates, keyed.into_iter().map(|k| k.1).collect());
            }
            Strategy::Latency => {
                candidates.sort_by_key(|c| {
                    self.with_health(&c.model.name, |h| h.p95())
                        .unwrap_or(Duration::ZERO)
                });
            }
            Strategy::Reliable => {
                candidates.sort_by(|a, b| rate(a.model).total_cmp(&rate(b.model)));
            }
        }
    }
}

/// Why the policy, the tenant's plan, the request's size or the budget's cap rule `model` out for
/// this call; `None` when it may answer.
fn skip_reason(
    policy: &RoutingPolicy,
    model: &ModelSpec,
    request: &ChatRequest,
    scope: CallScope<'_>,
    worst_micros: i64,
) -> Option<String> {
    let needed = request.context_input_tokens() + u64::from(request.max_tokens.unwrap_or(0));
    // Once a policy lists plans, a plan it does not name gets only what `"*"` lists: nothing
    // without it (default-deny).
    let plan_list = scope.plan.filter(|_| !policy.plans.is_empty()).map(|p| {
        (policy.plans.get(p))
            .or_else(|| policy.plans.get(crate::tenants::plans::ANY_OTHER_PLAN))
            .map_or(&[][..], Vec::as_slice)
    });
    if policy.min_quality.is_some_and(|q| model.quality_tier < q) {
        Some(format!(
            "skipped: quality tier {} is below the policy's minimum",
            model.quality_tier
        ))
    } else if (policy.regions.as_ref()).is_some_and(|r| !r.contains(&model.region)) {
        Some(format!(
            "skipped: region `{}` is not allowed by the policy",
            model.region
        ))
    } else if (policy.providers.as_ref()).is_some_and(|p| !p.contains(&model.provider)) {
        Some(format!(
            "skipped: provider `{}` is not allowed by the policy",
            model.provider
        ))
    } else if plan_list.is_some_and(|list| !list.contains(&model.name)) {
        Some(format!(
            "skipped: plan `{}` may not use this model",
            scope.plan.unwrap_or_default()
        ))
    } else if needed > u64::from(model.context_window) {
        Some(format!(
            "skipped: needs up to {needed} tokens, context window is {}",
            model.context_window
        ))
    } else {
        let cap = scope.cost_cap_micros.filter(|cap| worst_micros > *cap);
        cap.map(|cap| {
            format!("skipped: worst case {worst_micros} micro-dollars is over the budget cap {cap}")
        })
    }
}

/// A number in [0, 1) fixed by the call id (and `salt`), so splits are stable and testable.
pub(super) fn unit_hash(call_id: Option<&str>, salt: &str) -> f64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (call_id, salt).hash(&mut h);
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Moves the A/B arm this call falls in (by weight, among the arms still candidates) to the front.
pub(super) fn ab_first(
    arms: &[(String, u32)],
    call_id: Option<&str>,
    candidates: &mut [Candidate<'_>],
) {
    let present: Vec<&(String, u32)> = arms
        .iter()
        .filter(|(m, _)| candidates.iter().any(|c| &c.model.name == m))
        .collect();
    let total: u64 = present.iter().map(|(_, w)| u64::from(*w)).sum();
    if total == 0 {
        return;
    }
    let mut point = (unit_hash(call_id, "ab") * total as f64) as u64;
    let chosen = present.iter().find(|(_, w)| {
        let hit = point < u64::from(*w);
        point = point.saturating_sub(u64::from(*w));
        hit
    });
    let position = |m: &String| candidates.iter().position(|c| &c.model.name == m);
    if let Some(i) = chosen.and_then(|(m, _)| position(m)) {
        candidates[..=i].rotate_right(1);
    }
}

/// Puts `items` in the order of `order` (a permutation of their indexes).
pub(super) fn reorder<T: Copy>(items: &mut [T], order: Vec<usize>) {
    let ordered: Vec<T> = order.into_iter().map(|i| items[i]).collect();
    items.copy_from_slice(&ordered);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::config::Config;
    use crate::providers::{ChatMessage, ChatRequest};
    use crate::routing::{CallScope, Router};

    /// Three models of rising price and window, and policies exercising each rule.
    fn router() -> Router {
        let model = |name: &str, price: u64, window: u32, region: &str| {
            format!(
                "[[models]]\nname = \"{name}\"\nprovider = \"p\"\nmodel_id = \"{name}\"\n\
                 input_price_micros_per_mtok = {price}\noutput_price_micros_per_mtok = {price}\n\
                 context_window = {window}\nregion = \"{region}\"\n"
            )
        };
        let toml = format!(
            "[[providers]]\nname = \"p\"\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\n\
             {}{}{}\
             [policies.ordered]\nmodels = [\"large\", \"small\", \"medium\"]\n\
             [policies.cheapest]\nmodels = [\"large\", \"medium\", \"small\"]\nstrategy = \"cost\"\n\
             [policies.eu]\nmodels = [\"large\", \"small\"]\nregions = [\"eu\"]\n\
             [policies.tiered]\nmodels = [\"small\", \"large\"]\nplans = {{ free = [\"small\"] }}\n\
             [policies.tiered-open]\nmodels = [\"small\", \"large\"]\n\
             plans = {{ free = [\"small\"], \"*\" = [\"large\"] }}\n\
             [policies.split]\nmodels = [\"small\", \"large\"]\n\
             ab = [{{ model = \"small\", weight = 1 }}, {{ model = \"large\", weight = 1 }}]\n\
             [policies.shadowed]\nmodels = [\"small\"]\nshadow = {{ model = \"large\", share = 0.5 }}\n\
             [policies.shallow]\nmodels = [\"small\", \"medium\", \"large\"]\nfallback_depth = 2\n",
            model("small", 100_000, 1_000, "us"),
            model("medium", 1_000_000, 10_000, "us"),
            model("large", 10_000_000, 100_000, "eu"),
        );
        let cfg = Config::from_toml(&toml).unwrap();
        Router::new(Arc::new(cfg.catalog), cfg.retry).unwrap()
    }

    fn request(prompt_bytes: usize, max_tokens: u32, call_id: &str) -> ChatRequest {
        ChatRequest {
            messages: vec![ChatMessage {
                role: "user".into(),
                content: "a ".repeat(prompt_bytes / 2),
            }],
            max_tokens: Some(max_tokens),
            temperature: None,
            call_id: Some(call_id.into()),
            counted_input_tokens: None,
            credential: None,
        }
    }

    const OPEN: CallScope<'static> = CallScope {
        plan: None,
        cost_cap_micros: None,
        own_keys: None,
    };

    fn plan(
        router: &Router,
        policy: &str,
        req: &ChatRequest,
        scope: CallScope<'_>,
    ) -> (Vec<String>, Vec<String>) {
        let (order, skipped) = router.plan(policy, req, scope).unwrap();
        (
            order,
            skipped
                .into_iter()
                .map(|t| format!("{}: {}", t.model, t.outcome))
                .collect(),
        )
    }

    #[test]
    fn ordered_policies_keep_their_order_and_skip_what_does_not_fit() {
        let r = router();
        let (order, skipped) = plan(&r, "ordered", &request(10, 10, "c"), OPEN);
        assert_eq!(order, ["large", "small", "medium"]);
        assert!(skipped.is_empty());
        // 2,000 bytes of prompt and 100 of output need more than small's 1,000-token window.
        let (order, skipped) = plan(&r, "ordered", &request(2_000, 100, "c"), OPEN);
        assert_eq!(order, ["large", "medium"]);
        assert!(
            skipped[0].starts_with("small: skipped: needs up to"),
            "{skipped:?}"
        );
    }

    #[test]
    fn cost_policies_rank_by_expected_cost() {
        let (order, _) = plan(&router(), "cheapest", &request(100, 50, "c"), OPEN);
        assert_eq!(order, ["small", "medium", "large"]);
    }

    #[test]
    fn regions_plans_and_budget_caps_rule_models_out_with_a_reason() {
        let r = router();
        let (order, skipped) = plan(&r, "eu", &request(10, 10, "c"), OPEN);
        assert_eq!(order, ["large"]);
        assert!(
            skipped[0].contains("region `us` is not allowed"),
            "{skipped:?}"
        );
        let free = CallScope {
            plan: Some("free"),
            cost_cap_micros: None,
            own_keys: None,
        };
        let (order, skipped) = plan(&r, "tiered", &request(10, 10, "c"), free);
        assert_eq!(order, ["small"]);
        assert!(
            skipped[0].contains("plan `free` may not use this model"),
            "{skipped:?}"
        );
        let standard = CallScope {
            plan: Some("standard"),
            cost_cap_micros: None,
            own_keys: None,
        };
        let (order, skipped) = plan(&r, "tiered", &request(10, 10, "c"), standard);
        assert!(
            order.is_empty(),
            "a plan the policy does not list gets none of its models: {order:?}"
        );
        assert_eq!(skipped.len(), 2, "{skipped:?}");
        let (order, _) = plan(&r, "tiered-open", &request(10, 10, "c"), standard);
        assert_eq!(order, ["large"], "`*` lists what other plans may use");
        let (order, _) = plan(&r, "tiered-open", &request(10, 10, "c"), free);
        assert_eq!(order, ["small"]);
        // 20 tokens at $10/M is 200 micro-dollars, over a cap of 100; at $0.10/M it is 2.
        let capped = CallScope {
            plan: None,
            cost_cap_micros: Some(100),
            own_keys: None,
        };
        let (order, skipped) = plan(&r, "ordered", &request(2, 10, "c"), capped);
        assert_eq!(order, ["small", "medium"]);
        assert!(
            skipped[0].contains("over the budget cap 100"),
            "{skipped:?}"
        );
    }

    #[test]
    fn ab_splits_by_call_id_stably_and_fallback_depth_cuts() {
        let r = router();
        let first = |id: &str| plan(&r, "split", &request(10, 10, id), OPEN).0[0].clone();
        let firsts: Vec<String> = (0..200).map(|i| first(&format!("call-{i}"))).collect();
        let small = firsts.iter().filter(|m| *m == "small").count();
        assert!(
            (60..=140).contains(&small),
            "about half of 200 calls: {small}"
        );
        assert_eq!(
            first("call-7"),
            first("call-7"),
            "a redelivered call falls in the same arm"
        );
        let (order, _) = plan(&r, "shallow", &request(10, 10, "c"), OPEN);
        assert_eq!(order, ["small", "medium"]);
    }

    #[test]
    fn shadow_models_are_named_and_priced() {
        let r = router();
        assert_eq!(
            r.shadow_model("shadowed").map(|m| m.name.as_str()),
            Some("large")
        );
        assert!(r.shadow_model("ordered").is_none());
        assert_eq!(
            r.shadow_price("shadowed").map(|p| p.input_micros_per_mtok),
            Some(10_000_000)
        );
    }
}
