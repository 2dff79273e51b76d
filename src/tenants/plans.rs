//! Plans: what a tenant's plan allows. Today: which routing policies its jobs may name.
//!
//! Two rules meet here, both default-deny once written down:
//! - `[plans.<name>] policies = [...]`: a plan with a list may name only those policies; a plan
//!   without an entry (or without a list) is not restricted by this rule.
//! - a policy's own `plans = { free = [...], "*" = [...] }`: once a policy lists plans, a plan it
//!   does not list may use none of its models, unless the policy gives `"*"` (any other plan) a list.
//!   That rule lives with the policy's models, in routing's candidate filter
//!   ([`crate::routing`]); this module holds the first.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

/// The key of a policy's `plans` table that applies to every plan it does not name.
pub const ANY_OTHER_PLAN: &str = "*";

/// `[plans.<name>]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlan {
    /// The only routing policies the plan's tenants may name; unset: any.
    #[serde(default)]
    pub policies: Option<Vec<String>>,
    /// The plan's share of the workers against other tenants' (default 1).
    #[serde(default)]
    pub weight: Option<f64>,
    /// Most jobs of one of its tenants running at once (default: no cap).
    #[serde(default)]
    pub max_in_flight: Option<u32>,
    /// The response cache for its tenants' calls (see [`crate::cache`]).
    #[serde(default)]
    pub cache: Option<crate::cache::CacheRequest>,
}

/// A tenant's claim on the workers: its weight against other tenants with work, and how many of
/// its jobs may run at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Share {
    pub weight: f64,
    pub max_in_flight: Option<u32>,
}

impl Share {
    /// The cap as the `integer` columns hold it (a cap beyond their range is no cap in practice).
    pub fn max_in_flight_column(&self) -> Option<i32> {
        (self.max_in_flight).map(|c| i32::try_from(c).unwrap_or(i32::MAX))
    }
}

/// The weights a plan or tenant may have: a ratio of 1,000,000 between the smallest and the
/// largest is plenty, and keeps virtual times finite.
pub const WEIGHTS: std::ops::RangeInclusive<f64> = 0.001..=1000.0;

/// Every configured plan.
#[derive(Debug, Clone, Default)]
pub struct Plans {
    policies: BTreeMap<String, BTreeSet<String>>,
    shares: BTreeMap<String, Share>,
}

impl Plans {
    /// Validates the plans against the catalog's policy names, collecting problems.
    pub fn from_raw(
        raw: &BTreeMap<String, RawPlan>,
        known_policy: impl Fn(&str) -> bool,
        problems: &mut Vec<String>,
    ) -> Self {
        let mut policies = BTreeMap::new();
        let mut shares = BTreeMap::new();
        for (plan, spec) in raw {
            let weight = spec.weight.unwrap_or(1.0);
            if !WEIGHTS.contains(&weight) {
                problems.push(format!(
                    "plans.{plan}.weight: between {} and {}, got {weight}",
                    WEIGHTS.start(),
                    WEIGHTS.end()
                ));
            }
            if spec.max_in_flight == Some(0) {
                problems.push(format!("plans.{plan}.max_in_flight: at least 1"));
            }
            let share = Share {
                weight,
                max_in_flight: spec.max_in_flight,
            };
            shares.insert(plan.clone(), share);
            let Some(list) = &spec.policies else { continue };
            for p in list.iter().filter(|p| !known_policy(p)) {
                problems.push(format!("plans.{plan}.policies: no policy `{p}`"));
            }
            policies.insert(plan.clone(), list.iter().cloned().collect());
        }
        Self { policies, shares }
    }

    /// A tenant's share: its own weight and cap where set, else its plan's, else weight 1 and
    /// no cap.
    pub fn share(&self, plan: &str, weight: Option<f64>, max_in_flight: Option<u32>) -> Share {
        let of_plan = self.shares.get(plan).copied().unwrap_or(Share {
            weight: 1.0,
            max_in_flight: None,
        });
        Share {
            weight: weight.unwrap_or(of_plan.weight),
            max_in_flight: max_in_flight.or(of_plan.max_in_flight),
        }
    }

    /// Whether tenants on `plan` may name `policy`; the refusal says which rule.
    pub fn check_policy(&self, plan: &str, policy: &str) -> Result<(), String> {
        match self.policies.get(plan) {
            Some(allowed) if !allowed.contains(policy) => Err(format!(
                "plan `{plan}` may not use routing policy `{policy}` (plans.{plan}.policies)"
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_with_a_list_names_only_its_policies_and_unknown_names_are_refused() {
        let raw = BTreeMap::from([(
            "free".to_string(),
            RawPlan {
                policies: Some(vec!["cheap".into(), "ghost".into()]),
                ..RawPlan::default()
            },
        )]);
        let mut problems = Vec::new();
        let plans = Plans::from_raw(&raw, |p| p == "cheap", &mut problems);
        assert_eq!(problems, ["plans.free.policies: no policy `ghost`"]);
        assert!(plans.check_policy("free", "cheap").is_ok());
        let refusal = plans.check_policy("free", "best").unwrap_err();
        assert!(refusal.contains("plan `free` may not use routing policy `best`"));
        assert!(plans.check_policy("standard", "best").is_ok());
    }
}
