//! A worker process killed with SIGKILL in the middle of a batch loses no job and books no call twice.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{HashMap, HashSet};
use std::process::Stdio;

use common::TestEnv;
use ragq::sim::SimOptions;

fn spawn_worker(config: &std::path::Path) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_ragq"))
        .arg("--config")
        .arg(config)
        .arg("worker")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("worker process starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_worker_loses_no_job_and_books_each_call_once() {
    let env = TestEnv::new("").await;
    env.sim.set_options(SimOptions {
        latency_ms: 30,
        ..SimOptions::default()
    });
    let dir = std::env::temp_dir().join(format!("ragq-crash-{}", env.db_name));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("ragq.toml");
    std::fs::write(&config, &env.config_toml).unwrap();

    const JOBS: usize = 60;
    const PROMPTS: usize = 3;
    let conn = env.amqp().await;
    for i in 0..JOBS {
        let job = env.job("acme", &format!("crash-{i}"), PROMPTS);
        env.publish_raw(
            &conn,
            "batch.complete",
            job.to_string().as_bytes(),
            Some("guest"),
        )
        .await;
    }

    let mut first = spawn_worker(&config);
    env.wait_until(30, "some jobs done", || async {
        env.count("SELECT count(*) FROM jobs WHERE state = 'succeeded'")
            .await
            >= 5
    })
    .await;
    first.start_kill().unwrap();
    first.wait().await.unwrap();
    let done_at_kill = env
        .count("SELECT count(*) FROM jobs WHERE state = 'succeeded'")
        .await;
    assert!(
        done_at_kill < JOBS as i64,
        "the kill landed mid-batch ({done_at_kill} done)"
    );

    let _second = spawn_worker(&config);
    env.wait_until(60, "every job finished", || async {
        env.count("SELECT count(*) FROM jobs WHERE state IN ('succeeded', 'failed')")
            .await
            == JOBS as i64
    })
    .await;
    assert_eq!(
        env.count("SELECT count(*) FROM jobs WHERE state = 'succeeded'")
            .await,
        JOBS as i64
    );
    let taken_over = env
        .count("SELECT count(*) FROM jobs WHERE attempts > 1")
        .await;
    assert!(
        taken_over > 0,
        "the kill interrupted running attempts, which were run again"
    );

    // Every booked call was really answered by the provider, and is booked once (unique key).
    let booked: Vec<(String, i32, i32)> =
        sqlx::query_as("SELECT job_id, attempt, call_index FROM provider_calls")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    let booked_ids: HashSet<String> = booked
        .iter()
        .map(|(j, a, c)| format!("acme/{j}/{a}/{c}"))
        .collect();
    assert_eq!(booked_ids.len(), booked.len());
    let answered: Vec<String> = env.sim.answered_call_ids();
    let answered_set: HashSet<&String> = answered.iter().collect();
    assert_eq!(
        answered_set.len(),
        answered.len(),
        "no call id was answered twice"
    );
    for id in &booked_ids {
        assert!(
            answered_set.contains(id),
            "booked call {id} was answered by the provider"
        );
    }
    // Each job's final attempt booked all its calls; calls answered but not booked belong only to
    // attempts cut short by the kill (their job ran again under a later attempt).
    let finals: HashMap<String, i32> =
        sqlx::query_as::<_, (String, i32)>("SELECT id, attempts FROM jobs")
            .fetch_all(&env.pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    for (job, attempt) in &finals {
        for c in 0..PROMPTS {
            assert!(
                booked_ids.contains(&format!("acme/{job}/{attempt}/{c}")),
                "{job} attempt {attempt} call {c} booked"
            );
        }
    }
    for id in answered.iter().filter(|id| !booked_ids.contains(*id)) {
        let parts: Vec<&str> = id.split('/').collect();
        let attempt: i32 = parts[2].parse().unwrap();
        assert!(
            attempt < finals[parts[1]],
            "unbooked call {id} belongs to an interrupted attempt"
        );
    }
    // Result totals agree with the ledger for the final attempts.
    let mismatched = env
        .count(
            "SELECT count(*) FROM jobs j WHERE (j.result->>'cost_micros')::int8 <> \
             (SELECT coalesce(sum(cost_micros), 0) FROM provider_calls p \
              WHERE p.job_id = j.id AND p.tenant_id = j.tenant_id AND p.attempt = j.attempts)",
        )
        .await;
    assert_eq!(mismatched, 0);
    let _ = std::fs::remove_dir_all(&dir);
}
