//! Bring your own key: a tenant's own API key for a provider, sealed at rest like webhook
//! secrets. The tenant's calls to that provider carry it instead of the operator's; they are
//! booked marked `byok`, at cost 0 to the operator unless `spend.bill_byok` says otherwise, with
//! their list cost beside. If the provider refuses the tenant's key (401, 402, 403, or 429 after
//! the router's retries), the call is made again with the operator's key only when the tenant
//! allowed it. Keys are never echoed: lists show providers, fallback and times only.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::TenantError;
use crate::audit::{self, Actor, Change};
use crate::keyring::Keyring;
use crate::routing::byok::{OwnKey, OwnKeys};
use crate::secret::Secret;

/// Where a tenant's key for `provider` is stored: the associated data it is sealed with.
fn context(tenant: &str, provider: &str) -> String {
    format!("tenant_provider_keys:{tenant}:{provider}")
}

/// A stored key as lists show it (never the key).
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ProviderKeyView {
    pub provider: String,
    /// Calls fall back to the operator's key when the provider refuses this one.
    pub allow_fallback: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Stores (or replaces) the tenant's key for `provider`, which must be in the catalog. Refused
/// without a sealing key: a tenant's provider key is never stored in clear.
pub async fn set(
    pool: &PgPool,
    keyring: &Keyring,
    actor: &Actor,
    (tenant, provider): (&str, &str),
    key: &Secret,
    allow_fallback: bool,
) -> Result<ProviderKeyView, TenantError> {
    if keyring.current_id().is_none() {
        return Err(TenantError::Invalid(
            "no sealing key is configured (secrets.key_file or secrets.key_env): a tenant's \
             provider key is stored sealed only"
                .into(),
        ));
    }
    let k = key.expose().trim();
    if !(8..=4096).contains(&k.len()) || k.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(TenantError::Invalid(
            "a provider key is 8 to 4096 characters, without spaces or control characters".into(),
        ));
    }
    let sealed = keyring.seal(k, &context(tenant, provider));
    let mut tx = pool.begin().await?;
    let before: Option<bool> = sqlx::query_scalar(
        "SELECT allow_fallback FROM tenant_provider_keys WHERE tenant_id = $1 AND provider = $2 FOR UPDATE",
    )
    .bind(tenant)
    .bind(provider)
    .fetch_optional(&mut *tx)
    .await?;
    let view: ProviderKeyView = sqlx::query_as(
        "INSERT INTO tenant_provider_keys (tenant_id, provider, sealed_key, allow_fallback) \
         VALUES ($1, $2, $3, $4) \
         ON CONFLICT (tenant_id, provider) DO UPDATE SET sealed_key = excluded.sealed_key, \
           allow_fallback = excluded.allow_fallback, updated_at = now() \
         RETURNING provider, allow_fallback, created_at, updated_at",
    )
    .bind(tenant)
    .bind(provider)
    .bind(&sealed)
    .bind(allow_fallback)
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| match &e {
        sqlx::Error::Database(d) if d.is_foreign_key_violation() => {
            TenantError::Unknown(tenant.to_string())
        }
        _ => TenantError::Db(e),
    })?;
    let change = Change {
        action: "provider_key.set",
        tenant: Some(tenant),
        target: provider,
        before: before.map(|f| serde_json::json!({ "set": true, "allow_fallback": f })),
        after: Some(serde_json::json!({ "set": true, "allow_fallback": allow_fallback })),
    };
    audit::record(&mut tx, actor, change).await?;
    tx.commit().await?;
    Ok(view)
}

/// Removes the tenant's key for `provider`; its calls go back to the operator's key.
pub async fn delete(
    pool: &PgPool,
    actor: &Actor,
    tenant: &str,
    provider: &str,
) -> Result<bool, TenantError> {
    let mut tx = pool.begin().await?;
    let gone: Option<bool> = sqlx::query_scalar(
        "DELETE FROM tenant_provider_keys WHERE tenant_id = $1 AND provider = $2 RETURNING allow_fallback",
    )
    .bind(tenant)
    .bind(provider)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(fallback) = gone {
        let change = Change {
            action: "provider_key.delete",
            tenant: Some(tenant),
            target: provider,
            before: Some(serde_json::json!({ "set": true, "allow_fallback": fallback })),
            after: Some(serde_json::json!({ "set": false })),
        };
        audit::record(&mut tx, actor, change).await?;
    }
    tx.commit().await?;
    Ok(gone.is_some())
}

pub async fn list(pool: &PgPool, tenant: &str) -> Result<Vec<ProviderKeyView>, sqlx::Error> {
    sqlx::query_as(
        "SELECT provider, allow_fallback, created_at, updated_at FROM tenant_provider_keys \
         WHERE tenant_id = $1 ORDER BY provider",
    )
    .bind(tenant)
    .fetch_all(pool)
    .await
}

/// A tenant's keys as stored: (provider, sealed key, allow fallback).
pub type StoredKeys = Vec<(String, String, bool)>;

/// Opens a tenant's stored keys for its calls.
pub fn open(
    keyring: &Keyring,
    tenant: &str,
    stored: &StoredKeys,
) -> Result<OwnKeys, crate::keyring::SealError> {
    let mut keys = OwnKeys::default();
    for (provider, sealed, fallback) in stored {
        let key = keyring.open(sealed, &context(tenant, provider))?;
        keys.insert(
            provider.clone(),
            OwnKey {
                key,
                allow_fallback: *fallback,
            },
        );
    }
    Ok(keys)
}

/// Every stored key, for re-sealing: (tenant, provider, sealed).
pub(crate) async fn all_sealed(
    conn: &mut sqlx::PgConnection,
) -> Result<Vec<(String, String, String)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT tenant_id, provider, sealed_key FROM tenant_provider_keys \
         ORDER BY tenant_id, provider FOR UPDATE",
    )
    .fetch_all(conn)
    .await
}

/// Re-seals one stored key under the keyring's current key.
pub(crate) async fn reseal_one(
    conn: &mut sqlx::PgConnection,
    keyring: &Keyring,
    (tenant, provider, sealed): &(String, String, String),
) -> Result<(), super::secrets::ResealError> {
    let context = context(tenant, provider);
    let resealed = keyring.seal(keyring.open(sealed, &context)?.expose(), &context);
    sqlx::query(
        "UPDATE tenant_provider_keys SET sealed_key = $3 WHERE tenant_id = $1 AND provider = $2",
    )
    .bind(tenant)
    .bind(provider)
    .bind(resealed)
    .execute(conn)
    .await?;
    Ok(())
}
