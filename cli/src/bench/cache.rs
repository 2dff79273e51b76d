//! `ragq bench --cache`: the same workload with the response cache off, exact and semantic, back
//! to back. Of the prompts, 30% repeat one of 200 FAQ questions word for word, 20% paraphrase one
//! (other case, punctuation and a filler word: the sim's embeddings put them at cosine 0.96), and
//! 50% are unique tickets. Reports what the cache is for: cost per 1,000 jobs, provider
//! calls, and what a job costs the worker.

use ragq_tools::stack::StackUrls;
use serde::Serialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{bench_file, drain, say, setup, BenchArgs, BenchReport, JobBody};

/// One mode's run.
#[derive(Debug, Serialize)]
pub struct CacheRun {
    pub mode: &'static str,
    pub jobs: usize,
    pub cost_usd_per_1000_jobs: f64,
    pub saved_usd_per_1000_jobs: f64,
    pub chat_calls: i64,
    pub embedding_calls: i64,
    pub exact_hits: i64,
    pub semantic_hits: i64,
    pub jobs_per_sec: f64,
    pub in_worker_ms_p50: f64,
    pub in_worker_ms_p99: f64,
    /// In-worker time of the jobs the cache answered, and of the others.
    pub hit_ms_p50: f64,
    pub hit_ms_p99: f64,
    pub miss_ms_p50: f64,
    pub miss_ms_p99: f64,
    pub worker_cpu_us_per_job: f64,
    pub ok: bool,
}

const MODES: [&str; 3] = ["off", "exact", "semantic"];

pub async fn run(args: &BenchArgs, cancel: &CancellationToken) -> anyhow::Result<()> {
    let mut runs = Vec::new();
    for mode in MODES {
        say(args, format_args!("cache {mode}: {} jobs", args.jobs));
        runs.push(one_run(args, mode, cancel).await?);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&runs)?);
    } else {
        print_table(args, &runs);
    }
    cancel.cancel();
    let broken: Vec<&str> = runs.iter().filter(|r| !r.ok).map(|r| r.mode).collect();
    anyhow::ensure!(
        broken.is_empty(),
        "correctness check failed with the cache {broken:?}"
    );
    Ok(())
}

async fn one_run(
    args: &BenchArgs,
    mode: &'static str,
    cancel: &CancellationToken,
) -> anyhow::Result<CacheRun> {
    let config = move |urls: &StackUrls, sim: &str, prefetch: u16| {
        let file = bench_file(urls, sim, prefetch);
        match mode {
            "off" => file,
            _ => file
                .set("policies.cost-optimized.cache.mode", mode)
                .set("policies.cost-optimized.cache.min_similarity", 0.9),
        }
        .render()
    };
    let mut setup = setup(args, cancel, &config).await?;
    setup.bodies = bodies(args, &setup.receiver.url());
    let report = drain(args, &mut setup, cancel).await?;
    let pool = &setup.stack.pool;
    let (cost, saved, chat, embed, exact, semantic): (i64, i64, i64, i64, i64, i64) = sqlx::query_as(
        "SELECT coalesce(sum(cost_micros), 0)::int8, coalesce(sum(saved_micros), 0)::int8, \
           count(*) FILTER (WHERE cache_hit IS NULL AND NOT tags ? 'cache_lookup'), \
           count(*) FILTER (WHERE tags ? 'cache_lookup'), \
           count(*) FILTER (WHERE cache_hit = 'exact'), count(*) FILTER (WHERE cache_hit = 'semantic') \
         FROM provider_calls",
    )
    .fetch_one(pool)
    .await?;
    let (hit_ms_p50, hit_ms_p99, miss_ms_p50, miss_ms_p99): (f64, f64, f64, f64) = sqlx::query_as(
        "SELECT coalesce(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) FILTER (WHERE hit), 0)::float8, \
           coalesce(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms) FILTER (WHERE hit), 0)::float8, \
           coalesce(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) FILTER (WHERE NOT hit), 0)::float8, \
           coalesce(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms) FILTER (WHERE NOT hit), 0)::float8 \
         FROM (SELECT extract(epoch FROM finished_at - started_at) * 1000 AS ms, \
                 result->'completions'->0 ? 'cache' AS hit FROM jobs WHERE state = 'succeeded') j",
    )
    .fetch_one(pool)
    .await?;
    let per_1000 = |micros: i64| micros as f64 / 1e6 * 1000.0 / args.jobs as f64;
    Ok(CacheRun {
        mode,
        jobs: args.jobs,
        cost_usd_per_1000_jobs: per_1000(cost),
        saved_usd_per_1000_jobs: per_1000(saved),
        chat_calls: chat,
        embedding_calls: embed,
        exact_hits: exact,
        semantic_hits: semantic,
        hit_ms_p50,
        hit_ms_p99,
        miss_ms_p50,
        miss_ms_p99,
        ..from(&report, mode)
    })
}

