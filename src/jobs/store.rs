//! Writing a job that arrives outside the queue (HTTP, a pipeline run) as `queued`, before its
//! message is published; it becomes ready to dispatch when a worker takes the message in.

use super::JobMessage;

/// Inserts the job as `queued`; returns false if a job with its id already exists (idempotency).
pub async fn insert_queued<'e, E>(executor: E, job: &JobMessage) -> Result<bool, sqlx::Error>
where
    E: sqlx::PgExecutor<'e>,
{
    let inserted = sqlx::query(
        "INSERT INTO jobs (tenant_id, id, kind, policy, input, tags, webhook_url, state) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'queued') ON CONFLICT (tenant_id, id) DO NOTHING",
    )
    .bind(&job.tenant)
    .bind(&job.id)
    .bind(job.kind.as_str())
    .bind(&job.policy)
    .bind(&job.input)
    .bind(serde_json::to_value(&job.tags).unwrap_or_default())
    .bind(&job.webhook_url)
    .execute(executor)
    .await?;
    Ok(inserted.rows_affected() == 1)
}
