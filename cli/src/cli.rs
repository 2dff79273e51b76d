//! The `ragq` command line: parse, load config, wire the parts, run. No logic of its own.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use ragq::audit::Actor;
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
    /// API keys: create, list, revoke, rotate.
    Key {
        #[command(subcommand)]
        command: crate::commands::keys::KeyCommand,
    },
    /// Kept webhook deliveries.
    Webhook {
        #[command(subcommand)]
        command: WebhookCommand,
    },
    /// Secrets at rest: make a sealing key, re-seal stored secrets under the current one.
    Secrets {
        #[command(subcommand)]
        command: SecretsCommand,
    },
    /// The response cache: purge a tenant's cached answers.
    Cache {
        #[command(subcommand)]
        command: crate::commands::cache::CacheCommand,
    },
    /// Versioned prompt templates: save versions, move labels, split traffic, list and show.
    Prompt {
        #[command(subcommand)]
        command: crate::commands::prompt::PromptCommand,
    },
    /// The audit log of administrative changes, newest first.
    Audit(crate::commands::audit::AuditArgs),
    /// Run the whole system on this machine and print what happened.
    Demo(crate::demo::DemoArgs),
    /// End-to-end load run on this machine, with the broker's own rate as a baseline.
    Bench(crate::bench::BenchArgs),
}

#[derive(Debug, Subcommand)]
pub enum ProviderKeyCommand {
    /// Store (or replace) the tenant's key for a catalog provider, read from a file (never an
    /// argument, which the process list and shell history would show).
    Set {
        tenant: String,
        provider: String,
        #[arg(long)]
        key_file: PathBuf,
        /// When the provider refuses the key, call with the operator's key instead.
        #[arg(long)]
        allow_fallback: bool,
    },
    /// Remove the tenant's key for a provider.
    Delete { tenant: String, provider: String },
    /// The providers a tenant brought keys for (never the keys).
    List { tenant: String },
}

