//! Tenants' dispatch state (`tenant_shares`), changed by a batch: jobs taken in, retried or swept
//! add to a tenant's queue (dispatch takes them off). Rows are locked in tenant order by one
//! statement, just before the update and as the transaction's last writes, so two transactions
//! never wait on each other's rows in opposite orders, and a row is held only until the commit.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use ragq::tenants::plans::Share;

/// One tenant's change.
#[derive(Debug, Clone, Default)]
pub struct Delta {
    pub queued: i64,
    /// The share the workers resolved for the tenant, when a job of it was taken in.
    pub share: Option<Share>,
    /// The earliest time a job it queued for later may run (the database's clock).
    pub ready_at: Option<DateTime<Utc>>,
    /// Whether a job it queued may run now. Said so, not as this process's time: a worker's clock
    /// ahead of the database's would make the tenant wait.
    pub ready_now: bool,
}

impl Delta {
    /// Adds `n` jobs that may run now.
    pub fn queue_now(&mut self, n: i64) {
        self.queued += n;
        self.ready_now = true;
    }

    /// Adds a job that may run from `at` (a retry).
    pub fn queue_later(&mut self, at: DateTime<Utc>) {
        self.queued += 1;
        self.ready_at = Some(self.ready_at.map_or(at, |r| r.min(at)));
    }
}

/// Changes by tenant, in tenant order.
pub type Deltas = BTreeMap<String, Delta>;

/// Locks the tenants' rows in order, then applies the changes.
pub async fn apply(conn: &mut PgConnection, deltas: &Deltas) -> Result<(), sqlx::Error> {
    if deltas.is_empty() {
        return Ok(());
    }
    let tenants: Vec<&str> = deltas.keys().map(String::as_str).collect();
    sqlx::query(
        "SELECT 1 FROM tenant_shares WHERE tenant_id = ANY($1) ORDER BY tenant_id FOR NO KEY UPDATE",
    )
    .bind(&tenants)
    .execute(&mut *conn)
    .await?;
    let d = deltas.values();
    let queued: Vec<i64> = d.clone().map(|d| d.queued).collect();
    let weights: Vec<Option<f64>> = d.clone().map(|d| d.share.map(|s| s.weight)).collect();
    let caps: Vec<Option<i32>> = (d.clone())
        .map(|d| d.share.and_then(|s| s.max_in_flight_column()))
        .collect();
    let ready: Vec<Option<DateTime<Utc>>> = d.clone().map(|d| d.ready_at).collect();
    let now: Vec<bool> = d.map(|d| d.ready_now).collect();
    sqlx::query_file!(
        "sql/shares.sql",
        &tenants as &[&str],
        &queued,
        &weights as &[Option<f64>],
        &caps as &[Option<i32>],
        &ready as &[Option<DateTime<Utc>>],
        &now,
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}
