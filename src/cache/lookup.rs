//! Exact lookups, batched: every call that looks up while a statement runs waits for the next
//! one, so under load many lookups share one round trip, and an idle worker's lookup costs one.
//! The task keeps a connection of its own (a pool checkout would ping it first: a second round
//! trip).

use sqlx::{PgConnection, PgPool};
use tokio::sync::{mpsc, oneshot};

use super::store::{self, Entry};
use super::CacheError;

/// Most lookups in one statement.
const MAX_BATCH: usize = 256;

struct Ask {
    tenant: String,
    key: [u8; 32],
    reply: oneshot::Sender<Result<Option<Entry>, CacheError>>,
}

/// Where calls send their lookups. Cheap to clone; the task ends when every handle is dropped.
#[derive(Debug, Clone)]
pub struct Lookups {
    tx: mpsc::Sender<Ask>,
}

impl Lookups {
    /// Starts the lookup task.
    pub fn spawn(pool: PgPool) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(MAX_BATCH * 4);
        (Self { tx }, tokio::spawn(run(pool, rx)))
    }

    /// The tenant's fresh entry under `key`, if any.
    pub async fn find(&self, tenant: &str, key: [u8; 32]) -> Result<Option<Entry>, CacheError> {
        let (reply, answer) = oneshot::channel();
        let ask = Ask {
            tenant: tenant.to_string(),
            key,
            reply,
        };
        self.tx.send(ask).await.map_err(|_| CacheError::Stopped)?;
        answer.await.map_err(|_| CacheError::Stopped)?
    }
}

async fn run(pool: PgPool, mut rx: mpsc::Receiver<Ask>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut held: Option<PgConnection> = None;
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let asks = std::mem::take(&mut batch);
        match look_up(&pool, &mut held, &asks).await {
            Ok(found) => answer(asks, found),
            Err(e) => {
                // A lost connection is opened again by the next batch; this one's calls miss.
                tracing::warn!(error = %e, lookups = asks.len(), "cache lookup failed; answering as misses");
                held = None;
                for ask in asks {
                    let _ = ask.reply.send(Err(CacheError::Database(e.to_string())));
                }
            }
        }
    }
}

async fn look_up(
    pool: &PgPool,
    held: &mut Option<PgConnection>,
    asks: &[Ask],
) -> Result<Vec<(i64, Entry)>, sqlx::Error> {
    let conn = match held {
        Some(c) => c,
        None => held.insert(crate::db::connect_for_batches(pool).await?),
    };
    let tenants: Vec<&str> = asks.iter().map(|a| a.tenant.as_str()).collect();
    let keys: Vec<Vec<u8>> = asks.iter().map(|a| a.key.to_vec()).collect();
    store::by_keys(conn, &tenants, &keys).await
}

fn answer(asks: Vec<Ask>, found: Vec<(i64, Entry)>) {
    let mut entries: Vec<Option<Entry>> = vec![None; asks.len()];
    for (n, entry) in found {
        if let Some(slot) = usize::try_from(n).ok().and_then(|n| entries.get_mut(n)) {
            *slot = Some(entry);
        }
    }
    for (ask, entry) in asks.into_iter().zip(entries) {
        let _ = ask.reply.send(Ok(entry));
    }
}
