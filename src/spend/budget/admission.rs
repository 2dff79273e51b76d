//! Admission, the pure part of budgets: given the budgets a job falls under (booked spend plus what
//! running jobs hold) and the job's worst-case estimate, run it, run it under a per-call cost cap
//! (downgrade), or refuse it naming the limit. No database here: [`super::reserve`] feeds it.

use chrono::NaiveDate;
use serde::Serialize;

use crate::money::usd;

/// A job's cost before it runs, as upper bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Estimate {
    /// Every call on the policy's priciest candidate, at full `max_tokens`.
    pub max_micros: i64,
    /// Every call on the policy's cheapest candidate, at full `max_tokens`.
    pub min_micros: i64,
    /// Input plus maximum output tokens over all calls.
    pub tokens: i64,
    /// Provider calls the job will make.
    pub calls: i64,
}

impl Estimate {
    /// Both bounds of `self` and `other` together (calls made in addition, like shadow copies).
    pub fn plus(&self, other: &Estimate) -> Estimate {
        Estimate {
            max_micros: self.max_micros.saturating_add(other.max_micros),
            min_micros: self.min_micros.saturating_add(other.min_micros),
            tokens: self.tokens.saturating_add(other.tokens),
            calls: self.calls,
        }
    }
}

/// What happens when a job does not fit a hard limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum OnLimit {
    /// Fail the job with `budget_exceeded`.
    Fail,
    /// Run it on models whose worst-case cost fits what is left; fail it if none does.
    Downgrade,
}

/// A budget and its usage in the current period, as locked for admission.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct BudgetState {
    pub id: i64,
    pub tenant_id: String,
    pub feature: String,
    pub period: String,
    pub period_start: NaiveDate,
    pub hard_limit_micros: Option<i64>,
    pub job_quota: Option<i64>,
    pub token_quota: Option<i64>,
    pub on_limit: OnLimit,
    pub cost_micros: i64,
    pub tokens: i64,
    pub jobs: i64,
    pub reserved_micros: i64,
    pub reserved_tokens: i64,
    pub reserved_jobs: i64,
}

impl BudgetState {
    fn applies_to(&self, tenant: &str, feature: &str) -> bool {
        self.tenant_id == tenant && (self.feature.is_empty() || self.feature == feature)
    }

    /// What the hard limit leaves for new reservations (negative when overspent).
    fn headroom(&self) -> Option<i64> {
        self.hard_limit_micros
            .map(|h| h - self.cost_micros - self.reserved_micros)
    }

    fn describe(&self) -> String {
        let scope = if self.feature.is_empty() {
            String::new()
        } else {
            format!(" for feature `{}`", self.feature)
        };
        format!(
            "tenant `{}`'s {} budget{scope}",
            self.tenant_id, self.period
        )
    }
}

/// One job asking to run.
#[derive(Debug, Clone)]
pub struct AdmissionRequest<'a> {
    pub tenant: &'a str,
    pub feature: &'a str,
    pub estimate: Estimate,
}

/// The answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Run it. With a cap, each call must use a model whose worst-case cost is within it.
    Admitted {
        cost_cap_micros: Option<i64>,
    },
    Denied {
        reason: String,
    },
}

/// What an admitted job holds against one budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub budget_id: i64,
    pub period_start: NaiveDate,
    pub micros: i64,
    pub tokens: i64,
}

