//! A tenant's own fair-share settings: a weight and an in-flight cap overriding its plan's
//! (`plans.<name>.weight`, `plans.<name>.max_in_flight`). Workers resolve the share of each job
//! they take in ([`super::plans::Plans::share`]) and write it beside the tenant's dispatch state;
//! a change here (or of the tenant's plan) is written there at once, so it applies from the next
//! dispatch, not from the tenant's next message.

use serde_json::json;
use sqlx::{PgConnection, PgPool};

use super::plans::{Plans, WEIGHTS};
use super::TenantError;
use crate::audit::{self, Actor, Change};

/// What to change; `None` leaves a setting as it is, `Some(None)` clears the override.
#[derive(Debug, Clone, Copy, Default)]
pub struct ShareChange {
    pub weight: Option<Option<f64>>,
    pub max_in_flight: Option<Option<u32>>,
}

/// Sets or clears a tenant's own weight and cap, recording before and after in the audit log.
pub async fn set(
    pool: &PgPool,
    actor: &Actor,
    plans: &Plans,
    id: &str,
    change: ShareChange,
) -> Result<(), TenantError> {
    if let Some(Some(w)) = change.weight {
        if !WEIGHTS.contains(&w) {
            return Err(TenantError::Invalid(format!(
                "weight: between {} and {}, got {w}",
                WEIGHTS.start(),
                WEIGHTS.end()
            )));
        }
    }
    if change.max_in_flight == Some(Some(0)) {
        return Err(TenantError::Invalid("max_in_flight: at least 1".into()));
    }
    let mut tx = pool.begin().await?;
    let before: Option<(Option<f64>, Option<i32>)> =
        sqlx::query_as("SELECT share_weight, max_in_flight FROM tenants WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    let (weight, cap) = before.ok_or_else(|| TenantError::Unknown(id.to_string()))?;
    let new_weight = change.weight.unwrap_or(weight);
    let new_cap = match change.max_in_flight {
        Some(c) => c.map(|n| i32::try_from(n).unwrap_or(i32::MAX)),
        None => cap,
    };
    sqlx::query("UPDATE tenants SET share_weight = $2, max_in_flight = $3 WHERE id = $1")
        .bind(id)
        .bind(new_weight)
        .bind(new_cap)
        .execute(&mut *tx)
        .await?;
    write_current(&mut tx, plans, id).await?;
    let change = Change {
        action: "tenant.share",
        tenant: Some(id),
        target: id,
        before: Some(json!({ "weight": weight, "max_in_flight": cap })),
        after: Some(json!({ "weight": new_weight, "max_in_flight": new_cap })),
    };
    audit::record(&mut tx, actor, change).await?;
    tx.commit().await?;
    Ok(())
}

/// Writes the tenant's share as it now resolves (its own settings, else its plan's) beside its
/// dispatch state.
pub(super) async fn write_current(
    conn: &mut PgConnection,
    plans: &Plans,
    id: &str,
) -> Result<(), sqlx::Error> {
    let (plan, weight, cap): (String, Option<f64>, Option<i32>) =
        sqlx::query_as("SELECT plan, share_weight, max_in_flight FROM tenants WHERE id = $1")
            .bind(id)
            .fetch_one(&mut *conn)
            .await?;
    let share = plans.share(&plan, weight, cap.and_then(|c| u32::try_from(c).ok()));
    sqlx::query("UPDATE tenant_shares SET weight = $2, max_in_flight = $3 WHERE tenant_id = $1")
        .bind(id)
        .bind(share.weight)
        .bind(share.max_in_flight_column())
        .execute(&mut *conn)
        .await?;
    Ok(())
}