#[derive(Debug, Subcommand)]
pub enum WebhookCommand {
    /// Re-send a tenant's kept deliveries with their original webhook-id (receivers dedupe on it).
    Replay {
        #[arg(long)]
        tenant: String,
        /// One job's deliveries.
        #[arg(long, conflicts_with_all = ["since", "until"])]
        job: Option<String>,
        /// Deliveries created at or after this time (RFC 3339).
        #[arg(long)]
        since: Option<chrono::DateTime<chrono::Utc>>,
        /// Deliveries created before this time (RFC 3339).
        #[arg(long)]
        until: Option<chrono::DateTime<chrono::Utc>>,
        /// Which deliveries: those whose attempts are spent, those delivered, or both.
        #[arg(long, value_parser = ["failed", "delivered", "any"], default_value = "failed")]
        state: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum SecretsCommand {
    /// Print a new random sealing key (base64, 32 bytes) for `secrets.key_file` or `key_env`.
    NewKey,
    /// Re-seal every stored secret under the current key (after a key change: keep the old key
    /// in `secrets.retired_key_files` until this has run), or seal those still in clear.
    Reencrypt,
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
    /// Set a tenant's own fair share, overriding its plan's: its weight against other tenants
    /// with queued jobs, and how many of its jobs may run at once.
    Share {
        id: String,
        /// Weight (the plan's `weight` when cleared with `plan`).
        #[arg(long)]
        weight: Option<String>,
        /// Most jobs running at once (`plan` clears it: the plan's applies).
        #[arg(long)]
        max_in_flight: Option<String>,
    },
    /// Erase a tenant: its jobs, vectors, webhook payloads, keys, pipelines and budgets; its
    /// ledger is anonymized or kept (`retention.erased_ledger`, or --ledger).
    Delete {
        id: String,
        #[arg(long, value_parser = ["anonymize", "keep"])]
        ledger: Option<String>,
        /// Confirms the erasure (it cannot be undone).
        #[arg(long)]
        yes: bool,
    },
    /// A tenant's own provider keys (bring your own key): its calls to that provider use them.
    ProviderKey {
        #[command(subcommand)]
        command: ProviderKeyCommand,
    },
    /// Give a tenant a new webhook secret (printed once); deliveries carry signatures with both
    /// secrets during the grace period.
    RotateWebhookSecret {
        id: String,
        /// How long the current secret keeps signing beside the new one (`0s`: not at all).
        #[arg(long, value_parser = humantime::parse_duration, default_value = "24h")]
        grace: std::time::Duration,
    },
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
    if matches!(command, Command::Worker | Command::Api | Command::Scheduler)
        && cfg.secrets.current_id().is_none()
    {
        tracing::warn!(
            "no sealing key (secrets.key_file or secrets.key_env): webhook secrets and tenants' \
             provider keys are stored in clear; make one with `ragq secrets new-key`"
        );
    }
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
        Command::Key { command } => crate::commands::keys::run(&cfg, command).await?,
        Command::Webhook {
            command:
                WebhookCommand::Replay {
                    tenant,
                    job,
                    since,
                    until,
                    state,
                },
        } => {
            let pool = ragq::db::connect(&cfg.database).await?;
            let filter = ragq::webhooks::replay::ReplayFilter {
                job_id: job,
                since,
                until,
                state: Some(state),
            };
            let done =
                ragq::webhooks::replay::replay(&pool, &Actor::cli(), &tenant, &filter).await?;
            println!(
                "{} deliveries of tenant `{tenant}` queued to be sent again (running workers send them)",
                done.replayed
            );
            for id in done.webhook_ids {
                println!("  {id}");
            }
        }
        Command::Secrets { command } => secrets(&cfg, command).await?,
        Command::Audit(args) => crate::commands::audit::run(&cfg, args).await?,
        Command::Cache { command } => crate::commands::cache::run(&cfg, command).await?,
        Command::Prompt { command } => crate::commands::prompt::run(&cfg, command).await?,
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
            let spec = ragq::tenants::TenantSpec {
                id: &id,
                name: name.as_deref().unwrap_or(&id),
                amqp_user: amqp_user.as_deref(),
                alert_webhook: alert_webhook.as_deref(),
            };
            let created =
                ragq::tenants::create_with(&pool, &Actor::cli(), &cfg.secrets, &spec).await?;
            println!("tenant:         {}", created.tenant.id);
            println!(
                "api key:        {} (key {})",
                created.api_key.expose(),
                created.api_key_id
            );
            println!("webhook secret: {}", created.webhook_secret.expose());
            println!("(shown once; ragq stores only a hash of the API key)");
        }
        TenantCommand::Delete { id, ledger, yes } => {
            anyhow::ensure!(
                yes,
                "erasing tenant `{id}` cannot be undone: run again with --yes"
            );
            let keep = match ledger.as_deref() {
                Some(mode) => mode == "keep",
                None => cfg.retention.keep_erased_ledger,
            };
            let store = ragq::retrieval::VectorStore::open(&cfg.retrieval.store)?;
            let erased = ragq::tenants::erasure::erase(
                &pool,
                &store,
                &Actor::cli(),
                &id,
                keep,
                &cfg.cache.collection,
            )
            .await?;
            println!(
                "tenant `{id}` erased; its ledger is {} as `{}`",
                if keep { "kept" } else { "anonymized" },
                erased.pseudonym
            );
            println!("vectors removed from: {}", erased.collections.join(", "));
            println!("rows: {}", erased.rows);
        }
        TenantCommand::ProviderKey { command } => provider_key(cfg, &pool, command).await?,
        TenantCommand::RotateWebhookSecret { id, grace } => {
            let rotated = ragq::tenants::secrets::rotate_webhook_secret(
                &pool,
                &cfg.secrets,
                &Actor::cli(),
                &id,
                grace,
            )
            .await?;
            println!("webhook secret: {}", rotated.secret.expose());
            match rotated.previous_until {
                Some(until) => println!(
                    "(shown once; until {} deliveries are signed with the previous secret too)",
                    until.to_rfc3339()
                ),
                None => println!("(shown once; the previous secret no longer signs)"),
            }
        }
        TenantCommand::Share {
            id,
            weight,
            max_in_flight,
        } => {
            let change = ragq::tenants::shares::ShareChange {
                weight: weight.as_deref().map(parse_override).transpose()?,
                max_in_flight: max_in_flight.as_deref().map(parse_override).transpose()?,
            };
            anyhow::ensure!(
                change.weight.is_some() || change.max_in_flight.is_some(),
                "give --weight, --max-in-flight or both"
            );
            ragq::tenants::shares::set(&pool, &Actor::cli(), &cfg.plans, &id, change).await?;
            println!("tenant `{id}`: fair share set");
        }
        TenantCommand::Plan { id, plan } => {
            ragq::tenants::set_plan(&pool, &Actor::cli(), &cfg.plans, &id, &plan).await?;
            println!("tenant `{id}` is on plan `{plan}`");
        }
        TenantCommand::AlertWebhook { id, url } => {
            check_alert_url(cfg, url.as_deref()).await?;
            ragq::tenants::set_alert_webhook(&pool, &Actor::cli(), &id, url.as_deref()).await?;
            println!(
                "tenant `{id}`: budget alerts go to {}",
                url.as_deref().unwrap_or("nowhere")
            );
        }
    }
    Ok(())
}

