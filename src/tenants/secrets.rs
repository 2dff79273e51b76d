//! Tenants' webhook secrets: sealed at rest (see [`crate::keyring`]), opened only to sign, and
//! rotated with a grace period during which every delivery carries both signatures, so a
//! receiver moves to the new secret whenever it likes within it.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::{random_token, Tenant, TenantError};
use crate::audit::{self, Actor, Change};
use crate::keyring::{Keyring, SealError};
use crate::secret::Secret;

/// Where a tenant's webhook secrets are stored: the associated data they are sealed with, so a
/// sealed secret copied to another tenant's row does not open.
pub(crate) fn context(tenant: &str) -> String {
    format!("tenants.webhook_secret:{tenant}")
}

impl Tenant {
    /// The secrets a delivery made at `now` is signed with: the current one, and the one before
    /// it while its grace period lasts.
    pub fn signing_secrets(
        &self,
        keyring: &Keyring,
        now: DateTime<Utc>,
    ) -> Result<Vec<Secret>, SealError> {
        let context = context(&self.id);
        let mut secrets = vec![keyring.open(&self.webhook_secret, &context)?];
        if let Some((stored, until)) = &self.previous_webhook_secret {
            if *until > now {
                secrets.push(keyring.open(stored, &context)?);
            }
        }
        Ok(secrets)
    }
}

/// A rotated secret, shown once, and until when the previous one still signs.
#[derive(Debug)]
pub struct RotatedSecret {
    pub secret: Secret,
    pub previous_until: Option<DateTime<Utc>>,
}

/// Gives a tenant a new webhook secret. For `grace` (zero: not at all) deliveries carry a
/// signature with the previous secret beside the new one. A secret from an earlier rotation still
/// in its grace period is dropped: at most two secrets sign.
pub async fn rotate_webhook_secret(
    pool: &PgPool,
    keyring: &Keyring,
    actor: &Actor,
    tenant: &str,
    grace: std::time::Duration,
) -> Result<RotatedSecret, TenantError> {
    let grace = chrono::Duration::from_std(grace)
        .map_err(|_| TenantError::Invalid("grace period too long".into()))?;
    let secret = Secret::new(random_token("whsec_"));
    let mut tx = pool.begin().await?;
    let before: Option<Option<DateTime<Utc>>> = sqlx::query_scalar(
        "SELECT previous_webhook_secret_until FROM tenants WHERE id = $1 FOR UPDATE",
    )
    .bind(tenant)
    .fetch_optional(&mut *tx)
    .await?;
    let before = before.ok_or_else(|| TenantError::Unknown(tenant.to_string()))?;
    let previous_until: Option<DateTime<Utc>> = sqlx::query_scalar(
        "UPDATE tenants SET \
           previous_webhook_secret = CASE WHEN $3 > interval '0' THEN webhook_secret END, \
           previous_webhook_secret_until = CASE WHEN $3 > interval '0' THEN now() + $3 END, \
           webhook_secret = $2 \
         WHERE id = $1 RETURNING previous_webhook_secret_until",
    )
    .bind(tenant)
    .bind(keyring.seal(secret.expose(), &context(tenant)))
    .bind(grace)
    .fetch_one(&mut *tx)
    .await?;
    let change = Change {
        action: "webhook_secret.rotate",
        tenant: Some(tenant),
        target: tenant,
        before: Some(serde_json::json!({ "previous_secret_until": before })),
        after: Some(serde_json::json!({ "previous_secret_until": previous_until })),
    };
    audit::record(&mut tx, actor, change).await?;
    tx.commit().await?;
    Ok(RotatedSecret {
        secret,
        previous_until,
    })
}

/// Which stored secrets [`reseal`] rewrites.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reseal {
    /// Those stored in clear (the data migration run once a key is configured).
    ClearOnly,
    /// Every one not sealed under the current key (`ragq secrets reencrypt`, after a key change).
    NotCurrent,
}

#[derive(Debug, thiserror::Error)]
pub enum ResealError {
    #[error("{0}")]
    Sealed(#[from] SealError),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

type StoredSecrets = (String, String, Option<String>);

/// Seals stored secrets (webhook secrets and tenants' provider keys) under the keyring's current
/// key, in one transaction (a crash leaves every row as it was or every row done); returns how
/// many values were rewritten. Writes one audit row (for [`Reseal::ClearOnly`], only when it
/// rewrote any).
pub async fn reseal(
    pool: &PgPool,
    keyring: &Keyring,
    actor: &Actor,
    mode: Reseal,
) -> Result<u64, ResealError> {
    let stale = |v: &str| match mode {
        Reseal::ClearOnly => keyring.current_id().is_some() && !v.starts_with("enc:"),
        Reseal::NotCurrent => !keyring.is_current(v),
    };
    let mut tx = pool.begin().await?;
    let rows: Vec<StoredSecrets> = sqlx::query_as(
        "SELECT id, webhook_secret, previous_webhook_secret FROM tenants ORDER BY id FOR UPDATE",
    )
    .fetch_all(&mut *tx)
    .await?;
    let mut rewritten = 0u64;
    for (tenant, current, previous) in rows {
        let context = context(&tenant);
        let mut reseal_one = |v: &str| -> Result<String, SealError> {
            if !stale(v) {
                return Ok(v.to_string());
            }
            rewritten += 1;
            Ok(keyring.seal(keyring.open(v, &context)?.expose(), &context))
        };
        let current = reseal_one(&current)?;
        let previous = previous.as_deref().map(&mut reseal_one).transpose()?;
        sqlx::query(
            "UPDATE tenants SET webhook_secret = $2, previous_webhook_secret = $3 \
             WHERE id = $1 AND (webhook_secret <> $2 OR previous_webhook_secret IS DISTINCT FROM $3)",
        )
        .bind(&tenant)
        .bind(&current)
        .bind(&previous)
        .execute(&mut *tx)
        .await?;
    }
    // The command always leaves its row; the start-up migration only when it changed something.
    for stored in super::provider_keys::all_sealed(&mut tx).await? {
        if stale(&stored.2) {
            super::provider_keys::reseal_one(&mut tx, keyring, &stored).await?;
            rewritten += 1;
        }
    }
    if rewritten > 0 || mode == Reseal::NotCurrent {
        let change = Change {
            action: "secrets.reseal",
            tenant: None,
            target: "stored secrets",
            before: None,
            after: Some(serde_json::json!({
                "values": rewritten, "key": keyring.current_id(),
                "mode": if mode == Reseal::ClearOnly { "clear_only" } else { "not_current" },
            })),
        };
        audit::record(&mut tx, actor, change).await?;
    }
    tx.commit().await?;
    Ok(rewritten)
}
