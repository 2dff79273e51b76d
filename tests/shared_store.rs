//! Several worker processes on one embedded vector store: the first to open it holds it and the
//! others reach it through the holder's socket, so every worker serves every kind and no delivery
//! goes back through a retry queue to find the holder; when the holder is killed another worker
//! takes the store over and every job still succeeds. Also the holder's socket within one process:
//! the shared suite through it, and a takeover when the holder closes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::sync::Arc;

use lapin::Connection;
use ragq::retrieval::embedded::holder_pid;
use ragq::retrieval::shared::{Placement, SharedStore};
use ragq::retrieval::{ChunkPoint, MetadataFilter, SearchQuery, VectorStore};
use serde_json::json;

use common::{spawn_worker_logging, terminate, TestEnv};

const COLLECTION: &str = "handbook";
const DIM: usize = 256;

#[tokio::test]
async fn a_second_opener_works_through_the_holder_and_takes_over_when_it_closes() {
    let dir = std::env::temp_dir().join(format!(
        "ragq-shared-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    ));
    let holder = SharedStore::new(&dir, 128);
    let held = holder.placement().await.unwrap();
    assert!(
        matches!(
            held,
            Placement::Holder {
                serving: Ok(()),
                ..
            }
        ),
        "{held:?}"
    );
    let other = Arc::new(SharedStore::new(&dir, 128));
    let reached = other.placement().await.unwrap();
    assert_eq!(
        reached,
        Placement::Client {
            socket: dir.join("holder.sock"),
            holder_pid: Some(std::process::id())
        }
    );
    let through = VectorStore::new(other.clone());
    through.ensure_collection("docs", DIM).await.unwrap();
    let text = "Refunds are paid within 14 days.";
    let chunks = vec![ChunkPoint {
        document_id: "refunds".into(),
        chunk_index: 0,
        text: text.into(),
        metadata: serde_json::Map::new(),
        vector: ragq_tools::sim::embed(text, DIM),
    }];
    through
        .replace_document("docs", "acme", "refunds", chunks)
        .await
        .unwrap();
    through.flush("docs").await.unwrap();
    let vector = ragq_tools::sim::embed("refunds", DIM);
    let filter = MetadataFilter::new();
    let query = SearchQuery {
        tenant: "acme",
        vector: &vector,
        top_k: 3,
        score_threshold: None,
        filter: &filter,
        exact: false,
    };
    let hits = through.search("docs", &query).await.unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].text, text);
    assert_eq!(
        through.count("docs", "globex").await.unwrap(),
        0,
        "tenants stay apart through the socket"
    );

    // The holder closes (as a process would die): the next operation takes the store over.
    drop(holder);
    assert_eq!(through.search("docs", &query).await.unwrap(), hits);
    assert!(matches!(
        other.placement().await.unwrap(),
        Placement::Holder { .. }
    ));
    drop(through);
    drop(other);
    let _ = std::fs::remove_dir_all(dir);
}

/// Ingests a small handbook for acme and waits for it.
async fn ingest_handbook(env: &TestEnv, conn: &Connection) {
    let docs = json!([
        {"id": "refunds", "text": "Refunds are paid within 14 days. ".repeat(40)},
        {"id": "holidays", "text": "Staff get 30 holiday days per year. ".repeat(40)},
        {"id": "export", "text": "Invoices are exported as CSV from the billing page. ".repeat(40)},
    ]);
    let job = json!({"id": "ingest-handbook", "tenant": "acme", "kind": "ingest",
                     "input": {"collection": COLLECTION, "documents": docs}});
    env.publish_job(conn, &job).await;
    env.wait_for_state("acme", "ingest-handbook", "succeeded", 60)
        .await;
}

async fn publish_questions(env: &TestEnv, conn: &Connection, prefix: &str, n: usize) {
    let questions = [
        "How long do refunds take?",
        "How many holiday days?",
        "How do I export invoices?",
    ];
    for i in 0..n {
        let job = json!({"id": format!("{prefix}-{i}"), "tenant": "acme", "kind": "rag.answer",
                         "input": {"collection": COLLECTION, "question": questions[i % 3], "top_k": 2}});
        env.publish_job(conn, &job).await;
    }
}

async fn succeeded(env: &TestEnv, prefix: &str) -> i64 {
    let count: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM jobs WHERE id LIKE $1 || '-%' AND state = 'succeeded'",
    )
    .bind(prefix)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    count
}

