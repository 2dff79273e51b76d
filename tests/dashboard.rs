//! The dashboard after a small run: it refuses without a key, shows a tenant its own data and no
//! other tenant's, shows the operator every tenant, and draws charts whose values equal the
//! database, checked in a real headless chromium that loads nothing from another origin. The
//! screenshot is kept under target/test-artifacts/.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;

use ragq::secret::Secret;
use ragq_tools::browser::{chromium_path, Browser};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use common::TestEnv;

const OPERATOR_KEY: &str = "operator-key-for-the-dashboard-test";

/// A run with data for two tenants: acme's jobs over AMQP (with a budget), globex's over HTTP,
/// a poison message and a message for globex from acme's AMQP user (both dead-lettered).
async fn run(env: &TestEnv, api: &str) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    sqlx::query(
        "INSERT INTO budgets (tenant_id, period, soft_limit_micros, hard_limit_micros) \
         VALUES ('acme', 'month', 1000000, 5000000)",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    let (stop, worker) = env.start_worker();
    env.publish_jobs("a", 8, 2).await;
    for i in 0..3 {
        env.submit_http(api, "globex", &env.job("globex", &format!("g-{i}"), 1))
            .await;
    }
    let conn = env.amqp().await;
    env.publish_raw(&conn, "batch.complete", b"{not json", Some("guest"))
        .await;
    let stolen = env.job("globex", "not-yours", 1);
    env.publish_job(&conn, &stolen).await;
    env.wait_until(60, "11 jobs finished", || async {
        env.finished_jobs().await == 11
    })
    .await;
    env.wait_until(30, "2 dead letters counted", || async {
        env.count("SELECT count(*) FROM dead_letters").await == 2
    })
    .await;
    env.wait_until(30, "webhooks delivered", || async {
        env.count("SELECT count(*) FROM webhook_deliveries WHERE state = 'delivered'")
            .await
            == 11
    })
    .await;
    // The worker writes its stats every few seconds.
    env.wait_until(
        30,
        "the worker's job and provider stats written",
        || async {
            env.count(
                "SELECT coalesce(sum(calls), 0)::bigint FROM provider_stats WHERE outcome = 'ok'",
            )
            .await
                == env.count("SELECT count(*) FROM provider_calls").await
                && env
                    .count("SELECT coalesce(sum(jobs), 0)::bigint FROM job_stats WHERE tenant_id <> '*'")
                    .await
                    == 11
        },
    )
    .await;
    // The worker stays up (its breakers show while its lease is live); the test's end stops it.
    (stop, worker)
}

async fn get(url: &str, key: Option<&str>) -> (u16, reqwest::header::HeaderMap, String) {
    let mut request = reqwest::Client::new().get(url);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_each_key_its_own_data() {
    let env = TestEnv::new("").await;
    let mut cfg = env.api_config();
    cfg.api.operator_key = Some(Secret::new(OPERATOR_KEY));
    let api = env.serve_api_with(cfg).await;
    let _worker = run(&env, &api).await;
    let page = format!("{api}/dashboard");

    let (status, headers, body) = get(&page, None).await;
    assert_eq!(status, 401, "no key: the sign-in form");
    assert!(body.contains("action=\"/dashboard/login\""));
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("style-src 'self'"));
    assert_eq!(get(&page, Some("not-a-key")).await.0, 401);
    let (status, _, body) = get(&format!("{page}?window=week"), Some(OPERATOR_KEY)).await;
    assert_eq!(status, 400);
    assert!(body.contains("hour, day, 30d"), "{body}");

    let acme = env.api_key("acme");
    for window in ["hour", "day", "30d"] {
        let (status, _, body) = get(&format!("{page}?window={window}"), Some(&acme)).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("id=\"chart-jobs\""));
        assert!(
            !body.to_lowercase().contains("globex"),
            "acme's {window} page names another tenant"
        );
    }
    let (status, _, body) = get(&page, Some(OPERATOR_KEY)).await;
    assert_eq!(status, 200);
    for expected in ["globex", "acme", "not_json", "unauthorized"] {
        assert!(body.contains(expected), "the operator sees {expected}");
    }

    // A form posted from another site may not sign a browser in.
    let refused = reqwest::Client::new()
        .post(format!("{api}/dashboard/login"))
        .header("origin", "https://elsewhere.invalid")
        .form(&[("key", acme.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 403);
}

/// What the page shows, read from its DOM.
const READ_PAGE: &str = r#"(() => {
  const marks = id => [...document.querySelectorAll(`#chart-${id} .mark`)]
    .map(m => [m.dataset.series, Number(m.dataset.value)]);
  return {
    title: document.title,
    scope: document.getElementById('scope').textContent,
    charts: document.querySelectorAll('figure.chart svg').length,
    jobs: marks('jobs'),
    latency: marks('latency-total'),
    outcomes: marks('provider-outcomes'),
    spend: Number(document.getElementById('spend-total').dataset.micros),
    spendMarks: marks('spend-feature'),
    webhooks: marks('webhooks'),
    rules: [...document.querySelectorAll('#chart-budget-0 .rule')]
      .map(r => [r.dataset.series, Number(r.dataset.value)]),
    breakers: [...document.querySelectorAll('li.breaker')].map(b => b.dataset.state),
    text: document.body.innerText,
  };
})()"#;

