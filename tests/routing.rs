//! Routing across two providers (two sim instances of different price, region and quality, in the
//! two API shapes) over the real services: cost ranking, constraints, failover and the breaker.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::TestEnv;
use ragq_tools::sim::{SimHandle, SimOptions};

/// The env's own sim serves `sim-small` (cheap, global, tier 1); `dear` is another sim instance
/// behind the Anthropic shape (20x the price, EU, tier 3).
async fn two_providers() -> (TestEnv, SimHandle) {
    let dear = ragq_tools::sim::spawn(
        "127.0.0.1:0",
        SimOptions::default(),
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .unwrap();
    let sections = format!(
        r#"[[providers]]
name = "dear-sim"
kind = "anthropic"
base_url = "{}"
timeout_ms = 2000
[[models]]
name = "dear"
provider = "dear-sim"
model_id = "dear-1"
input_price_micros_per_mtok = 3000000
output_price_micros_per_mtok = 12000000
context_window = 100000
quality_tier = 3
region = "eu"
[policies.cheapest]
models = ["dear", "sim-small"]
strategy = "cost"
[policies.eu-only]
models = ["sim-small", "dear"]
regions = ["eu"]
[policies.premium]
models = ["sim-small", "dear"]
min_quality = 2
[policies.best-first]
models = ["dear", "sim-small"]
plans = {{ free = ["sim-small"] }}
[policies.shadowed]
models = ["sim-small"]
shadow = {{ model = "dear", share = 1.0 }}
[policies.split]
models = ["sim-small", "dear"]
ab = [{{ model = "sim-small", weight = 1 }}, {{ model = "dear", weight = 1 }}]
[plans.free]
policies = ["best-first", "cheapest"]
"#,
        dear.base_url()
    );
    (TestEnv::with_sections("", &sections).await, dear)
}

async fn run_jobs(env: &TestEnv, prefix: &str, policy: &str, n: usize) {
    let conn = env.amqp().await;
    for i in 0..n {
        let mut job = env.job("acme", &format!("{prefix}-{i}"), 1);
        job["policy"] = policy.into();
        env.publish_job(&conn, &job).await;
    }
    let pattern = format!("{prefix}-%");
    env.wait_until(40, "jobs succeeded", || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM jobs WHERE id LIKE $1 AND state = 'succeeded'",
        )
        .bind(&pattern)
        .fetch_one(&env.pool)
        .await
        .unwrap()
            == n as i64
    })
    .await;
}

