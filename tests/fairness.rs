//! Fair share between tenants, against the real broker and database: a small tenant is served
//! within a round of another's backlog, weights divide the workers, a tenant's in-flight cap
//! holds, and priorities order a tenant's own jobs. Every check reads the jobs table's times.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::TestEnv;
use ragq::audit::Actor;
use ragq_tools::sim::SimOptions;

/// Creates tenants whose jobs the test publishes as `guest`.
async fn tenants(env: &TestEnv, ids: &[&str]) {
    for id in ids {
        ragq::tenants::create(
            &env.pool,
            &Actor::cli(),
            &env.cfg.secrets,
            id,
            id,
            Some("guest"),
        )
        .await
        .unwrap();
    }
}

fn with_latency(env: &TestEnv, ms: u64) {
    env.sim.set_options(SimOptions {
        latency_ms: ms,
        ..SimOptions::default()
    });
}

fn jobs(env: &TestEnv, tenant: &str, n: usize) -> Vec<serde_json::Value> {
    (0..n)
        .map(|i| env.job(tenant, &format!("{tenant}-{i}"), 1))
        .collect()
}

async fn succeeded(env: &TestEnv, tenant: &str) -> i64 {
    env.count(&format!(
        "SELECT count(*) FROM jobs WHERE tenant_id = '{tenant}' AND state = 'succeeded'"
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_tenant_is_served_within_a_round_of_a_large_backlog() {
    // One worker running 8 jobs at a time, 50 ms each: the bulk tenant alone would take 12.5 s.
    let env = TestEnv::new("prefetch = 8").await;
    with_latency(&env, 50);
    tenants(&env, &["bulk", "live"]).await;
    env.publish_many(&jobs(&env, "bulk", 2_000)).await;
    env.publish_many(&jobs(&env, "live", 20)).await;
    let (stop, worker) = env.start_worker();
    env.wait_until(60, "live's 20 jobs done", || async {
        succeeded(&env, "live").await == 20
    })
    .await;
    let bulk_done_before = env
        .count(
            "SELECT count(*) FROM jobs WHERE tenant_id = 'bulk' AND finished_at <= \
               (SELECT max(finished_at) FROM jobs WHERE tenant_id = 'live')",
        )
        .await;
    assert!(
        bulk_done_before < 500,
        "live's 20 jobs finished before a quarter of bulk's 2,000 ({bulk_done_before} were done)"
    );
    stop.cancel();
    worker.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_divide_the_workers_between_tenants_with_backlogs() {
    // `gold` has weight 3 from its plan; `basic` keeps the default 1.
    let env = TestEnv::with_sections("prefetch = 8", "[plans.gold]\nweight = 3\n").await;
    with_latency(&env, 20);
    tenants(&env, &["gold", "basic"]).await;
    ragq::tenants::set_plan(&env.pool, &Actor::cli(), &env.cfg.plans, "gold", "gold")
        .await
        .unwrap();
    // The plan's weight is in the dispatch state at once, not from gold's next message.
    assert_eq!(
        env.count("SELECT weight::int8 FROM tenant_shares WHERE tenant_id = 'gold'")
            .await,
        3
    );
    // Interleaved, so that both backlogs arrive together.
    let (g, b) = (jobs(&env, "gold", 600), jobs(&env, "basic", 600));
    let both: Vec<serde_json::Value> = g.into_iter().zip(b).flat_map(|(g, b)| [g, b]).collect();
    env.publish_many(&both).await;
    let (stop, worker) = env.start_worker();
    env.wait_until(60, "400 jobs done", || async {
        env.finished_jobs().await >= 400
    })
    .await;
    stop.cancel();
    worker.await.unwrap();
    // The first 400 completions, while both tenants still had hundreds queued.
    let first = |tenant: &str| {
        format!(
            "SELECT count(*) FROM (SELECT tenant_id FROM jobs WHERE finished_at IS NOT NULL \
             ORDER BY finished_at LIMIT 400) f WHERE tenant_id = '{tenant}'"
        )
    };
    let (gold, basic) = (
        env.count(&first("gold")).await,
        env.count(&first("basic")).await,
    );
    assert_eq!(gold + basic, 400);
    let ratio = gold as f64 / basic as f64;
    assert!(
        (2.5..=3.5).contains(&ratio),
        "weights 3:1 give about 3:1 of the completions: gold {gold}, basic {basic}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_in_flight_cap_holds_without_failing_its_jobs() {
    let env = TestEnv::new("prefetch = 8").await;
    with_latency(&env, 30);
    tenants(&env, &["capped", "free"]).await;
    let cap = ragq::tenants::shares::ShareChange {
        max_in_flight: Some(Some(2)),
        ..Default::default()
    };
    ragq::tenants::shares::set(&env.pool, &Actor::cli(), &env.cfg.plans, "capped", cap)
        .await
        .unwrap();
    let (c, f) = (jobs(&env, "capped", 40), jobs(&env, "free", 40));
    env.publish_many(&c.into_iter().chain(f).collect::<Vec<_>>())
        .await;
    let (stop, worker) = env.start_worker();
    env.wait_until(60, "all 80 jobs done", || async {
        env.finished_jobs().await == 80
    })
    .await;
    stop.cancel();
    worker.await.unwrap();
    assert_eq!(
        succeeded(&env, "capped").await,
        40,
        "every capped job succeeded"
    );
    assert_eq!(
        env.count("SELECT count(*) FROM jobs WHERE attempts <> 1")
            .await,
        0,
        "waiting for the cap spent no attempt"
    );
    // The most jobs of a tenant running at one instant, from claim and finish times: at each
    // claim, the jobs claimed at or before it and not yet finished.
    let most_at_once = |tenant: &str| {
        format!(
            "SELECT max(n) FROM (SELECT (SELECT count(*) FROM jobs o WHERE o.tenant_id = j.tenant_id \
               AND o.started_at <= j.started_at AND o.finished_at > j.started_at) AS n \
             FROM jobs j WHERE j.tenant_id = '{tenant}') c"
        )
    };
    let capped = env.count(&most_at_once("capped")).await;
    assert_eq!(capped, 2, "at most 2 capped jobs ran at once, and 2 did");
    let free = env.count(&most_at_once("free")).await;
    assert!(free > 2, "the other tenant used the rest ({free} at once)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interactive_jobs_go_before_a_tenants_bulk_jobs() {
    let env = TestEnv::new("prefetch = 4").await;
    with_latency(&env, 20);
    let mut queued: Vec<serde_json::Value> = (0..300)
        .map(|i| {
            let mut job = env.job("acme", &format!("bulk-{i}"), 1);
            job["priority"] = "bulk".into();
            job
        })
        .collect();
    queued.extend((0..10).map(|i| {
        let mut job = env.job("acme", &format!("now-{i}"), 1);
        job["priority"] = "interactive".into();
        job
    }));
    env.publish_many(&queued).await;
    let (stop, worker) = env.start_worker();
    env.wait_until(60, "the interactive jobs done", || async {
        env.count("SELECT count(*) FROM jobs WHERE id LIKE 'now-%' AND state = 'succeeded'")
            .await
            == 10
    })
    .await;
    stop.cancel();
    worker.await.unwrap();
    let bulk_before = env
        .count(
            "SELECT count(*) FROM jobs WHERE id LIKE 'bulk-%' AND finished_at <= \
               (SELECT max(finished_at) FROM jobs WHERE id LIKE 'now-%')",
        )
        .await;
    assert!(
        bulk_before < 150,
        "the interactive jobs, queued last, ran before half the bulk ones ({bulk_before} done)"
    );
    assert_eq!(
        env.count("SELECT priority::int8 FROM jobs WHERE id = 'now-0'")
            .await,
        1
    );
}
