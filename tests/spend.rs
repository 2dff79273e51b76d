//! Spend against the real Postgres and RabbitMQ: budgets hold under concurrent workers, a dead
//! worker's reservation expires, alerts fire once per threshold, downgrades, and exact reports.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use chrono::{Datelike, TimeZone};
use common::{spawn_worker_process, TestEnv};
use ragq::providers::Usage;
use ragq::spend::budget::{self, BudgetSpec, OnLimit};
use ragq::spend::report::{self, Dimension, ReportQuery};
use ragq::spend::{CallIntent, LedgerEntry, Price};
use ragq_tools::sim::{Fault, SimOptions};
use serde_json::json;

const SMALL: Price = Price {
    input_micros_per_mtok: 150_000,
    output_micros_per_mtok: 600_000,
};
const LARGE: Price = Price {
    input_micros_per_mtok: 2_500_000,
    output_micros_per_mtok: 10_000_000,
};

/// A one-prompt job whose size (and so worst-case cost) is the same for every `n` < 10,000.
fn same_size_job(env: &TestEnv, id: &str, feature: &str, policy: &str) -> serde_json::Value {
    json!({
        "id": id, "tenant": "acme", "kind": "batch.complete", "policy": policy,
        "webhook_url": env.hook_url,
        "input": {"prompts": [{"prompt": format!("summarise ticket {id}")}], "max_tokens": 40},
        "tags": {"feature": feature}
    })
}

fn estimate_of(job: &serde_json::Value, prices: &[Price]) -> budget::Estimate {
    let input = serde_json::from_value(job["input"].clone()).unwrap();
    ragq_workers::batch_complete::estimate(&input, prices, 1024)
}

async fn publish(env: &TestEnv, jobs: &[serde_json::Value]) {
    let conn = env.amqp().await;
    for job in jobs {
        env.publish_job(&conn, job).await;
    }
}

fn spec(feature: &str, hard: Option<i64>, soft: Option<i64>, on_limit: OnLimit) -> BudgetSpec {
    BudgetSpec {
        tenant: "acme".into(),
        feature: feature.into(),
        period: "month".into(),
        soft_limit_micros: soft,
        hard_limit_micros: hard,
        job_quota: None,
        token_quota: None,
        alert_thresholds: vec![50, 80, 100],
        on_limit,
    }
}

async fn usage(env: &TestEnv, id: i64) -> (i64, i64, i64, i64) {
    sqlx::query_as(
        "SELECT cost_micros, reserved_micros, reserved_jobs, jobs FROM budget_usage WHERE budget_id = $1",
    )
    .bind(id)
    .fetch_one(&env.pool)
    .await
    .unwrap()
}

