//! Bring your own key, as the router sees it: the tenant's own keys by provider, and the rule for
//! when a refused key may fall back to the operator's.

use std::collections::HashMap;

use crate::providers::ProviderError;
use crate::secret::Secret;

/// A tenant's key for one provider.
#[derive(Debug, Clone)]
pub struct OwnKey {
    pub key: Secret,
    /// When the provider refuses the key, the call is made again with the operator's.
    pub allow_fallback: bool,
}

/// A tenant's keys, by provider name.
#[derive(Debug, Clone, Default)]
pub struct OwnKeys(HashMap<String, OwnKey>);

impl OwnKeys {
    pub fn insert(&mut self, provider: String, key: OwnKey) {
        self.0.insert(provider, key);
    }

    pub fn get(&self, provider: &str) -> Option<&OwnKey> {
        self.0.get(provider)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Whether a failure says the tenant's key is refused (invalid, unpaid, forbidden, or out of
/// quota after the router's retries): the failure that may fall back to the operator's key, and
/// that must not count against the model's health (it says nothing about the model).
pub fn refuses_key(error: &ProviderError) -> bool {
    matches!(
        error,
        ProviderError::Status {
            status: 401 | 402 | 403 | 429,
            ..
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_key_refusals_fall_back() {
        let status = |status| ProviderError::Status {
            provider: "p".into(),
            status,
            message: String::new(),
            retry_after: None,
        };
        assert!(refuses_key(&status(401)) && refuses_key(&status(429)));
        assert!(!refuses_key(&status(500)) && !refuses_key(&status(400)));
    }
}
