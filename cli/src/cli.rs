//! The `ragq` command line: parse, load config, wire the parts, run. No logic of its own.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use ragq::config::Config;
use ragq_tools::sim::SimOptions;

#[derive(Debug, Parser)]
#[command(
    name = "ragq",
    version,
    about = "Queue-driven batch and RAG workers for SaaS backends"
)]
pub struct Cli {
    /// Configuration file (TOML); `RAGQ_*` environment variables override it.
    #[arg(long, global = true, env = "RAGQ_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log JSON lines instead of text.
    #[arg(long, global = true)]
    pub log_json: bool,
    /// Validate the configuration and exit.
    #[arg(long, global = true)]
    pub check_config: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the database if needed and apply migrations.
    Migrate,
    /// Consume and run jobs.
    Worker,
    /// Serve the HTTP api.
    Api,
    /// Fire cron pipelines (any number may run; one leads).
    Scheduler,
    /// Manage cron pipelines.
    Pipeline {
        #[command(subcommand)]
        command: crate::commands::pipeline::PipelineCommand,
    },
    /// Run the OpenAI-compatible simulated provider.
    SimProvider {
        #[arg(long, default_value = "127.0.0.1:8089")]
        listen: String,
        #[command(flatten)]
        options: SimOptions,
    },
    /// Publish jobs (a JSONL file, `-` for stdin, or one `--job`), optionally waiting for outcomes.
    Submit(crate::submit::SubmitArgs),
    /// Manage tenants.
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// Budgets and quotas per tenant (and feature).
    Budget {
        #[command(subcommand)]
        command: crate::commands::spend::BudgetCommand,
    },
    /// Spend reports and reconciliation.
    Spend {
        #[command(subcommand)]
        command: crate::commands::spend::SpendCommand,
    },
    /// Run the whole system on this machine and print what happened.
    Demo(crate::demo::DemoArgs),
    /// End-to-end load run on this machine, with the broker's own rate as a baseline.
    Bench(crate::bench::BenchArgs),
}

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create a tenant; prints its API key and webhook secret once.
    Add {
        id: String,
        #[arg(long)]
        name: Option<String>,
        /// AMQP user allowed to publish jobs for this tenant.
        #[arg(long)]
        amqp_user: Option<String>,
        /// Where budget alerts are POSTed (signed like job webhooks).
        #[arg(long)]
        alert_webhook: Option<String>,
    },
    /// Set (or with no URL, clear) where a tenant's budget alerts are POSTed.
    AlertWebhook { id: String, url: Option<String> },
    /// Move a tenant to a plan (routing policies may restrict models per plan).
    Plan { id: String, plan: String },
}

/// Runs the parsed command; returns the process exit code.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let path = cli.config.clone().or_else(ragq::config::default_path);
    let cfg = Config::load(path.as_deref())?;
    let service = match &cli.command {
        Some(Command::Worker) => "ragq-worker",
        Some(Command::Scheduler) => "ragq-scheduler",
        Some(Command::Api) => "ragq-api",
        _ => "ragq",
    };
    // Held to the end of the run: dropping it flushes the traces.
    let _traces = ragq::telemetry::init(
        cli.log_json,
        service,
        cfg.telemetry.otlp_endpoint.as_deref(),
    );
    let command = match (cli.command, cli.check_config) {
        (_, true) => {
            println!("configuration is valid");
            return Ok(());
        }
        (Some(command), false) => command,
        (None, false) => anyhow::bail!("give a subcommand, or --check-config (see ragq --help)"),
    };
    let cancel = shutdown_token();
    match command {
        Command::Migrate => {
            let mut db = cfg.database.clone();
            db.migrate_on_start = true;
            ragq::db::connect(&db).await?;
            println!("migrations applied");
        }
        Command::Worker => {
            serve_metrics(&cfg, &cancel).await?;
            let pool = ragq::db::connect(&cfg.database).await?;
            ragq_workers::run(cfg, pool, cancel).await?;
        }
        Command::Scheduler => {
            serve_metrics(&cfg, &cancel).await?;
            let pool = ragq::db::connect(&cfg.database).await?;
            let publisher =
                std::sync::Arc::new(ragq::queue::publisher::ReconnectingPublisher::new(
                    cfg.queue.clone(),
                    "ragq-scheduler",
                ));
            let clock = std::sync::Arc::new(ragq::scheduler::clock::SystemClock);
            ragq::scheduler::Scheduler::new(pool, publisher, clock, cfg.scheduler.clone())
                .run(cancel)
                .await;
        }
        Command::Pipeline { command } => crate::commands::pipeline::run(&cfg, command).await?,
        Command::Api => {
            // The api serves `/metrics` on its own port.
            ragq::telemetry::metrics::install(cfg.telemetry.labels);
            let pool = ragq::db::connect(&cfg.database).await?;
            ragq::api::serve(&cfg.api, &cfg.queue, pool, cancel).await?;
        }
        Command::SimProvider { listen, options } => {
            let sim = ragq_tools::sim::spawn(&listen, options, cancel.clone()).await?;
            tracing::info!(url = %sim.base_url(), "sim provider listening");
            cancel.cancelled().await;
        }
        Command::Submit(args) => crate::submit::run(&cfg, args, cancel).await?,
        Command::Tenant { command } => tenant(&cfg, command).await?,
        Command::Budget { command } => crate::commands::spend::budget(&cfg, command).await?,
        Command::Spend { command } => crate::commands::spend::spend(&cfg, command).await?,
        Command::Demo(args) => crate::demo::run(args, cancel).await?,
        Command::Bench(args) => crate::bench::run(args, cancel).await?,
    }
    Ok(())
}

