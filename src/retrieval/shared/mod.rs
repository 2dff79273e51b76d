//! The embedded store shared by the worker processes of one machine.
//!
//! qdrant-edge admits one process per directory (two writers would corrupt its WAL), so the first
//! process to open the store holds it and serves the others on a Unix socket in the same directory
//! ([`SOCKET_FILE`]). Every worker then runs every job kind, its provider calls included; only the
//! vector store operations cross processes, and no delivery is passed between workers.
//!
//! The holder's lock and socket end with its process. The next operation of another worker then
//! takes the store over (or finds the worker that did) and is sent again, which is safe because
//! every operation is idempotent (writes overwrite by point id, deletes and flushes repeat), so
//! retrieval continues within a second or so, and within [`TAKEOVER_WAIT`] at worst.
//!
//! Across machines or containers with directories of their own this cannot work: each would hold
//! a separate copy. Workers record which store they use, and warn when they disagree (see
//! `ragq_workers::placement`).

mod client;
mod server;
pub mod wire;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::{CancellationToken, DropGuard};

use super::embedded::{self, EmbeddedStore};
use super::{ChunkPoint, Hit, SearchQuery, StoreError, StoreFuture, VectorBackend};
use client::HolderClient;
use wire::{OwnedQuery, Reply, Request};

/// The holder's socket, in the store's directory.
pub const SOCKET_FILE: &str = "holder.sock";
/// The store's identity, written once by its first holder, so workers can tell one store from a
/// copy of it elsewhere.
const STORE_ID_FILE: &str = ".store-id";
/// How long an operation keeps trying to reach the store (the holder restarting, or dead and its
/// lock not yet released) before it fails as unavailable and its job is retried later.
pub const TAKEOVER_WAIT: Duration = Duration::from_secs(10);
/// Longest pause between attempts to reach the store.
const MAX_PAUSE: Duration = Duration::from_millis(500);
/// Unix socket paths are limited to 108 bytes, the terminating NUL included.
const MAX_SOCKET_PATH: usize = 107;

/// An embedded store directory, held by this process or reached through the process holding it.
pub struct SharedStore {
    root: PathBuf,
    hnsw_ef: usize,
    role: tokio::sync::Mutex<Option<Role>>,
}

#[derive(Clone)]
enum Role {
    Holder(Arc<Holding>),
    Client(Arc<HolderClient>),
}

struct Holding {
    store: Arc<EmbeddedStore>,
    /// Whether other workers can reach the store (binding the socket may have failed).
    serving: Result<(), String>,
    /// Stops serving when the store is closed.
    _server: DropGuard,
}

/// How this process reaches the store, for the worker's first log lines.
#[derive(Debug, Clone, PartialEq)]
pub enum Placement {
    /// This process holds the store; `serving` says whether other workers can reach it.
    Holder {
        socket: PathBuf,
        serving: Result<(), String>,
    },
    /// Another process holds it and runs this one's operations.
    Client {
        socket: PathBuf,
        holder_pid: Option<u32>,
    },
}

impl std::fmt::Display for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Holder {
                socket,
                serving: Ok(()),
            } => write!(
                f,
                "held by this process, which serves the other workers of this machine on {}",
                socket.display()
            ),
            Self::Holder {
                serving: Err(e), ..
            } => write!(
                f,
                "held by this process, which cannot serve other workers ({e}): their retrieval jobs will fail"
            ),
            Self::Client {
                socket,
                holder_pid: Some(pid),
            } => write!(f, "held by process {pid}, reached on {}", socket.display()),
            Self::Client { socket, .. } => {
                write!(f, "held by another process, reached on {}", socket.display())
            }
        }
    }
}

