//! Process faults on the job path: a worker killed with SIGKILL mid-batch, a worker stopped with
//! SIGTERM mid-batch, and RabbitMQ dropping every connection. Nothing is lost, nothing booked twice.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{spawn_worker_process, TestEnv};
use ragq_tools::sim::SimOptions;

const PROMPTS: usize = 3;

fn with_latency(env: &TestEnv, ms: u64) {
    env.sim.set_options(SimOptions {
        latency_ms: ms,
        ..SimOptions::default()
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_worker_loses_no_job_and_books_each_call_once() {
    // Intents of the killed worker are booked a second after it dies.
    let env = TestEnv::with_sections(
        "",
        "[spend]\nreservation_ttl_ms = 1000\nmaintenance_interval_ms = 200\n",
    )
    .await;
    // Calls long enough that a kill seen to follow a recorded intent lands before its booking.
    with_latency(&env, 150);
    let config = env.config_file();
    const JOBS: i64 = 60;
    env.publish_jobs("crash", JOBS as usize, PROMPTS).await;

    let mut first = spawn_worker_process(&config);
    // Kill while calls are in flight (their intents recorded, not yet booked), so that some
    // attempts are run again. A job merely marked running may still be waiting for its admission
    // or its finish, with no call in flight: that is not the moment this test is about.
    env.wait_until(30, "some jobs done and calls in flight", || async {
        env.finished_jobs().await >= 5 && env.count("SELECT count(*) FROM call_intents").await > 0
    })
    .await;
    first.start_kill().unwrap();
    first.wait().await.unwrap();
    // Postgres finishes whatever the dead worker had sent it, then its backends notice the closed
    // sockets and exit: wait for that instead of for a fixed time.
    env.wait_until(10, "the dead worker's sessions to end", || async {
        env.count(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND pid <> pg_backend_pid() AND state IN ('active', 'idle in transaction')",
        )
        .await
            == 0
    })
    .await;
    let done_at_kill = env.finished_jobs().await;
    assert!(
        done_at_kill < JOBS,
        "the kill landed mid-batch ({done_at_kill} done)"
    );
    let intents_at_kill = env.count("SELECT count(*) FROM call_intents").await;
    assert!(
        intents_at_kill > 0,
        "the kill cut calls in flight, whose intents are left"
    );

    let _second = spawn_worker_process(&config);
    env.wait_until(60, "every job finished", || async {
        env.finished_jobs().await == JOBS
    })
    .await;
    assert_eq!(
        env.count("SELECT count(*) FROM jobs WHERE state = 'succeeded'")
            .await,
        JOBS
    );
    assert!(
        env.count("SELECT count(*) FROM jobs WHERE attempts > 1")
            .await
            > 0,
        "the kill interrupted running attempts, which were run again"
    );
    let audit = env.assert_ledger_consistent(PROMPTS).await;
    assert_eq!(
        i64::try_from(audit.estimated_calls).unwrap(),
        intents_at_kill,
        "each call cut by the kill is booked once, at its worst case: {audit:#?}"
    );
    assert_eq!(
        env.count("SELECT count(*) FROM provider_calls WHERE estimated AND cost_micros = 0")
            .await,
        0,
        "an estimate carries the call's worst-case cost"
    );
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_jobs_and_leaves_the_rest_queued() {
    let env = TestEnv::new("").await;
    // Each job takes at least 200 ms; prefetch is 32, so most of the 80 jobs wait in the queue.
    with_latency(&env, 200);
    let config = env.config_file();
    const JOBS: i64 = 80;
    env.publish_jobs("term", JOBS as usize, PROMPTS).await;

    let mut first = spawn_worker_process(&config);
    env.wait_until(30, "jobs running", || async {
        env.count("SELECT count(*) FROM jobs WHERE state = 'running'")
            .await
            > 0
    })
    .await;
    let pid = first.id().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    // Well inside the 5 s shutdown grace of the test config: the worker drains and exits by itself.
    let status = tokio::time::timeout(Duration::from_secs(4), first.wait())
        .await
        .expect("worker exits after draining, within its grace period")
        .unwrap();
    assert!(status.success(), "clean exit: {status:?}");
    assert_eq!(
        env.count("SELECT count(*) FROM jobs WHERE state = 'running'")
            .await,
        0,
        "every job that was running when SIGTERM came was finished"
    );
    let done_at_stop = env.finished_jobs().await;
    assert!(
        done_at_stop > 0 && done_at_stop < JOBS,
        "stopped mid-batch ({done_at_stop} done)"
    );

    let _second = spawn_worker_process(&config);
    env.wait_until(60, "every job finished", || async {
        env.finished_jobs().await == JOBS
    })
    .await;
    assert_eq!(
        env.count("SELECT count(*) FROM jobs WHERE attempts <> 1")
            .await,
        0,
        "a graceful stop interrupts no attempt: every job ran exactly once"
    );
    assert_eq!(
        env.sim.counts().1,
        (JOBS as u64) * PROMPTS as u64,
        "no call was made twice"
    );
    env.assert_ledger_consistent(PROMPTS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_reconnects_when_rabbitmq_drops_its_connections() {
    let env = TestEnv::new("").await;
    // rabbitmqctl needs a second or two to start; 160 jobs at 1 s each, 32 at a time, outlast it.
    with_latency(&env, 1000);
    const JOBS: i64 = 160;
    env.publish_jobs("drop", JOBS as usize, PROMPTS).await;
    let (_stop, _worker) = env.start_worker();
    env.wait_until(30, "some jobs done", || async {
        env.finished_jobs().await >= 3
    })
    .await;
    common::rabbitmqctl(&[
        "close_all_connections",
        "--vhost",
        &env.vhost,
        "test: connection loss",
    ]);
    let done_at_drop = env.finished_jobs().await;
    assert!(
        done_at_drop < JOBS,
        "dropped mid-batch ({done_at_drop} done)"
    );

    env.wait_until(60, "every job finished after reconnecting", || async {
        env.finished_jobs().await == JOBS
    })
    .await;
    assert_eq!(
        env.count("SELECT count(*) FROM jobs WHERE state = 'succeeded'")
            .await,
        JOBS
    );
    env.assert_ledger_consistent(PROMPTS).await;
}
