//! Test harness: a fresh Postgres database and a fresh RabbitMQ vhost per test, the sim provider and a
//! webhook receiver on loopback, and helpers to publish raw AMQP messages and read the dead-letter queue.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use lapin::options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use ragq::config::Config;
use ragq::tenants::NewTenant;
use ragq_tools::config_file::ConfigFile;
use ragq_tools::receiver::{ReceivedWebhook, WebhookReceiver};
use ragq_tools::sim::{SimHandle, SimOptions};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub const PG: &str = "postgres://postgres@127.0.0.1:5432";
pub const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672";

pub struct TestEnv {
    pub tag: String,
    pub db_name: String,
    pub vhost: String,
    pub cfg: Config,
    pub config_toml: String,
    pub pool: PgPool,
    pub sim: SimHandle,
    pub hooks: WebhookReceiver,
    pub hook_url: String,
    pub cancel: CancellationToken,
    pub tenants: Vec<NewTenant>,
}

fn vectors_dir(tag: &str) -> std::path::PathBuf {
    std::env::temp_dir()
        .join(format!("ragq-test-{tag}"))
        .join("vectors")
}

/// Runs rabbitmqctl, failing the test when it fails.
pub fn rabbitmqctl(args: &[&str]) {
    let out = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl runs (tests need the local RabbitMQ)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Adding a user a second time (another `api_config` of the same test) changes nothing.
    assert!(
        out.status.success() || (args[0] == "add_user" && stderr.contains("already exists")),
        "rabbitmqctl {args:?}: {stderr}"
    );
}

/// Every spelling of a non-public or non-http address a tenant might aim a webhook at. None needs
/// DNS beyond /etc/hosts, and nothing ever connects to them: each is refused before any call.
pub const HOSTILE_URLS: [&str; 30] = [
    "http://127.0.0.1:9/hook",
    "http://localhost:9/hook",
    "http://LOCALHOST./hook",
    "http://[::1]:9/hook",
    "http://2130706433/hook",
    "http://0x7f.0.0.1/hook",
    "http://0177.0.0.1/hook",
    "http://127.1/hook",
    "http://0/hook",
    "http://0.0.0.0/hook",
    "http://[::]/hook",
    "http://user:pass@127.0.0.1/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "http://[::ffff:7f00:1]/hook",
    "http://[64:ff9b::7f00:1]/hook",
    "http://169.254.169.254/latest/meta-data",
    "http://[fe80::1]/hook",
    "http://10.0.0.1/hook",
    "http://172.16.0.1/hook",
    "http://192.168.1.1/hook",
    "http://100.64.0.1/hook",
    "http://[fd00::1]/hook",
    "http://224.0.0.1/hook",
    "http://255.255.255.255/hook",
    "ftp://127.0.0.1/hook",
    "file:///etc/passwd",
    "gopher://127.0.0.1:6379/_INFO",
    "http://127.0.0.1/\u{0}hook",
    "http://127.0.0.1/ hook",
    "http://127.0.0.1/\u{7f}hook",
];

impl TestEnv {
    /// A fresh environment (`queue_extra` is added to the `[queue]` section) with tenants `acme` (AMQP user `guest`) and `globex` (AMQP user `globex-user`).
    pub async fn new(queue_extra: &str) -> Self {
        Self::with_sections(queue_extra, "").await
    }

    /// Like [`TestEnv::new`], with whole TOML sections (such as `[spend]`) added to the config.
    pub async fn with_sections(queue_extra: &str, sections: &str) -> Self {
        Self::with_retrieval(queue_extra, sections, "").await
    }