/// An override's value: a number, or `plan` to clear it (the plan's applies). `none` is no cap.
fn parse_override<T: std::str::FromStr>(text: &str) -> anyhow::Result<Option<T>> {
    match text {
        "plan" | "none" => Ok(None),
        n => n
            .parse()
            .map(Some)
            .map_err(|_| anyhow::anyhow!("`{n}` is not a number (or `plan`)")),
    }
}

async fn provider_key(
    cfg: &Config,
    pool: &sqlx::PgPool,
    command: ProviderKeyCommand,
) -> anyhow::Result<()> {
    use ragq::tenants::provider_keys;
    match command {
        ProviderKeyCommand::Set {
            tenant,
            provider,
            key_file,
            allow_fallback,
        } => {
            anyhow::ensure!(
                cfg.catalog
                    .providers()
                    .iter()
                    .any(|p| p.endpoint.name == provider),
                "no provider `{provider}` in the catalog (providers)"
            );
            let key = std::fs::read_to_string(&key_file)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", key_file.display()))?;
            let key = ragq::secret::Secret::new(key.trim());
            let view = provider_keys::set(
                pool,
                &cfg.secrets,
                &Actor::cli(),
                (&tenant, &provider),
                &key,
                allow_fallback,
            )
            .await?;
            println!(
                "tenant `{tenant}`: calls to `{provider}` use its own key (stored sealed); \
                 fallback to the operator's key: {}",
                if view.allow_fallback { "allowed" } else { "no" }
            );
        }
        ProviderKeyCommand::Delete { tenant, provider } => {
            let gone = provider_keys::delete(pool, &Actor::cli(), &tenant, &provider).await?;
            anyhow::ensure!(gone, "tenant `{tenant}` has no key for `{provider}`");
            println!("tenant `{tenant}`: calls to `{provider}` use the operator's key again");
        }
        ProviderKeyCommand::List { tenant } => {
            for k in provider_keys::list(pool, &tenant).await? {
                println!(
                    "{:<16} fallback {:<5} updated {}",
                    k.provider,
                    k.allow_fallback,
                    k.updated_at.to_rfc3339()
                );
            }
        }
    }
    Ok(())
}

async fn secrets(cfg: &Config, command: SecretsCommand) -> anyhow::Result<()> {
    match command {
        SecretsCommand::NewKey => println!("{}", ragq::keyring::Keyring::generate_key()),
        SecretsCommand::Reencrypt => {
            let Some(key) = cfg.secrets.current_id() else {
                anyhow::bail!(
                    "no sealing key is configured: set secrets.key_file or secrets.key_env first"
                );
            };
            let pool = ragq::db::connect(&cfg.database).await?;
            use ragq::tenants::secrets::{reseal, Reseal};
            let n = reseal(&pool, &cfg.secrets, &Actor::cli(), Reseal::NotCurrent).await?;
            println!("{n} stored secrets re-sealed under key {key}");
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
