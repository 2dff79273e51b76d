//! Write-ahead call intents: a provider call is recorded, with its worst-case cost, before its
//! request is sent, so that no call a provider may bill goes unbooked, whatever dies when.
//!
//! An intent ends in exactly one of three ways:
//! - the answer is booked by [`super::ledger::settle`], which swaps the intent for the real row;
//! - the attempt ends (the `discarded` step of the worker's outcome statement, `FINISH` in
//!   ragq-workers' `commit/finish.rs`): its answered calls were
//!   booked before its outcome, so the intents left are calls that failed without an answer, which
//!   providers do not bill;
//! - its worker died ([`expire`]): after the reservation TTL, once the attempt is no longer the job's
//!   running one, the intent becomes an `estimated` ledger row at its worst case.

use std::borrow::Borrow;
use std::time::Duration;

use crate::money::Usage;

use super::ledger::Booked;
use super::{LedgerEntry, Price, CACHE_EMBED_OFFSET, SHADOW_CALL_OFFSET};

/// A provider call, keyed by the attempt that makes it, on one model at one price. Before it is
/// sent it is an intent, at its worst case (what an estimate needs if it is ever booked; the job's
/// feature and tags are read from the job then); a [`LedgerEntry`] holds it with the usage the
/// provider reported.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CallIntent {
    pub tenant_id: String,
    pub job_id: String,
    pub attempt: i32,
    pub call_index: i32,
    pub provider: String,
    pub model: String,
    /// Input bounded by bytes, output by `max_tokens`.
    pub usage: Usage,
    pub price: Price,
    /// When the call was about to be sent.
    pub occurred_at: chrono::DateTime<chrono::Utc>,
}

impl From<&LedgerEntry> for CallIntent {
    /// The intent a booked row answers (benchmarks and tests record both sides of a call).
    fn from(e: &LedgerEntry) -> Self {
        e.call.clone()
    }
}

/// Records intents (idempotent: an intent recorded twice is one).
pub async fn record<I: Borrow<CallIntent>>(
    conn: &mut sqlx::PgConnection,
    intents: &[I],
) -> Result<(), sqlx::Error> {
    if intents.is_empty() {
        return Ok(());
    }
    let intents: Vec<&CallIntent> = intents.iter().map(Borrow::borrow).collect();
    let big = |f: fn(&CallIntent) -> u64| {
        intents
            .iter()
            .map(|r| i64::try_from(f(r)).unwrap_or(i64::MAX))
            .collect::<Vec<i64>>()
    };
    sqlx::query(
        "INSERT INTO call_intents (tenant_id, job_id, attempt, call_index, provider, model, \
           input_tokens, output_tokens, input_price_micros_per_mtok, output_price_micros_per_mtok, \
           cost_micros, occurred_at) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::int[], $4::int[], $5::text[], $6::text[], \
           $7::int8[], $8::int8[], $9::int8[], $10::int8[], $11::int8[], $12::timestamptz[]) \
         ON CONFLICT DO NOTHING",
    )
    .bind(intents.iter().map(|r| r.tenant_id.as_str()).collect::<Vec<_>>())
    .bind(intents.iter().map(|r| r.job_id.as_str()).collect::<Vec<_>>())
    .bind(intents.iter().map(|r| r.attempt).collect::<Vec<_>>())
    .bind(intents.iter().map(|r| r.call_index).collect::<Vec<_>>())
    .bind(intents.iter().map(|r| r.provider.as_str()).collect::<Vec<_>>())
    .bind(intents.iter().map(|r| r.model.as_str()).collect::<Vec<_>>())
    .bind(big(|r| r.usage.input_tokens))
    .bind(big(|r| r.usage.output_tokens))
    .bind(big(|r| r.price.input_micros_per_mtok))
    .bind(big(|r| r.price.output_micros_per_mtok))
    .bind(
        intents
            .iter()
            .map(|r| r.price.cost_micros(r.usage))
            .collect::<Vec<_>>(),
    )
    .bind(intents.iter().map(|r| r.occurred_at).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Books the intents of dead workers as estimated ledger rows, in one transaction that takes the
/// budget locks first like every other booking; returns what was booked.
pub async fn expire(pool: &sqlx::PgPool, ttl: Duration) -> Result<Booked, sqlx::Error> {
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    let mut tx = pool.begin().await?;
    let tenants = sqlx::query_file_scalar!("src/spend/sql/intents_expired_tenants.sql", ttl_ms)
        .fetch_all(&mut *tx)
        .await?;
    if tenants.is_empty() {
        return Ok(Booked::default());
    }
    let refs: Vec<&str> = tenants.iter().map(String::as_str).collect();
    super::budget::lock_in_order(&mut tx, &refs).await?;
    let shadow_from = i32::try_from(SHADOW_CALL_OFFSET).unwrap_or(i32::MAX);
    let cache_from = i32::try_from(CACHE_EMBED_OFFSET).unwrap_or(i32::MAX);
    let r = sqlx::query_file!(
        "src/spend/sql/intents_expire.sql",
        ttl_ms,
        shadow_from,
        cache_from
    )
    .fetch_one(&mut *tx)
    .await?;
    let booked = Booked::new(r.rows, r.tenants);
    let refs: Vec<&str> = booked.tenants.iter().map(String::as_str).collect();
    super::budget::fire_alerts(&mut tx, &refs).await?;
    tx.commit().await?;
    Ok(booked)
}
