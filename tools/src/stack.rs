//! A local ragq stack for `ragq demo` and `ragq bench`: a fresh database and RabbitMQ vhost on this
//! machine's services, a config file, and ragq processes started and stopped the way an operator
//! would (separate processes, SIGTERM to stop), so what they show is what production does.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use sqlx::PgPool;
use tokio::process::{Child, Command};

use ragq::config::Config;
use ragq::queue::admin;

/// Where the local services are.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// Postgres server; a database named after the run is recreated on it.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432")]
    pub postgres: String,
    /// RabbitMQ server; a vhost named after the run is recreated on it.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672")]
    pub amqp: String,
}

/// The URLs a run's config should point at.
#[derive(Debug, Clone)]
pub struct StackUrls {
    pub database: String,
    pub queue: String,
    /// A fresh directory for the embedded vector store (`[retrieval] path`).
    pub vectors: String,
}

/// A prepared stack and the processes it started.
pub struct LocalStack {
    pub cfg: Config,
    pub config_path: PathBuf,
    pub pool: PgPool,
    pub db: String,
    pub vhost: String,
    children: Vec<Child>,
}

impl LocalStack {
    /// Recreates database `ragq_{name}` and vhost `ragq-{name}`, writes the config `config` builds
    /// from their URLs, and connects (applying migrations).
    pub async fn prepare(
        servers: &ServerArgs,
        name: &str,
        config: impl FnOnce(&StackUrls) -> anyhow::Result<String>,
    ) -> anyhow::Result<Self> {
        let db = format!("ragq_{name}");
        let vhost = format!("ragq-{name}");
        admin::recreate_vhost(&vhost, "guest")?;
        let dir = std::env::temp_dir().join(format!("ragq-{name}"));
        let vectors = dir.join("vectors");
        if vectors.exists() {
            std::fs::remove_dir_all(&vectors)
                .with_context(|| format!("clearing {}", vectors.display()))?;
        }
        std::fs::create_dir_all(&dir)?;
        let urls = StackUrls {
            database: format!("{}/{db}", servers.postgres.trim_end_matches('/')),
            queue: format!("{}/{vhost}", servers.amqp.trim_end_matches('/')),
            vectors: vectors.display().to_string(),
        };
        let toml = config(&urls)?;
        let cfg = Config::from_toml(&toml)?;
        let config_path = dir.join("ragq.toml");
        std::fs::write(&config_path, &toml)?;
        drop_database(&servers.postgres, &db).await?;
        let pool = ragq::db::connect(&cfg.database).await?;
        Ok(Self {
            cfg,
            config_path,
            pool,
            db,
            vhost,
            children: Vec::new(),
        })
    }

    /// Starts `ragq <command>` with this stack's config and extra environment; returns its pid.
    pub fn spawn(&mut self, command: &str, env: &[(&str, &str)]) -> anyhow::Result<u32> {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg("--config").arg(&self.config_path).arg(command);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let log = std::env::var("RUST_LOG").unwrap_or_else(|_| "error,lapin=off".into());
        cmd.env("RUST_LOG", log)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting ragq {command}"))?;
        let pid = child.id().unwrap_or(0);
        self.children.push(child);
        Ok(pid)
    }

    /// Kills one process with SIGKILL (a crash) and waits for it to die.
    pub async fn kill(&mut self, pid: u32) {
        if let Some(i) = self.children.iter().position(|c| c.id() == Some(pid)) {
            let mut child = self.children.swap_remove(i);
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// SIGTERM to every process, then a bounded wait (workers drain in-flight jobs first).
    pub async fn stop_all(&mut self) {
        for child in &mut self.children {
            stop(child).await;
        }
        self.children.clear();
    }
}

async fn drop_database(server: &str, db: &str) -> anyhow::Result<()> {
    let pool = PgPool::connect(&format!("{}/postgres", server.trim_end_matches('/')))
        .await
        .context("connecting to Postgres")?;
    // Identifiers cannot be bound; quote_ident keeps the name safe.
    let sql: String = sqlx::query_scalar(
        "SELECT 'DROP DATABASE IF EXISTS ' || quote_ident($1) || ' WITH (FORCE)'",
    )
    .bind(db)
    .fetch_one(&pool)
    .await?;
    sqlx::raw_sql(&sql).execute(&pool).await?;
    pool.close().await;
    Ok(())
}

async fn stop(child: &mut Child) {
    #[cfg(unix)]
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
    }
    if tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

/// A free loopback port for a child process to listen on.
pub async fn free_port() -> std::io::Result<u16> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    Ok(l.local_addr()?.port())
}

/// Reads a process's CPU seconds (user + system) and peak RSS in bytes from /proc (Linux).
pub fn process_usage(pid: u32) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hwm_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    // The kernel's USER_HZ is 100 on every Linux ABI ragq runs on.
    Some(((utime + stime) as f64 / 100.0, hwm_kib * 1024))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_usage_is_readable() {
        let (cpu, rss) = process_usage(std::process::id()).expect("/proc readable");
        assert!(cpu >= 0.0);
        assert!(rss > 1 << 20, "a test binary uses more than 1 MiB: {rss}");
    }
}