    /// Like [`TestEnv::with_sections`], with keys added to `[retrieval]` (whose embedded store
    /// lives in a directory of this test's own, [`TestEnv::vectors_dir`]).
    pub async fn with_retrieval(queue_extra: &str, sections: &str, retrieval: &str) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .with_test_writer()
            .try_init();
        let tag = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let db_name = format!("ragq_t_{tag}");
        let vhost = format!("ragq-t-{tag}");
        rabbitmqctl(&["add_vhost", &vhost]);
        rabbitmqctl(&["set_permissions", "-p", &vhost, "guest", ".*", ".*", ".*"]);
        let cancel = CancellationToken::new();
        let sim = ragq_tools::sim::spawn("127.0.0.1:0", SimOptions::default(), cancel.clone())
            .await
            .unwrap();
        let hooks = WebhookReceiver::spawn(cancel.clone()).await.unwrap();
        let hook_url = hooks.url();
        let sim_url = sim.base_url();
        let config_toml = ConfigFile::new(
            "the test harness",
            &format!("{PG}/{db_name}"),
            &format!("{AMQP}/{vhost}"),
            &vectors_dir(&tag).display().to_string(),
        )
        .set("database.max_connections", 8)
        .set("queue.prefetch", 32)
        .list("queue.retry_delays_ms", [100, 300, 1000])
        .list("queue.trusted_publishers", [format!("ragq-api-{tag}")])
        .set("worker.max_attempts", 4)
        .set("worker.shutdown_grace_ms", 5000)
        .set("webhooks.initial_backoff_ms", 100)
        .set("webhooks.max_backoff_ms", 1000)
        .set("webhooks.poll_interval_ms", 100)
        .set("webhooks.claim_lease_ms", 2000)
        .set("webhooks.max_attempts", 6)
        .set("retry.initial_interval_ms", 20)
        .set("retry.max_interval_ms", 200)
        .set("retry.max_elapsed_ms", 1500)
        .sim_models(&sim_url, 10_000)
        .list("policies.cost-optimized.models", ["sim-small"])
        .list("policies.with-fallback.models", ["sim-small", "sim-large"])
        .merge(&format!(
            "[queue]\n{queue_extra}\n[retrieval]\n{retrieval}\n"
        ))
        .and_then(|f| f.merge(&sections.replace("{sim_url}", &sim_url)))
        .expect("the test's extra settings are TOML")
        .render();
        let cfg = Config::from_toml(&config_toml).expect("test config is valid");
        let pool = ragq::db::connect(&cfg.database).await.expect("database");
        let acme = ragq::tenants::create(
            &pool,
            &ragq::audit::Actor::cli(),
            &cfg.secrets,
            "acme",
            "Acme",
            Some("guest"),
        )
        .await
        .unwrap();
        let globex = ragq::tenants::create(
            &pool,
            &ragq::audit::Actor::cli(),
            &cfg.secrets,
            "globex",
            "Globex",
            Some("globex-user"),
        )
        .await
        .unwrap();
        hooks.trust("acme", acme.webhook_secret.expose());
        hooks.trust("globex", globex.webhook_secret.expose());
        Self {
            tag,
            db_name,
            vhost,
            cfg,
            config_toml,
            pool,
            sim,
            hooks,
            hook_url,
            cancel,
            tenants: vec![acme, globex],
        }
    }

    /// Config for the api process: its own AMQP user, which the workers trust to publish for any
    /// tenant (the api has authenticated the tenant by API key).
    pub fn api_config(&self) -> Config {
        let user = format!("ragq-api-{}", self.tag);
        rabbitmqctl(&["add_user", &user, "api-pw"]);
        rabbitmqctl(&[
            "set_permissions",
            "-p",
            &self.vhost,
            &user,
            ".*",
            ".*",
            ".*",
        ]);
        let mut cfg = self.cfg.clone();
        cfg.queue.url = format!("amqp://{user}:api-pw@127.0.0.1:5672/{}", self.vhost);
        cfg
    }

    /// Serves the HTTP api in-process; returns its base URL.
    pub async fn serve_api(&self) -> String {
        self.serve_api_with(self.api_config()).await
    }

    /// Serves the HTTP api in-process with `cfg` (from [`TestEnv::api_config`], changed).
    pub async fn serve_api_with(&self, cfg: Config) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = ragq::api::router(&cfg.api, &cfg.queue, self.pool.clone());
        let cancel = self.cancel.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { cancel.cancelled().await })
                .await
                .unwrap();
        });
        format!("http://{addr}")
    }

    /// Submits a job over HTTP with the tenant's API key (the body's `tenant` is dropped: the
    /// key names it); panics unless it is accepted.
    pub async fn submit_http(&self, base: &str, tenant: &str, job: &serde_json::Value) {
        let mut job = job.clone();
        job.as_object_mut().unwrap().remove("tenant");
        let resp = reqwest::Client::new()
            .post(format!("{base}/v1/jobs"))
            .bearer_auth(self.api_key(tenant))
            .json(&job)
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status().as_u16(),
            202,
            "{}",
            resp.text().await.unwrap()
        );
    }

    /// Where this test's embedded vector store lives.
    pub fn vectors_dir(&self) -> std::path::PathBuf {
        vectors_dir(&self.tag)
    }

    pub fn secret(&self, tenant: &str) -> String {
        let t = self.tenants.iter().find(|t| t.tenant.id == tenant).unwrap();
        t.webhook_secret.expose().to_string()
    }

    pub fn api_key(&self, tenant: &str) -> String {
        let t = self.tenants.iter().find(|t| t.tenant.id == tenant).unwrap();
        t.api_key.expose().to_string()
    }

    /// Starts an in-process worker; cancel the returned token to stop it.
    pub fn start_worker(&self) -> (CancellationToken, tokio::task::JoinHandle<()>) {
        self.start_worker_with(self.cfg.clone())
    }

    /// Starts an in-process worker with `cfg` (this test's config, changed).
    pub fn start_worker_with(
        &self,
        cfg: Config,
    ) -> (CancellationToken, tokio::task::JoinHandle<()>) {
        let token = self.cancel.child_token();
        let pool = self.pool.clone();
        let t = token.clone();
        let handle = tokio::spawn(async move {
            ragq_workers::run(cfg, pool, t).await.unwrap();
        });
        (token, handle)
    }

    pub async fn amqp(&self) -> Connection {
        Connection::connect(
            &format!("{AMQP}/{}", self.vhost),
            ConnectionProperties::default(),
        )
        .await
        .unwrap()
    }

    /// Publishes raw bytes to `ragq.jobs` as a plain AMQP client would, with the given user_id.
    pub async fn publish_raw(
        &self,
        conn: &Connection,
        routing_key: &str,
        body: &[u8],
        user_id: Option<&str>,
    ) {
        let mut props = BasicProperties::default().with_delivery_mode(2);
        if let Some(u) = user_id {
            props = props.with_user_id(u.into());
        }
        self.publish_with(conn, routing_key, body, props).await;
    }

    /// Publishes raw bytes to `ragq.jobs` with exactly these properties, confirmed.
    pub async fn publish_with(
        &self,
        conn: &Connection,
        routing_key: &str,
        body: &[u8],
        props: BasicProperties,
    ) {
        let ch = self.confirming_channel(conn).await;
        publish_confirmed(&ch, routing_key, body, props).await;
        let _ = ch.close(200, "done".into()).await;
    }

    /// A channel on `conn` with ragq's topology declared and publisher confirms on.
    async fn confirming_channel(&self, conn: &Connection) -> lapin::Channel {
        let ch = conn.create_channel().await.unwrap();
        ragq::queue::topology::declare(&ch, &self.cfg.queue)
            .await
            .unwrap();
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        ch
    }

    /// A batch.complete job message for `tenant` with `n` prompts and this env's webhook receiver.
    pub fn job(&self, tenant: &str, id: &str, n: usize) -> serde_json::Value {
        let prompts: Vec<_> = (0..n)
            .map(|i| serde_json::json!({"prompt": format!("question {i} of job {id}")}))
            .collect();
        serde_json::json!({
            "id": id, "tenant": tenant, "kind": "batch.complete",
            "webhook_url": self.hook_url,
            "input": {"prompts": prompts},
            "tags": {"feature": "tests"}
        })
    }

    /// Waits until `f` is true, polling; panics after `secs`.
    pub async fn wait_until<F, Fut>(&self, secs: u64, what: &str, mut f: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        while !f().await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn job_state(&self, tenant: &str, id: &str) -> Option<String> {
        sqlx::query_scalar("SELECT state FROM jobs WHERE tenant_id = $1 AND id = $2")
            .bind(tenant)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .unwrap()
    }

    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(&self.pool).await.unwrap()
    }

    /// Drains the dead-letter queue: (reason header, body) of each message.
    pub async fn dead_letters(&self, conn: &Connection) -> Vec<(Option<String>, Vec<u8>)> {
        let ch = conn.create_channel().await.unwrap();
        let mut out = Vec::new();
        while let Some(msg) = ch
            .basic_get("ragq.dlq".into(), BasicGetOptions::default())
            .await
            .unwrap()
        {
            let reason = msg
                .delivery
                .properties
                .headers()
                .as_ref()
                .and_then(|h| h.inner().get("x-ragq-reason").cloned())
                .map(|v| match v {
                    lapin::types::AMQPValue::LongString(s) => s.to_string(),
                    other => format!("{other:?}"),
                });
            out.push((reason, msg.delivery.data.clone()));
            msg.delivery
                .acker
                .ack(BasicAckOptions::default())
                .await
                .unwrap();
        }
        let _ = ch.close(200, "done".into()).await;
        out
    }

    /// The next `n` provider requests get 503.
    pub fn set_outage(&self, n: usize) {
        self.sim.script(std::iter::repeat_n(
            ragq_tools::sim::Fault::Status { status: 503 },
            n,
        ));
    }

    pub fn received(&self) -> Vec<ReceivedWebhook> {
        self.hooks.received()
    }
}

