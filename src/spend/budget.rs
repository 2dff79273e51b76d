//! Budgets and quotas: reserve a job's worst-case cost before its calls, settle after.
//!
//! A worker claims a job and, in the same transaction, asks [`reserve`] to admit it: the budgets the
//! job falls under (its tenant's, and its tenant-and-feature's) are locked in id order, [`admit`]
//! decides against booked spend plus what running jobs hold, and the job's reservation is written.
//! Because the estimate is an upper bound (the policy's priciest model, the prompt's bytes as tokens,
//! and `max_tokens` enforced on the call), booked plus reserved never passes a hard limit, however
//! many workers race. The reservation is released when the attempt's outcome commits ([`release`]),
//! when a redelivery takes the job over, or when it expires because its worker died ([`expire`]).

use chrono::NaiveDate;
use serde::Serialize;
use sqlx::PgConnection;

pub use crate::money::{parse_usd, usd};

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
    if applicable.is_empty() {
        return (
            Admission::Admitted {
                cost_cap_micros: None,
            },
            Vec::new(),
        );
    }
    let est = req.estimate;
    for &i in &applicable {
        let b = &states[i];
        if b.job_quota
            .is_some_and(|q| b.jobs + b.reserved_jobs + 1 > q)
        {
            return denied(format!(
                "{}: job quota of {} reached",
                b.describe(),
                b.job_quota.unwrap_or(0)
            ));
        }
        if b.token_quota
            .is_some_and(|q| b.tokens + b.reserved_tokens + est.tokens > q)
        {
            return denied(format!(
                "{}: token quota of {} would be passed (used or held {}, this job up to {})",
                b.describe(),
                b.token_quota.unwrap_or(0),
                b.tokens + b.reserved_tokens,
                est.tokens
            ));
        }
    }
    let binding = applicable
        .iter()
        .copied()
        .filter_map(|i| states[i].headroom().map(|h| (i, h)))
        .min_by_key(|(_, h)| *h);
    let (micros, cap) = match binding {
        Some((_, headroom)) if est.max_micros <= headroom => (est.max_micros, None),
        Some((i, headroom)) => {
            let can_downgrade = applicable.iter().all(|&j| {
                states[j].on_limit == OnLimit::Downgrade
                    || states[j].headroom().is_none_or(|h| est.max_micros <= h)
            });
            let cap = headroom / est.calls.max(1);
            if !can_downgrade || est.min_micros > cap * est.calls.max(1) {
                let b = &states[i];
                return denied(format!(
                    "{}: {} of the {} hard limit is spent or held by running jobs; this job may cost up to {}",
                    b.describe(),
                    usd(b.cost_micros + b.reserved_micros),
                    usd(b.hard_limit_micros.unwrap_or(0)),
                    usd(if can_downgrade { est.min_micros } else { est.max_micros }),
                ));
            }
            (cap * est.calls.max(1), Some(cap))
        }
        None => (est.max_micros, None),
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

fn denied(reason: String) -> (Admission, Vec<Reservation>) {
    (Admission::Denied { reason }, Vec::new())
}

/// One job of a claim batch to admit: `attempt` is the attempt just claimed.
#[derive(Debug, Clone)]
pub struct ReserveRequest<'a> {
    pub tenant: &'a str,
    pub job_id: &'a str,
    pub attempt: i32,
    pub feature: &'a str,
    pub estimate: Estimate,
}

/// Locks the budgets of `tenants` in id order, first thing in every transaction that touches budget
/// usage or the ledger's aggregates, and returns the tenants that have budgets (sorted). A batch
/// touches a tenant's usage rows in several statements (claims reserve, bookings add, outcomes
/// release) and its daily aggregates in between, so without one lock taken up front two batches
/// could take those rows in opposite orders and deadlock. The lock (`FOR NO KEY UPDATE`) does not
/// block the foreign-key checks of usage and reservation rows. Tenants without budgets can hold no
/// reservations, so the caller skips the budget statements for them.
pub async fn lock_in_order(
    conn: &mut PgConnection,
    tenants: &[&str],
) -> Result<Vec<String>, sqlx::Error> {
    if tenants.is_empty() {
        return Ok(Vec::new());
    }
    let mut budgeted: Vec<String> = sqlx::query_scalar(
        "SELECT tenant_id FROM budgets WHERE tenant_id = ANY($1) ORDER BY id FOR NO KEY UPDATE",
    )
    .bind(tenants)
    .fetch_all(&mut *conn)
    .await?;
    budgeted.sort_unstable();
    budgeted.dedup();
    Ok(budgeted)
}