/// Decides each request in order against the budgets, counting earlier admissions as reserved.
pub fn admit(
    states: &mut [BudgetState],
    requests: &[AdmissionRequest<'_>],
) -> Vec<(Admission, Vec<Reservation>)> {
    requests.iter().map(|r| admit_one(states, r)).collect()
}

fn admit_one(
    states: &mut [BudgetState],
    req: &AdmissionRequest<'_>,
) -> (Admission, Vec<Reservation>) {
    let applicable: Vec<usize> = (0..states.len())
        .filter(|&i| states[i].applies_to(req.tenant, req.feature))
        .collect();
    let est = req.estimate;
    if let Some(reason) = (applicable.iter()).find_map(|&i| quota_passed(&states[i], &est)) {
        return denied(reason);
    }
    let (micros, cap) = match money_to_hold(states, &applicable, &est) {
        Ok(held) => held,
        Err(reason) => return denied(reason),
    };
    let mut reservations = Vec::with_capacity(applicable.len());
    for i in applicable {
        let b = &mut states[i];
        b.reserved_micros += micros;
        b.reserved_tokens += est.tokens;
        b.reserved_jobs += 1;
        reservations.push(Reservation {
            budget_id: b.id,
            period_start: b.period_start,
            micros,
            tokens: est.tokens,
        });
    }
    (
        Admission::Admitted {
            cost_cap_micros: cap,
        },
        reservations,
    )
}

/// Why the job would pass the budget's job or token quota, if it would.
fn quota_passed(b: &BudgetState, est: &Estimate) -> Option<String> {
    if b.job_quota
        .is_some_and(|q| b.jobs + b.reserved_jobs + 1 > q)
    {
        return Some(format!(
            "{}: job quota of {} reached",
            b.describe(),
            b.job_quota.unwrap_or(0)
        ));
    }
    if b.token_quota
        .is_some_and(|q| b.tokens + b.reserved_tokens + est.tokens > q)
    {
        return Some(format!(
            "{}: token quota of {} would be passed (used or held {}, this job up to {})",
            b.describe(),
            b.token_quota.unwrap_or(0),
            b.tokens + b.reserved_tokens,
            est.tokens
        ));
    }
    None
}

/// What the job holds against the budgets in `applicable` and, under a downgrade, the cost cap
/// per call: its worst case when the tightest headroom allows it; else, if every budget that is
/// short allows a downgrade and the cheapest run still fits, the headroom split over its calls;
/// else the reason it is refused.
fn money_to_hold(
    states: &[BudgetState],
    applicable: &[usize],
    est: &Estimate,
) -> Result<(i64, Option<i64>), String> {
    let binding = (applicable.iter().copied())
        .filter_map(|i| states[i].headroom().map(|h| (i, h)))
        .min_by_key(|(_, h)| *h);
    let Some((i, headroom)) = binding.filter(|(_, h)| est.max_micros > *h) else {
        return Ok((est.max_micros, None));
    };
    let can_downgrade = applicable.iter().all(|&j| {
        states[j].on_limit == OnLimit::Downgrade
            || states[j].headroom().is_none_or(|h| est.max_micros <= h)
    });
    let calls = est.calls.max(1);
    let cap = headroom / calls;
    if can_downgrade && est.min_micros <= cap * calls {
        return Ok((cap * calls, Some(cap)));
    }
    let b = &states[i];
    Err(format!(
        "{}: {} of the {} hard limit is spent or held by running jobs; this job may cost up to {}",
        b.describe(),
        usd(b.cost_micros + b.reserved_micros),
        usd(b.hard_limit_micros.unwrap_or(0)),
        usd(if can_downgrade {
            est.min_micros
        } else {
            est.max_micros
        }),
    ))
}

fn denied(reason: String) -> (Admission, Vec<Reservation>) {
    (Admission::Denied { reason }, Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(id: i64, feature: &str, hard: Option<i64>, on_limit: OnLimit) -> BudgetState {
        BudgetState {
            id,
            tenant_id: "acme".into(),
            feature: feature.into(),
            period: "month".into(),
            period_start: NaiveDate::from_ymd_opt(2026, 11, 1).unwrap_or_default(),
            hard_limit_micros: hard,
            job_quota: None,
            token_quota: None,
            on_limit,
            cost_micros: 0,
            tokens: 0,
            jobs: 0,
            reserved_micros: 0,
            reserved_tokens: 0,
            reserved_jobs: 0,
        }
    }

    fn ask(feature: &str, max: i64, min: i64) -> AdmissionRequest<'_> {
        AdmissionRequest {
            tenant: "acme",
            feature,
            estimate: Estimate {
                max_micros: max,
                min_micros: min,
                tokens: 100,
                calls: 2,
            },
        }
    }

    #[test]
    fn admits_until_booked_plus_reserved_reaches_the_hard_limit() {
        let mut states = vec![budget(1, "", Some(1_000), OnLimit::Fail)];
        states[0].cost_micros = 300;
        let asks: Vec<_> = (0..4).map(|_| ask("x", 300, 10)).collect();
        let out = admit(&mut states, &asks);
        let admitted = out
            .iter()
            .filter(|(a, _)| matches!(a, Admission::Admitted { .. }))
            .count();
        assert_eq!(
            admitted, 2,
            "300 booked + 2 x 300 reserved = 900; a third would pass 1000"
        );
        assert!(matches!(&out[2].0, Admission::Denied { reason } if reason.contains("hard limit")));
        assert_eq!(states[0].reserved_micros, 600);
        assert_eq!(states[0].reserved_jobs, 2);
        assert_eq!(
            out[0].1,
            vec![Reservation {
                budget_id: 1,
                period_start: states[0].period_start,
                micros: 300,
                tokens: 100
            }]
        );
    }

    #[test]
    fn other_tenants_and_features_are_not_bound() {
        let mut states = vec![budget(1, "search", Some(10), OnLimit::Fail)];
        let out = admit(&mut states, &[ask("summaries", 500, 5)]);
        assert_eq!(
            out[0],
            (
                Admission::Admitted {
                    cost_cap_micros: None
                },
                Vec::new()
            )
        );
        let other = AdmissionRequest {
            tenant: "globex",
            ..ask("search", 500, 5)
        };
        assert!(out.len() == 1 && admit(&mut states, &[other])[0].1.is_empty());
    }

    #[test]
    fn the_tightest_of_tenant_and_feature_budgets_binds() {
        let mut states = vec![
            budget(1, "", Some(10_000), OnLimit::Fail),
            budget(2, "search", Some(500), OnLimit::Fail),
        ];
        let out = admit(
            &mut states,
            &[ask("search", 400, 10), ask("search", 400, 10)],
        );
        assert!(matches!(out[0].0, Admission::Admitted { .. }));
        assert_eq!(out[0].1.len(), 2, "held against both budgets");
        assert!(
            matches!(&out[1].0, Admission::Denied { reason } if reason.contains("feature `search`"))
        );
    }

    #[test]
    fn downgrade_caps_each_call_to_what_is_left() {
        let mut states = vec![budget(1, "", Some(1_000), OnLimit::Downgrade)];
        states[0].cost_micros = 800;
        let out = admit(&mut states, &[ask("x", 600, 100)]);
        assert_eq!(
            out[0].0,
            Admission::Admitted {
                cost_cap_micros: Some(100)
            },
            "200 left over 2 calls"
        );
        assert_eq!(out[0].1[0].micros, 200);
        let out = admit(&mut states, &[ask("x", 600, 100)]);
        assert!(
            matches!(&out[0].0, Admission::Denied { .. }),
            "nothing left, even for the cheapest model"
        );
    }

    #[test]
    fn quotas_deny_before_money() {
        let mut states = vec![budget(1, "", None, OnLimit::Fail)];
        states[0].job_quota = Some(1);
        states[0].token_quota = Some(150);
        let out = admit(&mut states, &[ask("x", 1, 1), ask("x", 1, 1)]);
        assert!(matches!(out[0].0, Admission::Admitted { .. }));
        assert!(matches!(&out[1].0, Admission::Denied { reason } if reason.contains("job quota")));
        states[0].job_quota = None;
        let out = admit(&mut states, &[ask("x", 1, 1)]);
        assert!(
            matches!(&out[0].0, Admission::Denied { reason } if reason.contains("token quota"))
        );
    }
}
