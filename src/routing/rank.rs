//! Which models may answer a call and in what order: the policy's candidates filtered by
//! capability, context fit, the tenant's plan, the budget's cost cap and circuit state, ranked by
//! the policy's strategy (cost including the chance of failing over, latency, or as listed), with
//! the A/B arm a call falls in moved first. Pure given the health the router has learned.

use super::catalog::{ModelSpec, RoutingPolicy, Strategy};
use std::time::Duration;

use super::{candidate, health, CallScope, CandidateTrace, Router};
use crate::providers::{ChatRequest, ProviderClient};

impl Router {
    /// The policy's candidates for this request, constraints applied (each skip traced with its
    /// reason), ranked by its strategy, cut to its fallback depth.
    pub(super) fn candidates<'a>(
        &'a self,
        policy: &RoutingPolicy,
        request: &ChatRequest,
        scope: CallScope<'_>,
        trace: &mut Vec<CandidateTrace>,
    ) -> Vec<(&'a ModelSpec, &'a ProviderClient)> {
        let cost_cap_micros = scope.cost_cap_micros;
        let plan_allows = |model: &str| {
            let allowed = scope.plan.and_then(|p| policy.plans.get(p));
            allowed.is_none_or(|list| list.iter().any(|m| m == model))
        };
        let needed = request.context_input_tokens() + u64::from(request.max_tokens.unwrap_or(0));
        let mut out = Vec::with_capacity(policy.models.len());
        for name in &policy.models {
            let Some((model, client)) = self.resolve(name) else {
                continue;
            };
            let worst = request.worst_case_micros(&model.price);
            let skip = if policy.min_quality.is_some_and(|q| model.quality_tier < q) {
                Some(format!(
                    "skipped: quality tier {} is below the policy's minimum",
                    model.quality_tier
                ))
            } else if policy
                .regions
                .as_ref()
                .is_some_and(|r| !r.contains(&model.region))
            {
                Some(format!(
                    "skipped: region `{}` is not allowed by the policy",
                    model.region
                ))
            } else if policy
                .providers
                .as_ref()
                .is_some_and(|p| !p.contains(&model.provider))
            {
                Some(format!(
                    "skipped: provider `{}` is not allowed by the policy",
                    model.provider
                ))
            } else if !plan_allows(&model.name) {
                Some(format!(
                    "skipped: plan `{}` may not use this model",
                    scope.plan.unwrap_or_default()
                ))
            } else if needed > u64::from(model.context_window) {
                Some(format!(
                    "skipped: needs up to {needed} tokens, context window is {}",
                    model.context_window
                ))
            } else if cost_cap_micros.is_some_and(|cap| worst > cap) {
                Some(format!(
                    "skipped: worst case {worst} micro-dollars is over the budget cap {}",
                    cost_cap_micros.unwrap_or(0)
                ))
            } else {
                None
            };
            match skip {
                Some(why) => trace.push(candidate(model, 0, why)),
                None => out.push((model, client, worst)),
            }
        }
        if policy.strategy == Strategy::Cost && out.len() > 1 {
            // Cost ranking uses the expected cost: prompt tokens counted (once per call, only
            // when there is a choice to make), `max_tokens` of output.
            let usage = crate::providers::Usage {
                input_tokens: request
                    .counted_input_tokens
                    .unwrap_or_else(|| crate::tokens::count_messages(&request.messages)),
                output_tokens: u64::from(request.max_tokens.unwrap_or(0)),
            };
            for c in out.iter_mut() {
                c.2 = c.0.price.cost_micros(usage);
            }
        }
        self.rank(policy.strategy, &mut out);
        if !policy.ab.is_empty() {
            ab_first(&policy.ab, request.call_id.as_deref(), &mut out);
        }
        out.truncate(policy.fallback_depth.unwrap_or(usize::MAX));
        out.into_iter().map(|(m, c, _)| (m, c)).collect()
    }

    /// Orders candidates (model, client, worst-case cost) by `strategy` from what health knows.
    pub(super) fn rank(
        &self,
        strategy: Strategy,
        candidates: &mut [(&ModelSpec, &ProviderClient, i64)],
    ) {
        let rate = |m: &ModelSpec| self.with_health(&m.name, |h| h.failure_rate());
        match strategy {
            Strategy::Ordered => {}
            Strategy::Cost => {
                // The cheapest alternative to each candidate: the cheapest overall, or the second
                // cheapest for the cheapest itself (two passes, not a sort per candidate).
                let mut two = [i64::MAX; 2];
                for c in candidates.iter() {
                    if c.2 < two[0] {
                        two = [c.2, two[0]];
                    } else if c.2 < two[1] {
                        two[1] = c.2;
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
                        (
                            health::expected_cost(c.2, rate(c.0), cheapest_other(c.2)),
                            i,
                        )
                    })
                    .collect();
                keyed.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                reorder(candidates, keyed.into_iter().map(|k| k.1).collect());
            }
            Strategy::Latency => {
                candidates.sort_by_key(|c| {
                    self.with_health(&c.0.name, |h| h.p95())
                        .unwrap_or(Duration::ZERO)
                });
            }
            Strategy::Reliable => {
                candidates.sort_by(|a, b| rate(a.0).total_cmp(&rate(b.0)));
            }
        }
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
    candidates: &mut [(&ModelSpec, &ProviderClient, i64)],
) {
    let present: Vec<&(String, u32)> = arms
        .iter()
        .filter(|(m, _)| candidates.iter().any(|c| &c.0.name == m))
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
    if let Some(i) = chosen.and_then(|(m, _)| candidates.iter().position(|c| &c.0.name == m)) {
        candidates[..=i].rotate_right(1);
    }
}

/// Puts `items` in the order of `order` (a permutation of their indexes).
pub(super) fn reorder<T: Copy>(items: &mut [T], order: Vec<usize>) {
    let ordered: Vec<T> = order.into_iter().map(|i| items[i]).collect();
    items.copy_from_slice(&ordered);
}
