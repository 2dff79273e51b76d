//! `ragq pipeline …`: create, list, pause, resume, trigger and inspect pipelines.

use chrono::Utc;
use sqlx::PgPool;

use ragq::audit::Actor;
use ragq::config::Config;
use ragq::queue::publisher::ReconnectingPublisher;
use ragq::scheduler::pipeline::{self, PipelineSpec};

#[derive(Debug, clap::Subcommand)]
pub enum PipelineCommand {
    /// Create a pipeline from a JSON spec: {"name", "cron", "time_zone", "job_template", "overlap",
    /// "missed", "missed_limit", "starting_deadline_secs", "enabled"}.
    Create {
        #[arg(long)]
        tenant: String,
        /// The spec as JSON, or @FILE to read it from a file.
        spec: String,
    },
    /// List pipelines with their next fire times.
    List {
        #[arg(long)]
        tenant: Option<String>,
    },
    Pause {
        #[arg(long)]
        tenant: String,
        name: String,
    },
    Resume {
        #[arg(long)]
        tenant: String,
        name: String,
    },
    /// Run a pipeline now.
    Trigger {
        #[arg(long)]
        tenant: String,
        name: String,
    },
    /// A pipeline's latest runs and their jobs' outcomes.
    Runs {
        #[arg(long)]
        tenant: String,
        name: String,
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
}

pub async fn run(cfg: &Config, command: PipelineCommand) -> anyhow::Result<()> {
    let pool = ragq::db::connect(&cfg.database).await?;
    match command {
        PipelineCommand::Create { tenant, spec } => create(&pool, cfg, &tenant, spec).await?,
        PipelineCommand::List { tenant } => list(&pool, tenant.as_deref()).await?,
        PipelineCommand::Pause { tenant, name } => {
            pipeline::set_enabled(&pool, &Actor::cli(), &tenant, &name, false, Utc::now()).await?;
            println!("pipeline `{name}` paused");
        }
        PipelineCommand::Resume { tenant, name } => {
            pipeline::set_enabled(&pool, &Actor::cli(), &tenant, &name, true, Utc::now()).await?;
            let p = pipeline::get(&pool, &tenant, &name).await?;
            println!(
                "pipeline `{name}` resumed; next run at {}",
                p.next_fire_at.to_rfc3339()
            );
        }
        PipelineCommand::Trigger { tenant, name } => {
            let max = cfg.scheduler.pipelines;
            let actor = Actor::cli();
            match ragq::scheduler::fire::trigger(&pool, &actor, &tenant, &name, Utc::now(), max).await? {
                Some(job) => {
                    let publisher = ReconnectingPublisher::new(cfg.queue.clone(), "ragq-pipeline");
                    ragq::scheduler::outbox::relay(&pool, &publisher).await?;
                    println!("pipeline `{name}` triggered: job `{job}`");
                }
                None => println!("pipeline `{name}`: run skipped by its overlap policy (see `ragq pipeline runs`)"),
            }
        }
        PipelineCommand::Runs {
            tenant,
            name,
            limit,
        } => {
            for r in pipeline::runs(&pool, &tenant, &name, limit).await? {
                println!(
                    "{}  {:<8} {:<8} {:<44} {}",
                    r.scheduled_at.to_rfc3339(),
                    r.trigger,
                    r.state,
                    r.job_id.unwrap_or_default(),
                    r.job_state.or(r.reason).unwrap_or_default()
                );
            }
        }
    }
    Ok(())
}

/// Creates a pipeline from a JSON spec given inline or as `@file`.
async fn create(pool: &PgPool, cfg: &Config, tenant: &str, spec: String) -> anyhow::Result<()> {
    let text = match spec.strip_prefix('@') {
        Some(path) => {
            std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read {path}: {e}"))?
        }
        None => spec,
    };
    let spec: PipelineSpec =
        serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("pipeline spec: {e}"))?;
    pipeline::check_webhook(&spec, &cfg.webhooks.url_policy)
        .await
        .map_err(anyhow::Error::msg)?;
    let p = pipeline::create(
        pool,
        &Actor::cli(),
        tenant,
        &spec,
        Utc::now(),
        &cfg.scheduler.pipelines,
    )
    .await?;
    println!(
        "pipeline `{}` created for tenant `{tenant}`; first run at {}",
        p.name,
        p.next_fire_at.to_rfc3339()
    );
    Ok(())
}

async fn list(pool: &PgPool, tenant: Option<&str>) -> anyhow::Result<()> {
    println!(
        "{:<12} {:<24} {:<18} {:<16} {:<8} {:<8} {:<9} next fire (UTC)",
        "tenant", "name", "cron", "time zone", "enabled", "overlap", "missed"
    );
    for p in pipeline::list(pool, tenant).await? {
        let next = if p.enabled {
            p.next_fire_at.to_rfc3339()
        } else {
            "paused".into()
        };
        println!(
            "{:<12} {:<24} {:<18} {:<16} {:<8} {:<8} {:<9} {next}",
            p.tenant_id,
            p.name,
            p.cron,
            p.time_zone,
            p.enabled,
            format!("{:?}", p.overlap).to_lowercase(),
            format!("{:?}", p.missed).to_lowercase()
        );
    }
    Ok(())
}
