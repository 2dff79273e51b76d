//! The response cache: exact and semantic hits answered without a provider call, booked at cost 0
//! with what they saved, never across tenants; expiry, bounds, purge and erasure; budgets, quotas
//! and reports; redacted jobs cache only redacted text.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{run_ragq, TestEnv};
use serde_json::{json, Value};

/// `cached` caches exactly, `similar` semantically (threshold 0.8); the sweep runs only when a
/// test calls it; acme's jobs are masked by a restoring redaction policy under feature `private`.
const SECTIONS: &str = r#"
[cache]
sweep_interval_ms = 3600000
max_entries_per_tenant = 3
[policies.cached]
models = ["sim-small"]
cache = { mode = "exact", ttl_s = 3600 }
[policies.similar]
models = ["sim-small"]
cache = { mode = "semantic", min_similarity = 0.8 }
[redaction]
features = { private = "mask-pii" }
[redaction.policies.mask-pii]
mode = "mask"
restore = true
"#;

fn job(tenant: &str, id: &str, policy: &str, prompt: &str) -> Value {
    json!({"id": id, "tenant": tenant, "kind": "batch.complete", "policy": policy,
           "input": {"prompts": [{"prompt": prompt}], "max_tokens": 50},
           "tags": {"feature": "faq"}})
}

/// Submits the job (acme's by AMQP, others' over HTTP with their key), waits for it to succeed,
/// and returns its first completion.
async fn run(env: &TestEnv, job: &Value) -> Value {
    let (tenant, id) = (job["tenant"].as_str().unwrap(), job["id"].as_str().unwrap());
    if tenant == "acme" {
        let conn = env.amqp().await;
        env.publish_job(&conn, job).await;
    } else {
        let api = env.serve_api().await;
        env.submit_http(&api, tenant, job).await;
    }
    env.wait_for_state(tenant, id, "succeeded", 30).await;
    let result: Value =
        sqlx::query_scalar("SELECT result FROM jobs WHERE tenant_id = $1 AND id = $2")
            .bind(tenant)
            .bind(id)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    result["completions"][0].clone()
}

fn chat_calls(env: &TestEnv) -> usize {
    env.sim
        .requests()
        .iter()
        .filter(|r| r.path == "/v1/chat/completions")
        .count()
}

