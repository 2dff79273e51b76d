//! Webhooks: each job outcome is POSTed to the job's URL, signed per Standard Webhooks with the
//! tenant's secret, retried with backoff until delivered or its attempts are spent, then kept for
//! replay (`replay`) with a `webhook.exhausted` event to the tenant's alert webhook.
//!
//! A delivery row is committed in the same transaction as the job outcome, so no outcome loses its
//! webhook. The worker that committed it makes the first attempt at once; the row's
//! `next_attempt_at` is pushed out by a lease meanwhile, so if that worker dies the poller of any
//! worker picks the delivery up when the lease ends. Every attempt is a row in `webhook_attempts`.

pub mod replay;
pub mod signature;
pub mod url_policy;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::tenants::TenantDirectory;

/// An error and its causes, `a: b: c`: reqwest's own message ("error sending request") hides
/// why, such as the URL policy refusing the address a name resolved to.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// A delivery ready to be attempted; `attempts` counts attempts already made.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PendingDelivery {
    pub id: String,
    pub tenant_id: String,
    pub url: String,
    pub payload: String,
    pub attempts: i32,
    /// Attempts made before the last replay: the allowance of attempts counts from here.
    pub attempts_base: i32,
    /// The job's trace as stored with the delivery: retries taken from the table continue it.
    pub traceparent: Option<String>,
    /// The job span a first attempt belongs to (in the worker that ran the job).
    #[sqlx(skip)]
    pub job_span: Option<tracing::Span>,
}

/// The result of one attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptResult {
    pub status: Option<u16>,
    pub error: Option<String>,
    pub duration: Duration,
}

impl AttemptResult {
    pub fn delivered(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

/// Delay before attempt `attempt + 1` after `attempt` failures: exponential, capped, ±20% jitter.
pub fn retry_delay(cfg: &WebhookConfig, attempt: u32) -> Duration {
    let exp = attempt.saturating_sub(1).min(30);
    let base = cfg
        .initial_backoff
        .saturating_mul(1u32 << exp)
        .min(cfg.max_backoff);
    let jitter = rand::thread_rng().gen_range(0.8..1.2);
    base.mul_f64(jitter).min(cfg.max_backoff)
}

/// Where a delivery stands after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    Pending,
    Delivered,
    /// Attempts spent; kept for replay.
    Failed,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }
}

/// One attempt, ready to be written: a row in `webhook_attempts` and the delivery's new state.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub delivery_id: String,
    pub attempt: i32,
    pub status: Option<u16>,
    pub error: Option<String>,
    pub duration: Duration,
    pub state: DeliveryState,
    /// When a pending delivery is next due.
    pub retry_in: Duration,
}

/// Where attempt records go. Workers batch them with their other writes (one transaction for many
/// jobs); a record that is lost only means the delivery is sent again when its lease ends.
pub trait AttemptLog: Clone + Send + Sync + 'static {
    fn record(&self, record: AttemptRecord) -> impl std::future::Future<Output = ()> + Send;
}

