//! Confirmed, mandatory, persistent publishing: a publish returns only once the broker has taken
//! responsibility for the message (or says why it did not).

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Confirmation, Connection};

use super::topology::{JOBS_EXCHANGE, REASON_HEADER};
use super::QueueError;

/// A channel in confirm mode. Cheap to clone; concurrent publishes share it.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
    user_id: String,
}

/// Header with the publish time in milliseconds since the epoch (see [`properties`]).
pub const PUBLISHED_MS_HEADER: &str = "x-ragq-published-ms";

/// A job to publish: routing key (its kind), message id (its id) and body.
#[derive(Debug, Clone, Copy)]
pub struct OutgoingJob<'a> {
    pub kind: &'a str,
    pub id: &'a str,
    pub body: &'a [u8],
    /// The W3C trace context the job continues, if any.
    pub traceparent: Option<&'a str>,
}

/// What to publish besides the body.
#[derive(Debug, Default, Clone)]
pub struct Envelope<'a> {
    pub message_id: Option<&'a str>,
    pub headers: Vec<(&'a str, String)>,
}

impl Publisher {
    /// Opens a confirm-mode channel; `user_id` is stamped on every message (RabbitMQ checks it).
    pub async fn open(conn: &Connection, user_id: &str) -> Result<Self, QueueError> {
        let channel = conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self {
            channel,
            user_id: user_id.to_string(),
        })
    }

    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Publishes a job to `ragq.jobs` with its kind as routing key.
    pub async fn publish_job(
        &self,
        kind: &str,
        job_id: &str,
        body: &[u8],
    ) -> Result<(), QueueError> {
        let job = OutgoingJob {
            kind,
            id: job_id,
            body,
            traceparent: None,
        };
        self.send_job(&job).await
    }

    /// Publishes one job, with its trace context as the `traceparent` header when it has one.
    pub async fn send_job(&self, job: &OutgoingJob<'_>) -> Result<(), QueueError> {
        let headers = job
            .traceparent
            .map(|t| vec![(crate::telemetry::traces::TRACEPARENT, t.to_string())])
            .unwrap_or_default();
        let env = Envelope {
            message_id: Some(job.id),
            headers,
        };
        self.publish(JOBS_EXCHANGE, job.kind, job.body, &env).await
    }

    /// Publishes many jobs with up to `window` confirms outstanding at once (one round trip per job
    /// would cap a publisher at the broker's latency). Returns the indexes of the jobs that were
    /// confirmed, and the first error if any job was not: republishing those is safe, job ids are
    /// idempotency keys.
    pub async fn publish_jobs(
        &self,
        jobs: &[OutgoingJob<'_>],
        window: usize,
        progress: impl Fn(),
    ) -> (Vec<usize>, Option<QueueError>) {
        use futures_util::stream::{FuturesUnordered, StreamExt};
        use futures_util::FutureExt;
        let mut in_flight = FuturesUnordered::new();
        let mut queued = jobs.iter().enumerate();
        let mut confirmed = Vec::with_capacity(jobs.len());
        let mut first_error = None;
        loop {
            while in_flight.len() < window.max(1) {
                let Some((i, job)) = queued.next() else { break };
                in_flight.push(self.send_job(job).map(move |r| (i, r)));
            }
            let Some((i, result)) = in_flight.next().await else {
                break;
            };
            match result {
                Ok(()) => {
                    confirmed.push(i);
                    progress();
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        (confirmed, first_error)
    }

    /// Publishes to a dead-letter exchange with the reason and the original publisher (see
    /// [`super::identity`]) in headers.
    pub async fn publish_dead_letter(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        reason: &str,
        publisher: &str,
    ) -> Result<(), QueueError> {
        let env = Envelope {
            message_id: None,
            headers: vec![
                (REASON_HEADER, reason.to_string()),
                (super::identity::PUBLISHER_HEADER, publisher.to_string()),
            ],
        };
        self.publish(exchange, routing_key, body, &env).await
    }

    /// Publishes and waits for the broker's confirm; unroutable and nacked messages are errors.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        env: &Envelope<'_>,
    ) -> Result<(), QueueError> {
        let now_ms = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0);
        let props = properties(&self.user_id, env, now_ms);
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let confirm = self
            .channel
            .basic_publish(exchange.into(), routing_key.into(), options, body, props)
            .await?
            .await?;
        settled(confirm, exchange, routing_key)
    }
}

/// Every message ragq publishes: persistent JSON carrying the publishing user (which RabbitMQ
/// validates against the connection's), the envelope's headers and its message id.
fn properties(user_id: &str, env: &Envelope<'_>, now_ms: u64) -> BasicProperties {
    let mut headers = FieldTable::default();
    // When it was published, for the worker's queue-wait figure: milliseconds in a header, and the
    // standard (whole seconds) timestamp for other consumers.
    headers.insert(
        PUBLISHED_MS_HEADER.into(),
        AMQPValue::LongLongInt(i64::try_from(now_ms).unwrap_or(i64::MAX)),
    );
    for (k, v) in &env.headers {
        headers.insert(
            (*k).into(),
            AMQPValue::LongString(LongString::from(v.as_str())),
        );
    }
    let props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_user_id(user_id.into())
        .with_timestamp(now_ms / 1000)
        .with_headers(headers);
    match env.message_id {
        Some(id) => props.with_message_id(id.into()),
        None => props,
    }
}

/// What a publisher confirm means: a plain ack is delivery to a queue; an ack carrying the
/// returned message (`mandatory` with no queue bound) is unroutable; a nack is the broker's refusal.
fn settled(confirm: Confirmation, exchange: &str, routing_key: &str) -> Result<(), QueueError> {
    match confirm {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        Confirmation::Ack(Some(_)) => Err(QueueError::Unroutable {
            exchange: exchange.to_string(),
            routing_key: routing_key.to_string(),
        }),
        Confirmation::Nack(_) => Err(QueueError::Nacked),
    }
}

/// A publisher that reconnects on demand: a publish that fails on a dead connection is retried once on
/// a fresh one. For processes that publish now and then (api, `ragq submit`).
pub struct ReconnectingPublisher {
    cfg: super::QueueConfig,
    name: String,
    current: tokio::sync::Mutex<Option<(Connection, Publisher)>>,
}

impl ReconnectingPublisher {
    pub fn new(cfg: super::QueueConfig, name: &str) -> Self {
        Self {
            cfg,
            name: name.to_string(),
            current: tokio::sync::Mutex::new(None),
        }
    }

    async fn publisher(&self) -> Result<Publisher, QueueError> {
        let mut current = self.current.lock().await;
        if let Some((conn, publisher)) = current.as_ref() {
            if conn.status().connected() {
                return Ok(publisher.clone());
            }
        }
        let conn = Connection::connect(
            &self.cfg.url,
            lapin::ConnectionProperties::default().with_connection_name(self.name.as_str().into()),
        )
        .await?;
        let setup = conn.create_channel().await?;
        super::topology::declare(&setup, &self.cfg).await?;
        let publisher = Publisher::open(&conn, &super::url_user(&self.cfg.url)).await?;
        let _ = setup.close(200, "declared".into()).await;
        *current = Some((conn, publisher.clone()));
        Ok(publisher)
    }

    /// Publishes many jobs pipelined (see [`Publisher::publish_jobs`]); jobs left unconfirmed by a
    /// lost connection are republished once on a fresh one.
    pub async fn publish_jobs(
        &self,
        jobs: &[OutgoingJob<'_>],
        window: usize,
        progress: impl Fn(),
    ) -> Result<(), QueueError> {
        let (confirmed, error) = self
            .publisher()
            .await?
            .publish_jobs(jobs, window, &progress)
            .await;
        let Some(error) = error else { return Ok(()) };
        tracing::warn!(error = %error, unconfirmed = jobs.len() - confirmed.len(), "republishing unconfirmed jobs");
        let mut done = vec![false; jobs.len()];
        for i in confirmed {
            done[i] = true;
        }
        let rest: Vec<OutgoingJob<'_>> = jobs
            .iter()
            .zip(&done)
            .filter(|(_, d)| !**d)
            .map(|(j, _)| *j)
            .collect();
        *self.current.lock().await = None;
        match self
            .publisher()
            .await?
            .publish_jobs(&rest, window, &progress)
            .await
        {
            (_, Some(e)) => Err(e),
            (_, None) => Ok(()),
        }
    }

    /// Publishes a job, reconnecting once if the connection was lost.
    pub async fn publish_job(
        &self,
        kind: &str,
        job_id: &str,
        body: &[u8],
    ) -> Result<(), QueueError> {
        let job = OutgoingJob {
            kind,
            id: job_id,
            body,
            traceparent: None,
        };
        self.send_job(&job).await
    }

    /// [`Publisher::send_job`], reconnecting once if the connection was lost.
    pub async fn send_job(&self, job: &OutgoingJob<'_>) -> Result<(), QueueError> {
        match self.publisher().await?.send_job(job).await {
            Err(QueueError::Amqp(_)) => {
                *self.current.lock().await = None;
                self.publisher().await?.send_job(job).await
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_persistent_json_from_the_publishing_user() {
        let env = Envelope {
            message_id: Some("job-1"),
            headers: vec![(REASON_HEADER, "schema: bad".to_string())],
        };
        let p = properties("acme-user", &env, 1_764_547_200_123);
        assert_eq!(p.delivery_mode(), &Some(2), "persistent");
        assert_eq!(
            p.content_type().as_ref().map(|c| c.as_str()),
            Some("application/json")
        );
        assert_eq!(p.user_id().as_ref().map(|u| u.as_str()), Some("acme-user"));
        assert_eq!(p.message_id().as_ref().map(|m| m.as_str()), Some("job-1"));
        let headers = p.headers().as_ref().unwrap();
        assert!(matches!(
            headers.inner().get(REASON_HEADER),
            Some(AMQPValue::LongString(r)) if r.to_string() == "schema: bad"
        ));
        assert_eq!(p.timestamp(), &Some(1_764_547_200));
        assert_eq!(
            headers.inner().get(PUBLISHED_MS_HEADER),
            Some(&AMQPValue::LongLongInt(1_764_547_200_123))
        );
        let bare = properties(
            "u",
            &Envelope {
                message_id: None,
                headers: vec![],
            },
            0,
        );
        assert!(bare.message_id().is_none());
    }

    #[test]
    fn only_a_plain_ack_is_a_publish() {
        assert!(settled(Confirmation::Ack(None), "x", "k").is_ok());
        assert!(settled(Confirmation::NotRequested, "x", "k").is_ok());
        assert!(matches!(
            settled(Confirmation::Nack(None), "x", "k"),
            Err(QueueError::Nacked)
        ));
    }
}