/// (cost, saved, cache_hit, input + output tokens) of a job's chat call.
async fn ledger_row(env: &TestEnv, id: &str) -> (i64, i64, Option<String>, i64) {
    sqlx::query_as(
        "SELECT cost_micros, saved_micros, cache_hit, input_tokens + output_tokens FROM provider_calls \
         WHERE job_id = $1 AND call_index = 0",
    )
    .bind(id)
    .fetch_one(&env.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exact_repeat_is_answered_from_the_cache_at_cost_zero_and_a_changed_parameter_misses() {
    let env = TestEnv::with_sections("", SECTIONS).await;
    let (_worker, _handle) = env.start_worker();
    let prompt = "What is the refund policy for annual plans?";
    let first = run(&env, &job("acme", "x-1", "cached", prompt)).await;
    assert_eq!(chat_calls(&env), 1);
    assert!(
        first.get("cache").is_none(),
        "the first call misses: {first}"
    );
    let cost = first["cost_micros"].as_i64().unwrap();
    assert!(cost > 0);

    let again = run(&env, &job("acme", "x-2", "cached", prompt)).await;
    assert_eq!(chat_calls(&env), 1, "the repeat made no provider call");
    assert_eq!(again["content"], first["content"]);
    assert_eq!(again["cache"]["hit"], "exact");
    assert_eq!(again["cache"]["saved_micros"], cost);
    assert_eq!(again["cost_micros"], 0);
    assert_eq!(again["usage"]["input_tokens"], 0);
    let entry: uuid::Uuid =
        sqlx::query_scalar("SELECT id FROM cache_entries WHERE tenant_id = 'acme'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(again["cache"]["entry_id"], entry.to_string());
    assert_eq!(
        ledger_row(&env, "x-1").await,
        (
            cost,
            0,
            None,
            first["usage"]["input_tokens"].as_i64().unwrap()
                + first["usage"]["output_tokens"].as_i64().unwrap()
        )
    );
    assert_eq!(
        ledger_row(&env, "x-2").await,
        (0, cost, Some("exact".into()), 0)
    );
    let tags: Value = sqlx::query_scalar("SELECT tags FROM provider_calls WHERE job_id = 'x-2'")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(tags["cache_entry"], entry.to_string());

    // Another max_tokens, another tenant, or a job that turns caching off: provider calls.
    let mut longer = job("acme", "x-3", "cached", prompt);
    longer["input"]["max_tokens"] = 51.into();
    assert!(run(&env, &longer).await.get("cache").is_none());
    assert_eq!(chat_calls(&env), 2);
    let theirs = run(&env, &job("globex", "x-4", "cached", prompt)).await;
    assert!(
        theirs.get("cache").is_none(),
        "globex never reads acme's entry"
    );
    assert_eq!(chat_calls(&env), 3);
    let mut off = job("acme", "x-5", "cached", prompt);
    off["cache"] = json!({"mode": "off"});
    assert!(run(&env, &off).await.get("cache").is_none());
    assert_eq!(chat_calls(&env), 4);
    // A job may ask for the cache under a policy that does not.
    let mut asks = job("acme", "x-6", "cost-optimized", "Where is my invoice?");
    asks["cache"] = json!({"mode": "exact"});
    run(&env, &asks).await;
    asks["id"] = "x-7".into();
    assert_eq!(run(&env, &asks).await["cache"]["hit"], "exact");
    assert_eq!(chat_calls(&env), 5);
    // Without a setting anywhere, nothing is cached.
    run(&env, &job("acme", "x-8", "cost-optimized", prompt)).await;
    run(&env, &job("acme", "x-9", "cost-optimized", prompt)).await;
    assert_eq!(chat_calls(&env), 7);
}

/// Cosine similarity of the sim's embeddings of two texts.
fn similarity(a: &str, b: &str) -> f32 {
    let (a, b) = (
        ragq_tools::sim::embed(a, 256),
        ragq_tools::sim::embed(b, 256),
    );
    a.iter().zip(&b).map(|(x, y)| x * y).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paraphrase_over_the_threshold_hits_one_under_misses_and_never_another_tenants() {
    let env = TestEnv::with_sections("", SECTIONS).await;
    let (_worker, _handle) = env.start_worker();
    let asked = "What is the refund policy for annual plans";
    let close = "what is the refund policy for the annual plans";
    let far = "How do I reset my password";
    let near = similarity(asked, close);
    assert!(near >= 0.8, "the paraphrase is over the threshold: {near}");
    assert!(similarity(asked, far) < 0.8);

    run(&env, &job("acme", "s-1", "similar", asked)).await;
    assert_eq!(chat_calls(&env), 1);
    let hit = run(&env, &job("acme", "s-2", "similar", close)).await;
    assert_eq!(hit["cache"]["hit"], "semantic", "{hit}");
    let found = hit["cache"]["similarity"].as_f64().unwrap() as f32;
    assert!(
        (found - near).abs() < 1e-3,
        "similarity {found}, expected {near}"
    );
    assert_eq!(chat_calls(&env), 1);
    assert_eq!(ledger_row(&env, "s-2").await.2.as_deref(), Some("semantic"));
    let miss = run(&env, &job("acme", "s-3", "similar", far)).await;
    assert!(miss.get("cache").is_none());
    assert_eq!(chat_calls(&env), 2);
    // globex asks acme's exact words: its own lookup finds nothing of acme's.
    let theirs = run(&env, &job("globex", "s-4", "similar", asked)).await;
    assert!(theirs.get("cache").is_none(), "{theirs}");
    assert_eq!(chat_calls(&env), 3);

    // Each semantic lookup's embeddings call is booked, tagged as a cache lookup.
    let lookups = env
        .count("SELECT count(*) FROM provider_calls WHERE model = 'sim-embed' AND tags->>'cache_lookup' = 'true' AND input_tokens > 0")
        .await;
    assert_eq!(lookups, 4);
    // The vector store holds no prompt text.
    let store = ragq::retrieval::VectorStore::open(&env.cfg.retrieval.store).unwrap();
    assert_eq!(
        store
            .count(&env.cfg.cache.collection, "acme")
            .await
            .unwrap(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_bounds_purge_and_erasure_remove_entries_and_their_vectors() {
    let env = TestEnv::with_sections("", SECTIONS).await;
    let (worker, handle) = env.start_worker();
    let store = ragq::retrieval::VectorStore::open(&env.cfg.retrieval.store).unwrap();
    let collection = env.cfg.cache.collection.clone();
    let entries = |tenant: &'static str| {
        let pool = env.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM cache_entries WHERE tenant_id = $1")
                .bind(tenant)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    // Prompts without a word in common: none is a paraphrase of another.
    let prompts = [
        "alpha bravo",
        "charlie delta",
        "echo foxtrot",
        "golf hotel",
        "india juliet",
    ];
    for (i, p) in prompts.iter().enumerate() {
        run(&env, &job("acme", &format!("b-{i}"), "similar", p)).await;
    }
    run(&env, &job("globex", "g-1", "similar", prompts[0])).await;
    assert_eq!(entries("acme").await, 5);
    let sweep = || ragq::cache::upkeep::sweep(&env.pool, &store, &env.cfg.cache);
    assert_eq!(
        sweep().await.unwrap(),
        2,
        "acme's two oldest go beyond the bound of 3"
    );
    assert_eq!(entries("acme").await, 3);
    assert_eq!(store.count(&collection, "acme").await.unwrap(), 3);
    let oldest = run(&env, &job("acme", "b-0-again", "similar", prompts[0])).await;
    assert!(
        oldest.get("cache").is_none(),
        "an evicted entry misses: {oldest}"
    );

    // Expiry: entries past their TTL are not served, and the sweep removes them.
    sqlx::query("UPDATE cache_entries SET expires_at = now() - interval '1 second' WHERE tenant_id = 'acme'")
        .execute(&env.pool)
        .await
        .unwrap();
    let calls = chat_calls(&env);
    let stale = run(&env, &job("acme", "b-4-again", "similar", prompts[4])).await;
    assert!(stale.get("cache").is_none(), "an expired entry misses");
    assert_eq!(chat_calls(&env), calls + 1);
    assert_eq!(
        sweep().await.unwrap(),
        3,
        "the expired entries go (the refreshed one stays)"
    );
    assert_eq!(entries("acme").await, 1);
    assert_eq!(store.count(&collection, "acme").await.unwrap(), 1);

    // Purge: acme's entries and vectors go; globex's stay; the next call misses.
    let config = env.config_file();
    let out = run_ragq(
        &config,
        &["cache", "purge", "--tenant", "acme", "--policy", "similar"],
    )
    .await;
    assert!(out.contains("removed 1 cached answers"), "{out}");
    assert_eq!(entries("acme").await, 0);
    assert_eq!(store.count(&collection, "acme").await.unwrap(), 0);
    assert_eq!(entries("globex").await, 1);
    let none = run(&env, &job("acme", "b-4-third", "similar", prompts[4])).await;
    assert!(none.get("cache").is_none());
    assert_eq!(
        env.count(
            "SELECT count(*) FROM audit_log WHERE action = 'cache.purge' AND tenant_id = 'acme'"
        )
        .await,
        1
    );
    let older = run_ragq(
        &config,
        &["cache", "purge", "--tenant", "acme", "--older-than", "1h"],
    )
    .await;
    assert!(
        older.contains("removed 0 cached answers"),
        "entries younger than 1h stay: {older}"
    );

    // Erasure takes the tenant's entries and vectors with it (workers stopped: a live worker's
    // stats for the tenant would land beside the erasure, which then refuses to commit).
    worker.cancel();
    handle.await.unwrap();
    run_ragq(&config, &["tenant", "delete", "globex", "--yes"]).await;
    assert_eq!(entries("globex").await, 0);
    assert_eq!(store.count(&collection, "globex").await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_count_against_no_budget_or_token_quota_and_reports_show_savings() {
    use ragq::spend::budget::{self, BudgetSpec, OnLimit};
    let env = TestEnv::with_sections("", SECTIONS).await;
    let spec = BudgetSpec {
        tenant: "acme".into(),
        feature: "".into(),
        period: "month".into(),
        soft_limit_micros: None,
        hard_limit_micros: Some(1_000_000),
        job_quota: None,
        token_quota: Some(1_000_000),
        alert_thresholds: vec![],
        on_limit: OnLimit::Fail,
    };
    let id = budget::set(&env.pool, &ragq::audit::Actor::cli(), &spec)
        .await
        .unwrap();
    let (_worker, _handle) = env.start_worker();
    let prompt = "Summarize the onboarding guide";
    let first = run(&env, &job("acme", "q-1", "cached", prompt)).await;
    for i in 2..=4 {
        let hit = run(&env, &job("acme", &format!("q-{i}"), "cached", prompt)).await;
        assert_eq!(hit["cache"]["hit"], "exact");
    }
    let cost = first["cost_micros"].as_i64().unwrap();
    let tokens = first["usage"]["input_tokens"].as_i64().unwrap()
        + first["usage"]["output_tokens"].as_i64().unwrap();
    let (used, used_tokens): (i64, i64) =
        sqlx::query_as("SELECT cost_micros, tokens FROM budget_usage WHERE budget_id = $1")
            .bind(id)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(
        (used, used_tokens),
        (cost, tokens),
        "only the provider call counts"
    );

    let query = ragq::spend::report::ReportQuery {
        tenant: Some("acme".into()),
        group_by: vec![
            ragq::spend::report::Dimension::Tenant,
            ragq::spend::report::Dimension::Feature,
            ragq::spend::report::Dimension::Model,
        ],
        ..Default::default()
    };
    let rows = ragq::spend::report::query(&env.pool, &query).await.unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let r = &rows[0];
    assert_eq!(r.keys, ["acme", "faq", "sim-small"]);
    assert_eq!(
        (r.calls, r.cache_hits, r.cost_micros, r.saved_micros),
        (1, 3, cost, 3 * cost)
    );
    assert_eq!(r.input_tokens + r.output_tokens, tokens);
    assert_eq!(r.cache_hit_rate(), 0.75);
    // The ledger and its aggregates agree, hits included.
    let (ledger_cost, ledger_saved, ledger_hits): (i64, i64, i64) = sqlx::query_as(
        "SELECT sum(cost_micros)::int8, sum(saved_micros)::int8, count(*) FILTER (WHERE cache_hit IS NOT NULL) \
         FROM provider_calls WHERE tenant_id = 'acme'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(
        (ledger_cost, ledger_saved, ledger_hits),
        (cost, 3 * cost, 3)
    );
    let out = run_ragq(
        &env.config_file(),
        &[
            "spend",
            "report",
            "--tenant",
            "acme",
            "--group-by",
            "model",
            "--format",
            "json",
        ],
    )
    .await;
    let json: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(json[0]["cache_hits"], 3, "{json}");
    assert_eq!(json[0]["saved_micros"], 3 * cost);
    // The tenant's dashboard shows the hit rate and what the cache saved.
    let api = env.serve_api().await;
    let page = reqwest::Client::new()
        .get(format!("{api}/dashboard"))
        .bearer_auth(env.api_key("acme"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("id=\"cache-hit-rate\" data-hits=\"3\">75.0%"),
        "{page}"
    );
    let saved = format!("id=\"cache-saved\" data-micros=\"{}\"", 3 * cost);
    assert!(page.contains(&saved), "{page}");
    assert!(page.contains("id=\"chart-cache-saved-model\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redacted_job_caches_only_redacted_text() {
    let env = TestEnv::with_sections("", SECTIONS).await;
    let (_worker, _handle) = env.start_worker();
    let private = |id: &str, email: &str| {
        let mut j = job(
            "acme",
            id,
            "cached",
            &format!("Draft a reply to {email} about the refund"),
        );
        j["tags"]["feature"] = "private".into();
        j
    };
    let first = run(&env, &private("p-1", "jane.doe@example.com")).await;
    assert!(
        first["content"]
            .as_str()
            .unwrap()
            .contains("jane.doe@example.com"),
        "restored: {first}"
    );
    let (content, key_hex): (String, String) = sqlx::query_as(
        "SELECT content, encode(key, 'hex') FROM cache_entries WHERE tenant_id = 'acme'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert!(content.contains("[EMAIL_1]"), "{content}");
    assert!(
        !content.contains("jane.doe"),
        "the cache holds no personal data: {content}"
    );
    assert!(!key_hex.is_empty());
    // Another person's message masks to the same prompt: the hit is restored with their address.
    let second = run(&env, &private("p-2", "john.roe@example.org")).await;
    assert_eq!(second["cache"]["hit"], "exact");
    let text = second["content"].as_str().unwrap();
    assert!(
        text.contains("john.roe@example.org") && !text.contains("jane.doe"),
        "{text}"
    );
    assert_eq!(chat_calls(&env), 1);
}
