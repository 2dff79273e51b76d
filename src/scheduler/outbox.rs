//! The outbox relay: publishes messages committed with the rows that caused them, then deletes
//! them. Rows are locked while in flight, so concurrent relays never publish the same row at once;
//! a crash between the broker's confirm and the delete publishes again, which job ids make harmless.

use sqlx::PgPool;

use crate::queue::publisher::{OutgoingJob, ReconnectingPublisher};
use crate::queue::QueueError;

/// Rows published per pass.
const BATCH: i64 = 512;

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("cannot publish: {0}")]
    Queue(#[from] QueueError),
}

/// A message waiting in the outbox.
#[derive(sqlx::FromRow)]
struct OutboxRow {
    id: i64,
    routing_key: String,
    message_id: String,
    body: Vec<u8>,
    traceparent: Option<String>,
}

/// Publishes up to one batch; returns how many messages went out.
pub async fn relay(pool: &PgPool, publisher: &ReconnectingPublisher) -> Result<usize, RelayError> {
    let mut tx = pool.begin().await?;
    let rows: Vec<OutboxRow> = sqlx::query_as(
        "SELECT id, routing_key, message_id, body, traceparent FROM outbox \
         ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(BATCH)
    .fetch_all(&mut *tx)
    .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let jobs: Vec<OutgoingJob<'_>> = rows
        .iter()
        .map(|r| OutgoingJob {
            kind: &r.routing_key,
            id: &r.message_id,
            body: &r.body,
            traceparent: r.traceparent.as_deref(),
        })
        .collect();
    publisher.publish_jobs(&jobs, 256, || {}).await?;
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(rows.len())
}