async fn wait_all_succeeded(env: &TestEnv, prefix: &str, n: usize) {
    env.wait_until(120, &format!("{n} {prefix} jobs succeeded"), || async {
        let failed = env
            .count("SELECT count(*) FROM jobs WHERE state = 'failed'")
            .await;
        assert_eq!(failed, 0, "no retrieval job fails");
        succeeded(env, prefix).await == n as i64
    })
    .await;
}

/// The `requests` the holder logged as served to other workers whose connection ended.
fn requests_served_to_others(log: &Path) -> u64 {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|l| {
            l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("stopped reaching the vector store"))
        })
        .filter_map(|l| l["fields"]["requests"].as_u64())
        .sum()
}

const LOG_FILTER: &str = "warn,ragq::retrieval::shared=info";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_answer_retrieval_jobs_without_passing_them_around() {
    let env = TestEnv::new("").await;
    let config = env.config_file();
    let logs = config.parent().unwrap().to_path_buf();
    let conn = env.amqp().await;

    // One worker: the baseline.
    let mut first = spawn_worker_logging(&config, LOG_FILTER, &logs.join("first.log"));
    ingest_handbook(&env, &conn).await;
    publish_questions(&env, &conn, "one", 200).await;
    wait_all_succeeded(&env, "one", 200).await;

    // Two workers: the second reaches the store through the first.
    let mut second = spawn_worker_logging(&config, LOG_FILTER, &logs.join("second.log"));
    let vectors = env.vectors_dir();
    assert_eq!(
        holder_pid(&vectors),
        first.id(),
        "the first worker holds the store"
    );
    publish_questions(&env, &conn, "two", 500).await;
    wait_all_succeeded(&env, "two", 500).await;
    let retried = env
        .count("SELECT count(*) FROM jobs WHERE attempts > 1")
        .await;
    assert_eq!(retried, 0, "every job ran once");

    // The second worker did answer retrieval jobs, through the holder.
    terminate(&mut second).await;
    let log = logs.join("first.log");
    env.wait_until(
        10,
        "the holder to log the second worker's requests",
        || async { requests_served_to_others(&log) > 0 },
    )
    .await;
    // Each of its rag.answer jobs searched once; it had some of the 500.
    let served = requests_served_to_others(&log);
    assert!((10..=500 * 2).contains(&served), "served {served} requests");
    first.start_kill().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_holder_loses_no_retrieval_job() {
    let env = TestEnv::new("").await;
    env.sim.set_options(ragq_tools::sim::SimOptions {
        latency_ms: 10,
        ..Default::default()
    });
    let config = env.config_file();
    let logs = config.parent().unwrap().to_path_buf();
    let conn = env.amqp().await;
    let mut workers = vec![
        spawn_worker_logging(&config, LOG_FILTER, &logs.join("a.log")),
        spawn_worker_logging(&config, LOG_FILTER, &logs.join("b.log")),
    ];
    ingest_handbook(&env, &conn).await;
    const JOBS: usize = 400;
    publish_questions(&env, &conn, "ask", JOBS).await;
    env.wait_until(60, "a fifth of the answers", || async {
        succeeded(&env, "ask").await >= (JOBS / 5) as i64
    })
    .await;

    let vectors = env.vectors_dir();
    let holder = holder_pid(&vectors).unwrap();
    let index = workers
        .iter()
        .position(|w| w.id() == Some(holder))
        .expect("a worker holds the store");
    let mut killed = workers.remove(index);
    killed.start_kill().unwrap();
    killed.wait().await.unwrap();
    let at_kill = succeeded(&env, "ask").await;
    assert!(
        at_kill < JOBS as i64,
        "the kill landed mid-run ({at_kill} done)"
    );

    wait_all_succeeded(&env, "ask", JOBS).await;
    let survivor = workers[0].id();
    assert_eq!(
        holder_pid(&vectors),
        survivor,
        "the surviving worker took the store over"
    );
    // The answers after the takeover cite the handbook, as before it.
    let cited: i64 = env
        .count("SELECT count(*) FROM jobs WHERE id LIKE 'ask-%' AND jsonb_array_length(result->'citations') > 0")
        .await;
    assert_eq!(cited, JOBS as i64);
    workers[0].start_kill().unwrap();
}
