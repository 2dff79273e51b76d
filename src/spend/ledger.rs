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

use std::sync::LazyLock;

use super::LedgerEntry;

/// The ledger's columns, in the order every statement here binds and selects them.
pub(super) const COLUMNS: &str =
    "tenant_id, job_id, attempt, call_index, provider, model, feature, \
    input_tokens, output_tokens, input_price_micros_per_mtok, output_price_micros_per_mtok, \
    cost_micros, latency_ms, tags, occurred_at";

/// The rows bound as arrays $1..$15, as a table `t` with [`COLUMNS`].
const BOUND_ROWS: &str = "UNNEST($1::text[], $2::text[], $3::int[], $4::int[], $5::text[], \
    $6::text[], $7::text[], $8::int8[], $9::int8[], $10::int8[], $11::int8[], $12::int8[], $13::int[], \
    $14::jsonb[], $15::timestamptz[]) AS t(tenant_id, job_id, attempt, call_index, provider, model, \
    feature, input_tokens, output_tokens, input_price_micros_per_mtok, output_price_micros_per_mtok, \
    cost_micros, latency_ms, tags, occurred_at)";

/// What an `ins` CTE returns for the aggregates below.
pub(super) const RETURNING: &str =
    "RETURNING tenant_id, feature, model, provider, input_tokens, output_tokens, cost_micros, occurred_at";

/// Follows an `ins` CTE (the ledger rows really inserted): advances daily aggregates and budget
/// usage from them, and answers how many rows and which tenants.
pub(super) const ADVANCE_TOTALS: &str = "\
    , daily AS ( \
      INSERT INTO spend_daily AS d (day, tenant_id, feature, model, provider, calls, input_tokens, \
        output_tokens, cost_micros) \
      SELECT (occurred_at AT TIME ZONE 'UTC')::date, tenant_id, feature, model, provider, count(*), \
        sum(input_tokens), sum(output_tokens), sum(cost_micros) \
      FROM ins GROUP BY 1, 2, 3, 4, 5 ORDER BY 2, 1, 3, 4, 5 \
      ON CONFLICT (tenant_id, day, feature, model, provider) DO UPDATE SET \
        calls = d.calls + excluded.calls, input_tokens = d.input_tokens + excluded.input_tokens, \
        output_tokens = d.output_tokens + excluded.output_tokens, \
        cost_micros = d.cost_micros + excluded.cost_micros \
    ), usage AS ( \
      INSERT INTO budget_usage AS u (budget_id, period_start, cost_micros, tokens) \
      SELECT b.id, date_trunc(b.period, i.occurred_at AT TIME ZONE 'UTC')::date, \
        sum(i.cost_micros), sum(i.input_tokens + i.output_tokens) \
      FROM ins i JOIN budgets b ON b.tenant_id = i.tenant_id AND b.feature IN ('', i.feature) \
      GROUP BY 1, 2 ORDER BY 1, 2 \
      ON CONFLICT (budget_id, period_start) DO UPDATE SET \
        cost_micros = u.cost_micros + excluded.cost_micros, tokens = u.tokens + excluded.tokens \
    ) \
    SELECT count(*), coalesce(array_agg(DISTINCT tenant_id), '{}'::text[]) FROM ins";

/// What a booking statement did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Booked {
    /// Rows inserted (rows already there, or without an intent, are not counted).
    pub rows: u64,
    /// Tenants whose spend moved, for alerts.
    pub tenants: Vec<String>,
}

/// Books `rows` directly, without intents (imports, fixtures); a row already there is a no-op.
pub async fn write(
    conn: &mut sqlx::PgConnection,
    rows: &[&LedgerEntry],
) -> Result<Booked, sqlx::Error> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "WITH ins AS (INSERT INTO provider_calls ({COLUMNS}) SELECT * FROM {BOUND_ROWS} \
             ON CONFLICT DO NOTHING {RETURNING}) {ADVANCE_TOTALS}"
        )
    });
    run(conn, &SQL, rows).await
}

/// Books answered calls in place of their intents: a row is inserted only if its intent was still
/// there (not booked already, not expired into an estimate), and the intent goes.
pub async fn settle(
    conn: &mut sqlx::PgConnection,
    rows: &[&LedgerEntry],
) -> Result<Booked, sqlx::Error> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "WITH t AS (SELECT * FROM {BOUND_ROWS}), \
             gone AS (DELETE FROM call_intents c USING t \
               WHERE c.tenant_id = t.tenant_id AND c.job_id = t.job_id AND c.attempt = t.attempt \
                 AND c.call_index = t.call_index \
               RETURNING c.tenant_id, c.job_id, c.attempt, c.call_index), \
             ins AS (INSERT INTO provider_calls ({COLUMNS}) \
               SELECT t.* FROM t JOIN gone USING (tenant_id, job_id, attempt, call_index) \
               ON CONFLICT DO NOTHING {RETURNING}) {ADVANCE_TOTALS}"
        )
    });
    run(conn, &SQL, rows).await
}

async fn run(
    conn: &mut sqlx::PgConnection,
    sql: &str,
    rows: &[&LedgerEntry],
) -> Result<Booked, sqlx::Error> {
    if rows.is_empty() {
        return Ok(Booked::default());
    }
    let (count, tenants): (i64, Vec<String>) = bind_rows(sqlx::query_as(sql), rows)
        .fetch_one(&mut *conn)
        .await?;
    Ok(Booked {
        rows: u64::try_from(count).unwrap_or(0),
        tenants,
    })
}

/// Binds `rows` as the arrays of [`BOUND_ROWS`].
fn bind_rows<'q, O>(
    query: sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>,
    rows: &[&'q LedgerEntry],
) -> sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
    let col = |f: fn(&LedgerEntry) -> i64| rows.iter().map(|r| f(r)).collect::<Vec<i64>>();
    let text = |f: fn(&LedgerEntry) -> &str| rows.iter().map(|r| f(r)).collect::<Vec<&str>>();
    query
        .bind(text(|r| &r.tenant_id))
        .bind(text(|r| &r.job_id))
        .bind(rows.iter().map(|r| r.attempt).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.call_index).collect::<Vec<_>>())
        .bind(text(|r| &r.provider))
        .bind(text(|r| &r.model))
        .bind(text(|r| &r.feature))
        .bind(col(|r| to_i64(r.usage.input_tokens)))
        .bind(col(|r| to_i64(r.usage.output_tokens)))
        .bind(col(|r| to_i64(r.price.input_micros_per_mtok)))
        .bind(col(|r| to_i64(r.price.output_micros_per_mtok)))
        .bind(col(|r| r.cost_micros))
        .bind(rows.iter().map(|r| r.latency_ms).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| &r.tags).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.occurred_at).collect::<Vec<_>>())
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
