//! Metrics: a worker process's `/metrics` and the api's after a small run agree with the jobs
//! table and the ledger, and every family they export is one ragq declares (the Grafana
//! dashboard is checked against the same list).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;

use ragq::telemetry::metrics::names;
use serde_json::json;

use common::{spawn_worker_process, TestEnv};
use ragq_tools::scrape::{families, samples, sum, Sample};

async fn scrape(url: &str) -> Vec<Sample> {
    ragq_tools::scrape::scrape(url).await.unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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
