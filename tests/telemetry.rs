//! Metrics: a worker process's `/metrics` and the api's after a small run agree with the jobs
//! table and the ledger, and every family they export is one ragq declares (the Grafana
//! dashboard is checked against the same list).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;

use ragq::telemetry::metrics::names;
use serde_json::json;

use common::{free_port, spawn_ragq, spawn_worker_process, terminate, TestEnv};

/// Exports what the batch processor holds every 200 ms, so tests need not wait 5 s.
const BATCH_DELAY: (&str, &str) = ("OTEL_BSP_SCHEDULE_DELAY", "200");
use ragq_tools::otlp::{ExportedSpan, OtlpReceiver};
use ragq_tools::scrape::{families, samples, sum, Sample};

async fn scrape(url: &str) -> Vec<Sample> {
    ragq_tools::scrape::scrape(url).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_and_api_metrics_agree_with_the_database() {
    let port = free_port();
    let env = TestEnv::with_sections(
        "",
        &format!("[telemetry]\nmetrics_listen = \"127.0.0.1:{port}\"\n"),
    )
    .await;
    let config = env.config_file();
    let _worker = spawn_worker_process(&config);
    ragq::telemetry::metrics::install(Default::default());
    let api = env.serve_api().await;

    // 12 jobs over AMQP, 3 over HTTP, one that fails (unknown policy), one poison message.
    env.publish_jobs("m", 12, 2).await;
    for i in 0..3 {
        env.submit_http(&api, "acme", &env.job("acme", &format!("h-{i}"), 1))
            .await;
    }
    let conn = env.amqp().await;
    let failing = json!({"id": "bad-policy", "tenant": "acme", "kind": "batch.complete",
                         "policy": "nope", "input": {"prompts": [{"prompt": "x"}]}});
    env.publish_job(&conn, &failing).await;
    env.publish_raw(&conn, "batch.complete", b"{not json", Some("guest"))
        .await;
    env.wait_until(60, "16 jobs finished", || async {
        env.finished_jobs().await == 16
    })
    .await;
    env.wait_until(30, "webhooks delivered", || async {
        env.count("SELECT count(*) FROM webhook_deliveries WHERE state = 'delivered'")
            .await
            == 15
    })
    .await;

    let url = format!("http://127.0.0.1:{port}/metrics");
    let env = &env;
    let db = |sql: &'static str| async move { env.count(sql).await as f64 };
    let succeeded = db("SELECT count(*) FROM jobs WHERE state = 'succeeded'").await;
    let calls = db("SELECT count(*) FROM provider_calls").await;
    let spend = db("SELECT coalesce(sum(cost_micros), 0)::bigint FROM provider_calls").await;
    let delivered = db("SELECT count(*) FROM webhook_deliveries WHERE state = 'delivered'").await;
    env.wait_until(10, "the worker's counters to catch up", || {
        let url = url.clone();
        async move {
            let m = scrape(&url).await;
            sum(&m, names::WEBHOOK_ATTEMPTS, &[("outcome", "delivered")]) == delivered
                && sum(&m, names::DEAD_LETTERS, &[]) == 1.0
        }
    })
    .await;
    let m = scrape(&url).await;
    assert_eq!(succeeded, 15.0);
    assert_eq!(sum(&m, names::JOBS, &[("outcome", "succeeded")]), succeeded);
    assert_eq!(sum(&m, names::JOBS, &[("outcome", "failed")]), 1.0);
    let timed = sum(&m, &format!("{}_count", names::JOB_DURATION), &[]);
    assert_eq!(timed, 16.0, "every finished job was timed");
    // Queue waits need a publish time: the api's 3 messages carry ragq's header; the test's raw
    // AMQP messages carry none (an external publisher may set the standard timestamp instead).
    let waited = sum(&m, &format!("{}_count", names::QUEUE_WAIT), &[]);
    assert_eq!(waited, 3.0, "the api's jobs had their queue wait measured");
    assert_eq!(sum(&m, names::PROVIDER_CALLS, &[("outcome", "ok")]), calls);
    assert_eq!(sum(&m, names::SPEND, &[]), spend);
    assert_eq!(
        sum(
            &m,
            names::SPEND,
            &[("tenant", "acme"), ("feature", "tests")]
        ),
        spend
    );
    assert_eq!(
        sum(&m, names::DEAD_LETTERS, &[("reason", "not_json")]),
        1.0,
        "dead letters by reason"
    );
    let requests = sum(
        &m,
        &format!("{}_count", names::GEN_AI_DURATION),
        &[("gen_ai_operation_name", "chat")],
    );
    assert!(
        requests >= calls,
        "every answered call was at least one request"
    );
    let input_tokens = sum(
        &m,
        &format!("{}_sum", names::GEN_AI_TOKENS),
        &[("gen_ai_token_type", "input")],
    );
    let booked_input =
        db("SELECT coalesce(sum(input_tokens), 0)::bigint FROM provider_calls").await;
    assert_eq!(input_tokens, booked_input);

    // The api counts its requests by route, not by path.
    let api_metrics = scrape(&format!("{api}/metrics")).await;
    assert_eq!(
        sum(
            &api_metrics,
            names::HTTP_REQUESTS,
            &[("route", "/v1/jobs"), ("status", "202")]
        ),
        3.0
    );

    // Everything exported is a declared family, and the main ones are there.
    let exported: BTreeSet<String> = families(&m)
        .union(&families(&api_metrics))
        .cloned()
        .collect();
    for family in &exported {
        assert!(
            names::ALL.contains(&family.as_str()),
            "undeclared family {family}"
        );
    }
    for family in [
        names::JOBS,
        names::JOB_DURATION,
        names::GEN_AI_DURATION,
        names::GEN_AI_TOKENS,
        names::PROVIDER_CALLS,
        names::SPEND,
        names::WEBHOOK_ATTEMPTS,
        names::DEAD_LETTERS,
        names::COMMIT_BATCH,
        names::COMMIT_DURATION,
        names::HTTP_REQUESTS,
    ] {
        assert!(
            exported.contains(family),
            "{family} missing from {exported:?}"
        );
    }
}

#[tokio::test]
async fn the_scheduler_gauges_read_the_backlog_and_what_budgets_have_left() {
    let env = TestEnv::new("").await;
    ragq::telemetry::metrics::install(Default::default());
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO budgets (tenant_id, feature, period, soft_limit_micros, hard_limit_micros) \
         VALUES ('globex', 'gauges', 'month', 500, 1000) RETURNING id",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO budget_usage (budget_id, period_start, cost_micros) \
         VALUES ($1, date_trunc('month', now() AT TIME ZONE 'UTC')::date, 300)",
    )
    .bind(id)
    .execute(&env.pool)
    .await
    .unwrap();
    ragq::telemetry::metrics::refresh_from_database(&env.pool)
        .await
        .unwrap();
    let m = samples(&ragq::telemetry::metrics::render());
    let left = |limit| {
        sum(
            &m,
            names::BUDGET_REMAINING,
            &[
                ("tenant", "globex"),
                ("feature", "gauges"),
                ("limit", limit),
            ],
        )
    };
    assert_eq!(left("soft"), 200.0);
    assert_eq!(left("hard"), 700.0);
    assert!(families(&m).contains(names::WEBHOOK_BACKLOG));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_job_is_one_trace_under_its_submitters_traceparent() {
    let cancel = tokio_util::sync::CancellationToken::new();
    let receiver = OtlpReceiver::spawn(cancel.clone()).await.unwrap();
    let otlp = receiver.url();
    let env =
        TestEnv::with_sections("", &format!("[telemetry]\notlp_endpoint = \"{otlp}\"\n")).await;
    let config = env.config_file();
    let mut worker = spawn_ragq(&config, "worker", &[BATCH_DELAY]);
    // The api as a process of its own: the in-process recorder belongs to the metrics test.
    let (_api, api) = env.spawn_api(&[]).await;
    // Over HTTP with the submitter's trace context, and over AMQP with it as a header.
    let http_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let http_parent = "00f067aa0ba902b7";
    let mut job = env.job("acme", "traced-http", 2);
    job.as_object_mut().unwrap().remove("tenant");
    let resp = reqwest::Client::new()
        .post(format!("{api}/v1/jobs"))
        .bearer_auth(env.api_key("acme"))
        .header("traceparent", format!("00-{http_trace}-{http_parent}-01"))
        .json(&job)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    let amqp_trace = "0af7651916cd43dd8448eb211c80319c";
    let amqp_parent = "b7ad6b7169203331";
    let conn = env.amqp().await;
    publish_with_traceparent(
        &env,
        &conn,
        &env.job("acme", "traced-amqp", 1),
        &format!("00-{amqp_trace}-{amqp_parent}-01"),
    )
    .await;
    env.publish_job(&conn, &env.job("acme", "untraced", 1))
        .await;
    // One delivery is refused once: its retry, sent later from the table, stays in its trace.
    env.hooks.refuse_next(1);
    env.wait_until(60, "3 jobs finished", || async {
        env.finished_jobs().await == 3
    })
    .await;
    env.wait_until(30, "webhooks delivered", || async {
        env.count("SELECT count(*) FROM webhook_deliveries WHERE state = 'delivered'")
            .await
            == 3
    })
    .await;
    // A graceful stop flushes what the batch processor still holds.
    terminate(&mut worker).await;

    let spans = receiver.spans();
    for (trace, parent, calls) in [(http_trace, http_parent, 2), (amqp_trace, amqp_parent, 1)] {
        let of_trace: Vec<&ExportedSpan> = spans.iter().filter(|s| s.trace_id == trace).collect();
        let jobs: Vec<&&ExportedSpan> = of_trace.iter().filter(|s| s.name == "job").collect();
        assert_eq!(
            jobs.len(),
            1,
            "one job span in trace {trace}: {of_trace:#?}"
        );
        assert_eq!(
            jobs[0].parent, parent,
            "the job is a child of the submitter's span"
        );
        let job_id = &jobs[0].span_id;
        for child in ["claim", "commit", "webhook_attempt"] {
            let found = of_trace.iter().find(|s| s.name == child);
            assert_eq!(
                found.map(|s| &s.parent),
                Some(job_id),
                "{child} under the job: {of_trace:#?}"
            );
        }
        let provider_calls: Vec<&&ExportedSpan> = of_trace
            .iter()
            .filter(|s| s.name == "provider_call")
            .collect();
        assert_eq!(provider_calls.len(), calls, "one provider_call per prompt");
        let requests = of_trace
            .iter()
            .filter(|s| s.name == "provider_request")
            .count();
        assert!(requests >= calls, "each call has its attempts");
    }
    // The job without a traceparent starts a trace of its own.
    let job_traces: BTreeSet<&str> = spans
        .iter()
        .filter(|s| s.name == "job")
        .map(|s| s.trace_id.as_str())
        .collect();
    assert_eq!(job_traces.len(), 3, "one trace per job");
    let attempts: Vec<&ExportedSpan> = spans
        .iter()
        .filter(|s| s.name == "webhook_attempt")
        .collect();
    assert_eq!(
        attempts.len(),
        4,
        "3 deliveries, one retried: {attempts:#?}"
    );
    for attempt in attempts {
        let under_job = spans.iter().any(|s| {
            s.name == "job" && s.trace_id == attempt.trace_id && s.span_id == attempt.parent
        });
        assert!(
            under_job,
            "a webhook attempt outside its job's trace: {attempt:#?}"
        );
    }
    cancel.cancel();
}

async fn publish_with_traceparent(
    env: &TestEnv,
    conn: &lapin::Connection,
    job: &serde_json::Value,
    traceparent: &str,
) {
    use lapin::types::{AMQPValue, FieldTable, LongString};
    let mut headers = FieldTable::default();
    headers.insert(
        "traceparent".into(),
        AMQPValue::LongString(LongString::from(traceparent)),
    );
    let props = lapin::BasicProperties::default()
        .with_delivery_mode(2)
        .with_user_id("guest".into())
        .with_headers(headers);
    let body = job.to_string();
    env.publish_with(conn, "batch.complete", body.as_bytes(), props)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_job_is_a_child_of_its_pipeline_run() {
    let cancel = tokio_util::sync::CancellationToken::new();
    let receiver = OtlpReceiver::spawn(cancel.clone()).await.unwrap();
    let env = TestEnv::with_sections(
        "",
        &format!(
            "[telemetry]\notlp_endpoint = \"{}\"\n[scheduler]\ntick_ms = 200\n",
            receiver.url()
        ),
    )
    .await;
    let spec = json!({
        "name": "traced-digest", "cron": "* * * * * *", "time_zone": "UTC", "missed": "skip",
        "job_template": {"kind": "batch.complete",
            "input": {"prompts": [{"prompt": "Digest for {{scheduled_time}}"}]}}
    });
    let spec =
        ragq::scheduler::pipeline::PipelineSpec::from_json(spec.to_string().as_bytes()).unwrap();
    ragq::scheduler::pipeline::create(
        &env.pool,
        &ragq::audit::Actor::cli(),
        "acme",
        &spec,
        chrono::Utc::now(),
        &env.cfg.scheduler.pipelines,
    )
    .await
    .unwrap();
    let config = env.config_file();
    let api_queue = env.api_config().queue.url;
    // The scheduler publishes as the trusted api user, as in production.
    let mut scheduler = spawn_ragq(
        &config,
        "scheduler",
        &[BATCH_DELAY, ("RAGQ_QUEUE__URL", api_queue.as_str())],
    );
    let mut worker = spawn_ragq(&config, "worker", &[BATCH_DELAY]);
    env.wait_until(30, "a scheduled job finished", || async {
        env.count("SELECT count(*) FROM jobs WHERE state = 'succeeded'")
            .await
            >= 1
    })
    .await;
    terminate(&mut scheduler).await;
    terminate(&mut worker).await;
    let spans = receiver.spans();
    let runs: Vec<&ExportedSpan> = spans.iter().filter(|s| s.name == "pipeline_run").collect();
    assert!(
        !runs.is_empty(),
        "the scheduler exported its runs: {spans:#?}"
    );
    let job = spans
        .iter()
        .find(|s| s.name == "job" && runs.iter().any(|r| r.span_id == s.parent))
        .unwrap_or_else(|| panic!("no job span under a pipeline run: {spans:#?}"));
    let run = runs.iter().find(|r| r.span_id == job.parent).unwrap();
    assert_eq!(
        job.trace_id, run.trace_id,
        "one trace from the run to the job"
    );
    cancel.cancel();
}
