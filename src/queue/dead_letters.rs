//! The record of dead letters in Postgres: each message a worker sends to the dead-letter queue is
//! also counted there by reason, so the dashboard (any api process) can chart it per tenant. The
//! queue keeps the messages themselves; the broker's own dead letters (a delivery limit reached)
//! never pass through a worker and are seen in the queue only.

use sqlx::PgPool;

/// One dead letter. `tenant` and `kind` are those of an authorized job, never a claim read from a
/// message that failed parsing or authorization.
#[derive(Debug, Clone, Copy)]
pub struct DeadLetter<'a> {
    pub tenant: Option<&'a str>,
    pub kind: Option<&'a str>,
    /// The reason as the dead-letter header carries it; only its code (before `:`) is kept, as
    /// the details may quote the message.
    pub reason: &'a str,
    pub message_id: Option<&'a str>,
}

/// The code a reason starts with (`code: details`), bounded in length.
pub fn reason_code(reason: &str) -> String {
    let code = reason.split(':').next().unwrap_or("").trim();
    let code: String = code.chars().take(48).collect();
    if code.is_empty() {
        "unknown".into()
    } else {
        code
    }
}

pub async fn record(pool: &PgPool, letter: DeadLetter<'_>) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO dead_letters (tenant_id, kind, reason_code, message_id) VALUES ($1, $2, $3, $4)",
        letter.tenant,
        letter.kind,
        reason_code(letter.reason),
        letter.message_id,
    )
    .execute(pool)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::reason_code;

    #[test]
    fn only_the_code_is_kept() {
        assert_eq!(
            reason_code("invalid_json: expected value at line 1"),
            "invalid_json"
        );
        assert_eq!(reason_code(""), "unknown");
        assert_eq!(reason_code(&"x".repeat(100)).len(), 48);
    }
}
