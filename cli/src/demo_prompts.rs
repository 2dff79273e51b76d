//! The demo's prompt templates: acme's support team saves two wordings of a ticket summary, sends
//! jobs that name the prompt by its `production` label, moves the label to the new wording (a
//! rollout without a deploy), and sends more; one job with a missing variable is refused at
//! intake. The summary shows which version each job used and the spend per version.

use std::time::{Duration, Instant};

use ragq::audit::Actor;
use ragq::prompts::store::{self, PromptSpec};
use ragq::queue::publisher::ReconnectingPublisher;
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// The jobs that run (two before the label moves, two after); one more is refused.
pub const JOBS: usize = 4;

const NAME: &str = "ticket-summary";

fn wording(opening: &str) -> PromptSpec {
    PromptSpec {
        system: Some("You summarize support tickets for the {{ team }} team.".into()),
        user: format!("{opening} {{{{ ticket.id }}}} ({{{{ ticket.lines | length }}}} lines):\n{{% for l in ticket.lines %}}- {{{{ l }}}}\n{{% endfor %}}"),
        variables: json!({"type": "object", "required": ["team", "ticket"], "properties": {
            "team": {"type": "string"},
            "ticket": {"type": "object", "required": ["id", "lines"], "properties": {
                "id": {"type": "string"}, "lines": {"type": "array", "items": {"type": "string"}}}}}}),
        defaults: json!({"max_tokens": 60}),
    }
}

/// Saves the versions, labels version 1, submits, moves the label to version 2, submits again.
pub async fn roll_out(
    pool: &PgPool,
    publisher: &ReconnectingPublisher,
    hook: &str,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let cli = Actor::cli();
    for opening in [
        "Summarize ticket",
        "In one line, what does the customer need in ticket",
    ] {
        store::create(pool, &cli, "acme", NAME, &wording(opening)).await?;
    }
    store::set_label(pool, &cli, "acme", NAME, "production", 1).await?;
    for n in 1..=2 {
        publish(publisher, hook, n, true).await?;
    }
    // The label moves once both jobs are accepted: they keep version 1 whenever they run.
    let deadline = Instant::now() + Duration::from_secs(60);
    let taken = "SELECT count(*) FROM jobs WHERE id IN ('acme-prompt-1', 'acme-prompt-2')";
    while sqlx::query_scalar::<_, i64>(taken).fetch_one(pool).await? < 2 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the prompt jobs were not taken in"
        );
        anyhow::ensure!(!cancel.is_cancelled(), "interrupted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    store::set_label(pool, &cli, "acme", NAME, "production", 2).await?;
    for n in 3..=4 {
        publish(publisher, hook, n, true).await?;
    }
    publish(publisher, hook, 5, false).await
}

async fn publish(
    publisher: &ReconnectingPublisher,
    hook: &str,
    n: usize,
    with_team: bool,
) -> anyhow::Result<()> {
    let id = format!("acme-prompt-{n}");
    let mut variables = json!({"ticket": {"id": format!("T-{n}"),
        "lines": ["The CSV export of invoices is empty.", "It worked last month."]}});
    if with_team {
        variables["team"] = json!("billing");
    }
    let job = json!({"id": id, "tenant": "acme", "kind": "batch.complete", "webhook_url": hook,
        "tags": {"feature": "ticket-summaries"},
        "input": {"prompts": [{"template": {"name": NAME, "label": "production", "variables": variables}}]}});
    publisher
        .publish_job("batch.complete", &id, job.to_string().as_bytes())
        .await?;
    Ok(())
}

/// Which version each job used, and the spend per version from the ledger's aggregates.
pub async fn print(pool: &PgPool) -> anyhow::Result<()> {
    println!("\n== prompt templates (acme's `{NAME}`: label `production` moved from version 1 to 2 between jobs)");
    let rows: Vec<(String, serde_json::Value)> = sqlx::query_as(
        "SELECT id, result FROM jobs WHERE id LIKE 'acme-prompt-%' AND state = 'succeeded' ORDER BY id",
    )
    .fetch_all(pool)
    .await?;
    for (id, r) in rows {
        let c = &r["completions"][0];
        println!(
            "  {id}  version {}  {}",
            c["prompt"]["version"],
            c["content"].as_str().unwrap_or_default()
        );
    }
    let q = ragq::spend::report::ReportQuery {
        tenant: Some("acme".into()),
        group_by: vec![
            ragq::spend::report::Dimension::Prompt,
            ragq::spend::report::Dimension::Version,
        ],
        ..Default::default()
    };
    for r in ragq::spend::report::query(pool, &q).await? {
        if r.keys[0].is_empty() {
            continue;
        }
        println!(
            "  spend of `{}` version {}: {} calls, {}, mean latency {} ms, {} prompts rendered",
            r.keys[0],
            r.keys[1],
            r.calls,
            ragq::money::usd(r.cost_micros),
            r.mean_latency_ms(),
            r.prompt_runs.map_or(0, |p| p.rendered)
        );
    }
    Ok(())
}

/// Jobs accepted before the label moved used version 1, the others version 2.
pub async fn check(pool: &PgPool, broken: &mut Vec<String>) -> anyhow::Result<()> {
    let used: Vec<(String, Option<i32>)> = sqlx::query_as(
        "SELECT id, (result->'completions'->0->'prompt'->>'version')::int FROM jobs \
         WHERE id LIKE 'acme-prompt-%' ORDER BY id",
    )
    .fetch_all(pool)
    .await?;
    let want: Vec<(String, Option<i32>)> = (1..=JOBS)
        .map(|n| (format!("acme-prompt-{n}"), Some(if n <= 2 { 1 } else { 2 })))
        .collect();
    if used != want {
        broken.push(format!("prompt versions used: {used:?}, expected {want:?}"));
    }
    Ok(())
}
