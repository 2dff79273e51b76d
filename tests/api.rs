//! HTTP submission and reads: authentication, tenant isolation, idempotency and clear 4xx errors.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::TestEnv;
use serde_json::{json, Value};

async fn call(req: reqwest::RequestBuilder) -> (u16, Value) {
    call_response(req.send().await.unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_over_http_then_read_the_outcome() {
    let env = TestEnv::new("").await;
    let base = env.serve_api().await;
    let (_stop, _worker) = env.start_worker();
    let http = reqwest::Client::new();
    let key = env.api_key("globex");
    let mut job = env.job("globex", "http-1", 2);
    job.as_object_mut().unwrap().remove("tenant");

    let (status, body) = call(
        http.post(format!("{base}/v1/jobs"))
            .bearer_auth(&key)
            .json(&job),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["id"], "http-1");
    assert_eq!(body["tenant"], "globex");

    // The same id again is idempotent: 200 with the existing job, not a second job.
    let (status, _) = call(
        http.post(format!("{base}/v1/jobs"))
            .bearer_auth(&key)
            .json(&job),
    )
    .await;
    assert_eq!(status, 200);

    env.wait_for_state("globex", "http-1", "succeeded", 20)
        .await;
    let (status, body) = call(http.get(format!("{base}/v1/jobs/http-1")).bearer_auth(&key)).await;
    assert_eq!(status, 200);
    assert_eq!(body["state"], "succeeded");
    assert_eq!(body["result"]["completions"].as_array().unwrap().len(), 2);
    env.wait_until(10, "one webhook", || async { env.received().len() == 1 })
        .await;
    assert_eq!(
        env.count("SELECT count(*) FROM provider_calls WHERE job_id = 'http-1'")
            .await,
        2
    );

    // Another tenant cannot see it.
    let (status, body) = call(
        http.get(format!("{base}/v1/jobs/http-1"))
            .bearer_auth(env.api_key("acme")),
    )
    .await;
    assert_eq!(status, 404, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_a_4xx_that_names_the_problem() {
    let env = TestEnv::new("").await;
    let base = env.serve_api().await;
    let http = reqwest::Client::new();
    let key = env.api_key("acme");
    let url = format!("{base}/v1/jobs");
    let good = env.job("acme", "x-1", 1);

    let (s, b) = call(http.post(&url).json(&good)).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let (s, _) = call(http.post(&url).bearer_auth("rq_wrong").json(&good)).await;
    assert_eq!(s, 401);
    let (s, b) = call(http.post(&url).bearer_auth(&key).body("{nope")).await;
    assert_eq!(s, 400);
    assert!(
        b["error"]["message"].as_str().unwrap().contains("JSON"),
        "{b}"
    );
    let mut bad = good.clone();
    bad["input"] = json!({"prompts": []});
    let (s, b) = call(http.post(&url).bearer_auth(&key).json(&bad)).await;
    assert_eq!(s, 400);
    assert!(
        b["error"]["message"].as_str().unwrap().contains("prompts"),
        "{b}"
    );
    let mut other = good.clone();
    other["tenant"] = "globex".into();
    let (s, b) = call(http.post(&url).bearer_auth(&key).json(&other)).await;
    assert_eq!(s, 403, "{b}");
    let huge = "x ".repeat(2 << 20);
    let mut big = good.clone();
    big["input"]["prompts"][0]["prompt"] = huge.into();
    // The server answers 413 before the body is fully written and closes the connection; the
    // client may then see its body write cut (EPIPE) before it reads the answer. That race is the
    // client's, not the server's: try a few times, each on a fresh client, until the answer is read.
    let mut status = None;
    for _ in 0..5 {
        let sent = reqwest::Client::new()
            .post(&url)
            .bearer_auth(&key)
            .json(&big)
            .send()
            .await;
        if let Ok(resp) = sent {
            status = Some(resp.status().as_u16());
            break;
        }
    }
    assert_eq!(status, Some(413));
    let (s, b) = call(http.get(format!("{base}/v1/jobs/nope")).bearer_auth(&key)).await;
    assert_eq!(s, 404);
    assert!(b["error"]["message"].as_str().unwrap().contains("nope"));
    assert_eq!(
        env.count("SELECT count(*) FROM jobs").await,
        0,
        "no bad request created a job"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_past_its_rate_gets_429_with_retry_after_and_other_keys_do_not() {
    let env = TestEnv::new("").await;
    let mut cfg = env.api_config();
    cfg.api.rate_limit_per_s = 2;
    let base = env.serve_api_with(cfg).await;
    let http = reqwest::Client::new();
    let read = |tenant: &str| {
        http.get(format!("{base}/v1/jobs/none"))
            .bearer_auth(env.api_key(tenant))
            .send()
    };
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..10 {
        let resp = read("acme").await.unwrap();
        statuses.push(resp.status().as_u16());
        if resp.status() == 429 {
            retry_after = resp.headers().get("retry-after").cloned();
            let body: Value = resp.json().await.unwrap();
            assert_eq!(body["error"]["code"], "rate_limited", "{body}");
        }
    }
    assert_eq!(&statuses[..2], [404, 404], "the burst passes: {statuses:?}");
    assert!(statuses.contains(&429), "{statuses:?}");
    let secs: u64 = retry_after.unwrap().to_str().unwrap().parse().unwrap();
    assert!(secs >= 1, "Retry-After in whole seconds, at least 1");
    assert_eq!(
        read("globex").await.unwrap().status(),
        404,
        "another key has its own allowance"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_are_capped_per_tenant_and_held_to_a_minimum_interval() {
    let env = TestEnv::new("").await;
    let mut cfg = env.api_config();
    cfg.api.pipelines.min_interval = std::time::Duration::from_secs(60);
    cfg.api.pipelines.max_per_tenant = 3;
    let limits = cfg.api.pipelines;
    let base = env.serve_api_with(cfg).await;
    let http = reqwest::Client::new();
    let create = |name: &str, cron: &str| {
        http.post(format!("{base}/v1/pipelines"))
            .bearer_auth(env.api_key("acme"))
            .json(&json!({"name": name, "cron": cron,
                "job_template": {"kind": "batch.complete",
                    "input": {"prompts": [{"prompt": "status"}]}}}))
            .send()
    };
    for cron in ["* * * * * *", "0,30 * * * * *", "*/10 * * * * *"] {
        let (status, body) = call_response(create("fast", cron).await.unwrap()).await;
        assert_eq!(status, 400, "{cron}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("scheduler.min_cron_interval_s"),
            "{body}"
        );
    }
    // Ten creates at once under a cap of three: the cap holds (one lock per tenant).
    let spec = |i: usize| {
        ragq::scheduler::pipeline::PipelineSpec::from_json(
            json!({"name": format!("hourly-{i}"), "cron": "0 0 * * * *",
                "job_template": {"kind": "batch.complete",
                    "input": {"prompts": [{"prompt": "status"}]}}})
            .to_string()
            .as_bytes(),
        )
        .unwrap()
    };
    let results = futures_util::future::join_all((0..10).map(|i| {
        let pool = env.pool.clone();
        let spec = spec(i);
        async move {
            ragq::scheduler::pipeline::create(
                &pool,
                &ragq::audit::Actor::cli(),
                "acme",
                &spec,
                chrono::Utc::now(),
                &limits,
            )
            .await
        }
    }))
    .await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 3);
    assert_eq!(
        env.count("SELECT count(*) FROM pipelines WHERE tenant_id = 'acme'")
            .await,
        3
    );
    let (status, body) = call_response(create("one-more", "0 0 * * * *").await.unwrap()).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("scheduler.max_pipelines_per_tenant"),
        "{body}"
    );
    let (status, _) = call_response(
        http.post(format!("{base}/v1/pipelines"))
            .bearer_auth(env.api_key("globex"))
            .json(&json!({"name": "hourly", "cron": "0 0 * * * *",
                "job_template": {"kind": "batch.complete",
                    "input": {"prompts": [{"prompt": "status"}]}}}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201, "another tenant's cap is its own");
}

async fn call_response(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}
