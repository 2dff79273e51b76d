//! Budgets and quotas: reserve a job's worst-case cost before its calls, settle after.
//!
//! A worker claims a job and, in the same transaction, asks [`reserve`] to admit it: the budgets the
//! job falls under (its tenant's, and its tenant-and-feature's) are locked in id order, [`admit`]
//! decides against booked spend plus what running jobs hold, and the job's reservation is written.
//! Because the estimate is an upper bound (the policy's priciest model, the prompt's bytes as tokens,
//! and `max_tokens` enforced on the call), booked plus reserved never passes a hard limit, however
//! many workers race. The reservation is released when the attempt's outcome commits ([`release`]),
//! when a redelivery takes the job over, or when it expires because its worker died ([`expire`]).

use serde::Serialize;

mod admission;
mod reservations;

pub use crate::money::{parse_usd, usd};
pub use admission::*;
pub use reservations::*;

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
pub async fn set(
    pool: &sqlx::PgPool,
    actor: &crate::audit::Actor,
    spec: &BudgetSpec,
) -> Result<i64, BudgetError> {
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
    let before: Option<serde_json::Value> = sqlx::query_scalar(
        "SELECT to_jsonb(b) - 'id' - 'tenant_id' - 'created_at' FROM budgets b \
         WHERE tenant_id = $1 AND feature = $2 AND period = $3 FOR UPDATE",
    )
    .bind(&spec.tenant)
    .bind(&spec.feature)
    .bind(&spec.period)
    .fetch_optional(&mut *tx)
    .await?;
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
    let target = format!("{}/{}", spec.feature, spec.period);
    let change = crate::audit::Change {
        action: "budget.set",
        tenant: Some(&spec.tenant),
        target: &target,
        before,
        after: Some(serde_json::json!(spec)),
    };
    crate::audit::record(&mut tx, actor, change).await?;
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
