//! Keeping the cache within its bounds: expired entries and each tenant's oldest beyond
//! `cache.max_entries_per_tenant` are removed every `cache.sweep_interval_ms` (by one process at a
//! time), and operators purge a tenant's entries. Vectors of removed semantic entries go too; one
//! left behind by a failure matches nothing, since its row is gone.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::store::{self, Removed};
use super::{semantic, CacheConfig, CacheError};
use crate::retrieval::VectorStore;

/// Expired entries removed per sweep at most; the rest go on the next.
const SWEEP_LIMIT: i64 = 10_000;

/// Sweeps until cancelled; errors are logged and the next tick tries again.
pub async fn run(pool: PgPool, store: VectorStore, cfg: CacheConfig, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(cfg.sweep_interval);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        match sweep(&pool, &store, &cfg).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                entries = n,
                "removed expired cache entries and entries beyond the bound"
            ),
            Err(e) => tracing::warn!(error = %e, "cannot sweep the response cache"),
        }
    }
}

/// One sweep; returns how many entries went.
pub async fn sweep(
    pool: &PgPool,
    store: &VectorStore,
    cfg: &CacheConfig,
) -> Result<usize, CacheError> {
    let removed = store::sweep(pool, cfg.max_entries_per_tenant, SWEEP_LIMIT).await?;
    forget(store, cfg, &removed).await?;
    Ok(removed.len())
}

/// Removes `tenant`'s entries (of one policy, stored before a time, if given) and their vectors;
/// returns how many went.
pub async fn purge(
    pool: &PgPool,
    store: &VectorStore,
    cfg: &CacheConfig,
    tenant: &str,
    policy: Option<&str>,
    before: Option<DateTime<Utc>>,
) -> Result<usize, CacheError> {
    let removed = store::purge(pool, tenant, policy, before).await?;
    forget(store, cfg, &removed).await?;
    Ok(removed.len())
}

async fn forget(
    store: &VectorStore,
    cfg: &CacheConfig,
    removed: &[Removed],
) -> Result<(), CacheError> {
    let mut by_tenant: BTreeMap<&str, Vec<Uuid>> = BTreeMap::new();
    for r in removed.iter().filter(|r| r.semantic) {
        by_tenant.entry(&r.tenant_id).or_default().push(r.id);
    }
    for (tenant, ids) in by_tenant {
        semantic::forget(store, &cfg.collection, tenant, &ids).await?;
    }
    Ok(())
}
