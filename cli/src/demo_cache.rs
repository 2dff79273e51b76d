//! The demo's response cache: acme's FAQ bot asks two questions, then asks them again word for
//! word and in other words, and one new question; the summary shows which calls the cache
//! answered, at what similarity, and what it saved.

use std::time::{Duration, Instant};

use ragq::queue::publisher::ReconnectingPublisher;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// The FAQ jobs the demo submits.
pub const JOBS: usize = 6;

/// The demo's `faq` policy: cached semantically, paraphrases matching at 0.9 or more.
pub fn policy(file: ragq_tools::config_file::ConfigFile) -> ragq_tools::config_file::ConfigFile {
    file.list("policies.faq.models", ["sim-small"])
        .set("policies.faq.cache.mode", "semantic")
        .set("policies.faq.cache.min_similarity", 0.9)
}

const FIRST: [(&str, &str); 2] = [
    ("acme-faq-1", "How long do refunds take?"),
    (
        "acme-faq-2",
        "Can I change my shipping address after ordering?",
    ),
];
const AGAIN: [(&str, &str); 4] = [
    ("acme-faq-3", "How long do refunds take?"),
    ("acme-faq-4", "how long do refunds take, please"),
    (
        "acme-faq-5",
        "Can I change my shipping address after ordering",
    ),
    ("acme-faq-6", "Do you ship to Norway?"),
];

/// Submits the first questions, waits for their answers (so they are cached), then the rest.
pub async fn ask_the_faq(
    pool: &PgPool,
    publisher: &ReconnectingPublisher,
    hook: &str,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    for (id, question) in FIRST {
        publish(publisher, hook, id, question).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let done = "SELECT count(*) FROM jobs WHERE id IN ('acme-faq-1', 'acme-faq-2') AND state IN ('succeeded', 'failed')";
    while sqlx::query_scalar::<_, i64>(done).fetch_one(pool).await? < 2 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the first FAQ answers did not come"
        );
        anyhow::ensure!(!cancel.is_cancelled(), "interrupted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (id, question) in AGAIN {
        publish(publisher, hook, id, question).await?;
    }
    Ok(())
}

async fn publish(
    publisher: &ReconnectingPublisher,
    hook: &str,
    id: &str,
    question: &str,
) -> anyhow::Result<()> {
    let job = serde_json::json!({"id": id, "tenant": "acme", "kind": "batch.complete", "policy": "faq",
        "webhook_url": hook, "tags": {"feature": "faq-bot"},
        "input": {"system": "Answer in one sentence.", "prompts": [{"prompt": question}], "max_tokens": 60}});
    publisher
        .publish_job("batch.complete", id, job.to_string().as_bytes())
        .await?;
    Ok(())
}

/// Each FAQ job: answered by a provider or by the cache, and what that cost or saved.
pub async fn print(pool: &PgPool) -> anyhow::Result<()> {
    println!("\n== response cache (acme's `faq` policy: exact, then semantic at similarity 0.9)");
    let rows: Vec<(String, serde_json::Value)> = sqlx::query_as(
        "SELECT id, result FROM jobs WHERE id LIKE 'acme-faq-%' AND state = 'succeeded' ORDER BY id",
    )
    .fetch_all(pool)
    .await?;
    let usd = |v: &serde_json::Value| ragq::money::usd(v.as_i64().unwrap_or(0));
    let question = |id: &str| {
        (FIRST.iter().chain(&AGAIN))
            .find(|(i, _)| *i == id)
            .map_or("", |(_, q)| *q)
    };
    for (id, r) in rows {
        let c = &r["completions"][0];
        let how = match c["cache"]["hit"].as_str() {
            Some("exact") => format!("exact hit, saved {}", usd(&c["cache"]["saved_micros"])),
            Some(_) => format!(
                "semantic hit at {:.3}, saved {} (lookup {})",
                c["cache"]["similarity"].as_f64().unwrap_or(0.0),
                usd(&c["cache"]["saved_micros"]),
                usd(&c["cache_lookup"]["cost_micros"])
            ),
            None => format!("provider call, {}", usd(&c["cost_micros"])),
        };
        println!("  {id}  {:<52} {how}", format!("{:?}", question(&id)));
    }
    let (hits, saved): (i64, i64) = sqlx::query_as(
        "SELECT coalesce(sum(cache_hits), 0)::int8, coalesce(sum(saved_micros), 0)::int8 FROM spend_daily",
    )
    .fetch_one(pool)
    .await?;
    println!(
        "  {hits} calls answered from the cache, {} saved; booked as ledger rows at cost 0, outside every budget and quota",
        ragq::money::usd(saved)
    );
    Ok(())
}