impl SharedStore {
    /// The store at `root`; nothing is opened until [`Self::placement`] or the first operation.
    pub fn new(root: &Path, hnsw_ef: usize) -> Self {
        Self {
            root: root.to_path_buf(),
            hnsw_ef,
            role: tokio::sync::Mutex::new(None),
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.root.join(SOCKET_FILE)
    }

    /// The store's identity, once a holder has written it.
    pub fn store_id(&self) -> Option<String> {
        std::fs::read_to_string(self.root.join(STORE_ID_FILE))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    }

    /// Takes or reaches the store now, and says how.
    pub async fn placement(&self) -> Result<Placement, StoreError> {
        let socket = self.socket();
        Ok(match self.reach(Instant::now() + TAKEOVER_WAIT).await? {
            Role::Holder(h) => Placement::Holder {
                socket,
                serving: h.serving.clone(),
            },
            Role::Client(_) => Placement::Client {
                socket,
                holder_pid: embedded::holder_pid(&self.root),
            },
        })
    }

    /// Runs `request` on the store, wherever it is held; sends it again to the next holder when
    /// the one it went to dies first.
    async fn call(&self, request: Request) -> Result<Reply, StoreError> {
        let deadline = Instant::now() + TAKEOVER_WAIT;
        loop {
            match self.reach(deadline).await? {
                Role::Holder(h) => return wire::execute(&h.store, request).await,
                Role::Client(c) => match c.call(&request).await {
                    Ok(result) => return result,
                    Err(client::Gone(why)) if Instant::now() >= deadline => {
                        return Err(StoreError::Unavailable(why))
                    }
                    Err(client::Gone(why)) => tracing::info!(
                        reason = %why,
                        "lost the vector store's holder; taking the store over or finding who did"
                    ),
                },
            }
        }
    }

    /// The current way to the store, taking it or connecting to its holder when there is none,
    /// trying again with growing pauses until `deadline`.
    async fn reach(&self, deadline: Instant) -> Result<Role, StoreError> {
        let mut pause = Duration::from_millis(10);
        loop {
            let why = match self.role().await {
                Ok(role) => return Ok(role),
                Err(why) => why,
            };
            if Instant::now() + pause >= deadline {
                return Err(StoreError::Unavailable(why));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_PAUSE);
        }
    }

    async fn role(&self) -> Result<Role, String> {
        let mut role = self.role.lock().await;
        let live = match role.as_ref() {
            Some(Role::Client(c)) => c.is_open(),
            Some(Role::Holder(_)) => true,
            None => false,
        };
        if !live {
            *role = Some(self.take_or_connect().await?);
        }
        role.clone()
            .ok_or_else(|| "no way to the vector store".into())
    }

    async fn take_or_connect(&self) -> Result<Role, String> {
        let socket = self.socket();
        match EmbeddedStore::open(&self.root, self.hnsw_ef) {
            Ok(store) => Ok(Role::Holder(Arc::new(self.hold(store, &socket)))),
            Err(StoreError::Locked { .. }) => match HolderClient::connect(&socket).await {
                Ok(client) => Ok(Role::Client(Arc::new(client))),
                Err(e) => Err(format!(
                    "the embedded vector store at {} is held by {}, which does not answer on {}: {e}",
                    self.root.display(),
                    holder_name(embedded::holder_pid(&self.root)),
                    socket.display()
                )),
            },
            Err(e) => Err(e.to_string()),
        }
    }

    /// Holds the store: writes its identity if it has none, and serves it on the socket.
    fn hold(&self, store: EmbeddedStore, socket: &Path) -> Holding {
        if let Err(e) = write_store_id(&self.root) {
            tracing::warn!(error = %e, "cannot record the vector store's identity");
        }
        let store = Arc::new(store);
        let cancel = CancellationToken::new();
        let serving = check_socket_path(socket)
            .and_then(|()| {
                server::listen(Arc::downgrade(&store), socket, cancel.clone())
                    .map_err(|e| format!("cannot listen on {}: {e}", socket.display()))
            })
            .inspect_err(|e| tracing::warn!(error = %e, "other workers cannot reach the vector store this process holds"));
        Holding {
            store,
            serving,
            _server: cancel.drop_guard(),
        }
    }
}

fn holder_name(pid: Option<u32>) -> String {
    pid.map_or("another process".into(), |pid| format!("process {pid}"))
}

/// Unix socket paths are short; a store directory too deep for one is refused with the limit.
pub fn check_socket_path(socket: &Path) -> Result<(), String> {
    let len = socket.as_os_str().len();
    if len <= MAX_SOCKET_PATH {
        Ok(())
    } else {
        Err(format!(
            "the holder's socket path {} is {len} bytes, over the {MAX_SOCKET_PATH}-byte limit of Unix sockets: choose a shorter retrieval.path",
            socket.display()
        ))
    }
}

/// Writes a new identity unless the store has one. Only the holder calls this, under the lock.
fn write_store_id(root: &Path) -> std::io::Result<()> {
    let path = root.join(STORE_ID_FILE);
    if path.exists() {
        return Ok(());
    }
    std::fs::write(&path, format!("{}\n", uuid::Uuid::new_v4()))
}

impl VectorBackend for SharedStore {
    fn describe(&self) -> String {
        format!(
            "embedded qdrant-edge at {}, shared by this machine's workers",
            self.root.display()
        )
    }

    fn ensure_collection<'a>(&'a self, name: &'a str, dimension: usize) -> StoreFuture<'a, ()> {
        let request = Request::EnsureCollection {
            name: name.into(),
            dimension,
        };
        Box::pin(async move { self.call(request).await?.done() })
    }

    fn replace_document<'a>(
        &'a self,
        collection: &'a str,
        tenant: &'a str,
        document_id: &'a str,
        chunks: Vec<ChunkPoint>,
    ) -> StoreFuture<'a, ()> {
        let request = Request::ReplaceDocument {
            collection: collection.into(),
            tenant: tenant.into(),
            document_id: document_id.into(),
            chunks,
        };
        Box::pin(async move { self.call(request).await?.done() })
    }

    fn delete_documents<'a>(
        &'a self,
        collection: &'a str,
        tenant: &'a str,
        document_ids: &'a [String],
    ) -> StoreFuture<'a, ()> {
        let request = Request::DeleteDocuments {
            collection: collection.into(),
            tenant: tenant.into(),
            document_ids: document_ids.to_vec(),
        };
        Box::pin(async move { self.call(request).await?.done() })
    }

    fn search<'a>(
        &'a self,
        collection: &'a str,
        query: &'a SearchQuery<'a>,
    ) -> StoreFuture<'a, Vec<Hit>> {
        let request = Request::Search {
            collection: collection.into(),
            query: OwnedQuery::of(query),
        };
        Box::pin(async move { self.call(request).await?.hits() })
    }

    fn count<'a>(&'a self, collection: &'a str, tenant: &'a str) -> StoreFuture<'a, u64> {
        let request = Request::Count {
            collection: collection.into(),
            tenant: tenant.into(),
        };
        Box::pin(async move { self.call(request).await?.count() })
    }

    fn erase_tenant<'a>(&'a self, collection: &'a str, tenant: &'a str) -> StoreFuture<'a, ()> {
        let request = Request::EraseTenant {
            collection: collection.into(),
            tenant: tenant.into(),
        };
        Box::pin(async move { self.call(request).await?.done() })
    }

    fn flush<'a>(&'a self, collection: &'a str) -> StoreFuture<'a, ()> {
        let request = Request::Flush {
            collection: collection.into(),
        };
        Box::pin(async move { self.call(request).await?.done() })
    }
}