fn from(r: &BenchReport, mode: &'static str) -> CacheRun {
    CacheRun {
        mode,
        jobs: r.jobs,
        cost_usd_per_1000_jobs: 0.0,
        saved_usd_per_1000_jobs: 0.0,
        chat_calls: 0,
        embedding_calls: 0,
        exact_hits: 0,
        semantic_hits: 0,
        jobs_per_sec: r.jobs_per_sec,
        in_worker_ms_p50: r.in_worker_ms_p50,
        in_worker_ms_p99: r.in_worker_ms_p99,
        hit_ms_p50: 0.0,
        hit_ms_p99: 0.0,
        miss_ms_p50: 0.0,
        miss_ms_p99: 0.0,
        worker_cpu_us_per_job: r.worker_cpu_us_per_job,
        ok: r.correctness.ok,
    }
}

const FILLERS: [&str; 10] = [
    "please", "quickly", "kindly", "today", "again", "exactly", "honestly", "briefly", "now",
    "simply",
];
/// Distinct FAQ questions.
const POOL: usize = 200;

/// FAQ question `n`: the sim embeds words, so each question has three words of its own and no
/// two are paraphrases of each other (cosine 0.75 at most).
fn question(n: usize) -> String {
    format!(
        "What does error code E{n:04} mean in module M{} on release R{}?",
        n * 7 % 97,
        n * 13 % 89
    )
}

/// Prompt `i` of the workload: 3 in 10 repeat a question, 2 in 10 paraphrase one, the rest are
/// unique.
pub fn prompt(i: usize) -> String {
    let n = (i / 10) % POOL;
    let filler = FILLERS[(i / 10 / POOL + i) % FILLERS.len()];
    match i % 10 {
        0..=2 => question(n),
        3 => format!(
            "{filler} {}",
            question(n).to_lowercase().trim_end_matches('?')
        ),
        4 => format!("{}, {filler}", question(n).trim_end_matches('?')),
        _ => format!(
            "Ticket {i}: customer {} says order {} arrived damaged",
            i * 7919 % 100_000,
            i * 104_729 % 1_000_000
        ),
    }
}

fn bodies(args: &BenchArgs, hook: &str) -> Vec<JobBody> {
    (0..args.jobs)
        .map(|i| {
            let id = format!("bench-{i}");
            let body = json!({
                "id": id, "tenant": format!("tenant-{:04}", i % args.tenants),
                "kind": "batch.complete", "webhook_url": hook,
                "input": {"prompts": [{"prompt": prompt(i)}], "max_tokens": 64},
                "tags": {"feature": "bench", "plan": "pro"}
            });
            JobBody {
                id,
                kind: "batch.complete",
                body: body.to_string().into_bytes(),
            }
        })
        .collect()
}

fn print_table(args: &BenchArgs, runs: &[CacheRun]) {
    println!(
        "\n== ragq bench --cache: {} jobs each, {} workers, {} tenants, provider latency {} ms",
        args.jobs, args.workers, args.tenants, args.latency_ms
    );
    let head = [
        "$/1000 jobs",
        "saved $",
        "chat",
        "embed",
        "exact",
        "semantic",
        "jobs/s",
        "all ms p50/p99",
        "hit ms p50/p99",
        "miss ms p50/p99",
        "CPU us",
    ];
    println!(
        "{:<9}{}",
        "cache",
        head.map(|h| format!("{h:>16}")).join("")
    );
    let pair = |a: f64, b: f64| format!("{a:.1} / {b:.1}");
    for r in runs {
        let cells = [
            format!("{:.4}", r.cost_usd_per_1000_jobs),
            format!("{:.4}", r.saved_usd_per_1000_jobs),
            r.chat_calls.to_string(),
            r.embedding_calls.to_string(),
            r.exact_hits.to_string(),
            r.semantic_hits.to_string(),
            format!("{:.0}", r.jobs_per_sec),
            pair(r.in_worker_ms_p50, r.in_worker_ms_p99),
            pair(r.hit_ms_p50, r.hit_ms_p99),
            pair(r.miss_ms_p50, r.miss_ms_p99),
            format!("{:.0}", r.worker_cpu_us_per_job),
        ];
        println!(
            "{:<9}{}",
            r.mode,
            cells.map(|c| format!("{c:>16}")).join("")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workload_repeats_three_in_ten_and_paraphrases_two() {
        let prompts: Vec<String> = (0..2000).map(prompt).collect();
        let pool: std::collections::HashSet<String> = (0..POOL).map(question).collect();
        let repeats = prompts.iter().filter(|p| pool.contains(*p)).count();
        assert_eq!(repeats, 600);
        let similar = |a: &str, b: &str| {
            let (a, b) = (
                ragq_tools::sim::embed(a, 256),
                ragq_tools::sim::embed(b, 256),
            );
            a.iter().zip(&b).map(|(x, y)| x * y).sum::<f32>()
        };
        for i in [3, 4, 13, 14, 1003, 1994] {
            let s = similar(&prompts[i], &question((i / 10) % POOL));
            assert!(s >= 0.9, "paraphrase {i} `{}`: {s}", prompts[i]);
        }
        assert!(
            similar(&prompts[5], &prompts[6]) < 0.9,
            "tickets are not paraphrases"
        );
        assert!(
            similar(&question(0), &question(1)) < 0.9,
            "nor are two questions"
        );
    }
}
