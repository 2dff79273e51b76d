//! The job path end to end over the real RabbitMQ and Postgres: publish, run, book, commit, webhook.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::TestEnv;
use ragq::webhooks::signature;
use ragq_tools::sim::Fault;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_amqp_publish_is_processed_and_its_webhook_is_signed() {
    let env = TestEnv::new("").await;
    let (_stop, _worker) = env.start_worker();
    let conn = env.amqp().await;
    let job = env.job("acme", "plain-1", 3);
    env.publish_job(&conn, &job).await;

    env.wait_until(20, "webhook", || async { !env.received().is_empty() })
        .await;
    let hook = env.received()[0].clone();
    let now = chrono::Utc::now().timestamp();
    signature::verify(
        &env.secret("acme"),
        &hook.id,
        hook.timestamp,
        &hook.signature,
        hook.body.as_bytes(),
        now,
        300,
    )
    .expect("signature verifies with the tenant's secret");
    assert!(signature::verify(
        &env.secret("globex"),
        &hook.id,
        hook.timestamp,
        &hook.signature,
        hook.body.as_bytes(),
        now,
        300
    )
    .is_err());
    let body: serde_json::Value = serde_json::from_str(&hook.body).unwrap();
    assert_eq!(body["type"], "job.succeeded");
    assert_eq!(body["data"]["job_id"], "plain-1");
    let completions = body["data"]["result"]["completions"].as_array().unwrap();
    assert_eq!(completions.len(), 3);
    assert!(completions[0]["content"]
        .as_str()
        .unwrap()
        .contains("question 0 of job plain-1"));

    assert_eq!(
        env.job_state("acme", "plain-1").await.as_deref(),
        Some("succeeded")
    );
    // One ledger row per prompt, priced from the catalog, equal to what the result reports.
    assert_eq!(
        env.count("SELECT count(*) FROM provider_calls WHERE job_id = 'plain-1'")
            .await,
        3
    );
    let booked = env
        .count("SELECT sum(cost_micros)::int8 FROM provider_calls WHERE job_id = 'plain-1'")
        .await;
    assert_eq!(
        booked,
        body["data"]["result"]["cost_micros"].as_i64().unwrap()
    );
    let tokens = env.count("SELECT sum(input_tokens + output_tokens)::int8 FROM provider_calls WHERE job_id = 'plain-1'").await;
    let usage = &body["data"]["result"]["usage"];
    assert_eq!(
        tokens,
        usage["input_tokens"].as_i64().unwrap() + usage["output_tokens"].as_i64().unwrap()
    );
    env.wait_until(5, "delivery recorded", || async {
        env.count("SELECT count(*) FROM webhook_deliveries WHERE state = 'delivered'")
            .await
            == 1
    })
    .await;
    assert_eq!(env.count("SELECT count(*) FROM webhook_attempts").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_job_id_twice_runs_once_and_books_once() {
    let env = TestEnv::new("").await;
    let conn = env.amqp().await;
    let body = env.job("acme", "dup-1", 2).to_string();
    // Both copies are queued before any worker runs, so they may land in one batch or in two.
    env.publish_raw(&conn, "batch.complete", body.as_bytes(), Some("guest"))
        .await;
    env.publish_raw(&conn, "batch.complete", body.as_bytes(), Some("guest"))
        .await;
    let (stop, worker) = env.start_worker();
    env.wait_for_state("acme", "dup-1", "succeeded", 20).await;
    // Publish a third copy after it finished: acknowledged without running.
    env.publish_raw(&conn, "batch.complete", body.as_bytes(), Some("guest"))
        .await;
    env.wait_until(20, "queue drained", || async {
        let q = conn.create_channel().await.unwrap();
        let info = q
            .queue_declare(
                "ragq.jobs".into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await
            .unwrap();
        let _ = q.close(200, "".into()).await;
        info.message_count() == 0 && env.received().len() == 1
    })
    .await;
    // A stopped worker has settled every delivery it held: the third copy's claim is over.
    stop.cancel();
    worker.await.unwrap();
    assert_eq!(
        env.count("SELECT attempts::int8 FROM jobs WHERE id = 'dup-1'")
            .await,
        1
    );
    assert_eq!(
        env.count("SELECT count(*) FROM provider_calls WHERE job_id = 'dup-1'")
            .await,
        2
    );
    assert_eq!(env.sim.counts().0, 2, "the provider saw each prompt once");
    assert_eq!(env.received().len(), 1, "one webhook");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_dead_lettered_with_their_reason() {
    let env = TestEnv::new("max_message_bytes = 4096").await;
    let (_stop, _worker) = env.start_worker();
    let conn = env.amqp().await;
    let mut schema_bad = env.job("acme", "bad-schema", 1);
    schema_bad["input"]["prompts"] = serde_json::json!([]);
    let unknown_tenant = env.job("nobody", "who", 1);
    let too_large = env.job("acme", "huge", 1).to_string() + &" ".repeat(5000);
    let wrong_user = env.job("globex", "spoofed", 1);
    let no_user = env.job("acme", "anonymous", 1);
    let cases: Vec<(&str, Vec<u8>, Option<&str>)> = vec![
        ("not_json", b"{this is not json".to_vec(), Some("guest")),
        ("schema", schema_bad.to_string().into_bytes(), Some("guest")),
        (
            "unknown_tenant",
            unknown_tenant.to_string().into_bytes(),
            Some("guest"),
        ),
        ("too_large", too_large.into_bytes(), Some("guest")),
        (
            "unauthorized",
            wrong_user.to_string().into_bytes(),
            Some("guest"),
        ),
        ("unauthorized", no_user.to_string().into_bytes(), None),
    ];
    for (_, body, user) in &cases {
        env.publish_raw(&conn, "batch.complete", body, *user).await;
    }
    // A good job after the poison: the worker is still alive and serving.
    env.publish_job(&conn, &env.job("acme", "after-poison", 1))
        .await;
    env.wait_for_state("acme", "after-poison", "succeeded", 20)
        .await;
    let dead = std::sync::Mutex::new(Vec::new());
    env.wait_until(10, "every poison message dead-lettered", || async {
        let drained = env.dead_letters(&conn).await;
        let mut got = dead.lock().unwrap();
        got.extend(drained);
        got.len() >= cases.len()
    })
    .await;
    let dead = dead.into_inner().unwrap();
    assert_eq!(dead.len(), cases.len());
    for (code, body, _) in &cases {
        let found = dead
            .iter()
            .find(|(_, b)| b == body)
            .expect("each poison message is in the DLQ");
        let reason = found.0.clone().expect("reason header");
        assert!(
            reason.starts_with(code),
            "reason {reason:?} should start with {code}"
        );
    }
    assert_eq!(
        env.count("SELECT count(*) FROM jobs").await,
        1,
        "no poison became a job"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_500s_then_success_and_429_with_retry_after_are_retried() {
    let env = TestEnv::new("").await;
    env.sim.script([
        Fault::Status { status: 500 },
        Fault::Status { status: 502 },
        Fault::RateLimited {
            retry_after_secs: 1,
        },
    ]);
    let (_stop, _worker) = env.start_worker();
    let conn = env.amqp().await;
    let started = std::time::Instant::now();
    env.publish_job(&conn, &env.job("acme", "flaky-1", 1)).await;
    env.wait_for_state("acme", "flaky-1", "succeeded", 20).await;
    // Retry-After: 1 was honoured (the retry waited at least a second).
    assert!(started.elapsed() >= std::time::Duration::from_secs(1));
    assert_eq!(env.sim.counts(), (4, 1), "three failures then one success");
    assert_eq!(
        env.count("SELECT attempts::int8 FROM jobs WHERE id = 'flaky-1'")
            .await,
        1,
        "retried within the call"
    );
    assert_eq!(
        env.count("SELECT count(*) FROM provider_calls WHERE job_id = 'flaky-1'")
            .await,
        1,
        "only the success is booked"
    );
    let result: serde_json::Value =
        sqlx::query_scalar("SELECT result FROM jobs WHERE id = 'flaky-1'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    let answered = &result["completions"][0]["routing"][0];
    assert_eq!(answered["attempts"], 4);
    // The provider's own response id and finish reason, as the sim sends them like OpenAI.
    let id = answered["response_id"].as_str().unwrap_or_default();
    assert!(id.starts_with("chatcmpl-"), "{answered}");
    assert_eq!(answered["finish_reason"], "stop", "{answered}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_longer_than_the_call_budget_goes_through_the_retry_queue() {
    let env = TestEnv::new("").await;
    // More 503s than the in-call budget (1.5 s of backoff) absorbs: the job is handed back to the queue.
    env.set_outage(15);
    let (_stop, _worker) = env.start_worker();
    let conn = env.amqp().await;
    env.publish_job(&conn, &env.job("acme", "outage-1", 1))
        .await;
    env.wait_for_state("acme", "outage-1", "succeeded", 30)
        .await;
    let attempts = env
        .count("SELECT attempts::int8 FROM jobs WHERE id = 'outage-1'")
        .await;
    assert!(
        attempts >= 2,
        "the job was attempted again after a delay, got {attempts}"
    );
    assert_eq!(
        env.count("SELECT count(*) FROM provider_calls WHERE job_id = 'outage-1'")
            .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_provider_errors_fail_the_job_with_a_webhook() {
    let env = TestEnv::new("").await;
    env.sim.script([Fault::Status { status: 400 }]);
    let (_stop, _worker) = env.start_worker();
    let conn = env.amqp().await;
    env.publish_job(&conn, &env.job("acme", "rejected-1", 1))
        .await;
    env.wait_until(20, "webhook", || async { !env.received().is_empty() })
        .await;
    let body: serde_json::Value = serde_json::from_str(&env.received()[0].body).unwrap();
    assert_eq!(body["type"], "job.failed");
    assert_eq!(body["data"]["error"]["code"], "provider_rejected");
    // The tenant reads the provider and status, never the upstream body or the endpoint's URL.
    let message = body["data"]["error"]["message"].as_str().unwrap();
    assert!(message.contains("answered HTTP 400"), "{message}");
    for internal in ["simulated failure", "127.0.0.1", "http://"] {
        assert!(!message.contains(internal), "`{internal}` in `{message}`");
    }
    let stored: String = sqlx::query_scalar("SELECT error FROM jobs WHERE id = 'rejected-1'")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(stored, message);
    assert_eq!(
        env.job_state("acme", "rejected-1").await.as_deref(),
        Some("failed")
    );
    assert_eq!(env.sim.counts().0, 1, "a 400 is not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_retried_until_the_receiver_accepts() {
    let env = TestEnv::new("").await;
    env.hooks.refuse_next(3);
    let (_stop, _worker) = env.start_worker();
    let conn = env.amqp().await;
    env.publish_job(&conn, &env.job("acme", "hook-retry", 1))
        .await;
    env.wait_until(20, "webhook delivered", || async {
        env.received().len() == 1
    })
    .await;
    env.wait_until(5, "attempts recorded", || async {
        env.count("SELECT count(*) FROM webhook_deliveries WHERE state = 'delivered'")
            .await
            == 1
    })
    .await;
    assert_eq!(env.count("SELECT count(*) FROM webhook_attempts").await, 4);
    assert_eq!(
        env.count("SELECT count(*) FROM webhook_attempts WHERE status_code = 503")
            .await,
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_requeued_past_the_delivery_limit_is_dead_lettered_by_the_broker() {
    use lapin::options::{BasicGetOptions, BasicNackOptions};
    // No worker: a consumer that dies holding the message is played by nack with requeue.
    let env = TestEnv::new("delivery_limit = 2").await;
    let conn = env.amqp().await;
    let body = env.job("acme", "crashes-workers", 1).to_string();
    env.publish_raw(&conn, "batch.complete", body.as_bytes(), Some("guest"))
        .await;
    let ch = conn.create_channel().await.unwrap();
    let mut deliveries = 0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        match ch
            .basic_get("ragq.jobs".into(), BasicGetOptions::default())
            .await
            .unwrap()
        {
            Some(m) => {
                deliveries += 1;
                let requeue = BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                };
                m.delivery.acker.nack(requeue).await.unwrap();
            }
            None if deliveries > 0 => break,
            None => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    }
    assert_eq!(
        deliveries, 3,
        "delivered once, then redelivered up to the limit of 2"
    );
    let dead = env.dead_letters(&conn).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].1, body.as_bytes());
    assert_eq!(
        dead[0].0, None,
        "dead-lettered by the broker: the reason is its x-death header"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_routed_to_an_anthropic_provider_is_answered_and_booked() {
    // The key comes from the environment variable the config names, never from the file.
    std::env::set_var("RAGQ_TEST_ANTHROPIC_KEY", "sk-ant-test");
    let env = TestEnv::with_sections(
        "",
        r#"[[providers]]
name = "claude"
kind = "anthropic"
base_url = "{sim_url}"
api_key_env = "RAGQ_TEST_ANTHROPIC_KEY"
timeout_ms = 2000
[[models]]
name = "claude-sim"
provider = "claude"
model_id = "claude-sim-1"
input_price_micros_per_mtok = 3000000
output_price_micros_per_mtok = 15000000
context_window = 200000
[policies.claude-first]
models = ["claude-sim", "sim-small"]
"#,
    )
    .await;
    let (_stop, _worker) = env.start_worker();
    let conn = env.amqp().await;
    let mut job = env.job("acme", "claude-1", 2);
    job["policy"] = "claude-first".into();
    job["input"]["system"] = "Answer in one line.".into();
    env.publish_job(&conn, &job).await;
    env.wait_for_state("acme", "claude-1", "succeeded", 20)
        .await;
    let result: serde_json::Value =
        sqlx::query_scalar("SELECT result FROM jobs WHERE id = 'claude-1'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    let first = &result["completions"][0];
    assert_eq!(first["model"], "claude-sim");
    assert_eq!(first["provider"], "claude");
    assert!(first["content"]
        .as_str()
        .unwrap()
        .contains("question 0 of job claude-1"));
    let booked: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT model, input_price_micros_per_mtok, cost_micros FROM provider_calls WHERE job_id = 'claude-1'",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(booked.len(), 2);
    assert!(booked
        .iter()
        .all(|(m, p, c)| m == "claude-sim" && *p == 3_000_000 && *c > 0));
    assert_eq!(
        result["cost_micros"].as_i64().unwrap(),
        booked.iter().map(|b| b.2).sum::<i64>()
    );
}
