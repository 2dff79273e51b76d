//! Writing the ledger: one statement books a batch of provider calls and, from the rows that were
//! really inserted (a re-written call is a no-op), advances the daily aggregates and the usage of
//! every budget the calls fall under. Totals therefore move with the ledger in the same transaction,
//! and nothing is ever counted twice.
//!
//! Workers book through write-ahead intents ([`super::intents`]): [`settle`] inserts a call only
//! while its intent is there, and removes the intent in the same statement, so a call is booked once
//! whether the answer, a retried batch or the expiry of a dead worker's intent gets there first.
//!
//! Every worker's batches touch the same aggregate rows (a tenant's day), so aggregate rows are
//! upserted in key order: concurrent batches then lock shared rows in one global order and cannot
//! deadlock (unordered, 4 workers hit 250 deadlocks in a 10,000-job run, each a 1 s stall). Budget
//! rows are locked first, in id order, by [`super::budget::lock_in_order`].

use super::LedgerEntry;

/// What a booking statement did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Booked {
    /// Rows inserted (rows already there, or without an intent, are not counted).
    pub rows: u64,
    /// Tenants whose spend moved, for alerts.
    pub tenants: Vec<String>,
}

/// Runs a booking statement (a `.sql` file taking the ledger columns as arrays $1..$19 and
/// answering `rows` and `tenants`) over `rows`.
macro_rules! book {
    ($file:literal, $conn:expr, $rows:expr) => {{
        let c = Columns::of($rows);
        let r = sqlx::query_file!(
            $file,
            &c.tenant_id as &[&str],
            &c.job_id as &[&str],
            &c.attempt,
            &c.call_index,
            &c.provider as &[&str],
            &c.model as &[&str],
            &c.feature as &[&str],
            &c.input_tokens,
            &c.output_tokens,
            &c.input_price,
            &c.output_price,
            &c.cost_micros,
            &c.latency_ms,
            &c.tags as &[&serde_json::Value],
            &c.occurred_at,
            &c.cache_hit as &[Option<&str>],
            &c.saved_micros,
            &c.prompt as &[&str],
            &c.prompt_version,
        )
        .fetch_one(&mut *$conn)
        .await?;
        Booked::new(r.rows, r.tenants)
    }};
}

/// Books `rows` directly, without intents (imports, fixtures); a row already there is a no-op.
pub async fn write(
    conn: &mut sqlx::PgConnection,
    rows: &[&LedgerEntry],
) -> Result<Booked, sqlx::Error> {
    if rows.is_empty() {
        return Ok(Booked::default());
    }
    Ok(book!("src/spend/sql/ledger_write.sql", conn, rows))
}

/// Books answered calls in place of their intents: a row is inserted only if its intent was still
/// there (not booked already, not expired into an estimate), and the intent goes. Calls the
/// response cache answered are booked with them, intent or not (see `ledger_settle.sql`).
pub async fn settle(
    conn: &mut sqlx::PgConnection,
    rows: &[&LedgerEntry],
) -> Result<Booked, sqlx::Error> {
    if rows.is_empty() {
        return Ok(Booked::default());
    }
    Ok(book!("src/spend/sql/ledger_settle.sql", conn, rows))
}

impl Booked {
    pub(super) fn new(rows: i64, tenants: Vec<String>) -> Self {
        Self {
            rows: u64::try_from(rows).unwrap_or(0),
            tenants,
        }
    }
}

/// Ledger rows as the column arrays the booking statements bind.
struct Columns<'a> {
    tenant_id: Vec<&'a str>,
    job_id: Vec<&'a str>,
    attempt: Vec<i32>,
    call_index: Vec<i32>,
    provider: Vec<&'a str>,
    model: Vec<&'a str>,
    feature: Vec<&'a str>,
    input_tokens: Vec<i64>,
    output_tokens: Vec<i64>,
    input_price: Vec<i64>,
    output_price: Vec<i64>,
    cost_micros: Vec<i64>,
    latency_ms: Vec<i32>,
    tags: Vec<&'a serde_json::Value>,
    occurred_at: Vec<chrono::DateTime<chrono::Utc>>,
    cache_hit: Vec<Option<&'static str>>,
    saved_micros: Vec<i64>,
    prompt: Vec<&'a str>,
    prompt_version: Vec<i32>,
}

impl<'a> Columns<'a> {
    fn of(rows: &[&'a LedgerEntry]) -> Self {
        let big = |f: fn(&LedgerEntry) -> u64| rows.iter().map(|r| to_i64(f(r))).collect();
        Self {
            tenant_id: rows.iter().map(|r| r.call.tenant_id.as_str()).collect(),
            job_id: rows.iter().map(|r| r.call.job_id.as_str()).collect(),
            attempt: rows.iter().map(|r| r.call.attempt).collect(),
            call_index: rows.iter().map(|r| r.call.call_index).collect(),
            provider: rows.iter().map(|r| r.call.provider.as_str()).collect(),
            model: rows.iter().map(|r| r.call.model.as_str()).collect(),
            feature: rows.iter().map(|r| r.feature.as_str()).collect(),
            input_tokens: big(|r| r.call.usage.input_tokens),
            output_tokens: big(|r| r.call.usage.output_tokens),
            input_price: big(|r| r.call.price.input_micros_per_mtok),
            output_price: big(|r| r.call.price.output_micros_per_mtok),
            cost_micros: rows.iter().map(|r| r.cost_micros).collect(),
            latency_ms: rows.iter().map(|r| r.latency_ms).collect(),
            tags: rows.iter().map(|r| &r.tags).collect(),
            occurred_at: rows.iter().map(|r| r.call.occurred_at).collect(),
            cache_hit: (rows.iter())
                .map(|r| r.cache.map(|c| c.hit.as_str()))
                .collect(),
            saved_micros: (rows.iter())
                .map(|r| r.cache.map_or(0, |c| c.saved_micros))
                .collect(),
            prompt: rows.iter().map(|r| r.prompt.name.as_str()).collect(),
            prompt_version: rows.iter().map(|r| r.prompt.version).collect(),
        }
    }
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
