//! Reservations in Postgres: budget rows locked in id order, worst cases reserved when jobs are
//! claimed, released when outcomes commit or their workers die, and threshold alerts fired once
//! per period as webhooks.

use sqlx::PgConnection;

use super::{admit, Admission, AdmissionRequest, BudgetState, Estimate, Reservation};

/// One job of a claim batch to admit: `attempt` is the attempt just claimed.
#[derive(Debug, Clone)]
pub struct ReserveRequest<'a> {
    pub tenant: &'a str,
    pub job_id: &'a str,
    pub attempt: i32,
    pub feature: &'a str,
    pub estimate: Estimate,
}

/// Locks the budgets of `tenants` in id order, first thing in every transaction that touches budget
/// usage or the ledger's aggregates, and returns the tenants that have budgets (sorted). A batch
/// touches a tenant's usage rows in several statements (claims reserve, bookings add, outcomes
/// release) and its daily aggregates in between, so without one lock taken up front two batches
/// could take those rows in opposite orders and deadlock. The lock (`FOR NO KEY UPDATE`) does not
/// block the foreign-key checks of usage and reservation rows. Tenants without budgets can hold no
/// reservations, so the caller skips the budget statements for them.
pub async fn lock_in_order(
    conn: &mut PgConnection,
    tenants: &[&str],
) -> Result<Vec<String>, sqlx::Error> {
    if tenants.is_empty() {
        return Ok(Vec::new());
    }
    let mut budgeted: Vec<String> = sqlx::query_scalar(
        "SELECT tenant_id FROM budgets WHERE tenant_id = ANY($1) ORDER BY id FOR NO KEY UPDATE",
    )
    .bind(tenants)
    .fetch_all(&mut *conn)
    .await?;
    budgeted.sort_unstable();
    budgeted.dedup();
    Ok(budgeted)
}

