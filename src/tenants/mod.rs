//! Tenants: who may submit jobs, how they authenticate (`keys`), and the secrets their webhooks
//! are signed with (`secrets`), sealed at rest.
//!
//! Workers look tenants up through a small cache so a job costs no extra query; secrets stay
//! sealed in it until a delivery is signed.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use serde_json::json;

use crate::audit::{self, Actor, Change};
use crate::keyring::Keyring;
use crate::secret::Secret;

pub mod erasure;
pub mod keys;
pub mod plans;
pub mod provider_keys;
pub mod secrets;
pub mod shares;

/// A tenant as the platform needs it at run time.
#[derive(Debug, Clone)]
pub struct Tenant {
    pub id: String,
    pub amqp_user: Option<String>,
    /// The webhook secret as stored: sealed (see [`crate::keyring`]), opened only to sign by
    /// [`Tenant::signing_secrets`].
    pub webhook_secret: String,
    /// The secret before the last rotation, as stored, and until when it still signs.
    pub previous_webhook_secret: Option<(String, chrono::DateTime<chrono::Utc>)>,
    pub plan: String,
    /// Its own provider keys as stored (sealed), opened for its calls only.
    pub provider_keys: provider_keys::StoredKeys,
    /// Its own weight and in-flight cap, where they override its plan's (see [`shares`]).
    pub share_weight: Option<f64>,
    pub max_in_flight: Option<u32>,
}

/// What `create` hands back once: the only time the API key is seen in clear.
#[derive(Debug)]
pub struct NewTenant {
    pub tenant: Tenant,
    pub api_key: Secret,
    /// The id of that first key (`key_…`).
    pub api_key_id: String,
    /// The webhook secret in clear, shown once.
    pub webhook_secret: Secret,
}

/// Hash under which an API key is stored and looked up.
pub fn hash_api_key(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

/// A random bearer token: 32 bytes from the thread-local CSPRNG, base64, after `prefix`.
pub(crate) fn random_token(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// Creates a tenant with its first API key (`default`, every tenant scope) and a webhook secret;
/// an existing id is refused.
pub async fn create(
    pool: &PgPool,
    actor: &Actor,
    keyring: &Keyring,
    id: &str,
    name: &str,
    amqp_user: Option<&str>,
) -> Result<NewTenant, TenantError> {
    let spec = TenantSpec {
        id,
        name,
        amqp_user,
        alert_webhook: None,
    };
    create_with(pool, actor, keyring, &spec).await
}

/// A tenant to create.
#[derive(Debug, Clone, Copy)]
pub struct TenantSpec<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub amqp_user: Option<&'a str>,
    /// Where its budget alerts are POSTed.
    pub alert_webhook: Option<&'a str>,
}

/// [`create`], with every setting given at once (one change, one audit row).
pub async fn create_with(
    pool: &PgPool,
    actor: &Actor,
    keyring: &Keyring,
    spec: &TenantSpec<'_>,
) -> Result<NewTenant, TenantError> {
    let TenantSpec {
        id,
        name,
        amqp_user,
        alert_webhook,
    } = *spec;
    crate::jobs::check_tenant(id).map_err(TenantError::Invalid)?;
    if id.starts_with("erased-") {
        return Err(TenantError::Invalid(
            "ids starting `erased-` name erased tenants' ledgers".into(),
        ));
    }
    if let Some(u) = alert_webhook {
        crate::jobs::check_webhook_url(u).map_err(TenantError::Invalid)?;
    }
    let secret = Secret::new(random_token("whsec_"));
    let mut tx = pool.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO tenants (id, name, amqp_user, webhook_secret, alert_webhook_url) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING",
    )
    .bind(id)
    .bind(name)
    .bind(amqp_user)
    .bind(keyring.seal(secret.expose(), &secrets::context(id)))
    .bind(alert_webhook)
    .execute(&mut *tx)
    .await?;
    if inserted.rows_affected() == 0 {
        return Err(TenantError::Exists(id.to_string()));
    }
    let spec = keys::KeySpec {
        tenant: Some(id.to_string()),
        name: "default".into(),
        scopes: keys::Scope::TENANT.to_vec(),
        expires_at: None,
    };
    let key = keys::insert(&mut tx, &spec)
        .await
        .map_err(|e| TenantError::Invalid(e.to_string()))?;
    let change = Change {
        action: "tenant.create",
        tenant: Some(id),
        target: id,
        before: None,
        after: Some(serde_json::json!({
            "name": name, "amqp_user": amqp_user, "alert_webhook_url": alert_webhook,
            "plan": "standard", "first_key": key.id,
        })),
    };
    audit::record(&mut tx, actor, change).await?;
    tx.commit().await?;
    Ok(NewTenant {
        tenant: Tenant {
            id: id.to_string(),
            amqp_user: amqp_user.map(str::to_string),
            webhook_secret: keyring.seal(secret.expose(), &secrets::context(id)),
            previous_webhook_secret: None,
            plan: "standard".into(),
            provider_keys: Vec::new(),
            share_weight: None,
            max_in_flight: None,
        },
        api_key: key.secret,
        api_key_id: key.id,
        webhook_secret: secret,
    })
}

