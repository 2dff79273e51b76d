//! Cron pipelines against the real Postgres and RabbitMQ, on an injected clock: exactly-once slots
//! with a leader killed at random, missed-run and overlap policies, daylight-saving days, and the
//! HTTP and process path end to end.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, TimeZone, Utc};
use common::TestEnv;
use lapin::options::{BasicAckOptions, BasicGetOptions};
use ragq::queue::publisher::ReconnectingPublisher;
use ragq::scheduler::clock::{Clock, ManualClock};
use ragq::scheduler::pipeline::{self, Missed, Overlap, PipelineSpec};
use ragq::scheduler::{Scheduler, SchedulerConfig};
use rand::Rng;
use serde_json::json;

fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
}

fn spec(
    name: &str,
    cron: &str,
    tz: &str,
    overlap: Overlap,
    missed: Missed,
    limit: i32,
) -> PipelineSpec {
    PipelineSpec {
        name: name.into(),
        cron: cron.into(),
        time_zone: tz.into(),
        job_template: json!({
            "kind": "batch.complete",
            "input": {"prompts": [{"prompt": "Summarise the tickets of {{scheduled_date}}"}]},
            "tags": {"feature": "nightly"}
        }),
        enabled: true,
        overlap,
        missed,
        missed_limit: limit,
        starting_deadline_secs: None,
    }
}

fn scheduler(env: &TestEnv, clock: &Arc<ManualClock>) -> Scheduler {
    scheduler_on(env, clock, env.pool.clone())
}

fn scheduler_on(env: &TestEnv, clock: &Arc<ManualClock>, pool: sqlx::PgPool) -> Scheduler {
    let publisher = Arc::new(ReconnectingPublisher::new(
        env.cfg.queue.clone(),
        "test-scheduler",
    ));
    let cfg = SchedulerConfig {
        tick: StdDuration::from_millis(100),
        lease_ttl: Duration::seconds(10),
        pipelines: env.cfg.scheduler.pipelines,
    };
    Scheduler::new(pool, publisher, clock.clone(), cfg)
}

/// A replica as a process would be: its own connections, which die with it.
struct Replica {
    scheduler: Scheduler,
    pool: sqlx::PgPool,
}

async fn replica(env: &TestEnv, clock: &Arc<ManualClock>) -> Replica {
    let mut db = env.cfg.database.clone();
    db.max_connections = 3;
    let pool = ragq::db::connect(&db).await.unwrap();
    Replica {
        scheduler: scheduler_on(env, clock, pool.clone()),
        pool,
    }
}

async fn create(env: &TestEnv, spec: &PipelineSpec, now: DateTime<Utc>) {
    pipeline::create(
        &env.pool,
        &ragq::audit::Actor::cli(),
        "acme",
        spec,
        now,
        &env.cfg.scheduler.pipelines,
    )
    .await
    .unwrap();
}

/// Scheduled times of a pipeline's runs in `state`.
async fn runs(env: &TestEnv, name: &str, state: &str) -> Vec<DateTime<Utc>> {
    sqlx::query_scalar(
        "SELECT r.scheduled_at FROM pipeline_runs r JOIN pipelines p ON p.id = r.pipeline_id \
         WHERE p.name = $1 AND r.state = $2 ORDER BY 1",
    )
    .bind(name)
    .bind(state)
    .fetch_all(&env.pool)
    .await
    .unwrap()
}

