//! `ragq budget …` and `ragq spend …`: set budgets, read reports, reconcile with a provider export.

use chrono::NaiveDate;
use sqlx::PgPool;

use ragq::config::Config;
use ragq::spend::budget::{self, parse_usd, usd, BudgetSpec, OnLimit};
use ragq::spend::reconcile;
use ragq::spend::report::{self, Dimension, ReportQuery};

#[derive(Debug, clap::Subcommand)]
pub enum BudgetCommand {
    /// Create or replace the budget of a tenant (or of one of its features) for a period.
    Set(BudgetArgs),
    /// List budgets with this period's spend, reservations and jobs.
    List {
        #[arg(long)]
        tenant: Option<String>,
    },
}

#[derive(Debug, clap::Args)]
pub struct BudgetArgs {
    #[arg(long)]
    pub tenant: String,
    /// Limit one feature tag only (default: every feature of the tenant).
    #[arg(long, default_value = "")]
    pub feature: String,
    #[arg(long, value_parser = ["day", "month"], default_value = "month")]
    pub period: String,
    /// Dollars; crossing the alert thresholds of it sends alerts.
    #[arg(long)]
    pub soft: Option<String>,
    /// Dollars; jobs that could pass it are refused (or downgraded).
    #[arg(long)]
    pub hard: Option<String>,
    #[arg(long)]
    pub job_quota: Option<i64>,
    #[arg(long)]
    pub token_quota: Option<i64>,
    /// Alert thresholds in percent of the soft limit (of the hard one without a soft limit).
    #[arg(long, value_delimiter = ',', default_value = "50,80,100")]
    pub alerts: Vec<i32>,
    #[arg(long, value_enum, default_value = "fail")]
    pub on_limit: OnLimitArg,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum OnLimitArg {
    Fail,
    Downgrade,
}

#[derive(Debug, clap::Subcommand)]
pub enum SpendCommand {
    /// Spend grouped by tenant, feature, model, provider and/or day, from the daily aggregates.
    Report(ReportArgs),
    /// Compare the ledger with a provider's usage export (CSV: date, model, tokens, cost).
    Reconcile(ReconcileArgs),
}

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    #[arg(long)]
    pub tenant: Option<String>,
    /// First day (YYYY-MM-DD, inclusive).
    #[arg(long)]
    pub from: Option<NaiveDate>,
    /// Last day (inclusive).
    #[arg(long)]
    pub to: Option<NaiveDate>,
    /// Comma-separated: tenant, feature, model, provider, day.
    #[arg(long, default_value = "tenant")]
    pub group_by: String,
    #[arg(long, value_parser = ["table", "csv", "json"], default_value = "table")]
    pub format: String,
}

#[derive(Debug, clap::Args)]
pub struct ReconcileArgs {
    /// The catalog provider the export comes from.
    #[arg(long)]
    pub provider: String,
    /// The export file.
    #[arg(long)]
    pub csv: std::path::PathBuf,
}

pub async fn budget(cfg: &Config, command: BudgetCommand) -> anyhow::Result<()> {
    let pool = ragq::db::connect(&cfg.database).await?;
    match command {
        BudgetCommand::Set(a) => {
            let money = |v: &Option<String>, what: &str| {
                v.as_deref()
                    .map(parse_usd)
                    .transpose()
                    .map_err(|e| anyhow::anyhow!("--{what}: {e}"))
            };
            let spec = BudgetSpec {
                tenant: a.tenant,
                feature: a.feature,
                period: a.period,
                soft_limit_micros: money(&a.soft, "soft")?,
                hard_limit_micros: money(&a.hard, "hard")?,
                job_quota: a.job_quota,
                token_quota: a.token_quota,
                alert_thresholds: a.alerts,
                on_limit: match a.on_limit {
                    OnLimitArg::Fail => OnLimit::Fail,
                    OnLimitArg::Downgrade => OnLimit::Downgrade,
                },
            };
            let id = budget::set(&pool, &ragq::audit::Actor::cli(), &spec).await?;
            println!("budget {id} set for tenant `{}`", spec.tenant);
        }
        BudgetCommand::List { tenant } => print_budgets(&pool, tenant.as_deref()).await?,
    }
    Ok(())
}

