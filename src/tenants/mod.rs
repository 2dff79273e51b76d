//! Tenants: who may submit jobs, how they authenticate, and the secret their webhooks are signed with.
//!
//! API keys are stored as SHA-256 hashes (a random 256-bit key needs no slow hash) and shown once at
//! creation. Workers look tenants up through a small cache so a job costs no extra query.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::secret::Secret;

pub mod plans;

/// A tenant as the platform needs it at run time.
#[derive(Debug, Clone)]
pub struct Tenant {
    pub id: String,
    pub amqp_user: Option<String>,
    pub webhook_secret: Secret,
    pub plan: String,
}

/// What `create` hands back once: the only time the API key is seen in clear.
#[derive(Debug)]
pub struct NewTenant {
    pub tenant: Tenant,
    pub api_key: Secret,
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

/// Creates a tenant with a fresh API key and webhook secret; an existing id is refused.
pub async fn create(
    pool: &PgPool,
    id: &str,
    name: &str,
    amqp_user: Option<&str>,
) -> Result<NewTenant, TenantError> {
    crate::jobs::check_tenant(id).map_err(TenantError::Invalid)?;
    let api_key = random_token("rq_").replace(['+', '/', '='], "x");
    let secret = random_token("whsec_");
    let inserted = sqlx::query(
        "INSERT INTO tenants (id, name, api_key_hash, amqp_user, webhook_secret) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING",
    )
    .bind(id)
    .bind(name)
    .bind(hash_api_key(&api_key))
    .bind(amqp_user)
    .bind(&secret)
    .execute(pool)
    .await?;
    if inserted.rows_affected() == 0 {
        return Err(TenantError::Exists(id.to_string()));
    }
    Ok(NewTenant {
        tenant: Tenant {
            id: id.to_string(),
            amqp_user: amqp_user.map(str::to_string),
            webhook_secret: Secret::new(secret),
            plan: "standard".into(),
        },
        api_key: Secret::new(api_key),
    })
}

/// Moves a tenant to another plan (policies may restrict models per plan); workers see it within
/// their tenant cache's lifetime (30 s).
pub async fn set_plan(pool: &PgPool, id: &str, plan: &str) -> Result<(), TenantError> {
    if plan.is_empty() || plan.len() > 64 {
        return Err(TenantError::Invalid(format!(
            "plan `{plan}`: 1 to 64 characters"
        )));
    }
    let updated = sqlx::query("UPDATE tenants SET plan = $2 WHERE id = $1")
        .bind(id)
        .bind(plan)
        .execute(pool)
        .await?;
    if updated.rows_affected() == 0 {
        return Err(TenantError::Unknown(id.to_string()));
    }
    Ok(())
}

/// Sets (or clears) the URL a tenant's budget alerts are POSTed to.
pub async fn set_alert_webhook(
    pool: &PgPool,
    id: &str,
    url: Option<&str>,
) -> Result<(), TenantError> {
    if let Some(u) = url {
        crate::jobs::check_webhook_url(u).map_err(TenantError::Invalid)?;
    }
    let updated = sqlx::query("UPDATE tenants SET alert_webhook_url = $2 WHERE id = $1")
        .bind(id)
        .bind(url)
        .execute(pool)
        .await?;
    if updated.rows_affected() == 0 {
        return Err(TenantError::Unknown(id.to_string()));
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    #[error("unknown tenant `{0}`")]
    Unknown(String),
    #[error("invalid tenant: {0}")]
    Invalid(String),
    #[error("tenant `{0}` already exists")]
    Exists(String),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

type Row = (String, Option<String>, String, String);

fn from_row((id, amqp_user, secret, plan): Row) -> Tenant {
    Tenant {
        id,
        amqp_user,
        webhook_secret: Secret::new(secret),
        plan,
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
        let row: Option<Row> =
            sqlx::query_as("SELECT id, amqp_user, webhook_secret, plan FROM tenants WHERE id = $1")
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

    /// The tenant owning an API key, if any.
    pub async fn by_api_key(&self, key: &str) -> Result<Option<Tenant>, sqlx::Error> {
        let row: Option<Row> = sqlx::query_as(
            "SELECT id, amqp_user, webhook_secret, plan FROM tenants WHERE api_key_hash = $1",
        )
        .bind(hash_api_key(key))
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(from_row))
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
            webhook_secret: Secret::new("whsec_x"),
            plan: "standard".into(),
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
