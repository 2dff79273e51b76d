//! The OpenAI embeddings shape (`POST /embeddings`), spoken by OpenAI, most compatible servers and
//! `ragq sim-provider`. Building and parsing are pure functions; the client moves bytes.

use serde::{Deserialize, Serialize};

use super::{ProviderError, Usage};

/// What an embeddings call asks: texts in, one vector each out.
#[derive(Debug, Clone)]
pub struct EmbeddingRequest {
    pub inputs: Vec<String>,
    /// Identifies this call to providers (see `CALL_ID_HEADER`).
    pub call_id: Option<String>,
    /// The tenant's own key for this provider, sent instead of the operator's.
    pub credential: Option<crate::secret::Secret>,
}

/// The vectors, in input order, and the tokens the provider billed.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingResponse {
    pub vectors: Vec<Vec<f32>>,
    pub usage: Usage,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct WireEmbeddingRequest {
    pub model: String,
    pub input: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct WireEmbeddingResponse {
    pub data: Vec<WireEmbedding>,
    pub usage: Option<WireEmbeddingUsage>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct WireEmbedding {
    pub index: usize,
    pub embedding: Vec<f32>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct WireEmbeddingUsage {
    pub prompt_tokens: u64,
}

pub fn build_request(model_id: &str, request: &EmbeddingRequest) -> WireEmbeddingRequest {
    WireEmbeddingRequest {
        model: model_id.to_string(),
        input: request.inputs.clone(),
    }
}

/// Reads the vectors back in input order; a response that is missing one, or its usage, is
/// refused rather than guessed.
pub fn parse_response(
    provider: &str,
    inputs: usize,
    body: &[u8],
) -> Result<EmbeddingResponse, ProviderError> {
    let invalid = |message: String| ProviderError::InvalidResponse {
        provider: provider.to_string(),
        message,
    };
    let wire: WireEmbeddingResponse = serde_json::from_slice(body)
        .map_err(|e| invalid(format!("not an embeddings response: {e}")))?;
    let usage = wire
        .usage
        .ok_or_else(|| invalid("no usage reported".into()))?;
    let mut vectors = vec![Vec::new(); inputs];
    for item in wire.data {
        match vectors.get_mut(item.index) {
            Some(slot) => *slot = item.embedding,
            None => {
                return Err(invalid(format!(
                    "embedding index {} out of range",
                    item.index
                )))
            }
        }
    }
    if let Some(i) = vectors.iter().position(Vec::is_empty) {
        return Err(invalid(format!("no embedding for input {i}")));
    }
    Ok(EmbeddingResponse {
        vectors,
        usage: Usage {
            input_tokens: usage.prompt_tokens,
            output_tokens: 0,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_come_back_in_input_order_with_usage() {
        let body = br#"{"data":[{"index":1,"embedding":[0.0,1.0]},{"index":0,"embedding":[1.0,0.0]}],"usage":{"prompt_tokens":7,"total_tokens":7}}"#;
        let r = parse_response("p", 2, body).expect("parsed");
        assert_eq!(r.vectors, vec![vec![1.0, 0.0], vec![0.0, 1.0]]);
        assert_eq!(r.usage.input_tokens, 7);
        let missing = br#"{"data":[{"index":0,"embedding":[1.0]}],"usage":{"prompt_tokens":1}}"#;
        assert!(parse_response("p", 2, missing).is_err());
        let no_usage = br#"{"data":[{"index":0,"embedding":[1.0]}]}"#;
        assert!(parse_response("p", 1, no_usage).is_err());
    }
}