/// Admits a batch of claimed jobs (in the claim's transaction) and writes their reservations.
/// Earlier reservations of the same jobs (attempts taken over) are released first.
pub async fn reserve(
    conn: &mut PgConnection,
    requests: &[ReserveRequest<'_>],
    ttl: std::time::Duration,
) -> Result<Vec<Admission>, sqlx::Error> {
    if requests.is_empty() {
        return Ok(Vec::new());
    }
    let taken_over: Vec<ReleaseKey<'_>> = requests
        .iter()
        .map(|r| ReleaseKey {
            tenant: r.tenant,
            job_id: r.job_id,
            attempt: None,
            terminal: false,
        })
        .collect();
    release(conn, &taken_over).await?;
    let mut tenants: Vec<&str> = requests.iter().map(|r| r.tenant).collect();
    tenants.sort_unstable();
    tenants.dedup();
    let mut states = lock_budgets(conn, &tenants).await?;
    if states.is_empty() {
        return Ok(vec![
            Admission::Admitted {
                cost_cap_micros: None
            };
            requests.len()
        ]);
    }
    let asks: Vec<AdmissionRequest<'_>> = requests
        .iter()
        .map(|r| AdmissionRequest {
            tenant: r.tenant,
            feature: r.feature,
            estimate: r.estimate,
        })
        .collect();
    let decisions = admit(&mut states, &asks);
    let held: Vec<(&ReserveRequest<'_>, &Reservation)> = requests
        .iter()
        .zip(&decisions)
        .flat_map(|(r, (_, res))| res.iter().map(move |x| (r, x)))
        .collect();
    write_reservations(conn, &held, ttl).await?;
    Ok(decisions.into_iter().map(|(a, _)| a).collect())
}

/// Creates the current period's usage rows and locks them, in budget id order (so concurrent
/// batches never deadlock), returning each budget with its usage.
async fn lock_budgets(
    conn: &mut PgConnection,
    tenants: &[&str],
) -> Result<Vec<BudgetState>, sqlx::Error> {
    sqlx::query(
        "INSERT INTO budget_usage (budget_id, period_start) \
         SELECT id, date_trunc(period, now() AT TIME ZONE 'UTC')::date FROM budgets \
         WHERE tenant_id = ANY($1) ORDER BY id ON CONFLICT DO NOTHING",
    )
    .bind(tenants)
    .execute(&mut *conn)
    .await?;
    sqlx::query_as(
        "SELECT b.id, b.tenant_id, b.feature, b.period, u.period_start, b.hard_limit_micros, b.job_quota, \
           b.token_quota, b.on_limit, u.cost_micros, u.tokens, u.jobs, u.reserved_micros, \
           u.reserved_tokens, u.reserved_jobs \
         FROM budgets b JOIN budget_usage u ON u.budget_id = b.id \
           AND u.period_start = date_trunc(b.period, now() AT TIME ZONE 'UTC')::date \
         WHERE b.tenant_id = ANY($1) ORDER BY b.id FOR UPDATE OF u",
    )
    .bind(tenants)
    .fetch_all(&mut *conn)
    .await
}

async fn write_reservations(
    conn: &mut PgConnection,
    held: &[(&ReserveRequest<'_>, &Reservation)],
    ttl: std::time::Duration,
) -> Result<(), sqlx::Error> {
    if held.is_empty() {
        return Ok(());
    }
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    sqlx::query(
        "WITH held AS ( \
           INSERT INTO budget_reservations (tenant_id, job_id, budget_id, attempt, period_start, micros, \
             tokens, expires_at) \
           SELECT t.*, now() + make_interval(secs => $8::float8 / 1000) \
           FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::int[], $5::date[], $6::int8[], $7::int8[]) \
             AS t(tenant_id, job_id, budget_id, attempt, period_start, micros, tokens) \
           RETURNING budget_id, period_start, micros, tokens \
         ) \
         UPDATE budget_usage u SET reserved_micros = u.reserved_micros + h.micros, \
           reserved_tokens = u.reserved_tokens + h.tokens, reserved_jobs = u.reserved_jobs + h.n \
         FROM (SELECT budget_id, period_start, sum(micros)::int8 AS micros, sum(tokens)::int8 AS tokens, \
                 count(*) AS n FROM held GROUP BY 1, 2) h \
         WHERE u.budget_id = h.budget_id AND u.period_start = h.period_start",
    )
    .bind(held.iter().map(|(r, _)| r.tenant).collect::<Vec<_>>())
    .bind(held.iter().map(|(r, _)| r.job_id).collect::<Vec<_>>())
    .bind(held.iter().map(|(_, x)| x.budget_id).collect::<Vec<_>>())
    .bind(held.iter().map(|(r, _)| r.attempt).collect::<Vec<_>>())
    .bind(held.iter().map(|(_, x)| x.period_start).collect::<Vec<_>>())
    .bind(held.iter().map(|(_, x)| x.micros).collect::<Vec<_>>())
    .bind(held.iter().map(|(_, x)| x.tokens).collect::<Vec<_>>())
    .bind(ttl_ms)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Which reservation to release: a job's (any attempt when `attempt` is None). `terminal` counts the
/// job against its budgets' job totals (its outcome is final).
#[derive(Debug, Clone, Copy)]
pub struct ReleaseKey<'a> {
    pub tenant: &'a str,
    pub job_id: &'a str,
    pub attempt: Option<i32>,
    pub terminal: bool,
}

/// Releases reservations when outcomes commit (settling: the calls are booked by then); returns
/// how many.
pub async fn release(conn: &mut PgConnection, keys: &[ReleaseKey<'_>]) -> Result<i64, sqlx::Error> {
    if keys.is_empty() {
        return Ok(0);
    }
    let tenants: Vec<&str> = keys.iter().map(|k| k.tenant).collect();
    let jobs: Vec<&str> = keys.iter().map(|k| k.job_id).collect();
    let attempts: Vec<Option<i32>> = keys.iter().map(|k| k.attempt).collect();
    let terminal: Vec<bool> = keys.iter().map(|k| k.terminal).collect();
    sqlx::query_file_scalar!(
        "src/spend/sql/budget_release.sql",
        &tenants as &[&str],
        &jobs as &[&str],
        &attempts as &[Option<i32>],
        &terminal,
    )
    .fetch_one(&mut *conn)
    .await
}

/// Releases reservations whose worker died (expired `ahead` from now); returns how many.
pub async fn expire(
    conn: &mut PgConnection,
    ahead: std::time::Duration,
) -> Result<i64, sqlx::Error> {
    let ahead_ms = i64::try_from(ahead.as_millis()).unwrap_or(i64::MAX);
    sqlx::query_file_scalar!("src/spend/sql/budget_expire.sql", ahead_ms)
        .fetch_one(&mut *conn)
        .await
}

/// Fires each configured threshold once per period for the budgets of `tenants` whose booked
/// spend crossed it, as a `budget.threshold` webhook to the tenant's alert URL.
pub async fn fire_alerts(conn: &mut PgConnection, tenants: &[&str]) -> Result<u64, sqlx::Error> {
    if tenants.is_empty() {
        return Ok(0);
    }
    let fired = sqlx::query(
        "WITH crossed AS ( \
           INSERT INTO budget_alerts (budget_id, period_start, threshold_pct, cost_micros) \
           SELECT b.id, u.period_start, t.pct, u.cost_micros \
           FROM budgets b JOIN budget_usage u ON u.budget_id = b.id \
             AND u.period_start = date_trunc(b.period, now() AT TIME ZONE 'UTC')::date \
           CROSS JOIN LATERAL unnest(b.alert_thresholds) AS t(pct) \
           WHERE b.tenant_id = ANY($1) \
             AND u.cost_micros * 100 >= t.pct::int8 * coalesce(b.soft_limit_micros, b.hard_limit_micros) \
           ON CONFLICT DO NOTHING \
           RETURNING budget_id, period_start, threshold_pct, cost_micros \
         ) \
         INSERT INTO webhook_deliveries (id, tenant_id, job_id, event_type, url, payload, state) \
         SELECT 'msg_' || replace(gen_random_uuid()::text, '-', ''), b.tenant_id, \
           'budget:' || b.id || ':' || c.period_start || ':' || c.threshold_pct, 'budget.threshold', \
           tn.alert_webhook_url, \
           json_build_object('type', 'budget.threshold', 'timestamp', now(), 'data', json_build_object( \
             'tenant', b.tenant_id, 'budget_id', b.id, 'feature', b.feature, 'period', b.period, \
             'period_start', c.period_start, 'threshold_pct', c.threshold_pct, \
             'cost_micros', c.cost_micros, 'soft_limit_micros', b.soft_limit_micros, \
             'hard_limit_micros', b.hard_limit_micros))::text, \
           'pending' \
         FROM crossed c JOIN budgets b ON b.id = c.budget_id JOIN tenants tn ON tn.id = b.tenant_id \
         WHERE tn.alert_webhook_url IS NOT NULL \
         ON CONFLICT DO NOTHING",
    )
    .bind(tenants)
    .execute(&mut *conn)
    .await?;
    Ok(fired.rows_affected())
}