/// Changes one setting column of a tenant, recording before and after in the audit log.
async fn set_setting(
    pool: &PgPool,
    actor: &Actor,
    id: &str,
    setting: TenantSetting<'_>,
) -> Result<(), TenantError> {
    let mut tx = pool.begin().await?;
    let before: Option<(String, Option<String>)> =
        sqlx::query_as("SELECT plan, alert_webhook_url FROM tenants WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    let (plan, alert_url) = before.ok_or_else(|| TenantError::Unknown(id.to_string()))?;
    let (action, before, after) = match setting {
        TenantSetting::Plan(new, plans) => {
            sqlx::query("UPDATE tenants SET plan = $2 WHERE id = $1")
                .bind(id)
                .bind(new)
                .execute(&mut *tx)
                .await?;
            shares::write_current(&mut tx, plans, id).await?;
            (
                "tenant.plan",
                json!({ "plan": plan }),
                json!({ "plan": new }),
            )
        }
        TenantSetting::AlertWebhook(new) => {
            sqlx::query("UPDATE tenants SET alert_webhook_url = $2 WHERE id = $1")
                .bind(id)
                .bind(new)
                .execute(&mut *tx)
                .await?;
            let (b, a) = (
                json!({ "alert_webhook_url": alert_url }),
                json!({ "alert_webhook_url": new }),
            );
            ("tenant.alert_webhook", b, a)
        }
    };
    let change = Change {
        action,
        tenant: Some(id),
        target: id,
        before: Some(before),
        after: Some(after),
    };
    audit::record(&mut tx, actor, change).await?;
    tx.commit().await?;
    Ok(())
}

enum TenantSetting<'a> {
    /// The new plan, and the plans (for the tenant's share under it).
    Plan(&'a str, &'a plans::Plans),
    AlertWebhook(Option<&'a str>),
}

/// Moves a tenant to another plan (policies may restrict models per plan); workers see it within
/// their tenant cache's lifetime (30 s), dispatch (the plan's weight and cap) at once.
pub async fn set_plan(
    pool: &PgPool,
    actor: &Actor,
    plans: &plans::Plans,
    id: &str,
    plan: &str,
) -> Result<(), TenantError> {
    if plan.is_empty() || plan.len() > 64 {
        return Err(TenantError::Invalid(format!(
            "plan `{plan}`: 1 to 64 characters"
        )));
    }
    set_setting(pool, actor, id, TenantSetting::Plan(plan, plans)).await
}

/// Sets (or clears) the URL a tenant's budget alerts are POSTed to.
pub async fn set_alert_webhook(
    pool: &PgPool,
    actor: &Actor,
    id: &str,
    url: Option<&str>,
) -> Result<(), TenantError> {
    if let Some(u) = url {
        crate::jobs::check_webhook_url(u).map_err(TenantError::Invalid)?;
    }
    set_setting(pool, actor, id, TenantSetting::AlertWebhook(url)).await
}

#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    #[error("unknown tenant `{0}`")]
    Unknown(String),
    #[error("invalid tenant: {0}")]
    Invalid(String),
    #[error("tenant `{0}` already exists")]
    Exists(String),
    #[error("{0}")]
    Sealed(#[from] crate::keyring::SealError),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

#[derive(sqlx::FromRow)]
struct Row {
    id: String,
    amqp_user: Option<String>,
    webhook_secret: String,
    previous_webhook_secret: Option<String>,
    previous_webhook_secret_until: Option<chrono::DateTime<chrono::Utc>>,
    plan: String,
    provider_keys: sqlx::types::Json<provider_keys::StoredKeys>,
    share_weight: Option<f64>,
    max_in_flight: Option<i32>,
}

fn from_row(row: Row) -> Tenant {
    Tenant {
        id: row.id,
        amqp_user: row.amqp_user,
        webhook_secret: row.webhook_secret,
        previous_webhook_secret: row
            .previous_webhook_secret
            .zip(row.previous_webhook_secret_until),
        plan: row.plan,
        provider_keys: row.provider_keys.0,
        share_weight: row.share_weight,
        max_in_flight: row.max_in_flight.and_then(|n| u32::try_from(n).ok()),
    }
}

/// A cached lookup (a miss is cached too) and when it was made.
type CachedTenant = (Option<Tenant>, Instant);

/// The most lookups a directory keeps. Messages naming made-up tenants would otherwise grow the
/// cache without end (each miss is cached, so that a flood of them is not a flood of queries).
const MAX_CACHED_TENANTS: usize = 10_000;

/// Caches `entry` under `id`; a full cache first drops what has expired, then every miss, and
/// as a last resort everything (it is only a cache).
fn insert_bounded(
    cache: &mut HashMap<String, CachedTenant>,
    id: &str,
    entry: CachedTenant,
    ttl: Duration,
    max: usize,
) {
    if cache.len() >= max && !cache.contains_key(id) {
        cache.retain(|_, (_, at)| at.elapsed() < ttl);
        if cache.len() >= max {
            cache.retain(|_, (tenant, _)| tenant.is_some());
        }
        if cache.len() >= max {
            cache.clear();
        }
    }
    cache.insert(id.to_string(), entry);
}

/// Cached tenant lookups for workers and the api.
#[derive(Debug, Clone)]
pub struct TenantDirectory {
    pool: PgPool,
    ttl: Duration,
    cache: Arc<RwLock<HashMap<String, CachedTenant>>>,
}

impl TenantDirectory {
    pub fn new(pool: PgPool, ttl: Duration) -> Self {
        Self {
            pool,
            ttl,
            cache: Arc::default(),
        }
    }

    /// The tenant with this id, or `None` if there is none (negative answers are cached too, so a
    /// flood of messages for an unknown tenant does not become a flood of queries).
    pub async fn get(&self, id: &str) -> Result<Option<Tenant>, sqlx::Error> {
        if let Some(hit) = self.cached(id) {
            return Ok(hit);
        }
        let row: Option<Row> = sqlx::query_as(
            "SELECT id, amqp_user, webhook_secret, previous_webhook_secret, \
               previous_webhook_secret_until, plan, share_weight, max_in_flight, \
               (SELECT coalesce(jsonb_agg(jsonb_build_array(k.provider, k.sealed_key, k.allow_fallback) \
                                ORDER BY k.provider), '[]') \
                FROM tenant_provider_keys k WHERE k.tenant_id = tenants.id) AS provider_keys \
             FROM tenants WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        let tenant = row.map(from_row);
        if let Ok(mut cache) = self.cache.write() {
            let entry = (tenant.clone(), Instant::now());
            insert_bounded(&mut cache, id, entry, self.ttl, MAX_CACHED_TENANTS);
        }
        Ok(tenant)
    }

    fn cached(&self, id: &str) -> Option<Option<Tenant>> {
        let cache = self.cache.read().ok()?;
        let (tenant, at) = cache.get(id)?;
        (at.elapsed() < self.ttl).then(|| tenant.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_stays_bounded_under_made_up_tenants() {
        let mut cache = HashMap::new();
        let ttl = Duration::from_secs(30);
        let known = Tenant {
            id: "acme".into(),
            amqp_user: None,
            webhook_secret: "whsec_x".into(),
            previous_webhook_secret: None,
            plan: "standard".into(),
            provider_keys: Vec::new(),
            share_weight: None,
            max_in_flight: None,
        };
        insert_bounded(&mut cache, "acme", (Some(known), Instant::now()), ttl, 100);
        for i in 0..1_000 {
            insert_bounded(
                &mut cache,
                &format!("forged-{i}"),
                (None, Instant::now()),
                ttl,
                100,
            );
            assert!(cache.len() <= 100);
        }
        assert!(
            cache.get("acme").is_some_and(|e| e.0.is_some()),
            "known tenants survive misses"
        );
    }

    #[test]
    fn tokens_are_random_and_prefixed() {
        let a = random_token("whsec_");
        let b = random_token("whsec_");
        assert!(a.starts_with("whsec_"));
        assert_ne!(a, b);
        assert_eq!(hash_api_key("k").len(), 32);
        assert_ne!(hash_api_key("k"), hash_api_key("l"));
    }
}
