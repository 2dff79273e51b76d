//! One delivery from `ragq.jobs`: parse and authorize the message, take its job in, and settle the
//! delivery as [`crate::settle`] decided (ack, dead-letter queue, or left unacked).

use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;
use lapin::message::Delivery;
use lapin::options::BasicAckOptions;
use tracing::Instrument;

use ragq::jobs::{JobMessage, PoisonReason};
use ragq::prompts::pin::PinError;
use ragq::queue::dead_letters::DeadLetter;
use ragq::queue::identity::{Origin, PUBLISHER_HEADER};
use ragq::queue::publisher::PUBLISHED_MS_HEADER;
use ragq::queue::Publisher;
use ragq::telemetry::traces::TRACEPARENT;
use ragq::tenants::Tenant;

use crate::dead_letter::Letter;
use crate::error::JobError;
use crate::settle::Disposition;
use crate::WorkerContext;

/// Processes one delivery and settles it, as one `intake` span from delivery to ack (a child of the
/// publisher's trace when the message carries a `traceparent` header).
pub async fn handle(ctx: &WorkerContext, publisher: &Publisher, delivery: Delivery) {
    let traceparent = header(&delivery, TRACEPARENT);
    let span = tracing::info_span!(
        "intake",
        job_id = tracing::field::Empty,
        tenant = tracing::field::Empty,
        kind = tracing::field::Empty,
        outcome = tracing::field::Empty,
    );
    ragq::telemetry::traces::continue_trace(&span, traceparent.as_deref());
    let origin = Origin::of(
        delivery.properties.user_id().as_ref().map(|u| u.as_str()),
        header(&delivery, PUBLISHER_HEADER).as_deref(),
        &ctx.own_amqp_user,
    );
    settle(ctx, publisher, delivery, traceparent, origin)
        .instrument(span)
        .await
}

async fn settle(
    ctx: &WorkerContext,
    publisher: &Publisher,
    delivery: Delivery,
    traceparent: Option<String>,
    origin: Origin,
) {
    // Panics inside a job's attempt are settled by the attempt; this catches the rest, so that a
    // delivery is never left unacknowledged by a task that died.
    let mut known = None;
    let disposition =
        match AssertUnwindSafe(process(ctx, &delivery, &origin, traceparent, &mut known))
            .catch_unwind()
            .await
        {
            Ok(d) => d,
            Err(payload) => {
                let error = JobError::from_panic(&*payload);
                tracing::error!(error = %error, "worker panicked outside a job's attempt");
                Disposition::DeadLetter(error.to_string())
            }
        };
    let settlement = match &disposition {
        Disposition::Ack => "ack",
        Disposition::DeadLetter(_) => "dead_letter",
        Disposition::Abandon => "unacked",
    };
    tracing::Span::current().record("outcome", settlement);
    let settled = match &disposition {
        Disposition::Ack => Ok(()),
        Disposition::DeadLetter(reason) => {
            let count = DeadLetter {
                tenant: known.as_ref().map(|k| k.0.as_str()),
                kind: known.as_ref().map(|k| k.1),
                reason,
                message_id: (delivery.properties.message_id().as_ref()).map(|m| m.as_str()),
            };
            let letter = Letter {
                routing_key: delivery.routing_key.as_str(),
                body: &delivery.data,
                publisher: origin.header_value(),
                count,
            };
            crate::dead_letter::send(ctx, publisher, letter).await
        }
        Disposition::Abandon => return,
    };
    match settled {
        Ok(()) => {
            if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
                tracing::warn!(error = %e, "ack failed; the message will be redelivered and deduplicated");
            }
        }
        // Not acked: the broker redelivers it when this channel closes, or after reconnecting.
        Err(e) => {
            tracing::warn!(error = %e, ?disposition, "cannot settle delivery; leaving it unacked")
        }
    }
}

