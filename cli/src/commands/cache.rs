//! `ragq cache`: the response cache's entries, purged by tenant (and policy, and age).

use std::time::Duration;

use ragq::audit::{self, Actor, Change};
use ragq::config::Config;

#[derive(Debug, clap::Subcommand)]
pub enum CacheCommand {
    /// Remove a tenant's cached answers (and their prompts' vectors); the next calls miss.
    Purge {
        #[arg(long)]
        tenant: String,
        /// Only entries stored for calls under this routing policy.
        #[arg(long)]
        policy: Option<String>,
        /// Only entries stored longer ago than this (`30m`, `7d`).
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: Option<Duration>,
    },
}

pub async fn run(cfg: &Config, command: CacheCommand) -> anyhow::Result<()> {
    let CacheCommand::Purge {
        tenant,
        policy,
        older_than,
    } = command;
    let pool = ragq::db::connect(&cfg.database).await?;
    let known: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM tenants WHERE id = $1)")
        .bind(&tenant)
        .fetch_one(&pool)
        .await?;
    anyhow::ensure!(known, "unknown tenant `{tenant}`");
    let before = match older_than {
        Some(age) => Some(chrono::Utc::now() - chrono::Duration::from_std(age)?),
        None => None,
    };
    let store = ragq::retrieval::VectorStore::open(&cfg.retrieval.store)?;
    let removed = ragq::cache::upkeep::purge(
        &pool,
        &store,
        &cfg.cache,
        &tenant,
        policy.as_deref(),
        before,
    )
    .await?;
    let scope = serde_json::json!({
        "policy": policy,
        "older_than_s": older_than.map(|d| d.as_secs()),
    });
    let change = Change {
        action: "cache.purge",
        tenant: Some(&tenant),
        target: policy.as_deref().unwrap_or("*"),
        before: Some(scope),
        after: Some(serde_json::json!({ "removed": removed })),
    };
    audit::record(&mut *pool.acquire().await?, &Actor::cli(), change).await?;
    println!("removed {removed} cached answers of tenant `{tenant}`");
    Ok(())
}
