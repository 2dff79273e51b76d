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
