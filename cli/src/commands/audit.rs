//! `ragq audit`: the audit log, newest first, filtered.

use ragq::audit::{self, AuditFilter};
use ragq::config::Config;

#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    #[arg(long)]
    pub tenant: Option<String>,
    /// An action (`key.rotate`) or a noun (`key`: every action on keys).
    #[arg(long)]
    pub action: Option<String>,
    /// `cli:<user>` or `key:<key id>`.
    #[arg(long)]
    pub actor: Option<String>,
    /// From this time (RFC 3339).
    #[arg(long)]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Before this time (RFC 3339).
    #[arg(long)]
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    #[arg(long, default_value_t = 100)]
    pub limit: i64,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(cfg: &Config, args: AuditArgs) -> anyhow::Result<()> {
    let pool = ragq::db::connect(&cfg.database).await?;
    let filter = AuditFilter {
        tenant: args.tenant,
        action: args.action,
        actor: args.actor,
        since: args.since,
        until: args.until,
        limit: Some(args.limit),
    };
    let rows = audit::list(&pool, &filter).await?;
    if args.json {
        for row in rows {
            println!("{}", serde_json::to_string(&row)?);
        }
        return Ok(());
    }
    println!(
        "{:<20} {:<24} {:<22} {:<12} {:<24} before -> after",
        "at (UTC)", "actor", "action", "tenant", "target"
    );
    let show = |v: &Option<serde_json::Value>| v.as_ref().map_or("-".into(), |v| v.to_string());
    for r in rows {
        println!(
            "{:<20} {:<24} {:<22} {:<12} {:<24} {} -> {}",
            r.at.format("%Y-%m-%d %H:%M:%S"),
            r.actor,
            r.action,
            r.tenant.as_deref().unwrap_or("-"),
            r.target,
            show(&r.before),
            show(&r.after)
        );
    }
    Ok(())
}
