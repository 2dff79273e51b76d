//! A worker's side of the holder's socket: one connection carrying every operation of the process
//! at once, each paired with its reply by id. When the connection ends (the holder died or is
//! closing), every waiting operation learns it at once as [`Gone`], so the caller can take the
//! store over and send it again.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::wire::{self, Envelope, Reply, ReplyEnvelope, Request};
use crate::retrieval::StoreError;

/// How long an operation may wait for its reply from a live holder; past it the operation fails
/// as unavailable (its job is retried later), rather than hanging the job.
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// The connection to the holder ended before the reply came; says why.
#[derive(Debug, Clone, PartialEq)]
pub struct Gone(pub String);

type Waiting = HashMap<u64, oneshot::Sender<Result<Reply, StoreError>>>;

/// Operations sent and not yet answered; `open` turns false once, when the connection ends.
struct Pending {
    open: bool,
    waiting: Waiting,
}

pub struct HolderClient {
    frames: mpsc::Sender<Vec<u8>>,
    pending: Arc<Mutex<Pending>>,
    next_id: AtomicU64,
    /// Stops the connection's reader and writer when the client is dropped.
    _tasks: DropGuard,
}

impl HolderClient {
    pub async fn connect(socket: &Path) -> std::io::Result<Self> {
        let stream = UnixStream::connect(socket).await?;
        let (mut input, mut output) = stream.into_split();
        let pending = Arc::new(Mutex::new(Pending {
            open: true,
            waiting: HashMap::new(),
        }));
        let (frames, mut outgoing) = mpsc::channel::<Vec<u8>>(256);
        let stop = CancellationToken::new();
        let (reader_pending, reader_stop) = (Arc::clone(&pending), stop.clone());
        tokio::spawn(async move {
            loop {
                let frame = tokio::select! {
                    _ = reader_stop.cancelled() => break,
                    frame = wire::read_frame(&mut input) => frame,
                };
                match frame {
                    Ok(Some(frame)) if deliver(&reader_pending, &frame) => {}
                    _ => break,
                }
            }
            close(&reader_pending);
        });
        let (writer_pending, writer_stop) = (Arc::clone(&pending), stop.clone());
        tokio::spawn(async move {
            loop {
                let frame = tokio::select! {
                    _ = writer_stop.cancelled() => break,
                    frame = outgoing.recv() => frame,
                };
                let Some(frame) = frame else { break };
                if wire::write_frame(&mut output, &frame).await.is_err() {
                    break;
                }
            }
            close(&writer_pending);
        });
        Ok(Self {
            frames,
            pending,
            next_id: AtomicU64::new(1),
            _tasks: stop.drop_guard(),
        })
    }

    /// Whether the connection still stands.
    pub fn is_open(&self) -> bool {
        lock(&self.pending).open
    }

    /// Sends `request` and waits for its result; [`Gone`] when the connection ended first.
    pub async fn call(&self, request: &Request) -> Result<Result<Reply, StoreError>, Gone> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = match wire::encode(&Envelope { id, body: request }) {
            Ok(frame) => frame,
            Err(e) => return Ok(Err(e)),
        };
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = lock(&self.pending);
            if !pending.open {
                return Err(gone());
            }
            pending.waiting.insert(id, tx);
        }
        if self.frames.send(frame).await.is_err() {
            lock(&self.pending).waiting.remove(&id);
            return Err(gone());
        }
        match tokio::time::timeout(REPLY_TIMEOUT, rx).await {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(_)) => Err(gone()),
            Err(_) => {
                lock(&self.pending).waiting.remove(&id);
                Ok(Err(StoreError::Unavailable(format!(
                    "the process holding the vector store did not answer within {} s",
                    REPLY_TIMEOUT.as_secs()
                ))))
            }
        }
    }
}

fn gone() -> Gone {
    Gone("the connection to the process holding the vector store ended".into())
}

/// Hands a reply to the operation waiting for it (none: it timed out, and the reply is dropped).
/// False for a frame that is not a reply (another version of ragq holds the store): the
/// connection is then closed, and its operations fail instead of waiting out their timeout.
fn deliver(pending: &Mutex<Pending>, frame: &[u8]) -> bool {
    let Ok(reply) = serde_json::from_slice::<ReplyEnvelope>(frame) else {
        tracing::warn!("the vector store's holder sent an unreadable reply; reconnecting");
        return false;
    };
    if let Some(waiter) = lock(pending).waiting.remove(&reply.id) {
        let _ = waiter.send(reply.body);
    }
    true
}

/// Marks the connection ended and wakes every waiting operation with [`Gone`].
fn close(pending: &Mutex<Pending>) {
    let mut pending = lock(pending);
    pending.open = false;
    pending.waiting.clear();
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
