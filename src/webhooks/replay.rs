//! Replaying kept deliveries: a failed delivery (or any other) goes back to `pending` with its id,
//! which is the `webhook-id` receivers dedupe on, and a fresh allowance of attempts; the senders'
//! poll picks it up. One audit row per replay names what was asked and how many were re-sent.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::audit::{self, Actor, Change};

/// Which of a tenant's deliveries to replay.
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayFilter {
    /// One job's deliveries.
    pub job_id: Option<String>,
    /// Deliveries created at or after this time (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// Deliveries created before this time.
    pub until: Option<DateTime<Utc>>,
    /// `failed` (default: attempts spent), `delivered`, or `any` (pending ones are left alone:
    /// they are still being sent).
    pub state: Option<String>,
}

impl ReplayFilter {
    fn states(&self) -> Result<Vec<&'static str>, String> {
        match self.state.as_deref().unwrap_or("failed") {
            "failed" => Ok(vec!["failed"]),
            "delivered" => Ok(vec!["delivered"]),
            "any" => Ok(vec!["failed", "delivered"]),
            other => Err(format!(
                "`state` is failed, delivered or any, not `{other}`"
            )),
        }
    }
}

/// What a replay did.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Replayed {
    /// How many deliveries were put back to be sent.
    pub replayed: usize,
    /// Their ids (their `webhook-id`), at most the first 1,000.
    pub webhook_ids: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{0}")]
    Invalid(String),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

/// Puts `tenant`'s deliveries selected by `filter` back to be sent, as `actor`.
pub async fn replay(
    pool: &PgPool,
    actor: &Actor,
    tenant: &str,
    filter: &ReplayFilter,
) -> Result<Replayed, ReplayError> {
    let states = filter.states().map_err(ReplayError::Invalid)?;
    if let (Some(since), Some(until)) = (filter.since, filter.until) {
        if since >= until {
            return Err(ReplayError::Invalid(
                "`since` must come before `until`".into(),
            ));
        }
    }
    let mut tx = pool.begin().await?;
    let ids: Vec<String> = sqlx::query_scalar(
        "UPDATE webhook_deliveries SET state = 'pending', attempts_base = attempts, \
           next_attempt_at = now(), delivered_at = NULL \
         WHERE tenant_id = $1 AND state = ANY($2) \
           AND ($3::text IS NULL OR job_id = $3) \
           AND ($4::timestamptz IS NULL OR created_at >= $4) \
           AND ($5::timestamptz IS NULL OR created_at < $5) \
         RETURNING id",
    )
    .bind(tenant)
    .bind(&states)
    .bind(filter.job_id.as_deref())
    .bind(filter.since)
    .bind(filter.until)
    .fetch_all(&mut *tx)
    .await?;
    let change = Change {
        action: "webhook.replay",
        tenant: Some(tenant),
        target: filter.job_id.as_deref().unwrap_or("deliveries"),
        before: None,
        after: Some(serde_json::json!({ "filter": filter, "replayed": ids.len() })),
    };
    audit::record(&mut tx, actor, change).await?;
    tx.commit().await?;
    Ok(Replayed {
        replayed: ids.len(),
        webhook_ids: ids.into_iter().take(1_000).collect(),
    })
}
