//! What crosses the holder's socket: vector store operations as owned requests, their replies, and
//! the frames that carry them (a 4-byte big-endian length, then JSON). Each request carries an id
//! its reply repeats, so one connection carries many operations at once.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::retrieval::embedded::EmbeddedStore;
use crate::retrieval::{ChunkPoint, Hit, MetadataFilter, SearchQuery, StoreError};

/// The largest frame either side accepts: an ingest job's chunks with their vectors fit many
/// times over; anything larger is a corrupt stream, not a request.
const MAX_FRAME_BYTES: usize = 512 << 20;

/// One vector store operation, owned so it can be sent again to a new holder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    EnsureCollection {
        name: String,
        dimension: usize,
    },
    ReplaceDocument {
        collection: String,
        tenant: String,
        document_id: String,
        chunks: Vec<ChunkPoint>,
    },
    DeleteDocuments {
        collection: String,
        tenant: String,
        document_ids: Vec<String>,
    },
    Search {
        collection: String,
        query: OwnedQuery,
    },
    Count {
        collection: String,
        tenant: String,
    },
    EraseTenant {
        collection: String,
        tenant: String,
    },
    Flush {
        collection: String,
    },
}

/// A [`SearchQuery`] that owns its parts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OwnedQuery {
    pub tenant: String,
    pub vector: Vec<f32>,
    pub top_k: usize,
    pub score_threshold: Option<f32>,
    pub filter: MetadataFilter,
    pub exact: bool,
}

impl OwnedQuery {
    pub fn of(query: &SearchQuery<'_>) -> Self {
        Self {
            tenant: query.tenant.to_string(),
            vector: query.vector.to_vec(),
            top_k: query.top_k,
            score_threshold: query.score_threshold,
            filter: query.filter.clone(),
            exact: query.exact,
        }
    }

    pub fn as_query(&self) -> SearchQuery<'_> {
        SearchQuery {
            tenant: &self.tenant,
            vector: &self.vector,
            top_k: self.top_k,
            score_threshold: self.score_threshold,
            filter: &self.filter,
            exact: self.exact,
        }
    }
}

/// What an operation answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    Done,
    Hits(Vec<Hit>),
    Count(u64),
}

impl Reply {
    pub fn done(self) -> Result<(), StoreError> {
        match self {
            Self::Done => Ok(()),
            other => Err(mismatch(&other)),
        }
    }

    pub fn hits(self) -> Result<Vec<Hit>, StoreError> {
        match self {
            Self::Hits(hits) => Ok(hits),
            other => Err(mismatch(&other)),
        }
    }

    pub fn count(self) -> Result<u64, StoreError> {
        match self {
            Self::Count(n) => Ok(n),
            other => Err(mismatch(&other)),
        }
    }
}

fn mismatch(reply: &Reply) -> StoreError {
    let kind = match reply {
        Reply::Done => "done",
        Reply::Hits(_) => "hits",
        Reply::Count(_) => "count",
    };
    StoreError::Unavailable(format!(
        "the vector store's holder answered `{kind}` to another operation"
    ))
}

/// A request or a reply with the id that pairs them.
#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub id: u64,
    pub body: T,
}

/// A reply as it travels: the operation's result.
pub type ReplyEnvelope = Envelope<Result<Reply, StoreError>>;

/// Runs a request on the store this process holds.
pub async fn execute(store: &EmbeddedStore, request: Request) -> Result<Reply, StoreError> {
    match request {
        Request::EnsureCollection { name, dimension } => store
            .ensure_collection(&name, dimension)
            .await
            .map(|()| Reply::Done),
        Request::ReplaceDocument {
            collection,
            tenant,
            document_id,
            chunks,
        } => store
            .replace_document(&collection, &tenant, &document_id, chunks)
            .await
            .map(|()| Reply::Done),
        Request::DeleteDocuments {
            collection,
            tenant,
            document_ids,
        } => store
            .delete_documents(&collection, &tenant, &document_ids)
            .await
            .map(|()| Reply::Done),
        Request::Search { collection, query } => store
            .search(&collection, &query.as_query())
            .await
            .map(Reply::Hits),
        Request::Count { collection, tenant } => {
            store.count(&collection, &tenant).await.map(Reply::Count)
        }
        Request::Flush { collection } => store.flush(&collection).await.map(|()| Reply::Done),
        Request::EraseTenant { collection, tenant } => (store.erase_tenant(&collection, &tenant))
            .await
            .map(|()| Reply::Done),
    }
}

/// Encodes a message as a frame's payload.
pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(message)
        .map_err(|e| StoreError::Invalid(format!("cannot encode a vector store message: {e}")))
}

/// Writes one frame.
pub async fn write_frame(
    out: &mut (impl AsyncWrite + Unpin),
    payload: &[u8],
) -> std::io::Result<()> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|n| *n as usize <= MAX_FRAME_BYTES)
        .ok_or_else(|| too_large(payload.len()))?;
    out.write_all(&len.to_be_bytes()).await?;
    out.write_all(payload).await?;
    out.flush().await
}

/// Reads one frame; `None` at a clean end of stream.
pub async fn read_frame(input: &mut (impl AsyncRead + Unpin)) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match input.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME_BYTES {
        return Err(too_large(len));
    }
    let mut payload = vec![0u8; len];
    input.read_exact(&mut payload).await?;
    Ok(Some(payload))
}

fn too_large(len: usize) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("a {len}-byte vector store frame is over the {MAX_FRAME_BYTES}-byte limit"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retrieval::FilterValue;

    #[tokio::test]
    async fn frames_round_trip_and_refuse_oversized_lengths() {
        let mut filter = MetadataFilter::new();
        filter.insert("lang".into(), FilterValue::AnyText(vec!["en".into()]));
        let request = Envelope {
            id: 7,
            body: Request::Search {
                collection: "docs".into(),
                query: OwnedQuery {
                    tenant: "acme".into(),
                    vector: vec![0.25, -1.5e-7, 3.0],
                    top_k: 4,
                    score_threshold: Some(0.5),
                    filter,
                    exact: false,
                },
            },
        };
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        write_frame(&mut a, &encode(&request).unwrap())
            .await
            .unwrap();
        drop(a);
        let frame = read_frame(&mut b).await.unwrap().unwrap();
        let back: Envelope<Request> = serde_json::from_slice(&frame).unwrap();
        assert_eq!((back.id, back.body), (request.id, request.body));
        assert!(read_frame(&mut b).await.unwrap().is_none(), "clean end");

        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let err = read_frame(&mut b).await.unwrap_err();
        assert!(err.to_string().contains("over the"), "{err}");
    }

    #[test]
    fn a_reply_of_the_wrong_kind_is_an_error_not_a_default() {
        assert_eq!(Reply::Count(3).count(), Ok(3));
        assert!(Reply::Done.hits().is_err());
        assert!(matches!(
            Reply::Hits(vec![]).done(),
            Err(StoreError::Unavailable(m)) if m.contains("`hits`")
        ));
    }
}