fn total(marks: &Value, series: Option<&str>) -> f64 {
    marks
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| series.is_none_or(|s| m[0] == s))
        .map(|m| m[1].as_f64().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_reads_its_charts_in_a_real_browser() {
    let chromium = chromium_path().expect(
        "chromium is not installed: scripts/test.sh installs it (apt-get install chromium)",
    );
    let env = TestEnv::new("").await;
    let api = env.serve_api().await;
    let _worker = run(&env, &api).await;

    let mut browser = Browser::launch(&chromium).await.unwrap();
    browser.open(&format!("{api}/dashboard")).await.unwrap();
    assert!(browser
        .eval("document.title")
        .await
        .unwrap()
        .as_str()
        .unwrap()
        .contains("Sign in"));
    let sign_in = format!(
        "document.getElementById('key').value = {}; document.querySelector('form').submit()",
        json!(env.api_key("acme"))
    );
    browser.eval_and_wait_for_load(&sign_in).await.unwrap();
    let page = browser.eval(READ_PAGE).await.unwrap();

    assert_eq!(page["title"], "ragq dashboard", "signed in: {page}");
    assert!(page["scope"].as_str().unwrap().contains("Acme"));
    assert!(page["charts"].as_u64().unwrap() >= 10, "{}", page["charts"]);
    // Jobs per minute over the last hour, summed, is the number of attempts that ended.
    let acme_jobs = env
        .count("SELECT count(*) FROM jobs WHERE tenant_id = 'acme' AND state = 'succeeded'")
        .await as f64;
    assert_eq!(acme_jobs, 8.0);
    assert_eq!(
        total(&page["jobs"], Some("batch.complete succeeded")),
        acme_jobs
    );
    assert_eq!(total(&page["jobs"], None), acme_jobs);
    assert!(total(&page["latency"], Some("p95")) > 0.0, "p95 drawn");
    // Every call of the run answered: 100% ok.
    assert_eq!(total(&page["outcomes"], Some("ok")), 100.0);
    let acme_spend = env
        .count("SELECT sum(cost_micros)::bigint FROM provider_calls WHERE tenant_id = 'acme'")
        .await;
    assert!(acme_spend > 0);
    assert_eq!(page["spend"].as_i64().unwrap(), acme_spend);
    let drawn_spend = total(&page["spendMarks"], None);
    assert!((drawn_spend - acme_spend as f64 / 1e6).abs() < 1e-9);
    assert_eq!(total(&page["webhooks"], Some("delivered")), acme_jobs);
    let rules: Vec<(String, f64)> = serde_json::from_value(page["rules"].clone()).unwrap();
    assert_eq!(
        rules,
        [
            ("soft limit".to_string(), 1.0),
            ("hard limit".to_string(), 5.0)
        ]
    );
    assert_eq!(
        page["breakers"],
        json!(["closed"]),
        "one live worker reported"
    );
    let text = page["text"].as_str().unwrap().to_lowercase();
    assert!(!text.contains("globex"), "acme's page names another tenant");
    assert!(!text.contains("unauthorized"), "not acme's dead letter");

    // Nothing but the page's own origin was asked for (no CDN, no script anywhere).
    assert!(browser.requests.len() >= 3, "{:?}", browser.requests);
    for url in &browser.requests {
        assert!(url.starts_with(&api), "the page requested {url}");
    }
    let shot = artifacts().join("dashboard-tenant.png");
    browser.screenshot(&shot).await.unwrap();
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000);
    eprintln!("dashboard screenshot: {}", shot.display());
    browser.close().await;
}

fn artifacts() -> PathBuf {
    std::env::var_os("RAGQ_TEST_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts")
        })
}

/// Maintenance folds minute stats older than two days into hours, keeping every count and
/// histogram bucket, and leaves recent minutes alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_minute_stats_fold_into_hours_without_losing_counts() {
    let env = TestEnv::new("").await;
    let insert = "INSERT INTO job_stats (bucket, minutes, tenant_id, kind, outcome, jobs, total_ms, work_ms) \
                  SELECT date_trunc('hour', now() - interval '3 days') + make_interval(mins => m), 1, \
                    'acme', 'batch.complete', 'succeeded', 2, \
                    ragq_hist_add(ragq_hist_one(40), ragq_hist_one(m * 100)), ragq_hist_one(30) \
                  FROM generate_series(0, 119) AS m \
                  UNION ALL SELECT date_trunc('minute', now()), 1, 'acme', 'batch.complete', \
                    'succeeded', 1, ragq_hist_one(40), ragq_hist_one(30)";
    sqlx::query(insert).execute(&env.pool).await.unwrap();
    let totals =
        "SELECT sum(jobs)::bigint, ragq_hist_sum(total_ms), ragq_hist_sum(work_ms) FROM job_stats";
    let before: (i64, Vec<i64>, Vec<i64>) =
        sqlx::query_as(totals).fetch_one(&env.pool).await.unwrap();
    ragq::telemetry::stats::fold(&env.pool).await.unwrap();
    let after: (i64, Vec<i64>, Vec<i64>) =
        sqlx::query_as(totals).fetch_one(&env.pool).await.unwrap();
    assert_eq!(before, after, "nothing lost in the fold");
    assert_eq!(before.0, 241);
    let rows: Vec<(i32, i64)> =
        sqlx::query_as("SELECT minutes, jobs FROM job_stats ORDER BY bucket")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert_eq!(
        rows,
        [(60, 120), (60, 120), (1, 1)],
        "two hours and this minute"
    );
}
