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
}

/// Every configured plan.
#[derive(Debug, Clone, Default)]
pub struct Plans {
    policies: BTreeMap<String, BTreeSet<String>>,
}

impl Plans {
    /// Validates the plans against the catalog's policy names, collecting problems.
    pub fn from_raw(
        raw: &BTreeMap<String, RawPlan>,
        known_policy: impl Fn(&str) -> bool,
        problems: &mut Vec<String>,
    ) -> Self {
        let mut policies = BTreeMap::new();
        for (plan, spec) in raw {
            let Some(list) = &spec.policies else { continue };
            for p in list.iter().filter(|p| !known_policy(p)) {
                problems.push(format!("plans.{plan}.policies: no policy `{p}`"));
            }
            policies.insert(plan.clone(), list.iter().cloned().collect());
        }
        Self { policies }
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
