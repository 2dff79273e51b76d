//! Sending a message to the dead-letter queue: the one way a worker does it, whether the message
//! was refused at intake or its job failed for good later.

use ragq::queue::dead_letters::{self, DeadLetter};
use ragq::queue::topology::DEAD_LETTER_EXCHANGE;
use ragq::queue::{Publisher, QueueError};

use crate::WorkerContext;

/// What goes to the dead-letter queue: the message's body and routing key, the reason (its
/// `x-ragq-reason` header), the publisher it carries on, and what is known of it for the count.
pub(crate) struct Letter<'a> {
    pub routing_key: &'a str,
    pub body: &'a [u8],
    pub publisher: &'a str,
    pub count: DeadLetter<'a>,
}

/// Publishes the letter, counts it in the metric and, once published, in Postgres for the
/// dashboard (a failure there loses a chart point, not the message). The log gets only the
/// reason's code: the details may quote the message, which is tenant content.
pub(crate) async fn send(
    ctx: &WorkerContext,
    publisher: &Publisher,
    letter: Letter<'_>,
) -> Result<(), QueueError> {
    let reason = letter.count.reason;
    tracing::warn!(
        reason = %dead_letters::reason_code(reason),
        "dead-lettering message (details in its x-ragq-reason header)"
    );
    ragq::telemetry::metrics::dead_letter(reason);
    publisher
        .publish_dead_letter(
            DEAD_LETTER_EXCHANGE,
            letter.routing_key,
            letter.body,
            reason,
            letter.publisher,
        )
        .await?;
    if let Err(e) = dead_letters::record(&ctx.pool, letter.count).await {
        tracing::warn!(error = %e, "cannot count the dead letter for the dashboard");
    }
    Ok(())
}