/// Admits a batch of claimed jobs (in the claim's transaction) and writes their reservations.
/// Earlier reservations of the same jobs (attempts taken over) are released first.
pub async fn reserve(
    conn: &mut PgConnection,
    requests: &[ReserveRequest<'_>],
    ttl: std::time::Duration,
) -> Result<Vec<Admission>, sqlx::Error> {
    if requests.is_empty() {
        return Ok(Vec::new());
    }
    let taken_over: Vec<ReleaseKey<'_>> = requests
        .iter()
        .map(|r| ReleaseKey {
            tenant: r.tenant,
            job_id: r.job_id,
            attempt: None,
            terminal: false,
        })
        .collect();
    release(conn, &taken_over).await?;
    let mut tenants: Vec<&str> = requests.iter().map(|r| r.tenant).collect();
    tenants.sort_unstable();
    tenants.dedup();
    let mut states = lock_budgets(conn, &tenants).await?;
    if states.is_empty() {
        return Ok(vec![
            Admission::Admitted {
                cost_cap_micros: None
            };
            requests.len()
        ]);
    }
    let asks: Vec<AdmissionRequest<'_>> = requests
        .iter()
        .map(|r| AdmissionRequest {
            tenant: r.tenant,
            feature: r.feature,
            estimate: r.estimate,
        })
        .collect();
    let decisions = admit(&mut states, &asks);
    let held: Vec<(&ReserveRequest<'_>, &Reservation)> = requests
        .iter()
        .zip(&decisions)
        .flat_map(|(r, (_, res))| res.iter().map(move |x| (r, x)))
        .collect();
    write_reservations(conn, &held, ttl).await?;
    Ok(decisions.into_iter().map(|(a, _)| a).collect())
}

/// Creates the current period's usage rows and locks them, in budget id order (so concurrent
/// batches never deadlock), returning each budget with its usage.
async fn lock_budgets(
    conn: &mut PgConnection,
    tenants: &[&str],
) -> Result<Vec<BudgetState>, sqlx::Error> {
    sqlx::query(
        "INSERT INTO budget_usage (budget_id, period_start) \
         SELECT id, date_trunc(period, now() AT TIME ZONE 'UTC')::date FROM budgets \
         WHERE tenant_id = ANY($1) ORDER BY id ON CONFLICT DO NOTHING",
    )
    .bind(tenants)
    .execute(&mut *conn)
    .await?;
    sqlx::query_as(
        "SELECT b.id, b.tenant_id, b.feature, b.period, u.period_start, b.hard_limit_micros, b.job_quota, \
           b.token_quota, b.on_limit, u.cost_micros, u.tokens, u.jobs, u.reserved_micros, \
           u.reserved_tokens, u.reserved_jobs \
         FROM budgets b JOIN budget_usage u ON u.budget_id = b.id \
           AND u.period_start = date_trunc(b.period, now() AT TIME ZONE 'UTC')::date \
         WHERE b.tenant_id = ANY($1) ORDER BY b.id FOR UPDATE OF u",
    )
    .bind(tenants)
    .fetch_all(&mut *conn)
    .await
}

async fn write_reservations(
    conn: &mut PgConnection,
    held: &[(&ReserveRequest<'_>, &Reservation)],
    ttl: std::time::Duration,
) -> Result<(), sqlx::Error> {
    if held.is_empty() {
        return Ok(());
    }
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    sqlx::query(
        "WITH held AS ( \
           INSERT INTO budget_reservations (tenant_id, job_id, budget_id, attempt, period_start, micros, \
             tokens, expires_at) \
           SELECT t.*, now() + make_interval(secs => $8::float8 / 1000) \
           FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::int[], $5::date[], $6::int8[], $7::int8[]) \
             AS t(tenant_id, job_id, budget_id, attempt, period_start, micros, tokens) \
           RETURNING budget_id, period_start, micros, tokens \
         ) \
         UPDATE budget_usage u SET reserved_micros = u.reserved_micros + h.micros, \
           reserved_tokens = u.reserved_tokens + h.tokens, reserved_jobs = u.reserved_jobs + h.n \
         FROM (SELECT budget_id, period_start, sum(micros)::int8 AS micros, sum(tokens)::int8 AS tokens, \
                 count(*) AS n FROM held GROUP BY 1, 2) h \
         WHERE u.budget_id = h.budget_id AND u.period_start = h.period_start",
    )
    .bind(held.iter().map(|(r, _)| r.tenant).collect::<Vec<_>>())
    .bind(held.iter().map(|(r, _)| r.job_id).collect::<Vec<_>>())
    .bind(held.iter().map(|(_, x)| x.budget_id).collect::<Vec<_>>())
    .bind(held.iter().map(|(r, _)| r.attempt).collect::<Vec<_>>())
    .bind(held.iter().map(|(_, x)| x.period_start).collect::<Vec<_>>())
    .bind(held.iter().map(|(_, x)| x.micros).collect::<Vec<_>>())
    .bind(held.iter().map(|(_, x)| x.tokens).collect::<Vec<_>>())
    .bind(ttl_ms)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Which reservation to release: a job's (any attempt when `attempt` is None). `terminal` counts the
/// job against its budgets' job totals (its outcome is final).
#[derive(Debug, Clone, Copy)]
pub struct ReleaseKey<'a> {
    pub tenant: &'a str,
    pub job_id: &'a str,
    pub attempt: Option<i32>,
    pub terminal: bool,
}

/// Releases reservations when outcomes commit (settling: the calls are booked by then); returns
/// how many.
pub async fn release(conn: &mut PgConnection, keys: &[ReleaseKey<'_>]) -> Result<i64, sqlx::Error> {
    if keys.is_empty() {
        return Ok(0);
    }
    let tenants: Vec<&str> = keys.iter().map(|k| k.tenant).collect();
    let jobs: Vec<&str> = keys.iter().map(|k| k.job_id).collect();
    let attempts: Vec<Option<i32>> = keys.iter().map(|k| k.attempt).collect();
    let terminal: Vec<bool> = keys.iter().map(|k| k.terminal).collect();
    sqlx::query_file_scalar!(
        "src/spend/sql/budget_release.sql",
        &tenants as &[&str],
        &jobs as &[&str],
        &attempts as &[Option<i32>],
        &terminal,
    )
    .fetch_one(&mut *conn)
    .await
}

/// Releases reservations whose worker died (expired `ahead` from now); returns how many.
pub async fn expire(
    conn: &mut PgConnection,
    ahead: std::time::Duration,
) -> Result<i64, sqlx::Error> {
    let ahead_ms = i64::try_from(ahead.as_millis()).unwrap_or(i64::MAX);
    sqlx::query_file_scalar!("src/spend/sql/budget_expire.sql", ahead_ms)
        .fetch_one(&mut *conn)
        .await
}

/// Fires each configured threshold once per period for the budgets of `tenants` whose booked
/// spend crossed it, as a `budget.threshold` webhook to the tenant's alert URL.
pub async fn fire_alerts(conn: &mut PgConnection, tenants: &[&str]) -> Result<u64, sqlx::Error> {
    if tenants.is_empty() {
        return Ok(0);
    }
    let fired = sqlx::query(
        "WITH crossed AS ( \
           INSERT INTO budget_alerts (budget_id, period_start, threshold_pct, cost_micros) \
           SELECT b.id, u.period_start, t.pct, u.cost_micros \
           FROM budgets b JOIN budget_usage u ON u.budget_id = b.id \
             AND u.period_start = date_trunc(b.period, now() AT TIME ZONE 'UTC')::date \
           CROSS JOIN LATERAL unnest(b.alert_thresholds) AS t(pct) \
           WHERE b.tenant_id = ANY($1) \
             AND u.cost_micros * 100 >= t.pct::int8 * coalesce(b.soft_limit_micros, b.hard_limit_micros) \
           ON CONFLICT DO NOTHING \
           RETURNING budget_id, period_start, threshold_pct, cost_micros \
         ) \
         INSERT INTO webhook_deliveries (id, tenant_id, job_id, event_type, url, payload, state) \
         SELECT 'msg_' || replace(gen_random_uuid()::text, '-', ''), b.tenant_id, \
           'budget:' || b.id || ':' || c.period_start || ':' || c.threshold_pct, 'budget.threshold', \
           tn.alert_webhook_url, \
           json_build_object('type', 'budget.threshold', 'timestamp', now(), 'data', json_build_object( \
             'tenant', b.tenant_id, 'budget_id', b.id, 'feature', b.feature, 'period', b.period, \
             'period_start', c.period_start, 'threshold_pct', c.threshold_pct, \
             'cost_micros', c.cost_micros, 'soft_limit_micros', b.soft_limit_micros, \
             'hard_limit_micros', b.hard_limit_micros))::text, \
           'pending' \
         FROM crossed c JOIN budgets b ON b.id = c.budget_id JOIN tenants tn ON tn.id = b.tenant_id \
         WHERE tn.alert_webhook_url IS NOT NULL \
         ON CONFLICT DO NOTHING",
    )
    .bind(tenants)
    .execute(&mut *conn)
    .await?;
    Ok(fired.rows_affected())
}

/// A budget as an operator sets it.
#[derive(Debug, Clone, Serialize)]
pub struct BudgetSpec {
    pub tenant: String,
    pub feature: String,
    pub period: String,
    pub soft_limit_micros: Option<i64>,
    pub hard_limit_micros: Option<i64>,
    pub job_quota: Option<i64>,
    pub token_quota: Option<i64>,
    pub alert_thresholds: Vec<i32>,
    pub on_limit: OnLimit,
}

/// Creates or replaces the budget for (tenant, feature, period); a new budget starts with the
/// period's spend so far, read from the daily aggregates, and alerts at once for thresholds that
/// spend already passed. Returns its id.
pub async fn set(pool: &sqlx::PgPool, spec: &BudgetSpec) -> Result<i64, BudgetError> {
    spec.validate().map_err(BudgetError::Invalid)?;
    let mut tx = pool.begin().await?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM tenants WHERE id = $1)")
        .bind(&spec.tenant)
        .fetch_one(&mut *tx)
        .await?;
    if !exists {
        return Err(BudgetError::Invalid(format!(
            "unknown tenant `{}`",
            spec.tenant
        )));
    }
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO budgets (tenant_id, feature, period, soft_limit_micros, hard_limit_micros, job_quota, \
           token_quota, alert_thresholds, on_limit) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         ON CONFLICT (tenant_id, feature, period) DO UPDATE SET soft_limit_micros = excluded.soft_limit_micros, \
           hard_limit_micros = excluded.hard_limit_micros, job_quota = excluded.job_quota, \
           token_quota = excluded.token_quota, alert_thresholds = excluded.alert_thresholds, \
           on_limit = excluded.on_limit \
         RETURNING id",
    )
    .bind(&spec.tenant)
    .bind(&spec.feature)
    .bind(&spec.period)
    .bind(spec.soft_limit_micros)
    .bind(spec.hard_limit_micros)
    .bind(spec.job_quota)
    .bind(spec.token_quota)
    .bind(&spec.alert_thresholds)
    .bind(spec.on_limit)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO budget_usage (budget_id, period_start, cost_micros, tokens) \
         SELECT b.id, p.start, coalesce(sum(d.cost_micros), 0), coalesce(sum(d.input_tokens + d.output_tokens), 0) \
         FROM budgets b CROSS JOIN LATERAL (SELECT date_trunc(b.period, now() AT TIME ZONE 'UTC')::date AS start) p \
         LEFT JOIN spend_daily d ON d.tenant_id = b.tenant_id AND b.feature IN ('', d.feature) AND d.day >= p.start \
         WHERE b.id = $1 GROUP BY b.id, p.start ON CONFLICT DO NOTHING",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?;
    // Spend may already be past some thresholds: alert now, not at the tenant's next call.
    fire_alerts(&mut tx, &[spec.tenant.as_str()]).await?;
    tx.commit().await?;
    Ok(id)
}

impl BudgetSpec {
    fn validate(&self) -> Result<(), String> {
        if !matches!(self.period.as_str(), "day" | "month") {
            return Err(format!(
                "period must be `day` or `month`, not `{}`",
                self.period
            ));
        }
        if self.soft_limit_micros.is_none()
            && self.hard_limit_micros.is_none()
            && self.job_quota.is_none()
            && self.token_quota.is_none()
        {
            return Err(
                "set at least one of a soft limit, a hard limit, a job quota or a token quota"
                    .into(),
            );
        }
        if let (Some(s), Some(h)) = (self.soft_limit_micros, self.hard_limit_micros) {
            if s > h {
                return Err(format!(
                    "the soft limit {} is above the hard limit {}",
                    usd(s),
                    usd(h)
                ));
            }
        }
        if self
            .alert_thresholds
            .iter()
            .any(|t| !(1..=1000).contains(t))
        {
            return Err("alert thresholds are percentages between 1 and 1000".into());
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    #[error("invalid budget: {0}")]
    Invalid(String),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
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
