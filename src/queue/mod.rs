//! RabbitMQ: the topology jobs travel through, confirmed publishing, and connecting with backoff.
//!
//! ```text
//!  publishers ──▶ ragq.jobs (topic) ──#──▶ ragq.jobs (quorum queue, delivery limit, DLX ragq.dlx)
//!                     ▲                          │ reject / delivery limit
//!                     │ TTL expiry               ▼
//!   ragq.retry.<ms> (quorum, per-queue TTL)   ragq.dlx (fanout) ──▶ ragq.dlq (quorum)
//! ```
//! Retry queues have one TTL each (a message TTL per queue has no head-of-line blocking); workers pick
//! the tier closest to the delay they need. Dead letters published by workers carry the reason in the
//! `x-ragq-reason` header; those dead-lettered by the broker carry its `x-death` header.

pub mod admin;
pub mod dead_letters;
pub mod identity;
pub mod publisher;
pub mod topology;

use std::time::Duration;

use lapin::{Connection, ConnectionProperties};
use tokio_util::sync::CancellationToken;

pub use publisher::Publisher;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("AMQP error: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("broker refused the message (nack)")]
    Nacked,
    #[error("message was unroutable from exchange `{exchange}` with key `{routing_key}`")]
    Unroutable {
        exchange: String,
        routing_key: String,
    },
    #[error("shutting down")]
    Cancelled,
}

/// Connects, retrying with exponential backoff until connected or cancelled.
pub async fn connect(
    url: &str,
    name: &str,
    cancel: &CancellationToken,
) -> Result<Connection, QueueError> {
    let mut delay = Duration::from_millis(200);
    loop {
        let props = ConnectionProperties::default().with_connection_name(name.into());
        match Connection::connect(url, props).await {
            Ok(conn) => return Ok(conn),
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, url = %crate::secret::redact_url(url), "cannot connect to RabbitMQ");
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return Err(QueueError::Cancelled),
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

/// The AMQP user name in a URL (`amqp://user:pass@host/vhost`), which RabbitMQ validates as user_id.
pub fn url_user(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    match rest.split_once('@') {
        Some((auth, _)) => auth.split(':').next().unwrap_or("guest").to_string(),
        None => "guest".to_string(),
    }
}

#[derive(Debug, Clone)]
pub struct QueueConfig {
    pub url: String,
    /// Jobs a worker runs at once.
    pub prefetch: u16,
    /// Deliveries a worker takes in from `ragq.jobs` at a time (unacknowledged until queued in
    /// Postgres).
    pub intake_prefetch: u16,
    pub delivery_limit: u32,
    pub max_message_bytes: usize,
    /// Delays between a job's attempts, ascending (attempt n waits the n-th; the last beyond).
    pub retry_delays: Vec<Duration>,
    /// AMQP users allowed to publish for any tenant (the api, the scheduler, `ragq submit`).
    pub trusted_publishers: Vec<String>,
    /// How long a dead letter (which may hold tenant content) stays in `ragq.dlq`; none: for ever.
    pub dead_letter_ttl: Option<Duration>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_is_read_from_url() {
        assert_eq!(url_user("amqp://alice:pw@h:5672/%2f"), "alice");
        assert_eq!(url_user("amqp://h:5672"), "guest");
    }
}