impl TestEnv {
    /// Writes this env's config to a file for worker processes; removed with the env.
    /// Starts `ragq api` as a process of its own (publishing as the trusted api user) with extra
    /// `RAGQ_*` settings; returns it and its base URL once it answers.
    pub async fn spawn_api(&self, env: &[(&str, &str)]) -> (tokio::process::Child, String) {
        let listen = format!("127.0.0.1:{}", free_port());
        let queue = self.api_config().queue.url;
        let mut vars = vec![
            ("RAGQ_QUEUE__URL", queue.as_str()),
            ("RAGQ_API__LISTEN", listen.as_str()),
        ];
        vars.extend_from_slice(env);
        let child = spawn_ragq(&self.config_file(), "api", &vars);
        let base = format!("http://{listen}");
        self.wait_until(30, "the api to listen", || async {
            reqwest::get(format!("{base}/healthz")).await.is_ok()
        })
        .await;
        (child, base)
    }

    pub fn config_file(&self) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("ragq-test-{}", self.tag));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ragq.toml");
        std::fs::write(&path, &self.config_toml).unwrap();
        path
    }

    /// Publishes `n` batch.complete jobs for acme, `{prefix}-{i}`, each with `prompts` prompts.
    pub async fn publish_jobs(&self, prefix: &str, n: usize, prompts: usize) {
        let jobs: Vec<_> = (0..n)
            .map(|i| self.job("acme", &format!("{prefix}-{i}"), prompts))
            .collect();
        self.publish_many(&jobs).await;
    }

    /// Publishes job messages in order on one channel as the `guest` user, waiting for every
    /// confirm only at the end (so thousands go out in a moment).
    pub async fn publish_many(&self, jobs: &[serde_json::Value]) {
        let conn = self.amqp().await;
        let ch = self.confirming_channel(&conn).await;
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_user_id("guest".into());
        let mut confirms = Vec::with_capacity(jobs.len());
        for job in jobs {
            let body = job.to_string();
            confirms.push(send(&ch, "batch.complete", body.as_bytes(), props.clone()).await);
        }
        for (job, confirm) in jobs.iter().zip(confirms) {
            if !confirm.await.unwrap().is_ack() {
                // Refused (see `publish_confirmed`): sent again, until it is taken.
                let body = job.to_string();
                publish_confirmed(&ch, "batch.complete", body.as_bytes(), props.clone()).await;
            }
        }
        let _ = conn.close(200, "published".into()).await;
    }

    /// Publishes a job message as acme's AMQP user would.
    pub async fn publish_job(&self, conn: &Connection, job: &serde_json::Value) {
        self.publish_raw(
            conn,
            "batch.complete",
            job.to_string().as_bytes(),
            Some("guest"),
        )
        .await;
    }

    /// Waits until job `id` of `tenant` is in `state`; panics after `secs`, or as soon as the job
    /// ends in another state, naming the state and error it has.
    pub async fn wait_for_state(&self, tenant: &str, id: &str, state: &str, secs: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let now: Option<(String, Option<String>, Option<String>)> = sqlx::query_as(
                "SELECT state, error_code, error FROM jobs WHERE tenant_id = $1 AND id = $2",
            )
            .bind(tenant)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .unwrap();
            match &now {
                Some((s, _, _)) if s == state => return,
                Some((s, code, error)) if s == "succeeded" || s == "failed" => {
                    panic!("job {id} ended {s}, not {state}: {code:?} {error:?}")
                }
                _ => {}
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for job {id} to be {state}; it is {now:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn finished_jobs(&self) -> i64 {
        self.count("SELECT count(*) FROM jobs WHERE state IN ('succeeded', 'failed')")
            .await
    }

    /// The ledger invariants after any fault, for jobs of `prompts` calls each (see
    /// `ragq_tools::audit`): booked calls were answered, once; final attempts are fully booked;
    /// answered calls left unbooked belong only to interrupted attempts; results equal the ledger.
    /// Audits the ledger against the calls the sim answered (see [`ragq_tools::audit`]).
    /// Waits first for intents left by killed workers to be booked (tests that kill set a short
    /// `spend.reservation_ttl_ms`).
    pub async fn assert_ledger_consistent(&self, prompts: usize) -> ragq_tools::audit::LedgerAudit {
        self.wait_until(30, "every call intent booked or discarded", || async {
            self.count("SELECT count(*) FROM call_intents").await == 0
        })
        .await;
        let audit = ragq_tools::audit::audit(&self.pool, &self.sim.answered_call_ids(), prompts)
            .await
            .unwrap();
        assert!(audit.ok(), "{audit:#?}");
        assert!(audit.booked_calls > 0);
        audit
    }
}

/// Starts `ragq worker` as a separate process (so it can be killed or signalled for real).
/// A TCP port free on loopback now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn spawn_worker_process(config: &std::path::Path) -> tokio::process::Child {
    worker_command(config, "warn", std::process::Stdio::inherit(), false)
}

/// Starts `ragq worker` with its log, at `filter` (RUST_LOG syntax), written to `log`.
pub fn spawn_worker_logging(
    config: &std::path::Path,
    filter: &str,
    log: &std::path::Path,
) -> tokio::process::Child {
    let file = std::fs::File::create(log).expect("worker log file");
    worker_command(config, filter, file.into(), true)
}

/// The worker, logging at `filter` to `stderr` (as JSON lines, which tests read, if `json`).
fn worker_command(
    config: &std::path::Path,
    filter: &str,
    stderr: std::process::Stdio,
    json: bool,
) -> tokio::process::Child {
    let mut command = ragq_command(config, "worker", &[("RUST_LOG", filter)]);
    if json {
        command.arg("--log-json");
    }
    command
        .stderr(stderr)
        .spawn()
        .expect("worker process starts")
}

/// `ragq --config <config> <subcommand>` with `env` set (warnings logged unless it sets
/// RUST_LOG), killed when dropped.
pub fn spawn_ragq(
    config: &std::path::Path,
    subcommand: &str,
    env: &[(&str, &str)],
) -> tokio::process::Child {
    ragq_command(config, subcommand, env)
        .spawn()
        .expect("ragq process starts")
}

/// Runs `ragq --config <config> <args…>` to its end; panics unless it succeeds. Its stdout.
pub async fn run_ragq(config: &std::path::Path, args: &[&str]) -> String {
    try_ragq(config, args)
        .await
        .unwrap_or_else(|out| panic!("ragq {args:?} failed: {out}"))
}

/// Runs `ragq --config <config> <args…>` to its end: its stdout, or (when it fails) its stdout and
/// stderr.
pub async fn try_ragq(config: &std::path::Path, args: &[&str]) -> Result<String, String> {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_ragq"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .expect("ragq runs");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)))
    }
}

