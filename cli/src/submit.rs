//! `ragq submit`: publish jobs from a JSONL file (or one `--job`) with confirms and a progress bar,
//! optionally waiting until every job has an outcome.

use std::path::PathBuf;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use tokio::io::AsyncBufReadExt;
use tokio_util::sync::CancellationToken;

use ragq::config::Config;
use ragq::jobs::JobMessage;
use ragq::queue::publisher::{OutgoingJob, ReconnectingPublisher};

/// Publishes awaiting the broker's confirm at once.
const PUBLISH_WINDOW: usize = 256;

#[derive(Debug, clap::Args)]
pub struct SubmitArgs {
    /// JSONL file of job messages, one per line; `-` reads stdin.
    pub file: Option<PathBuf>,
    /// One job message as JSON, instead of a file.
    #[arg(long, conflicts_with = "file")]
    pub job: Option<String>,
    /// Wait until every submitted job has succeeded or failed.
    #[arg(long)]
    pub wait: bool,
    /// Give up waiting after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout_secs: u64,
}

/// Reads and validates all jobs first, so a bad line is reported (with its number) before anything
/// is published.
async fn read_jobs(
    args: &SubmitArgs,
    max_bytes: usize,
) -> anyhow::Result<Vec<(JobMessage, Vec<u8>)>> {
    let mut lines = Vec::new();
    match (&args.job, &args.file) {
        (Some(job), _) => lines.push(job.clone()),
        (None, Some(path)) if path.as_os_str() == "-" => {
            let mut reader = tokio::io::BufReader::new(tokio::io::stdin()).lines();
            while let Some(line) = reader.next_line().await? {
                lines.push(line);
            }
        }
        (None, Some(path)) => {
            let text = tokio::fs::read_to_string(path)
                .await
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
            lines.extend(text.lines().map(str::to_string));
        }
        (None, None) => anyhow::bail!("give a JSONL file, `-` for stdin, or --job '<json>'"),
    }
    let mut jobs = Vec::new();
    for (n, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let job = JobMessage::parse(line.as_bytes(), max_bytes)
            .map_err(|e| anyhow::anyhow!("line {}: {e}", n + 1))?;
        jobs.push((job, line.as_bytes().to_vec()));
    }
    Ok(jobs)
}

pub async fn run(cfg: &Config, args: SubmitArgs, cancel: CancellationToken) -> anyhow::Result<()> {
    let jobs = read_jobs(&args, cfg.queue.max_message_bytes).await?;
    let publisher = ReconnectingPublisher::new(cfg.queue.clone(), "ragq-submit");
    let bar = progress(jobs.len() as u64, "published");
    let outgoing: Vec<OutgoingJob<'_>> = jobs
        .iter()
        .map(|(job, body)| OutgoingJob {
            kind: job.kind.as_str(),
            id: &job.id,
            body,
            traceparent: None,
        })
        .collect();
    tokio::select! {
        published = publisher.publish_jobs(&outgoing, PUBLISH_WINDOW, || bar.inc(1)) => published?,
        _ = cancel.cancelled() => anyhow::bail!(
            "interrupted after {} of {} jobs were confirmed; submitting the file again is safe",
            bar.position(),
            jobs.len()
        ),
    }
    bar.finish();
    if args.wait {
        let pool = ragq::db::connect(&cfg.database).await?;
        let keys: Vec<(String, String)> = jobs
            .iter()
            .map(|(j, _)| (j.tenant.clone(), j.id.clone()))
            .collect();
        let (succeeded, failed) = wait_for_outcomes(
            &pool,
            &keys,
            Duration::from_secs(args.timeout_secs),
            &cancel,
        )
        .await?;
        println!("{succeeded} succeeded, {failed} failed");
    }
    Ok(())
}

fn progress(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("{bar:40} {pos}/{len} {msg} ({per_sec}, eta {eta})")
    {
        bar.set_style(style);
    }
    bar.set_message(what.to_string());
    bar
}

/// Polls job states until all are terminal; returns (succeeded, failed).
pub async fn wait_for_outcomes(
    pool: &sqlx::PgPool,
    keys: &[(String, String)],
    timeout: Duration,
    cancel: &CancellationToken,
) -> anyhow::Result<(i64, i64)> {
    let tenants: Vec<&str> = keys.iter().map(|k| k.0.as_str()).collect();
    let ids: Vec<&str> = keys.iter().map(|k| k.1.as_str()).collect();
    let bar = progress(keys.len() as u64, "finished");
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let (succeeded, failed): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE state = 'succeeded'), count(*) FILTER (WHERE state = 'failed') \
             FROM jobs j JOIN UNNEST($1::text[], $2::text[]) AS t(tenant_id, id) \
               ON j.tenant_id = t.tenant_id AND j.id = t.id",
        )
        .bind(&tenants)
        .bind(&ids)
        .fetch_one(pool)
        .await?;
        bar.set_position(u64::try_from(succeeded + failed).unwrap_or(0));
        if usize::try_from(succeeded + failed).unwrap_or(0) >= keys.len() {
            bar.finish();
            return Ok((succeeded, failed));
        }
        if tokio::time::Instant::now() >= deadline || cancel.is_cancelled() {
            bar.abandon();
            anyhow::bail!(
                "{} of {} jobs still unfinished",
                keys.len() as i64 - succeeded - failed,
                keys.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
