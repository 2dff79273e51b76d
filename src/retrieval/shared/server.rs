//! The holder's side: a Unix socket in the store's directory on which the process holding the
//! embedded store runs other workers' operations. Each connection's requests run concurrently and
//! are answered as they finish; the store is held weakly, so closing the holder's [`SharedStore`]
//! (super::SharedStore) releases its lock at once, whatever connections are open.

use std::path::Path;
use std::sync::Weak;

use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::wire::{self, Envelope, ReplyEnvelope, Request};
use crate::retrieval::embedded::EmbeddedStore;
use crate::retrieval::StoreError;

/// Binds `socket` (replacing a dead holder's file: whoever holds the store's lock owns the name)
/// and serves `store` on it until `cancel`.
pub fn listen(
    store: Weak<EmbeddedStore>,
    socket: &Path,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    match std::fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(socket)?;
    // The socket gives what the directory gives: every tenant's chunks. Only this user may use it.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    tokio::spawn(accept(listener, store, cancel));
    Ok(())
}

async fn accept(listener: UnixListener, store: Weak<EmbeddedStore>, cancel: CancellationToken) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve(stream, store.clone(), cancel.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot accept a worker on the vector store socket");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Serves one worker's connection until it closes or the holder stops.
async fn serve(stream: UnixStream, store: Weak<EmbeddedStore>, cancel: CancellationToken) {
    let peer_pid = stream.peer_cred().ok().and_then(|c| c.pid());
    tracing::info!(
        peer_pid,
        "another worker reaches the vector store through this process"
    );
    let (mut input, mut output) = stream.into_split();
    let (replies, mut outgoing) = mpsc::channel::<Vec<u8>>(256);
    let mut requests = JoinSet::new();
    let mut served: u64 = 0;
    let ended = loop {
        tokio::select! {
            _ = cancel.cancelled() => break "the holder is closing the store",
            frame = wire::read_frame(&mut input) => match frame {
                Ok(Some(frame)) => {
                    // A frame that is not a request (another version of ragq on the other end)
                    // cannot be answered by id: the connection closes, and the worker says why.
                    let Ok(request) = serde_json::from_slice::<Envelope<Request>>(&frame) else {
                        break "the worker sent an unreadable request";
                    };
                    served += 1;
                    let (replies, store) = (replies.clone(), store.clone());
                    requests.spawn(async move {
                        if let Some(reply) = answer(&store, request).await {
                            let _ = replies.send(reply).await;
                        }
                    });
                }
                Ok(None) => break "the worker closed the connection",
                Err(_) => break "the connection failed",
            },
            Some(reply) = outgoing.recv() => {
                if wire::write_frame(&mut output, &reply).await.is_err() {
                    break "the connection failed";
                }
            }
            Some(_) = requests.join_next(), if !requests.is_empty() => {}
        }
    };
    tracing::info!(
        peer_pid,
        requests = served,
        ended,
        "a worker stopped reaching the vector store through this process"
    );
}

/// Runs one request and encodes its reply.
async fn answer(store: &Weak<EmbeddedStore>, request: Envelope<Request>) -> Option<Vec<u8>> {
    // A closed store is not an answer: the connection is closing too, and the worker sends the
    // request again to whoever holds the store next.
    let store = store.upgrade()?;
    let result = wire::execute(&store, request.body).await;
    let encoded = wire::encode(&ReplyEnvelope {
        id: request.id,
        body: result,
    });
    // A reply that cannot be encoded is answered with why, so the worker does not wait it out.
    let fallback = |e: StoreError| {
        wire::encode(&ReplyEnvelope {
            id: request.id,
            body: Err(e),
        })
    };
    encoded.or_else(fallback).ok()
}
