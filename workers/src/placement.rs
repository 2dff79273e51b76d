//! Where this worker's vector store is, said at start, and checked against the other live workers.
//!
//! Every worker runs every job kind. With the embedded store, the first worker of a machine to
//! open it holds it and the others reach it through the holder (see `ragq::retrieval::shared`);
//! that only works while every worker uses the same directory on the same machine. A worker
//! records its store in its lease row and warns, naming the other worker, when one uses a separate
//! copy (another directory, or a container with one of its own) or the same directory from another
//! machine (a network filesystem, where the holder's socket cannot reach).

use std::sync::Arc;

use ragq::retrieval::shared::SharedStore;
use ragq::retrieval::{StoreConfig, VectorStore};
use sqlx::PgPool;

use crate::kinds;

/// Which store a worker uses, and on which machine.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreSite {
    pub worker_id: String,
    pub host: String,
    pub boot_id: String,
    /// `embedded:<store id>` or `qdrant:<url>`.
    pub store: String,
    pub path: Option<String>,
}

/// Opens the configured store (taking or reaching the embedded one now) and logs which kinds this
/// worker serves and how it reaches the store. Returns the store, and this worker's site once the
/// store is known (an embedded store not reachable yet is retried by the first job that needs it).
pub async fn open(
    config: &StoreConfig,
    worker_id: &str,
) -> anyhow::Result<(VectorStore, Option<StoreSite>)> {
    let site = |store: String, path: Option<String>| StoreSite {
        worker_id: worker_id.to_string(),
        host: machine_file("/proc/sys/kernel/hostname"),
        boot_id: machine_file("/proc/sys/kernel/random/boot_id"),
        store,
        path,
    };
    let kinds = served_kinds();
    match config {
        StoreConfig::Embedded { path, hnsw_ef } => {
            let shared = Arc::new(SharedStore::new(path, *hnsw_ef));
            // Absolute, so a warning names the directory, not the other worker's working directory.
            let shown = std::path::absolute(path)
                .unwrap_or_else(|_| path.clone())
                .display()
                .to_string();
            let found = match shared.placement().await {
                Ok(placement) => {
                    tracing::info!(kinds = %kinds, store = %shown, "worker serves every job kind; the embedded vector store is {placement}");
                    shared
                        .store_id()
                        .map(|id| site(format!("embedded:{id}"), Some(shown)))
                }
                Err(e) => {
                    tracing::warn!(kinds = %kinds, store = %shown, error = %e, "worker serves every job kind, but cannot reach the embedded vector store yet; retrieval jobs will try again");
                    None
                }
            };
            Ok((VectorStore::new(shared), found))
        }
        StoreConfig::Qdrant { url, .. } => {
            let url = ragq::secret::redact_url(url);
            tracing::info!(kinds = %kinds, store = %url, "worker serves every job kind; vectors are on a Qdrant server, which every worker reaches");
            let store = VectorStore::open(config)?;
            Ok((store, Some(site(format!("qdrant:{url}"), None))))
        }
    }
}

/// The kinds, the retrieval ones marked, for the start-up line.
fn served_kinds() -> String {
    kinds::all()
        .iter()
        .map(|(kind, retrieval)| match retrieval {
            true => format!("{} (vector store)", kind.as_str()),
            false => kind.as_str().to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn machine_file(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Records this worker's site in its lease row (taken before this is called) and warns about
/// every live worker whose store cannot work with this one's.
pub async fn record_and_check(pool: &PgPool, site: &StoreSite) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE worker_leases SET host = $2, boot_id = $3, store = $4, store_path = $5 \
         WHERE worker_id = $1",
    )
    .bind(&site.worker_id)
    .bind(&site.host)
    .bind(&site.boot_id)
    .bind(&site.store)
    .bind(&site.path)
    .execute(pool)
    .await?;
    let others: Vec<(String, String, String, String, Option<String>)> = sqlx::query_as(
        "SELECT worker_id, coalesce(host, ''), coalesce(boot_id, ''), store, store_path \
         FROM worker_leases WHERE expires_at > now() AND store IS NOT NULL AND worker_id <> $1",
    )
    .bind(&site.worker_id)
    .fetch_all(pool)
    .await?;
    let others: Vec<StoreSite> = others
        .into_iter()
        .map(|(worker_id, host, boot_id, store, path)| StoreSite {
            worker_id,
            host,
            boot_id,
            store,
            path,
        })
        .collect();
    for problem in conflicts(site, &others) {
        tracing::warn!("{problem}");
    }
    Ok(())
}

/// Why each other worker's store cannot work with this one's (none: they agree).
pub fn conflicts(mine: &StoreSite, others: &[StoreSite]) -> Vec<String> {
    let fix = "give every worker one embedded store directory on one machine, or use a Qdrant server (retrieval.store = \"qdrant\")";
    others
        .iter()
        .filter_map(|other| {
            let who = format!("worker {} on host {}", other.worker_id, other.host);
            let where_ = other.path.as_deref().map_or(String::new(), |p| format!(" at {p}"));
            if other.store != mine.store {
                let theirs = other.store.split(':').next().unwrap_or_default();
                Some(match (mine.store.starts_with("embedded:"), theirs) {
                    (true, "embedded") => format!("{who} uses another embedded vector store{where_}: each process holds its own copy, so documents ingested through one are missing from the other; {fix}"),
                    _ => format!("{who} uses {}{where_} while this worker uses {}: jobs read and write whichever store their worker has; {fix}", other.store, mine.store),
                })
            } else if mine.store.starts_with("embedded:") && other.boot_id != mine.boot_id {
                Some(format!("{who} uses this embedded vector store{where_} from another machine (a network filesystem?): the holder's socket does not reach across machines, so the workers that do not hold it cannot serve retrieval jobs; {fix}"))
            } else {
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(worker: &str, boot: &str, store: &str) -> StoreSite {
        StoreSite {
            worker_id: worker.into(),
            host: format!("host-{boot}"),
            boot_id: boot.into(),
            store: store.into(),
            path: Some("/var/lib/ragq/vectors".into()),
        }
    }

    #[test]
    fn workers_of_one_machine_on_one_store_agree() {
        let mine = site("w1", "a", "embedded:1");
        assert!(conflicts(&mine, &[site("w2", "a", "embedded:1")]).is_empty());
        let qdrant = site("w1", "a", "qdrant:http://q:6334");
        assert!(conflicts(&qdrant, &[site("w2", "b", "qdrant:http://q:6334")]).is_empty());
    }

    #[test]
    fn separate_copies_and_other_machines_are_named() {
        let mine = site("w1", "a", "embedded:1");
        let copy = conflicts(&mine, &[site("w2", "b", "embedded:2")]);
        assert_eq!(copy.len(), 1);
        assert!(copy[0].contains("worker w2 on host host-b uses another embedded vector store at /var/lib/ragq/vectors"), "{}", copy[0]);
        let remote = conflicts(&mine, &[site("w3", "c", "embedded:1")]);
        assert!(remote[0].contains("from another machine"), "{}", remote[0]);
        let mixed = conflicts(&mine, &[site("w4", "a", "qdrant:http://q:6334")]);
        assert!(
            mixed[0].contains("uses qdrant:http://q:6334"),
            "{}",
            mixed[0]
        );
    }
}