/// Takes the delivery's job in; `known` is set to the job's tenant and kind once it is authorized.
async fn process(
    ctx: &WorkerContext,
    delivery: &Delivery,
    origin: &Origin,
    traceparent: Option<String>,
    known: &mut Option<(String, &'static str)>,
) -> Disposition {
    let mut job = match JobMessage::parse(&delivery.data, ctx.cfg.queue.max_message_bytes) {
        Ok(job) => job,
        Err(reason) => return dead_letter(&reason),
    };
    if let Some(wait) = queue_wait(delivery) {
        ragq::telemetry::metrics::queue_wait(job.kind.as_str(), wait);
    }
    let span = tracing::Span::current();
    span.record("job_id", job.id.as_str());
    span.record("tenant", job.tenant.as_str());
    span.record("kind", job.kind.as_str());
    // The URL policy, before anything runs: a job whose webhook may not be called is poison.
    if let Some(url) = &job.webhook_url {
        if let Err(refusal) = ctx.cfg.webhooks.url_policy.check(url).await {
            return dead_letter(&PoisonReason::WebhookUrl(refusal.to_string()));
        }
    }
    match authorize(ctx, origin, &job).await {
        Ok(tenant) => {
            *known = Some((tenant.id.clone(), job.kind.as_str()));
            match pin(ctx, origin, &mut job).await {
                Ok(()) => crate::intake::take_in(ctx, job, &tenant, traceparent).await,
                Err(PinError::Refused(reason)) => dead_letter(&PoisonReason::Prompt(reason)),
                Err(PinError::Db(e)) => {
                    tracing::warn!(error = %e, "cannot resolve the job's prompt");
                    Disposition::Abandon
                }
            }
        }
        Err(Some(reason)) => dead_letter(&reason),
        Err(None) => Disposition::Abandon,
    }
}

/// Resolves, checks and pins the saved prompts the job names, so a bad one is refused here. A
/// message ragq's api or scheduler published was pinned by them (the job's row holds it already):
/// it is taken as it is, since its variables were rendered away.
async fn pin(ctx: &WorkerContext, origin: &Origin, job: &mut JobMessage) -> Result<(), PinError> {
    let trusted = matches!(origin, Origin::Publisher(user)
        if ctx.cfg.queue.trusted_publishers.iter().any(|t| t == user));
    if trusted && ragq::prompts::pin::is_pinned(job) {
        return Ok(());
    }
    ragq::prompts::pin::pin(
        &ctx.pool,
        job,
        ctx.cfg.prompts,
        ctx.cfg.queue.max_message_bytes,
        "queue",
    )
    .await
}

/// How long the message waited since it was published, from ragq's millisecond header or the
/// standard timestamp (whole seconds) another publisher may have set; none without either.
fn queue_wait(delivery: &Delivery) -> Option<std::time::Duration> {
    let headers = delivery.properties.headers().as_ref();
    let from_header = headers.and_then(|h| match h.inner().get(PUBLISHED_MS_HEADER)? {
        lapin::types::AMQPValue::LongLongInt(ms) => u64::try_from(*ms).ok(),
        _ => None,
    });
    let published_ms = from_header.or_else(|| {
        delivery
            .properties
            .timestamp()
            .map(|s| s.saturating_mul(1000))
    })?;
    let now_ms = u64::try_from(chrono::Utc::now().timestamp_millis()).ok()?;
    Some(std::time::Duration::from_millis(
        now_ms.saturating_sub(published_ms),
    ))
}

/// A text header of the delivery.
fn header(delivery: &Delivery, name: &str) -> Option<String> {
    let headers = delivery.properties.headers().as_ref()?;
    match headers.inner().get(name)? {
        lapin::types::AMQPValue::LongString(s) => Some(s.to_string()),
        lapin::types::AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

/// The reason quotes the message where that helps (the field at fault and its value); it is cut
/// to [`MAX_REASON_CHARS`], so a hostile message cannot put kilobytes of its text into the dead
/// letter's header (the log gets only the reason's code).
fn dead_letter(reason: &PoisonReason) -> Disposition {
    let text: String = format!("{}: {reason}", reason.code())
        .chars()
        .take(MAX_REASON_CHARS)
        .collect();
    Disposition::DeadLetter(text)
}

const MAX_REASON_CHARS: usize = 300;

/// Checks the tenant exists and the message's publisher (its AMQP user, validated by RabbitMQ, or
/// the one ragq carried over a re-publish) may publish for it.
/// `Err(None)` means the check itself could not be made (database down).
async fn authorize(
    ctx: &WorkerContext,
    origin: &Origin,
    job: &JobMessage,
) -> Result<Tenant, Option<PoisonReason>> {
    let tenant = match ctx.tenants.get(&job.tenant).await {
        Ok(Some(t)) => t,
        Ok(None) => return Err(Some(PoisonReason::UnknownTenant(job.tenant.clone()))),
        Err(e) => {
            tracing::warn!(error = %e, "cannot load tenant");
            return Err(None);
        }
    };
    let user = match origin {
        Origin::Publisher(user) => user.as_str(),
        Origin::Anonymous => {
            return Err(Some(PoisonReason::Unauthorized(
                "message has no user_id property; publish with user_id set to your AMQP user"
                    .into(),
            )))
        }
        Origin::Forged { by } => {
            return Err(Some(PoisonReason::Unauthorized(format!(
                "header {PUBLISHER_HEADER} is set by ragq only, not by AMQP user `{}`",
                by.as_deref().unwrap_or("(none)")
            ))))
        }
    };
    let trusted = ctx.cfg.queue.trusted_publishers.iter().any(|t| t == user);
    if trusted || tenant.amqp_user.as_deref() == Some(user) {
        Ok(tenant)
    } else {
        Err(Some(PoisonReason::Unauthorized(format!(
            "AMQP user `{user}` may not publish for tenant `{}`",
            job.tenant
        ))))
    }
}