fn ragq_command(
    config: &std::path::Path,
    subcommand: &str,
    env: &[(&str, &str)],
) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_ragq"));
    command
        .arg("--config")
        .arg(config)
        .arg(subcommand)
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true);
    command
}

/// Stops a ragq process with SIGTERM (an orderly shutdown) and waits for it to exit.
pub async fn terminate(child: &mut tokio::process::Child) {
    let pid = child.id().expect("the process is running").to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    child.wait().await.unwrap();
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        self.cancel.cancel();
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["delete_vhost", &self.vhost])
            .output();
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["delete_user", &format!("ragq-api-{}", self.tag)])
            .output();
        let _ =
            std::fs::remove_dir_all(std::env::temp_dir().join(format!("ragq-test-{}", self.tag)));
        let _ = std::process::Command::new("psql")
            .args(["-h", "127.0.0.1", "-U", "postgres", "-qc"])
            .arg(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.db_name
            ))
            .output();
    }
}

/// Sends one message to `ragq.jobs`; the confirm it returns says whether the broker took it.
async fn send(
    ch: &lapin::Channel,
    routing_key: &str,
    body: &[u8],
    props: BasicProperties,
) -> lapin::PublisherConfirm {
    ch.basic_publish(
        "ragq.jobs".into(),
        routing_key.into(),
        BasicPublishOptions::default(),
        body,
        props,
    )
    .await
    .unwrap()
}

/// Publishes on a channel in confirm mode until the broker takes the message. A nack is the broker
/// saying it did not (a quorum queue may under load): a publisher sends it again, as this does a
/// few times.
pub async fn publish_confirmed(
    ch: &lapin::Channel,
    routing_key: &str,
    body: &[u8],
    props: BasicProperties,
) {
    for _ in 0..5 {
        let confirm = send(ch, routing_key, body, props.clone()).await;
        if confirm.await.unwrap().is_ack() {
            return;
        }
    }
    panic!("the broker refused the message five times");
}
