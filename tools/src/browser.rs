//! A real headless browser for page tests: Debian's `chromium`, driven over the Chrome DevTools
//! Protocol (one WebSocket, commands answered by id, events in between). Enough to open a page,
//! fill and submit a form, read the DOM through JavaScript, list every request the page made and
//! take a screenshot.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any one command or page load may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// Where Debian installs the browser; `CHROMIUM` overrides it.
pub fn chromium_path() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// One headless chromium with one page (tab), closed when dropped.
pub struct Browser {
    child: Child,
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    session: String,
    next_id: u64,
    /// Every URL the page requested, in order.
    pub requests: Vec<String>,
    _profile: TempDir,
}

impl Browser {
    /// Starts chromium with a fresh profile and opens a blank page.
    pub async fn launch(chromium: &Path) -> anyhow::Result<Self> {
        let profile = TempDir::new()?;
        let mut child = Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--disable-domain-reliability",
                "--no-first-run",
                "--no-default-browser-check",
                "--window-size=1400,1000",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.0.display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", chromium.display()))?;
        let stderr = child.stderr.take().context("chromium's stderr")?;
        let url = tokio::time::timeout(STEP_TIMEOUT, devtools_url(stderr))
            .await
            .context("chromium did not open its DevTools socket in time")??;
        let (socket, _) = tokio_tungstenite::connect_async(url.as_str()).await?;
        let mut browser = Self {
            child,
            socket,
            session: String::new(),
            next_id: 0,
            requests: Vec::new(),
            _profile: profile,
        };
        let target = browser
            .call("Target.createTarget", json!({"url": "about:blank"}))
            .await?;
        let target_id = target["targetId"].as_str().context("targetId")?.to_string();
        let attached = browser
            .call(
                "Target.attachToTarget",
                json!({"targetId": target_id, "flatten": true}),
            )
            .await?;
        browser.session = attached["sessionId"]
            .as_str()
            .context("sessionId")?
            .to_string();
        browser.call("Page.enable", json!({})).await?;
        browser.call("Network.enable", json!({})).await?;
        Ok(browser)
    }

    /// Opens `url` and waits for its load event.
    pub async fn open(&mut self, url: &str) -> anyhow::Result<()> {
        self.call("Page.navigate", json!({"url": url})).await?;
        self.wait_for_event("Page.loadEventFired").await
    }

    /// Runs `expression` in the page and returns its value (promises are awaited).
    pub async fn eval(&mut self, expression: &str) -> anyhow::Result<Value> {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await?;
        if let Some(e) = r.get("exceptionDetails") {
            bail!("the page threw: {e}");
        }
        Ok(r["result"]["value"].clone())
    }

    /// Runs `expression`, which navigates (a form submission), and waits for the new page.
    pub async fn eval_and_wait_for_load(&mut self, expression: &str) -> anyhow::Result<()> {
        self.eval(expression).await?;
        self.wait_for_event("Page.loadEventFired").await
    }

    /// A PNG of the whole page, written to `path`.
    pub async fn screenshot(&mut self, path: &Path) -> anyhow::Result<()> {
        let shot = self
            .call(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true}),
            )
            .await?;
        let data = shot["data"].as_str().context("screenshot data")?;
        let png = base64::engine::general_purpose::STANDARD.decode(data)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, png)?;
        Ok(())
    }

    /// Sends a command (to the page's session once attached) and waits for its answer.
    async fn call(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut command = json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            command["sessionId"] = json!(self.session);
        }
        self.socket.send(Message::text(command.to_string())).await?;
        loop {
            let message = self.next_message().await?;
            if message["id"].as_u64() == Some(id) {
                if let Some(error) = message.get("error") {
                    bail!("{method} failed: {error}");
                }
                return Ok(message["result"].clone());
            }
        }
    }

    async fn wait_for_event(&mut self, name: &str) -> anyhow::Result<()> {
        loop {
            let message = self.next_message().await?;
            if message["method"] == name {
                return Ok(());
            }
        }
    }

    /// The next message, noting the page's requests on the way.
    async fn next_message(&mut self) -> anyhow::Result<Value> {
        loop {
            let frame = tokio::time::timeout(STEP_TIMEOUT, self.socket.next())
                .await
                .context("chromium did not answer in time")?
                .ok_or_else(|| anyhow!("chromium closed the DevTools socket"))??;
            let Message::Text(text) = frame else { continue };
            let message: Value = serde_json::from_str(text.as_str())?;
            if message["method"] == "Network.requestWillBeSent" {
                if let Some(url) = message["params"]["request"]["url"].as_str() {
                    self.requests.push(url.to_string());
                }
            }
            return Ok(message);
        }
    }

    /// Closes the browser.
    pub async fn close(mut self) {
        let _ = self.call("Browser.close", json!({})).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}

/// Reads chromium's stderr until it names its DevTools WebSocket, then keeps draining it (a full
/// pipe would stall the browser).
async fn devtools_url(stderr: tokio::process::ChildStderr) -> anyhow::Result<String> {
    let mut lines = BufReader::new(stderr).lines();
    while let Some(line) = lines.next_line().await? {
        if let Some(url) = line.split("DevTools listening on ").nth(1) {
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return Ok(url.trim().to_string());
        }
    }
    bail!("chromium exited before opening its DevTools socket")
}

/// A directory removed when dropped: the browser's throwaway profile.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(format!(
            "ragq-chromium-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&path)?;
        Ok(Self(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
