//! Names and declarations of ragq's exchanges and queues. Declaring is idempotent; every process
//! declares on connect so that any of them may start first. Retries wait in Postgres (a queued
//! job's `ready_at`), not in queues: ragq.jobs is only the way in.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};

use super::QueueConfig;

pub const JOBS_EXCHANGE: &str = "ragq.jobs";
pub const JOBS_QUEUE: &str = "ragq.jobs";
pub const DEAD_LETTER_EXCHANGE: &str = "ragq.dlx";
pub const DEAD_LETTER_QUEUE: &str = "ragq.dlq";
/// Header carrying the reason a worker dead-lettered a message.
pub const REASON_HEADER: &str = "x-ragq-reason";

fn quorum_args(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    for (k, v) in pairs {
        args.insert((*k).into(), v.clone());
    }
    args
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

/// Declares the whole topology.
pub async fn declare(channel: &Channel, cfg: &QueueConfig) -> Result<(), lapin::Error> {
    exchange(channel, JOBS_EXCHANGE, ExchangeKind::Topic).await?;
    exchange(channel, DEAD_LETTER_EXCHANGE, ExchangeKind::Fanout).await?;
    // Dead letters may hold tenant content: they expire (queue.dead_letter_ttl_days). Declared
    // as a queue argument, which an existing ragq.dlq declared without it refuses: see README.
    let dlq_args: Vec<(&str, AMQPValue)> = (cfg.dead_letter_ttl)
        .map(|ttl| i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX))
        .map(|ms| ("x-message-ttl", AMQPValue::LongLongInt(ms)))
        .into_iter()
        .collect();
    queue(channel, DEAD_LETTER_QUEUE, &dlq_args).await?;
    bind(channel, DEAD_LETTER_QUEUE, DEAD_LETTER_EXCHANGE, "").await?;
    let limit = i64::from(cfg.delivery_limit);
    let jobs_args = [
        ("x-delivery-limit", AMQPValue::LongLongInt(limit)),
        ("x-dead-letter-exchange", text(DEAD_LETTER_EXCHANGE)),
    ];
    queue(channel, JOBS_QUEUE, &jobs_args).await?;
    bind(channel, JOBS_QUEUE, JOBS_EXCHANGE, "#").await?;
    Ok(())
}

async fn exchange(channel: &Channel, name: &str, kind: ExchangeKind) -> Result<(), lapin::Error> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(name.into(), kind, durable, FieldTable::default())
        .await
}

/// A durable quorum queue with `args`.
async fn queue(
    channel: &Channel,
    name: &str,
    args: &[(&str, AMQPValue)],
) -> Result<(), lapin::Error> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(name.into(), durable, quorum_args(args))
        .await
        .map(|_| ())
}

async fn bind(
    channel: &Channel,
    queue: &str,
    exchange: &str,
    key: &str,
) -> Result<(), lapin::Error> {
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
}
