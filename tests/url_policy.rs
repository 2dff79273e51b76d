//! The outbound URL policy at every door: `POST /v1/jobs` and `POST /v1/pipelines` refuse a
//! webhook URL aimed at the operator's network with a 400 naming the rule, and a worker
//! dead-letters such a job published over AMQP before running it. Nothing here connects anywhere:
//! refused URLs are never called, and the only receiver is the harness's own on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use ragq::webhooks::url_policy::UrlPolicy;
use serde_json::json;

use common::{TestEnv, HOSTILE_URLS as HOSTILE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_refuses_webhooks_into_the_operators_network() {
    let env = TestEnv::new("").await;
    let mut cfg = env.api_config();
    cfg.api.url_policy = UrlPolicy::default();
    let api = env.serve_api_with(cfg).await;
    let http = reqwest::Client::new();
    for (i, url) in HOSTILE.iter().enumerate() {
        let mut job = env.job("acme", &format!("ssrf-{i}"), 1);
        job["webhook_url"] = json!(url);
        job.as_object_mut().unwrap().remove("tenant");
        let response = http
            .post(format!("{api}/v1/jobs"))
            .bearer_auth(env.api_key("acme"))
            .json(&job)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body = response.text().await.unwrap();
        assert_eq!(status, 400, "{url}: {body}");
        assert!(body.contains("webhook_url"), "{url}: {body}");
        assert!(
            !body.contains("postgres") && !body.contains("sqlx"),
            "{body}"
        );
    }
    let pipeline = json!({"name": "nightly", "cron": "0 0 3 * * *",
        "job_template": {"kind": "batch.complete", "webhook_url": "http://localhost:9/hook",
                         "input": {"prompts": [{"prompt": "x"}]}}});
    let response = http
        .post(format!("{api}/v1/pipelines"))
        .bearer_auth(env.api_key("acme"))
        .json(&pipeline)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    assert!(response.text().await.unwrap().contains("loopback"));
    assert_eq!(
        env.count("SELECT count(*) FROM jobs").await,
        0,
        "nothing queued"
    );
    assert_eq!(env.count("SELECT count(*) FROM pipelines").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_dead_letters_a_job_whose_webhook_it_may_not_call() {
    let env = TestEnv::new("").await;
    let mut cfg = env.cfg.clone();
    cfg.webhooks.url_policy = UrlPolicy::default();
    let (stop, worker) = env.start_worker_with(cfg);
    let conn = env.amqp().await;
    let mut job = env.job("acme", "to-loopback", 1);
    job["webhook_url"] = json!("http://2130706433:9/hook");
    env.publish_job(&conn, &job).await;
    let mut letters = Vec::new();
    for _ in 0..100 {
        letters.extend(env.dead_letters(&conn).await);
        if !letters.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let reason = letters[0].0.clone().unwrap_or_default();
    assert!(reason.starts_with("webhook_url_refused"), "{reason}");
    assert!(reason.contains("loopback"), "{reason}");
    assert_eq!(env.count("SELECT count(*) FROM jobs").await, 0, "never ran");
    assert_eq!(env.count("SELECT count(*) FROM provider_calls").await, 0);
    stop.cancel();
    worker.await.unwrap();
}

/// At delivery the check runs again, on the addresses the connection would use: a delivery whose
/// host name now resolves to loopback (as after DNS rebinding) is never sent, and neither is one
/// naming a loopback address directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_are_checked_again_on_the_address_they_would_use() {
    let env = TestEnv::new("").await;
    let mut cfg = env.cfg.clone();
    cfg.webhooks.url_policy = UrlPolicy::default();
    let (stop, worker) = env.start_worker_with(cfg);
    // The harness's receiver, reached by a name and by its address.
    let by_name = env.hook_url.replace("127.0.0.1", "localhost");
    for (id, url) in [
        ("by-name", by_name.as_str()),
        ("by-address", env.hook_url.as_str()),
    ] {
        sqlx::query(
            "INSERT INTO webhook_deliveries (id, tenant_id, job_id, event_type, url, payload, state) \
             VALUES ($1, 'acme', $1, 'job.succeeded', $2, '{}', 'pending')",
        )
        .bind(id)
        .bind(url)
        .execute(&env.pool)
        .await
        .unwrap();
    }
    env.wait_until(30, "both deliveries attempted", || async {
        env.count("SELECT count(DISTINCT delivery_id) FROM webhook_attempts")
            .await
            == 2
    })
    .await;
    let errors: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT delivery_id, error FROM webhook_attempts ORDER BY delivery_id")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    for (id, error) in &errors {
        let error = error.as_deref().unwrap_or("");
        assert!(
            error.contains("loopback") || error.contains("refused"),
            "{id}: {error}"
        );
    }
    assert!(env.received().is_empty(), "the receiver was called");
    stop.cancel();
    worker.await.unwrap();
}

/// `ragq tenant add` refuses a trusted publisher as a tenant's AMQP user (it could publish for
/// every tenant) and an alert webhook aimed at a non-public address (the test's config allows
/// only loopback).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_setup_refuses_trusted_users_and_private_alert_urls() {
    let env = TestEnv::new("").await;
    let config = env.config_file();
    let trusted = env.cfg.queue.trusted_publishers[0].clone();
    let run = |args: Vec<String>| {
        let config = config.clone();
        async move {
            tokio::process::Command::new(env!("CARGO_BIN_EXE_ragq"))
                .arg("--config")
                .arg(&config)
                .args(&args)
                .env("RUST_LOG", "error")
                .output()
                .await
                .unwrap()
        }
    };
    let args = |s: &[&str]| s.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    let out = run(args(&["tenant", "add", "newco", "--amqp-user", &trusted])).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("trusted publisher"));
    let metadata = "http://169.254.169.254/latest/meta-data";
    let out = run(args(&[
        "tenant",
        "add",
        "newco",
        "--alert-webhook",
        metadata,
    ]))
    .await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("link-local"));
    assert_eq!(
        env.count("SELECT count(*) FROM tenants WHERE id = 'newco'")
            .await,
        0
    );
    let out = run(args(&[
        "tenant",
        "add",
        "newco",
        "--amqp-user",
        "newco-user",
    ]))
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