async fn models_used(env: &TestEnv, prefix: &str) -> Vec<String> {
    sqlx::query_scalar("SELECT DISTINCT model FROM provider_calls WHERE job_id LIKE $1 ORDER BY 1")
        .bind(format!("{prefix}-%"))
        .fetch_all(&env.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cost_policy_picks_the_cheapest_healthy_model_whatever_the_listed_order() {
    let (env, dear) = two_providers().await;
    let (_stop, _worker) = env.start_worker();
    run_jobs(&env, "cheap", "cheapest", 5).await;
    assert_eq!(models_used(&env, "cheap").await, vec!["sim-small"]);
    assert_eq!(dear.counts().0, 0, "the dear provider was never called");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn region_and_quality_constraints_are_never_violated() {
    let (env, dear) = two_providers().await;
    let (_stop, _worker) = env.start_worker();
    run_jobs(&env, "eu", "eu-only", 3).await;
    run_jobs(&env, "premium", "premium", 3).await;
    assert_eq!(models_used(&env, "eu").await, vec!["dear"]);
    assert_eq!(models_used(&env, "premium").await, vec!["dear"]);
    assert_eq!(
        env.sim.counts().0,
        0,
        "the global, tier-1 model was never called"
    );
    assert_eq!(dear.counts().1, 6);
    let trace: serde_json::Value = sqlx::query_scalar(
        "SELECT result->'completions'->0->'routing' FROM jobs WHERE id = 'eu-0'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert!(
        trace[0]["outcome"]
            .as_str()
            .unwrap()
            .contains("region `global` is not allowed"),
        "{trace}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_on_500s_then_the_breaker_skips_the_failing_model_without_calling_it() {
    let (env, _dear) = two_providers().await;
    env.sim.set_options(SimOptions {
        error_rate: 1.0,
        ..SimOptions::default()
    });
    let (_stop, _worker) = env.start_worker();
    // Every call to the cheap model fails (after in-call retries) and fails over to `dear`.
    run_jobs(&env, "first", "cheapest", 8).await;
    assert_eq!(models_used(&env, "first").await, vec!["dear"]);
    let calls_when_open = env.sim.counts().0;
    assert!(calls_when_open >= 5);
    // The breaker is open now: the cheap model is skipped without a call.
    run_jobs(&env, "later", "cheapest", 5).await;
    assert_eq!(
        env.sim.counts().0,
        calls_when_open,
        "no call reached the failing provider"
    );
    let trace: serde_json::Value = sqlx::query_scalar(
        "SELECT result->'completions'->0->'routing' FROM jobs WHERE id = 'later-4'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(trace[0]["model"], "sim-small", "{trace}");
    assert_eq!(trace[0]["outcome"], "skipped: circuit open");
    assert_eq!(trace[1]["outcome"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_allow_list_restricts_its_tenants_models() {
    let (env, dear) = two_providers().await;
    // Before the worker starts: workers cache tenants (and their plans) for 30 s.
    ragq::tenants::set_plan(
        &env.pool,
        &ragq::audit::Actor::cli(),
        &env.cfg.plans,
        "acme",
        "free",
    )
    .await
    .unwrap();
    let (_stop, _worker) = env.start_worker();
    run_jobs(&env, "free", "best-first", 3).await;
    assert_eq!(models_used(&env, "free").await, vec!["sim-small"]);
    assert_eq!(
        dear.counts().0,
        0,
        "a free tenant never reaches the model its plan excludes"
    );
    let trace: serde_json::Value = sqlx::query_scalar(
        "SELECT result->'completions'->0->'routing' FROM jobs WHERE id = 'free-0'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(
        trace[0]["outcome"], "skipped: plan `free` may not use this model",
        "{trace}"
    );

    // Default-deny: globex's plan (`standard`) is not in best-first's `plans`, so it gets none of
    // its models; and `plans.free.policies` keeps acme off every policy it does not list.
    let api = env.serve_api().await;
    let mut unlisted = env.job("globex", "unlisted-plan", 1);
    unlisted["policy"] = "best-first".into();
    env.submit_http(&api, "globex", &unlisted).await;
    let conn = env.amqp().await;
    let mut other = env.job("acme", "other-policy", 1);
    other["policy"] = "premium".into();
    env.publish_job(&conn, &other).await;
    env.wait_for_state("globex", "unlisted-plan", "failed", 40)
        .await;
    env.wait_for_state("acme", "other-policy", "failed", 40)
        .await;
    let codes: Vec<(String, String)> = sqlx::query_as(
        "SELECT id, error_code FROM jobs WHERE id IN ('unlisted-plan', 'other-policy') ORDER BY id",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(
        codes,
        [
            ("other-policy".to_string(), "policy_not_allowed".to_string()),
            ("unlisted-plan".to_string(), "no_usable_model".to_string()),
        ]
    );
    let calls: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM provider_calls WHERE job_id IN ('unlisted-plan', 'other-policy')",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(calls, 0, "neither refused job reached a provider");

    // The api refuses the same submission before it is queued.
    let response = reqwest::Client::new()
        .post(format!("{api}/v1/jobs"))
        .bearer_auth(env.api_key("acme"))
        .json(
            &serde_json::json!({"id": "api-other-policy", "kind": "batch.complete",
            "policy": "premium", "input": {"prompts": [{"prompt": "hi"}]}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("plan `free` may not use routing policy `premium`"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_copies_are_booked_but_never_returned() {
    let (env, dear) = two_providers().await;
    let (_stop, _worker) = env.start_worker();
    run_jobs(&env, "shadow", "shadowed", 4).await;
    assert_eq!(
        dear.counts().1,
        4,
        "every call was copied to the shadow model"
    );
    let result: serde_json::Value =
        sqlx::query_scalar("SELECT result FROM jobs WHERE id = 'shadow-0'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    let completion = &result["completions"][0];
    assert_eq!(
        completion["model"], "sim-small",
        "the answer is the primary's"
    );
    assert!(
        !completion["content"].as_str().unwrap().contains("dear-1"),
        "never the shadow's"
    );
    assert_eq!(completion["shadow"]["model"], "dear");
    let shadow_rows = env
        .count(
            "SELECT count(*) FROM provider_calls WHERE model = 'dear' AND tags->>'shadow' = 'true'",
        )
        .await;
    assert_eq!(shadow_rows, 4, "each shadow call is a ledger row, tagged");
    // Both providers' answers against the ledger: every booked call (shadow too) was answered.
    let answered = [env.sim.answered_call_ids(), dear.answered_call_ids()].concat();
    let audit = ragq_tools::audit::audit(&env.pool, &answered, 1)
        .await
        .unwrap();
    assert!(audit.ok(), "{audit:#?}");
    assert_eq!(audit.booked_calls, 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ab_split_sends_first_calls_to_both_arms() {
    let (env, _dear) = two_providers().await;
    let (_stop, _worker) = env.start_worker();
    run_jobs(&env, "ab", "split", 24).await;
    let per_model: Vec<(String, i64)> = sqlx::query_as(
        "SELECT model, count(*) FROM provider_calls WHERE job_id LIKE 'ab-%' GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(per_model.len(), 2, "{per_model:?}");
    assert!(
        per_model.iter().all(|(_, n)| *n >= 4),
        "both arms get a share: {per_model:?}"
    );
    assert_eq!(
        per_model.iter().map(|p| p.1).sum::<i64>(),
        24,
        "one call per job, no failover"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_worker_processes_share_a_rate_limit_through_a_429_storm() {
    // A model limited to 300 requests a minute (5/s for everyone together), a provider answering
    // 30% of requests with 429, and two worker processes.
    let sections = r#"[[models]]
name = "sim-paced"
provider = "sim"
model_id = "sim-paced"
input_price_micros_per_mtok = 150000
output_price_micros_per_mtok = 600000
context_window = 16384
rpm = 300
[policies.paced]
models = ["sim-paced"]
"#;
    let env = TestEnv::with_sections("", sections).await;
    env.sim.set_options(SimOptions {
        rate_limit_rate: 0.3,
        retry_after_secs: 1,
        ..SimOptions::default()
    });
    let config = env.config_file();
    let _workers = [
        common::spawn_worker_process(&config),
        common::spawn_worker_process(&config),
    ];
    env.wait_until(20, "both workers hold a lease", || async {
        env.count("SELECT count(*) FROM worker_leases WHERE expires_at > now()")
            .await
            == 2
    })
    .await;
    // Each worker learns it has half the limit at its next heartbeat: wait until both leases were
    // renewed after both existed (a renewal sets the expiry a lease ahead of its time).
    let both_at: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    let renewed_after = both_at + ragq::routing::share::LEASE;
    env.wait_until(20, "both workers renewed their leases", || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM worker_leases WHERE expires_at > $1")
            .bind(renewed_after)
            .fetch_one(&env.pool)
            .await
            .unwrap()
            == 2
    })
    .await;
    let before = env.sim.arrivals().len();
    run_jobs(&env, "paced", "paced", 30).await;

    let arrivals = env.sim.arrivals()[before..].to_vec();
    assert!(arrivals.len() >= 30, "every job made its call");
    // In any 2-second window: 2 s at 5/s, plus each worker's one-second burst (2.5 each).
    let window = std::time::Duration::from_secs(2);
    let worst = arrivals
        .iter()
        .map(|t| {
            arrivals
                .iter()
                .filter(|u| **u >= *t && **u < *t + window)
                .count()
        })
        .max()
        .unwrap_or(0);
    assert!(
        worst <= 15,
        "{worst} requests in a 2 s window; the limit allows 10 (+5 burst)"
    );
    let span = *arrivals.last().unwrap() - arrivals[0];
    assert!(
        span >= std::time::Duration::from_secs(4),
        "{} requests were spread over {span:?}, not sent at once",
        arrivals.len()
    );
}