/// Message ids of everything in `ragq.jobs`, drained.
async fn drain_jobs_queue(env: &TestEnv) -> Vec<String> {
    let conn = env.amqp().await;
    let ch = conn.create_channel().await.unwrap();
    let mut ids = Vec::new();
    while let Some(m) = ch
        .basic_get("ragq.jobs".into(), BasicGetOptions::default())
        .await
        .unwrap()
    {
        ids.push(
            m.delivery
                .properties
                .message_id()
                .as_ref()
                .map(|s| s.to_string())
                .unwrap_or_default(),
        );
        m.delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .unwrap();
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_schedulers_with_the_leader_killed_at_random_fire_every_slot_once() {
    let env = TestEnv::new("").await;
    let clock = Arc::new(ManualClock::new(
        utc(2026, 11, 25, 0, 0) + Duration::seconds(30),
    ));
    // run_all: slots a dead leader left behind are fired by the next one, not skipped.
    create(
        &env,
        &spec(
            "every-minute",
            "* * * * *",
            "UTC",
            Overlap::Allow,
            Missed::RunAll,
            10,
        ),
        clock.now(),
    )
    .await;
    let mut replicas = vec![replica(&env, &clock).await, replica(&env, &clock).await];
    let mut kills = 0;
    const STEPS: usize = 120;
    for _ in 0..STEPS {
        clock.advance(Duration::seconds(60));
        let mut handles = Vec::new();
        let pools: Vec<sqlx::PgPool> = replicas.iter().map(|r| r.pool.clone()).collect();
        for r in replicas.drain(..) {
            handles.push(tokio::spawn(async move {
                let _ = r.scheduler.tick().await;
                r
            }));
        }
        // Now and then, kill one replica at a random instant of its tick (it may hold the lease,
        // be mid-transaction, or be publishing): its task stops and its connections close, as a
        // crashed process's do; a fresh replica takes its place.
        let victim = rand::thread_rng().gen_range(0..6);
        if victim < 2 {
            tokio::time::sleep(StdDuration::from_micros(
                rand::thread_rng().gen_range(0..8_000),
            ))
            .await;
            handles[victim].abort();
            kills += 1;
        }
        let mut dead = Vec::new();
        for (h, pool) in handles.into_iter().zip(pools) {
            match h.await {
                Ok(r) => replicas.push(r),
                Err(_) => {
                    tokio::time::timeout(StdDuration::from_secs(5), pool.close())
                        .await
                        .expect("a dead replica's connections close");
                    dead.push(replica(&env, &clock).await);
                }
            }
        }
        replicas.extend(dead);
    }
    // The survivors catch up on what the last kills left (the lease of a dead leader expires).
    clock.advance(Duration::seconds(11));
    for r in &replicas {
        r.scheduler.tick().await.unwrap();
    }
    assert!(kills > 10, "the test killed replicas ({kills})");

    let expected: Vec<DateTime<Utc>> = (1..=STEPS as i64)
        .map(|m| utc(2026, 11, 25, 0, 0) + Duration::minutes(m))
        .collect();
    assert_eq!(
        runs(&env, "every-minute", "enqueued").await,
        expected,
        "every slot ran, once"
    );
    assert_eq!(
        env.count("SELECT count(*) FROM jobs WHERE state = 'queued'")
            .await,
        STEPS as i64
    );
    assert_eq!(
        env.count("SELECT count(*) FROM outbox").await,
        0,
        "everything was published"
    );
    let published = drain_jobs_queue(&env).await;
    let mut per_job: HashMap<&str, usize> = HashMap::new();
    for id in &published {
        *per_job.entry(id.as_str()).or_default() += 1;
    }
    let job_ids: Vec<String> = sqlx::query_scalar("SELECT id FROM jobs")
        .fetch_all(&env.pool)
        .await
        .unwrap();
    for id in &job_ids {
        assert!(per_job.contains_key(id.as_str()), "job {id} was published");
    }
    assert_eq!(
        per_job.len(),
        STEPS,
        "no message for a job that does not exist"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_downtime_each_missed_run_policy_does_what_it_says() {
    let env = TestEnv::new("").await;
    let clock = Arc::new(ManualClock::new(utc(2026, 11, 25, 0, 30)));
    let hourly =
        |name: &str, missed, limit| spec(name, "0 * * * *", "UTC", Overlap::Allow, missed, limit);
    create(&env, &hourly("skip", Missed::Skip, 10), clock.now()).await;
    create(&env, &hourly("once", Missed::RunOnce, 10), clock.now()).await;
    create(&env, &hourly("all", Missed::RunAll, 3), clock.now()).await;
    let mut late = hourly("late", Missed::RunOnce, 10);
    late.starting_deadline_secs = Some(600);
    create(&env, &late, clock.now()).await;
    // Every second for a day: 86,400 missed slots must not flood the queue or hold up the others.
    create(
        &env,
        &spec(
            "flood",
            "* * * * * *",
            "UTC",
            Overlap::Allow,
            Missed::RunAll,
            5,
        ),
        clock.now(),
    )
    .await;

    clock.set(utc(2026, 11, 26, 5, 30));
    let report = scheduler(&env, &clock).tick().await.unwrap();
    assert!(report.leader);
    assert!(
        runs(&env, "skip", "enqueued").await.is_empty(),
        "05:00 is 30 minutes late"
    );
    assert_eq!(
        runs(&env, "once", "enqueued").await,
        vec![utc(2026, 11, 26, 5, 0)]
    );
    assert_eq!(
        runs(&env, "all", "enqueued").await,
        vec![
            utc(2026, 11, 26, 3, 0),
            utc(2026, 11, 26, 4, 0),
            utc(2026, 11, 26, 5, 0)
        ]
    );
    assert!(
        runs(&env, "late", "enqueued").await.is_empty(),
        "past its 10-minute deadline"
    );
    let flood = runs(&env, "flood", "enqueued").await;
    assert_eq!(flood.len(), 5);
    assert_eq!(flood.last(), Some(&utc(2026, 11, 26, 5, 30)));
    assert_eq!(report.runs, 1 + 3 + 5);
    assert_eq!(
        drain_jobs_queue(&env).await.len(),
        9,
        "only the fired runs were published"
    );
    let next: Vec<DateTime<Utc>> = sqlx::query_scalar(
        "SELECT next_fire_at FROM pipelines WHERE name <> 'flood' ORDER BY name",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert!(
        next.iter().all(|n| *n == utc(2026, 11, 26, 6, 0)),
        "{next:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlap_policies_allow_forbid_and_replace() {
    let env = TestEnv::new("").await;
    let clock = Arc::new(ManualClock::new(
        utc(2026, 11, 25, 0, 0) + Duration::seconds(30),
    ));
    for (name, overlap) in [
        ("allow", Overlap::Allow),
        ("forbid", Overlap::Forbid),
        ("replace", Overlap::Replace),
    ] {
        create(
            &env,
            &spec(name, "* * * * *", "UTC", overlap, Missed::RunOnce, 10),
            clock.now(),
        )
        .await;
    }
    let s = scheduler(&env, &clock);
    // No worker runs, so each first run's job stays queued (unfinished) when the next slot comes.
    for _ in 0..2 {
        clock.advance(Duration::seconds(60));
        s.tick().await.unwrap();
    }
    assert_eq!(runs(&env, "allow", "enqueued").await.len(), 2);
    assert_eq!(runs(&env, "forbid", "enqueued").await.len(), 1);
    let reason: String =
        sqlx::query_scalar("SELECT reason FROM pipeline_runs WHERE state = 'skipped'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert!(reason.contains("still queued"), "{reason}");
    assert_eq!(runs(&env, "replace", "enqueued").await.len(), 2);
    let replaced: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT id, state, error_code FROM jobs WHERE id LIKE 'pl:replace:%' ORDER BY id",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(replaced[0].1, "failed");
    assert_eq!(replaced[0].2.as_deref(), Some("replaced"));
    assert_eq!(replaced[1].1, "queued");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daylight_saving_days_in_berlin_fire_each_night_once() {
    let env = TestEnv::new("").await;
    let clock = Arc::new(ManualClock::new(utc(2026, 3, 27, 12, 0)));
    create(
        &env,
        &spec(
            "nightly",
            "30 2 * * *",
            "Europe/Berlin",
            Overlap::Allow,
            Missed::RunAll,
            10,
        ),
        clock.now(),
    )
    .await;
    let s = scheduler(&env, &clock);
    let walk = |until: DateTime<Utc>| {
        let clock = clock.clone();
        let s = &s;
        async move {
            while clock.now() < until {
                clock.advance(Duration::minutes(15));
                s.tick().await.unwrap();
            }
        }
    };
    walk(utc(2026, 3, 31, 0, 0)).await;
    clock.set(utc(2026, 10, 23, 12, 0));
    pipeline::set_enabled(
        &env.pool,
        &ragq::audit::Actor::cli(),
        "acme",
        "nightly",
        false,
        clock.now(),
    )
    .await
    .unwrap();
    pipeline::set_enabled(
        &env.pool,
        &ragq::audit::Actor::cli(),
        "acme",
        "nightly",
        true,
        clock.now(),
    )
    .await
    .unwrap();
    walk(utc(2026, 10, 27, 0, 0)).await;
    let got: BTreeSet<DateTime<Utc>> = runs(&env, "nightly", "enqueued")
        .await
        .into_iter()
        .collect();
    let want: BTreeSet<DateTime<Utc>> = [
        utc(2026, 3, 28, 1, 30),  // 02:30 CET
        utc(2026, 3, 29, 1, 30),  // no 02:30 that night: 03:30 CEST, shifted by the gap
        utc(2026, 3, 30, 0, 30),  // 02:30 CEST
        utc(2026, 10, 24, 0, 30), // 02:30 CEST
        utc(2026, 10, 25, 0, 30), // 02:30 happens twice that night: the first, once
        utc(2026, 10, 26, 1, 30), // 02:30 CET
    ]
    .into_iter()
    .collect();
    assert_eq!(got, want);
    let prompt: String = sqlx::query_scalar("SELECT input->'prompts'->0->>'prompt' FROM jobs WHERE id = 'pl:nightly:20260329T013000.000Z'")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(
        prompt, "Summarise the tickets of 2026-03-29",
        "the date is Berlin's"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_over_http_refuse_bad_input_and_run_through_a_scheduler_process() {
    let env = TestEnv::with_sections("", "[scheduler]\ntick_ms = 100\nlease_ttl_ms = 1000\n").await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let cfg = env.api_config();
    let app = ragq::api::router(&cfg.api, &cfg.queue, env.pool.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let http = reqwest::Client::new();
    let key = env.api_key("acme");
    let post = |path: &str, body: serde_json::Value| {
        http.post(format!("{base}{path}"))
            .bearer_auth(&key)
            .json(&body)
            .send()
    };
    let good = json!({
        "name": "every-second", "cron": "* * * * * *", "time_zone": "Europe/Lisbon",
        "job_template": {"kind": "batch.complete", "webhook_url": env.hook_url,
                         "input": {"prompts": [{"prompt": "status at {{scheduled_time}}"}]}}
    });
    for (change, status, says) in [
        (json!({"cron": "61 * * * *"}), 400, "61 * * * *"),
        (json!({"cron": "* * *"}), 400, "3 fields"),
        (json!({"time_zone": "Mars/Olympus"}), 400, "Mars/Olympus"),
        (
            json!({"job_template": {"kind": "batch.complete", "input": {"prompts": []}}}),
            400,
            "prompts",
        ),
        (json!({"name": "has space"}), 400, "name"),
        (json!({"overlap": "sometimes"}), 400, "overlap"),
    ] {
        let mut body = good.clone();
        for (k, v) in change.as_object().unwrap() {
            body[k] = v.clone();
        }
        let resp = post("/v1/pipelines", body).await.unwrap();
        assert_eq!(resp.status().as_u16(), status);
        let text = resp.text().await.unwrap();
        assert!(text.contains(says), "{text} should name {says}");
    }
    assert_eq!(env.count("SELECT count(*) FROM pipelines").await, 0);
    assert_eq!(
        post("/v1/pipelines", good.clone())
            .await
            .unwrap()
            .status()
            .as_u16(),
        201
    );
    assert_eq!(
        post("/v1/pipelines", good.clone())
            .await
            .unwrap()
            .status()
            .as_u16(),
        409
    );
    let listed: serde_json::Value = http
        .get(format!("{base}/v1/pipelines"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed[0]["name"], "every-second");
    assert!(listed[0]["next_fire_at"].is_string());

    // A real `ragq scheduler` process and a worker: runs happen every second and their jobs succeed.
    let config = env.config_file();
    let mut scheduler = tokio::process::Command::new(env!("CARGO_BIN_EXE_ragq"))
        .arg("--config")
        .arg(&config)
        .arg("scheduler")
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let (_stop, _worker) = env.start_worker();
    env.wait_until(30, "three scheduled jobs succeeded", || async {
        env.count(
            "SELECT count(*) FROM jobs WHERE state = 'succeeded' AND id LIKE 'pl:every-second:2%'",
        )
        .await
            >= 3
    })
    .await;
    let paused = post("/v1/pipelines/every-second/pause", json!({}))
        .await
        .unwrap();
    assert_eq!(paused.status().as_u16(), 200);
    let triggered: serde_json::Value = post("/v1/pipelines/every-second/trigger", json!({}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let job = triggered["job_id"].as_str().unwrap().to_string();
    assert!(job.contains(":manual:"), "{job}");
    env.wait_until(20, "triggered job succeeded", || async {
        env.job_state("acme", &job).await.as_deref() == Some("succeeded")
    })
    .await;
    let history: serde_json::Value = http
        .get(format!("{base}/v1/pipelines/every-second/runs"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(history
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["trigger"] == "manual" && r["job_state"] == "succeeded"));
    let other: serde_json::Value = http
        .get(format!("{base}/v1/pipelines"))
        .bearer_auth(env.api_key("globex"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(other, json!([]), "another tenant sees none of them");
    scheduler.start_kill().unwrap();
}
