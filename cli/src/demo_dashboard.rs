//! The demo's look at `/dashboard`: the page as the operator and as globex see it, summed up in
//! a few lines (how many charts and marks, the spend it shows against the ledger, and whether the
//! tenant's page names anyone else), and optionally kept up for a person to open.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// The environment variable the demo's api reads its operator key from.
/// (Not under `RAGQ_`: those variables are read as config keys.)
pub const OPERATOR_KEY_ENV: &str = "DASHBOARD_OPERATOR_KEY";

/// What one view of the page holds.
struct View {
    charts: usize,
    marks: usize,
    spend_micros: i64,
    html: String,
}

async fn fetch(api: &str, key: &str) -> anyhow::Result<View> {
    let response = reqwest::Client::new()
        .get(format!("{api}/dashboard?window=hour"))
        .bearer_auth(key)
        .send()
        .await?;
    anyhow::ensure!(
        response.status().is_success(),
        "the dashboard answered {}",
        response.status()
    );
    let html = response.text().await?;
    let spend_micros = html
        .split("data-micros=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1);
    Ok(View {
        charts: html.matches("<figure class=\"chart\"").count(),
        marks: html.matches("class=\"mark\"").count(),
        spend_micros,
        html,
    })
}

/// Prints the operator's and globex's views of the last hour.
pub async fn print(
    pool: &PgPool,
    api: &str,
    operator_key: &str,
    globex_key: &str,
) -> anyhow::Result<()> {
    println!(
        "\n== dashboard ({api}/dashboard: sign in with a tenant's API key, or the operator key)"
    );
    wait_for_stats(pool).await?;
    let ledger = |tenant: Option<&'static str>| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT coalesce(sum(cost_micros), 0)::bigint FROM provider_calls \
                 WHERE $1::text IS NULL OR tenant_id = $1",
            )
            .bind(tenant)
            .fetch_one(&pool)
            .await
        }
    };
    let operator = fetch(api, operator_key).await?;
    println!(
        "  operator (all tenants): {} charts, {} data marks; spend shown {} µ$ (ledger {}); names acme and globex: {}",
        operator.charts,
        operator.marks,
        operator.spend_micros,
        ledger(None).await?,
        operator.html.contains("acme") && operator.html.contains("globex"),
    );
    let globex = fetch(api, globex_key).await?;
    let others = globex.html.to_lowercase().contains("acme");
    println!(
        "  globex (its API key):   {} charts, {} data marks; spend shown {} µ$ (ledger {}); names another tenant: {}",
        globex.charts,
        globex.marks,
        globex.spend_micros,
        ledger(Some("globex")).await?,
        others,
    );
    anyhow::ensure!(!others, "globex's dashboard names another tenant");
    Ok(())
}

/// Workers write their stats every few seconds: waits until every finished job and answered call
/// is counted.
async fn wait_for_stats(pool: &PgPool) -> anyhow::Result<()> {
    for _ in 0..100 {
        let (finished, counted, answered, seen): (i64, i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM jobs WHERE state IN ('succeeded', 'failed')), \
                    (SELECT coalesce(sum(jobs), 0)::bigint FROM job_stats \
                     WHERE tenant_id = '*' AND outcome <> 'retried'), \
                    (SELECT count(*) FROM provider_calls WHERE cache_hit IS NULL), \
                    (SELECT coalesce(sum(calls), 0)::bigint FROM provider_stats WHERE outcome = 'ok')",
        )
        .fetch_one(pool)
        .await?;
        if counted >= finished && seen >= answered {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("the workers did not write their stats within 10 s")
}

/// Keeps everything running for `secs` (or until Ctrl-C) so the page can be opened.
pub async fn hold(api: &str, operator_key: &str, secs: u64, cancel: &CancellationToken) {
    if secs == 0 {
        return;
    }
    println!(
        "\n  holding for {secs} s (Ctrl-C to stop): open {api}/dashboard and sign in with the operator key {operator_key}"
    );
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = tokio::time::sleep(Duration::from_secs(secs)) => {}
    }
}