/// Writes attempt records in one statement each for attempts and deliveries. A record whose
/// delivery has moved on (another sender recorded that attempt) changes nothing.
pub async fn write_attempts(
    conn: &mut sqlx::PgConnection,
    records: &[&AttemptRecord],
) -> Result<(), sqlx::Error> {
    if records.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = records.iter().map(|r| r.delivery_id.as_str()).collect();
    let attempts: Vec<i32> = records.iter().map(|r| r.attempt).collect();
    let errors: Vec<Option<&str>> = records.iter().map(|r| r.error.as_deref()).collect();
    let millis = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    sqlx::query(
        "INSERT INTO webhook_attempts (delivery_id, attempt, status_code, error, duration_ms) \
         SELECT * FROM UNNEST($1::text[], $2::int[], $3::int[], $4::text[], $5::int[]) \
         ON CONFLICT DO NOTHING",
    )
    .bind(&ids)
    .bind(&attempts)
    .bind(
        records
            .iter()
            .map(|r| r.status.map(i32::from))
            .collect::<Vec<_>>(),
    )
    .bind(&errors)
    .bind(
        records
            .iter()
            .map(|r| i32::try_from(r.duration.as_millis()).unwrap_or(i32::MAX))
            .collect::<Vec<_>>(),
    )
    .execute(&mut *conn)
    .await?;
    // A delivery whose attempts are spent emits `webhook.exhausted` to its tenant's alert webhook
    // (once per exhaustion: a replay that fails again emits another; the event's own exhaustion
    // emits nothing).
    sqlx::query(
        "WITH moved AS ( \
           UPDATE webhook_deliveries d SET attempts = t.attempt, state = t.state, last_error = t.error, \
             delivered_at = CASE WHEN t.state = 'delivered' THEN now() END, \
             next_attempt_at = now() + make_interval(secs => t.retry_ms::float8 / 1000) \
           FROM UNNEST($1::text[], $2::int[], $3::text[], $4::text[], $5::int8[]) \
                AS t(id, attempt, state, error, retry_ms) \
           WHERE d.id = t.id AND d.attempts = t.attempt - 1 AND d.state = 'pending' \
           RETURNING d.id, d.tenant_id, d.job_id, d.event_type, d.state, d.attempts, d.last_error \
         ) \
         INSERT INTO webhook_deliveries (id, tenant_id, job_id, event_type, url, payload, state) \
         SELECT 'msg_' || replace(gen_random_uuid()::text, '-', ''), m.tenant_id, \
           'delivery:' || m.id || ':' || m.attempts, 'webhook.exhausted', tn.alert_webhook_url, \
           json_build_object('type', 'webhook.exhausted', 'timestamp', now(), 'data', json_build_object( \
             'tenant', m.tenant_id, 'webhook_id', m.id, 'job_id', m.job_id, \
             'event_type', m.event_type, 'attempts', m.attempts, 'last_error', m.last_error))::text, \
           'pending' \
         FROM moved m JOIN tenants tn ON tn.id = m.tenant_id \
         WHERE m.state = 'failed' AND m.event_type <> 'webhook.exhausted' \
           AND tn.alert_webhook_url IS NOT NULL \
         ON CONFLICT DO NOTHING",
    )
    .bind(&ids)
    .bind(&attempts)
    .bind(records.iter().map(|r| r.state.as_str()).collect::<Vec<_>>())
    .bind(&errors)
    .bind(records.iter().map(|r| millis(r.retry_in)).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Sends deliveries and hands their attempt records to an [`AttemptLog`].
#[derive(Debug, Clone)]
pub struct WebhookSender<L> {
    pool: PgPool,
    tenants: TenantDirectory,
    http: reqwest::Client,
    cfg: WebhookConfig,
    log: L,
}

impl<L: AttemptLog> WebhookSender<L> {
    /// Fails if the HTTP client cannot be built: a default client would follow redirects.
    pub fn new(
        pool: PgPool,
        tenants: TenantDirectory,
        cfg: WebhookConfig,
        log: L,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(cfg.timeout)
            // A receiver must answer itself; following redirects would send signed data elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            // Connections go only to addresses the URL policy allows, whatever a name resolves
            // to by the time of the attempt.
            .dns_resolver(Arc::new(url_policy::PolicyResolver {
                policy: cfg.url_policy.clone(),
            }))
            .build()?;
        Ok(Self {
            pool,
            tenants,
            http,
            cfg,
            log,
        })
    }

    /// Makes one attempt and records it.
    pub async fn attempt(&self, delivery: &PendingDelivery) {
        let span = match &delivery.job_span {
            Some(job) => {
                tracing::info_span!(parent: job, "webhook_attempt", attempt = delivery.attempts + 1, status = tracing::field::Empty)
            }
            None => {
                let span = tracing::info_span!(
                    "webhook_attempt",
                    attempt = delivery.attempts + 1,
                    status = tracing::field::Empty
                );
                crate::telemetry::traces::continue_trace(&span, delivery.traceparent.as_deref());
                span
            }
        };
        let result = self.post(delivery).instrument(span.clone()).await;
        if let Some(status) = result.status {
            span.record("status", status);
        }
        let record = self.record_for(delivery, &result);
        crate::telemetry::metrics::webhook_attempt(match record.state {
            DeliveryState::Delivered => "delivered",
            DeliveryState::Pending => "failed",
            DeliveryState::Failed => "exhausted",
        });
        if record.state == DeliveryState::Failed {
            tracing::warn!(delivery = %delivery.id, tenant = %delivery.tenant_id, attempts = record.attempt, "webhook attempts spent; kept for replay (`ragq webhook replay`), webhook.exhausted sent to the tenant's alert webhook");
        }
        self.log.record(record).await;
    }

    fn record_for(&self, d: &PendingDelivery, result: &AttemptResult) -> AttemptRecord {
        let attempt = d.attempts + 1;
        let since_replay = attempt - d.attempts_base;
        let attempts_spent =
            u32::try_from(since_replay).unwrap_or(u32::MAX) >= self.cfg.max_attempts;
        let state = match (result.delivered(), attempts_spent) {
            (true, _) => DeliveryState::Delivered,
            (false, true) => DeliveryState::Failed,
            (false, false) => DeliveryState::Pending,
        };
        AttemptRecord {
            delivery_id: d.id.clone(),
            attempt,
            status: result.status,
            error: result.error.clone(),
            duration: result.duration,
            state,
            retry_in: retry_delay(&self.cfg, u32::try_from(attempt).unwrap_or(1)),
        }
    }

    async fn post(&self, d: &PendingDelivery) -> AttemptResult {
        let started = Instant::now();
        let failed = |error: String| AttemptResult {
            status: None,
            error: Some(error),
            duration: started.elapsed(),
        };
        // An address in the URL itself never reaches the resolver: judge it here.
        if let Err(refusal) = self.cfg.url_policy.check_form(&d.url) {
            return failed(format!("webhook_url refused: {refusal}"));
        }
        let tenant = match self.tenants.get(&d.tenant_id).await {
            Ok(Some(t)) => t,
            Ok(None) => return failed(format!("tenant {} no longer exists", d.tenant_id)),
            Err(e) => return failed(format!("cannot load tenant: {e}")),
        };
        let now = chrono::Utc::now();
        let timestamp = now.timestamp();
        // Inside a rotation's grace period both secrets sign: the header holds both signatures.
        let signature = tenant
            .signing_secrets(&self.cfg.keyring, now)
            .map_err(|e| e.to_string())
            .and_then(|secrets| {
                signature::sign_all(&secrets, &d.id, timestamp, d.payload.as_bytes())
                    .map_err(|e| e.to_string())
            });
        let signature = match signature {
            Ok(s) => s,
            Err(e) => return failed(e),
        };
        let response = self
            .http
            .post(&d.url)
            .header("content-type", "application/json")
            .header("webhook-id", &d.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(d.payload.clone())
            .send()
            .await;
        match response {
            Ok(r) => {
                let status = r.status().as_u16();
                AttemptResult {
                    status: Some(status),
                    error: (!(200..300).contains(&status)).then(|| format!("HTTP {status}")),
                    duration: started.elapsed(),
                }
            }
            Err(e) => failed(with_causes(&e)),
        }
    }

    /// Leases up to `limit` due deliveries (pushing their next attempt out by the claim lease).
    pub async fn claim_due(&self, limit: i64) -> Result<Vec<PendingDelivery>, sqlx::Error> {
        let lease_ms = i64::try_from(self.cfg.claim_lease.as_millis()).unwrap_or(i64::MAX);
        sqlx::query_as(
            "UPDATE webhook_deliveries SET next_attempt_at = now() + make_interval(secs => $2::float8 / 1000) \
             WHERE id IN (SELECT id FROM webhook_deliveries \
                          WHERE state = 'pending' AND next_attempt_at <= now() \
                          ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED) \
             RETURNING id, tenant_id, url, payload, attempts, attempts_base, traceparent",
        )
        .bind(limit)
        .bind(lease_ms)
        .fetch_all(&self.pool)
        .await
    }

    /// Runs the sender: first attempts handed over by the worker, and due retries from the table.
    pub async fn run(self, mut fresh: mpsc::Receiver<PendingDelivery>, cancel: CancellationToken) {
        let tasks = TaskTracker::new();
        let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(self.cfg.concurrency));
        let mut tick = tokio::time::interval(self.cfg.poll_interval);
        loop {
            let batch = tokio::select! {
                _ = cancel.cancelled() => break,
                d = fresh.recv() => match d { Some(d) => vec![d], None => break },
                _ = tick.tick() => match self.claim_due(self.cfg.concurrency as i64).await {
                    Ok(due) => due,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot poll due webhooks");
                        Vec::new()
                    }
                },
            };
            for delivery in batch {
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    break;
                };
                let sender = self.clone();
                tasks.spawn(async move {
                    sender.attempt(&delivery).await;
                    drop(permit);
                });
            }
        }
        // In-flight attempts finish (bounded by the HTTP timeout); unsent ones stay leased in the
        // table and are picked up by any worker's poller when the lease ends.
        tasks.close();
        tasks.wait().await;
    }
}

#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Which URLs tenants may have ragq call (checked again at every attempt).
    pub url_policy: url_policy::UrlPolicy,
    pub timeout: Duration,
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub concurrency: usize,
    /// How long an in-process first delivery owns a webhook before the poller may take it.
    pub claim_lease: Duration,
    pub poll_interval: Duration,
    /// Opens tenants' sealed webhook secrets to sign.
    pub keyring: crate::keyring::Keyring,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> WebhookConfig {
        WebhookConfig {
            url_policy: Default::default(),
            timeout: Duration::from_secs(1),
            max_attempts: 5,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            concurrency: 1,
            claim_lease: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            keyring: Default::default(),
        }
    }

    #[test]
    fn retry_delay_grows_and_is_capped() {
        let c = cfg();
        let d1 = retry_delay(&c, 1);
        let d3 = retry_delay(&c, 3);
        assert!(
            d1 >= Duration::from_millis(800) && d1 <= Duration::from_millis(1200),
            "{d1:?}"
        );
        assert!(
            d3 >= Duration::from_millis(3200) && d3 <= Duration::from_millis(4800),
            "{d3:?}"
        );
        assert!(retry_delay(&c, 40) <= Duration::from_secs(60));
    }
}