async fn print_budgets(pool: &PgPool, tenant: Option<&str>) -> anyhow::Result<()> {
    type Row = (
        i64,
        String,
        String,
        String,
        Option<i64>,
        Option<i64>,
        Option<i64>,
        Option<i64>,
        String,
        i64,
        i64,
        i64,
        i64,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT b.id, b.tenant_id, b.feature, b.period, b.soft_limit_micros, b.hard_limit_micros, b.job_quota, \
           b.token_quota, b.on_limit, coalesce(u.cost_micros, 0), coalesce(u.reserved_micros, 0), \
           coalesce(u.jobs, 0), coalesce(u.tokens, 0) \
         FROM budgets b LEFT JOIN budget_usage u ON u.budget_id = b.id \
           AND u.period_start = date_trunc(b.period, now() AT TIME ZONE 'UTC')::date \
         WHERE $1::text IS NULL OR b.tenant_id = $1 ORDER BY b.tenant_id, b.feature, b.period",
    )
    .bind(tenant)
    .fetch_all(pool)
    .await?;
    let money = |m: Option<i64>| m.map_or("-".to_string(), usd);
    let count = |m: Option<i64>| m.map_or("-".to_string(), |v| v.to_string());
    println!(
        "{:>4}  {:<12} {:<12} {:<6} {:>14} {:>14} {:>14} {:>14} {:>8} {:>10} {:>12}",
        "id",
        "tenant",
        "feature",
        "period",
        "soft",
        "hard",
        "spent",
        "reserved",
        "jobs",
        "job quota",
        "token quota"
    );
    for (id, t, f, p, soft, hard, jq, tq, on_limit, cost, reserved, jobs, _tokens) in rows {
        let f = if f.is_empty() { "*".to_string() } else { f };
        println!(
            "{id:>4}  {t:<12} {f:<12} {p:<6} {:>14} {:>14} {:>14} {:>14} {jobs:>8} {:>10} {:>12}  on limit: {on_limit}",
            money(soft), money(hard), usd(cost), usd(reserved), count(jq), count(tq)
        );
    }
    Ok(())
}

pub async fn spend(cfg: &Config, command: SpendCommand) -> anyhow::Result<()> {
    let pool = ragq::db::connect(&cfg.database).await?;
    match command {
        SpendCommand::Report(a) => {
            let group_by = Dimension::parse_list(&a.group_by).map_err(anyhow::Error::msg)?;
            let q = ReportQuery {
                tenant: a.tenant,
                from: a.from,
                to: a.to,
                group_by,
            };
            let rows = report::query(&pool, &q).await?;
            match a.format.as_str() {
                "csv" => print!("{}", report::to_csv(&q.group_by, &rows)),
                "json" => println!(
                    "{}",
                    serde_json::to_string_pretty(&report::to_json(&q.group_by, &rows))?
                ),
                _ => print!("{}", report::to_table(&q.group_by, &rows)),
            }
        }
        SpendCommand::Reconcile(a) => reconcile_export(cfg, &pool, &a).await?,
    }
    Ok(())
}

async fn reconcile_export(cfg: &Config, pool: &PgPool, a: &ReconcileArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        cfg.catalog.provider(&a.provider).is_some(),
        "unknown provider `{}` (not in the catalog)",
        a.provider
    );
    let text = std::fs::read_to_string(&a.csv)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", a.csv.display()))?;
    let theirs =
        reconcile::parse_export(&text).map_err(|e| anyhow::anyhow!("{}: {e}", a.csv.display()))?;
    let (Some(from), Some(to)) = (
        theirs.keys().map(|k| k.0).min(),
        theirs.keys().map(|k| k.0).max(),
    ) else {
        anyhow::bail!("{}: the export has no rows", a.csv.display());
    };
    let ids = cfg.catalog.model_ids(&a.provider);
    let part = |p| reconcile::ledger_usage(pool, p, &a.provider, &ids, (from, to));
    let ours = part(reconcile::LedgerPart::All).await?;
    let mut diffs = reconcile::compare(&ours, &theirs);
    let estimates = part(reconcile::LedgerPart::Estimated).await?;
    reconcile::mark_estimates(&mut diffs, &estimates);
    println!(
        "{} days x models compared ({from} to {to}); {} differ",
        ours.len().max(theirs.len()),
        diffs.len()
    );
    for d in &diffs {
        let estimated = if d.ours_estimated.tokens > 0 {
            format!(
                "   (ledger includes {} tokens, {} estimated for calls cut by dead workers)",
                d.ours_estimated.tokens,
                usd(d.ours_estimated.cost_micros)
            )
        } else {
            String::new()
        };
        println!(
            "{} {:<24} ledger {:>10} tokens {:>14}   export {:>10} tokens {:>14}{estimated}",
            d.day,
            d.model,
            d.ours.tokens,
            usd(d.ours.cost_micros),
            d.theirs.tokens,
            usd(d.theirs.cost_micros)
        );
    }
    anyhow::ensure!(diffs.is_empty(), "{} differences", diffs.len());
    Ok(())
}