/// `spend.reservation_ttl_ms` of the test that lets reservations expire.
const RESERVATION_TTL: Duration = Duration::from_millis(1500);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_concurrent_workers_never_pass_the_hard_limit() {
    let env = TestEnv::new("").await;
    env.sim.set_options(SimOptions {
        latency_ms: 20,
        ..SimOptions::default()
    });
    const JOBS: usize = 240;
    let jobs: Vec<_> = (0..JOBS)
        .map(|i| same_size_job(&env, &format!("race-{i:04}"), "chat", "cost-optimized"))
        .collect();
    let est = estimate_of(&jobs[0], &[SMALL]);
    assert!(jobs.iter().all(|j| estimate_of(j, &[SMALL]) == est));
    // Room for 100 jobs and a bit: exactly 100 may run, whatever the interleaving.
    let hard = est.max_micros * 100 + est.max_micros / 2;
    let id = budget::set(
        &env.pool,
        &ragq::audit::Actor::cli(),
        &spec("", Some(hard), None, OnLimit::Fail),
    )
    .await
    .unwrap();
    publish(&env, &jobs).await;

    let mut cfg = env.cfg.clone();
    cfg.database.max_connections = 24;
    let pool = ragq::db::connect(&cfg.database).await.unwrap();
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (cfg, pool, stop) = (cfg.clone(), pool.clone(), env.cancel.child_token());
        workers.push(tokio::spawn(async move {
            ragq_workers::run(cfg, pool, stop).await.unwrap()
        }));
    }
    env.wait_until(60, "every job finished", || async {
        env.finished_jobs().await == JOBS as i64
    })
    .await;

    let succeeded = env
        .count("SELECT count(*) FROM jobs WHERE state = 'succeeded'")
        .await;
    let refused = env
        .count(
            "SELECT count(*) FROM jobs WHERE state = 'failed' AND error_code = 'budget_exceeded'",
        )
        .await;
    // Upper bound (below): booked plus reserved never passes the limit, and each job books at most
    // its worst case. Lower bound: at the first refusal, booked + reserved + worst case > hard with
    // every admitted job holding at most its worst case, so at least floor(hard / worst) ran.
    assert!(
        succeeded >= 100,
        "no job was refused while the limit had room: {succeeded}"
    );
    assert!(refused > 0, "the limit was reached");
    assert_eq!(succeeded + refused, JOBS as i64);
    let spent = env
        .count("SELECT coalesce(sum(cost_micros), 0)::int8 FROM provider_calls")
        .await;
    assert!(spent <= hard, "spent {spent} of a {hard} hard limit");
    assert_eq!(
        env.count("SELECT count(*) FROM provider_calls").await,
        succeeded,
        "refused jobs made no call"
    );
    env.wait_until(10, "reservations settled", || async {
        usage(&env, id).await == (spent, 0, 0, succeeded)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_reservation_expires_and_nothing_is_booked_twice() {
    let env = TestEnv::with_sections(
        "",
        "[spend]\nreservation_ttl_ms = 1500\nmaintenance_interval_ms = 200\n",
    )
    .await;
    // Calls take long enough that the kill lands while every job holds its reservation.
    env.sim.set_options(SimOptions {
        latency_ms: 4000,
        ..SimOptions::default()
    });
    let jobs: Vec<_> = (0..5)
        .map(|i| same_size_job(&env, &format!("held-{i}"), "chat", "cost-optimized"))
        .collect();
    let id = budget::set(
        &env.pool,
        &ragq::audit::Actor::cli(),
        &spec("", Some(1_000_000), None, OnLimit::Fail),
    )
    .await
    .unwrap();
    publish(&env, &jobs).await;
    let config = env.config_file();
    let mut first = spawn_worker_process(&config);
    env.wait_until(20, "five reservations", || async {
        usage(&env, id).await.2 == 5
    })
    .await;
    first.start_kill().unwrap();
    first.wait().await.unwrap();
    let (_, held, _, _) = usage(&env, id).await;
    assert_eq!(held, 5 * estimate_of(&jobs[0], &[SMALL]).max_micros);

    // No worker is left to release them: they expire, seen from a clock one TTL ahead.
    let expired = ragq::spend::maintenance::expire_reservations(&env.pool, RESERVATION_TTL)
        .await
        .unwrap();
    assert_eq!(expired, 5);
    assert_eq!(usage(&env, id).await, (0, 0, 0, 0));

    env.sim.set_options(SimOptions::default());
    let _second = spawn_worker_process(&config);
    env.wait_until(30, "every job finished", || async {
        env.count("SELECT count(*) FROM jobs WHERE state = 'succeeded'")
            .await
            == 5
    })
    .await;
    let audit = env.assert_ledger_consistent(1).await;
    assert_eq!(
        audit.estimated_calls, 5,
        "the five calls cut by the kill are booked once each, at their worst case"
    );
    let spent = env
        .count("SELECT sum(cost_micros)::int8 FROM provider_calls")
        .await;
    let estimated = env
        .count("SELECT sum(cost_micros)::int8 FROM provider_calls WHERE estimated")
        .await;
    assert_eq!(estimated, 5 * estimate_of(&jobs[0], &[SMALL]).max_micros);
    env.wait_until(10, "settled", || async {
        usage(&env, id).await == (spent, 0, 0, 5)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_alert_threshold_fires_once_per_period() {
    let env = TestEnv::new("").await;
    ragq::tenants::set_alert_webhook(
        &env.pool,
        &ragq::audit::Actor::cli(),
        "acme",
        Some(&env.hook_url),
    )
    .await
    .unwrap();
    let (_stop, _worker) = env.start_worker();
    // Learn what one job really costs, then set a soft limit that 10 such jobs reach.
    publish(
        &env,
        &[same_size_job(&env, "probe", "chat", "cost-optimized")],
    )
    .await;
    env.wait_for_state("acme", "probe", "succeeded", 20).await;
    let per_job = env
        .count("SELECT sum(cost_micros)::int8 FROM provider_calls")
        .await;
    assert!(per_job > 0);
    let id = budget::set(
        &env.pool,
        &ragq::audit::Actor::cli(),
        &spec("", None, Some(per_job * 10), OnLimit::Fail),
    )
    .await
    .unwrap();
    let alerts = || {
        env.received()
            .into_iter()
            .filter(|h| h.body.contains("\"budget.threshold\""))
            .collect::<Vec<_>>()
    };
    for round in 0..3 {
        let jobs: Vec<_> = (0..6)
            .map(|i| {
                same_size_job(
                    &env,
                    &format!("spend-{round}-{i}"),
                    "chat",
                    "cost-optimized",
                )
            })
            .collect();
        publish(&env, &jobs).await;
        env.wait_until(20, "round finished", || async {
            env.finished_jobs().await == 1 + 6 * (round + 1)
        })
        .await;
    }
    // 19 jobs' spend: 190% of the soft limit; 50, 80 and 100 each crossed once.
    // Every job is finished, so every alert is committed: wait until each was delivered.
    env.wait_until(10, "every alert delivered", || async {
        let pending = env
            .count(
                "SELECT count(*) FROM webhook_deliveries \
                 WHERE event_type = 'budget.threshold' AND state <> 'delivered'",
            )
            .await;
        pending == 0 && alerts().len() >= 3
    })
    .await;
    let got = alerts();
    let mut thresholds: Vec<i64> = got
        .iter()
        .map(|h| {
            let body: serde_json::Value = serde_json::from_str(&h.body).unwrap();
            assert_eq!(body["data"]["budget_id"], id);
            body["data"]["threshold_pct"].as_i64().unwrap()
        })
        .collect();
    thresholds.sort_unstable();
    assert_eq!(thresholds, vec![50, 80, 100]);
    assert!(
        got.iter().all(|h| h.verified == Some(true)),
        "signed with the tenant's secret"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_limit_fail_refuses_and_downgrade_runs_on_a_cheaper_model() {
    let env = TestEnv::new("").await;
    let (_stop, _worker) = env.start_worker();
    let probe = same_size_job(&env, "x-0000", "f", "with-fallback");
    let both = estimate_of(&probe, &[SMALL, LARGE]);
    // Room for the small model's worst case, not the large one's.
    let hard = (both.min_micros + both.max_micros) / 2;
    budget::set(
        &env.pool,
        &ragq::audit::Actor::cli(),
        &spec("fails", Some(hard), None, OnLimit::Fail),
    )
    .await
    .unwrap();
    budget::set(
        &env.pool,
        &ragq::audit::Actor::cli(),
        &spec("degrades", Some(hard), None, OnLimit::Downgrade),
    )
    .await
    .unwrap();
    publish(
        &env,
        &[
            same_size_job(&env, "f-0001", "fails", "with-fallback"),
            same_size_job(&env, "d-0001", "degrades", "with-fallback"),
        ],
    )
    .await;
    env.wait_until(20, "both finished", || async {
        env.finished_jobs().await == 2
    })
    .await;
    let (state, code): (String, Option<String>) =
        sqlx::query_as("SELECT state, error_code FROM jobs WHERE id = 'f-0001'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(
        (state.as_str(), code.as_deref()),
        ("failed", Some("budget_exceeded"))
    );
    assert_eq!(
        env.job_state("acme", "d-0001").await.as_deref(),
        Some("succeeded")
    );

    // When the cheap model refuses the call, the downgraded job may not fail over to the dear one.
    env.sim.script([Fault::Status { status: 400 }]);
    publish(
        &env,
        &[same_size_job(&env, "d-0002", "degrades", "with-fallback")],
    )
    .await;
    env.wait_until(20, "finished", || async { env.finished_jobs().await == 3 })
        .await;
    let result: serde_json::Value =
        sqlx::query_scalar("SELECT result FROM jobs WHERE id = 'd-0002'")
            .fetch_one(&env.pool)
            .await
            .unwrap_or_default();
    let (state, error): (String, Option<String>) =
        sqlx::query_as("SELECT state, error FROM jobs WHERE id = 'd-0002'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(state, "failed", "{result}");
    assert!(
        error.unwrap_or_default().contains("sim-large"),
        "the trace names the skipped model"
    );
    assert_eq!(
        env.count("SELECT count(*) FROM provider_calls WHERE model = 'sim-large'")
            .await,
        0
    );
}

fn entry(
    job: &str,
    call: i32,
    feature: &str,
    model: &str,
    day: u32,
    tokens: (u64, u64),
    price: Price,
) -> LedgerEntry {
    let usage = Usage {
        input_tokens: tokens.0,
        output_tokens: tokens.1,
    };
    LedgerEntry {
        call: CallIntent {
            tenant_id: "acme".into(),
            job_id: job.into(),
            attempt: 1,
            call_index: call,
            provider: "sim".into(),
            model: model.into(),
            occurred_at: chrono::Utc
                .with_ymd_and_hms(2026, 10, day, 12, 0, 0)
                .unwrap(),
            usage,
            price,
        },
        feature: feature.into(),
        cost_micros: price.cost_micros(usage),
        latency_ms: 5,
        tags: json!({"feature": feature}),
        cache: None,
        prompt: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_match_a_hand_computed_fixture() {
    let env = TestEnv::new("").await;
    let rows = [
        // 1000 in at $0.15/M + 500 out at $0.60/M = 150 + 300 = 450 micros
        entry("j1", 0, "faq", "sim-small", 3, (1_000, 500), SMALL),
        // 2000 in + 1000 out = 300 + 600 = 900
        entry("j1", 1, "faq", "sim-small", 3, (2_000, 1_000), SMALL),
        // 100 in at $2.50/M + 100 out at $10/M = 250 + 1000 = 1250
        entry("j2", 0, "faq", "sim-large", 4, (100, 100), LARGE),
        // 10 in + 0 out = 1.5 -> 2 (half up)
        entry("j3", 0, "search", "sim-small", 4, (10, 0), SMALL),
    ];
    let mut conn = env.pool.acquire().await.unwrap();
    let refs: Vec<&LedgerEntry> = rows.iter().collect();
    assert_eq!(
        ragq::spend::ledger::write(&mut conn, &refs)
            .await
            .unwrap()
            .rows,
        4
    );
    // A re-write after a crash changes nothing.
    assert_eq!(
        ragq::spend::ledger::write(&mut conn, &refs[..2])
            .await
            .unwrap()
            .rows,
        0
    );

    let q = |group_by: Vec<Dimension>| ReportQuery {
        tenant: Some("acme".into()),
        from: None,
        to: None,
        group_by,
    };
    let by_feature = report::query(&env.pool, &q(vec![Dimension::Feature]))
        .await
        .unwrap();
    let got: Vec<(String, i64, i64, i64, i64)> = by_feature
        .iter()
        .map(|r| {
            (
                r.keys[0].clone(),
                r.calls,
                r.input_tokens + r.output_tokens,
                r.cost_micros,
                r.cost_per_1k_tokens_micros,
            )
        })
        .collect();
    // faq: 3 calls, 4700 tokens, 2600 micros, 2600 * 1000 / 4700 = 553.19 -> 553
    // search: 1 call, 10 tokens, 2 micros, 200 per 1k
    assert_eq!(
        got,
        vec![
            ("faq".into(), 3, 4_700, 2_600, 553),
            ("search".into(), 1, 10, 2, 200)
        ]
    );

    let by_day_model = report::query(&env.pool, &q(vec![Dimension::Day, Dimension::Model]))
        .await
        .unwrap();
    let csv = report::to_csv(&[Dimension::Day, Dimension::Model], &by_day_model);
    assert_eq!(
        csv,
        "day,model,calls,input_tokens,output_tokens,cost_usd,cost_per_1k_tokens_usd,cache_hits,saved_usd,cache_hit_rate,mean_latency_ms,prompts_rendered,prompt_error_rate\n\
         2026-10-03,sim-small,2,3000,1500,0.001350,0.000300,0,0.000000,0.0000,5,,\n\
         2026-10-04,sim-large,1,100,100,0.001250,0.006250,0,0.000000,0.0000,5,,\n\
         2026-10-04,sim-small,1,10,0,0.000002,0.000200,0,0.000000,0.0000,5,,\n"
    );
    let one_day = ReportQuery {
        from: chrono::NaiveDate::from_ymd_opt(2026, 10, 4),
        to: chrono::NaiveDate::from_ymd_opt(2026, 10, 4),
        ..q(vec![Dimension::Tenant])
    };
    let total = report::query(&env.pool, &one_day).await.unwrap();
    assert_eq!((total[0].calls, total[0].cost_micros), (2, 1_252));
    let other = ReportQuery {
        tenant: Some("globex".into()),
        ..q(vec![Dimension::Tenant])
    };
    assert!(
        report::query(&env.pool, &other).await.unwrap().is_empty(),
        "one tenant's spend is not another's"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_drops_old_ledger_partitions_and_keeps_the_aggregates() {
    let env = TestEnv::new("").await;
    // Three months of history, each in its own partition. The DDL is built from dates computed
    // here (identifiers cannot be bound), never from input.
    let now = chrono::Utc::now();
    let months_ago = |m: u32| {
        chrono::Utc
            .with_ymd_and_hms(now.year(), now.month(), 1, 12, 0, 0)
            .unwrap()
            .checked_sub_months(chrono::Months::new(m))
            .unwrap()
    };
    for m in 1..=3u32 {
        let start = months_ago(m);
        let name = format!("provider_calls_{}", start.format("%Y_%m"));
        let end = start.checked_add_months(chrono::Months::new(1)).unwrap();
        sqlx::raw_sql(&format!(
            "CREATE TABLE {name} PARTITION OF provider_calls FOR VALUES FROM ('{}') TO ('{}')",
            start.format("%Y-%m-01"),
            end.format("%Y-%m-01")
        ))
        .execute(&env.pool)
        .await
        .unwrap();
    }
    let rows: Vec<LedgerEntry> = (0..=3u32)
        .map(|m| {
            let mut e = entry(
                &format!("j{m}"),
                0,
                "faq",
                "sim-small",
                1,
                (1_000, 0),
                SMALL,
            );
            e.call.occurred_at = months_ago(m);
            e
        })
        .collect();
    let mut conn = env.pool.acquire().await.unwrap();
    let refs: Vec<&LedgerEntry> = rows.iter().collect();
    assert_eq!(
        ragq::spend::ledger::write(&mut conn, &refs)
            .await
            .unwrap()
            .rows,
        4
    );

    // Keep 2 months: this one and the last; the two before go, with their rows.
    ragq::spend::maintenance::maintain_ledger(&env.pool, 2)
        .await
        .unwrap();
    assert_eq!(env.count("SELECT count(*) FROM provider_calls").await, 2);
    let kept: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
         WHERE i.inhparent = 'provider_calls'::regclass ORDER BY 1",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    for m in 2..=3u32 {
        let gone = format!("provider_calls_{}", months_ago(m).format("%Y_%m"));
        assert!(!kept.contains(&gone), "{gone} dropped: {kept:?}");
    }
    assert!(kept.contains(&format!("provider_calls_{}", months_ago(1).format("%Y_%m"))));
    // Reports still see all four calls: the daily aggregates are kept.
    let all = report::query(
        &env.pool,
        &ReportQuery {
            tenant: Some("acme".into()),
            from: None,
            to: None,
            group_by: vec![],
        },
    )
    .await
    .unwrap();
    assert_eq!((all[0].calls, all[0].cost_micros), (4, 4 * 150));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciliation_lists_differences_and_names_the_estimated_part() {
    let env = TestEnv::new("").await;
    let booked = [
        entry("j1", 0, "faq", "sim-small", 3, (1_000, 500), SMALL),
        entry("j2", 0, "faq", "sim-large", 4, (100, 100), LARGE),
    ];
    let mut conn = env.pool.acquire().await.unwrap();
    let refs: Vec<&LedgerEntry> = booked.iter().collect();
    ragq::spend::ledger::write(&mut conn, &refs).await.unwrap();
    // A call cut by a dead worker: its intent is booked as an estimate once it expires (its job
    // is not running that attempt: there is no such job).
    let cut = entry("cut", 0, "faq", "sim-small", 3, (2_000, 1_000), SMALL);
    ragq::spend::intents::record(&mut conn, &[ragq::spend::intents::CallIntent::from(&cut)])
        .await
        .unwrap();
    drop(conn);
    let expired = ragq::spend::intents::expire(&env.pool, Duration::from_millis(1))
        .await
        .unwrap();
    assert_eq!(expired.rows, 1);

    // The provider billed the two calls it answered, not the cut one.
    let theirs = ragq::spend::reconcile::parse_export(
        "date,model,tokens,cost\n2026-10-03,sim-small,1500,0.000450\n2026-10-04,sim-large,200,0.001250\n",
    )
    .unwrap();
    let ids: std::collections::BTreeMap<String, String> =
        [("sim-small", "sim-small"), ("sim-large", "sim-large")]
            .into_iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
    let (from, to) = (
        chrono::NaiveDate::from_ymd_opt(2026, 10, 3).unwrap(),
        chrono::NaiveDate::from_ymd_opt(2026, 10, 4).unwrap(),
    );
    use ragq::spend::reconcile::{ledger_usage, LedgerPart};
    let ours = ledger_usage(&env.pool, LedgerPart::All, "sim", &ids, (from, to))
        .await
        .unwrap();
    let mut diffs = ragq::spend::reconcile::compare(&ours, &theirs);
    let estimates = ledger_usage(&env.pool, LedgerPart::Estimated, "sim", &ids, (from, to))
        .await
        .unwrap();
    ragq::spend::reconcile::mark_estimates(&mut diffs, &estimates);
    assert_eq!(diffs.len(), 1, "{diffs:?}");
    let d = &diffs[0];
    assert_eq!((d.day, d.model.as_str()), (from, "sim-small"));
    // 3000 tokens at the small prices: 300 + 600 micros.
    assert_eq!(d.ours_estimated.tokens, 3_000);
    assert_eq!(d.ours_estimated.cost_micros, 900);
    assert_eq!(d.ours.tokens - d.theirs.tokens, d.ours_estimated.tokens);
    assert_eq!(
        d.ours.cost_micros - d.theirs.cost_micros,
        d.ours_estimated.cost_micros
    );
}