/// A tenant's alert webhook is a URL ragq will call: the outbound URL policy applies when it is set.
async fn check_alert_url(cfg: &Config, url: Option<&str>) -> anyhow::Result<()> {
    if let Some(url) = url {
        if let Err(refusal) = cfg.webhooks.url_policy.check(url).await {
            anyhow::bail!("alert webhook refused: {refusal}");
        }
    }
    Ok(())
}

async fn tenant(cfg: &Config, command: TenantCommand) -> anyhow::Result<()> {
    let pool = ragq::db::connect(&cfg.database).await?;
    match command {
        TenantCommand::Add {
            id,
            name,
            amqp_user,
            alert_webhook,
        } => {
            if let Some(user) = amqp_user.as_deref() {
                anyhow::ensure!(
                    !cfg.queue.trusted_publishers.iter().any(|t| t == user),
                    "AMQP user `{user}` is a trusted publisher (queue.trusted_publishers), which may \
                     publish for any tenant: give the tenant an AMQP user of its own"
                );
                anyhow::ensure!(
                    user != ragq::queue::url_user(&cfg.queue.url),
                    "AMQP user `{user}` is ragq's own (queue.url), whose messages carry other \
                     publishers on: give the tenant an AMQP user of its own"
                );
            }
            check_alert_url(cfg, alert_webhook.as_deref()).await?;
            let created = ragq::tenants::create(
                &pool,
                &id,
                name.as_deref().unwrap_or(&id),
                amqp_user.as_deref(),
            )
            .await?;
            if let Some(url) = alert_webhook {
                ragq::tenants::set_alert_webhook(&pool, &id, Some(&url)).await?;
            }
            println!("tenant:         {}", created.tenant.id);
            println!("api key:        {}", created.api_key.expose());
            println!("webhook secret: {}", created.tenant.webhook_secret.expose());
            println!("(shown once; ragq stores only a hash of the API key)");
        }
        TenantCommand::Plan { id, plan } => {
            ragq::tenants::set_plan(&pool, &id, &plan).await?;
            println!("tenant `{id}` is on plan `{plan}`");
        }
        TenantCommand::AlertWebhook { id, url } => {
            check_alert_url(cfg, url.as_deref()).await?;
            ragq::tenants::set_alert_webhook(&pool, &id, url.as_deref()).await?;
            println!(
                "tenant `{id}`: budget alerts go to {}",
                url.as_deref().unwrap_or("nowhere")
            );
        }
    }
    Ok(())
}

/// A token cancelled on SIGTERM or ctrl-c.
pub fn shutdown_token() -> CancellationToken {
    let token = CancellationToken::new();
    let child = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(t) => t,
                    Err(_) => {
                        let _ = ctrl_c.await;
                        child.cancel();
                        return;
                    }
                };
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutting down");
        child.cancel();
    });
    token
}

/// When `telemetry.metrics_listen` is set, installs the metrics recorder and serves `/metrics`;
/// otherwise nothing records (the `metrics` facade's calls are then no-ops).
async fn serve_metrics(
    cfg: &ragq::config::Config,
    cancel: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    if let Some(addr) = cfg.telemetry.metrics_listen {
        ragq::telemetry::metrics::install(cfg.telemetry.labels);
        let bound = ragq::telemetry::metrics::serve(addr, cancel.clone())
            .await
            .map_err(|e| anyhow::anyhow!("telemetry.metrics_listen {addr}: {e}"))?;
        tracing::info!(url = %format!("http://{bound}/metrics"), "serving metrics");
    }
    Ok(())
}
