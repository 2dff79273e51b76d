//! Secrets at rest: webhook secrets (and tenants' provider keys) are sealed with XChaCha20-Poly1305
//! before they reach Postgres, under a 256-bit key the operator keeps outside the database.
//!
//! A sealed value reads `enc:v1:<key id>:<base64(nonce ‖ ciphertext)>`. The key id (the first 8
//! hex digits of the key's SHA-256) says which key sealed it, so a keyring of the current key and
//! retired ones opens everything while `ragq secrets reencrypt` moves rows to the current key. The
//! nonce is random (24 bytes: no counter to keep across processes). Each value is bound to where
//! it is stored (`tenants.webhook_secret:acme`) as associated data, so a sealed value copied into
//! another row or another tenant does not open.
//!
//! Without a key (`secrets.key_env` / `secrets.key_file` unset) values are stored in clear; every
//! process says so at start. Values stored in clear are still read, and sealed by the next
//! migration once a key is configured.

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::secret::Secret;

const PREFIX: &str = "enc:v1:";
const NONCE_LEN: usize = 24;

/// One sealing key and its id.
struct SealingKey {
    id: String,
    cipher: XChaCha20Poly1305,
}

impl SealingKey {
    fn new(bytes: &[u8; 32]) -> Self {
        Self {
            id: hex::encode(&Sha256::digest(bytes)[..4]),
            cipher: XChaCha20Poly1305::new(bytes.into()),
        }
    }
}

/// The current sealing key (none: store in clear) and retired ones that still open old values.
#[derive(Clone, Default)]
pub struct Keyring {
    current: Option<Arc<SealingKey>>,
    retired: Vec<Arc<SealingKey>>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("current", &self.current_id())
            .field(
                "retired",
                &self.retired.iter().map(|k| &k.id).collect::<Vec<_>>(),
            )
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("sealed under key {0}, which the keyring does not hold (secrets.retired_key_files)")]
    UnknownKey(String),
    #[error("a sealed value does not open: corrupt, or moved from another row")]
    Corrupt,
    #[error("a secret is sealed but no key is configured (secrets.key_env or secrets.key_file)")]
    NoKey,
}

impl Keyring {
    /// A keyring that stores values in clear (no key configured).
    pub fn plaintext() -> Self {
        Self::default()
    }

    /// A keyring sealing with `current`, also opening values sealed with `retired`.
    pub fn new(current: Option<[u8; 32]>, retired: &[[u8; 32]]) -> Self {
        Self {
            current: current.map(|k| Arc::new(SealingKey::new(&k))),
            retired: retired
                .iter()
                .map(|k| Arc::new(SealingKey::new(k)))
                .collect(),
        }
    }

    /// Reads a key as the operator writes it: 32 bytes in base64 (what `ragq secrets new-key`
    /// prints) or 64 hex digits, surrounding whitespace ignored.
    pub fn parse_key(text: &str) -> Result<[u8; 32], String> {
        let text = text.trim();
        let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(text).map_err(|e| e.to_string())?
        } else {
            STANDARD
                .decode(text)
                .map_err(|_| "a sealing key is 32 bytes in base64 or 64 hex digits".to_string())?
        };
        bytes
            .try_into()
            .map_err(|b: Vec<u8>| format!("a sealing key is 32 bytes, not {}", b.len()))
    }

    /// A new random key in base64, for `ragq secrets new-key`.
    pub fn generate_key() -> String {
        let mut key = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut key);
        STANDARD.encode(key)
    }

    /// The id of the key values are sealed with now (none: stored in clear).
    pub fn current_id(&self) -> Option<&str> {
        self.current.as_deref().map(|k| k.id.as_str())
    }

    /// Seals `secret` for the place `context` names; in clear without a current key.
    pub fn seal(&self, secret: &str, context: &str) -> String {
        let Some(key) = &self.current else {
            return secret.to_string();
        };
        let mut nonce = [0u8; NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        let payload = Payload {
            msg: secret.as_bytes(),
            aad: context.as_bytes(),
        };
        // Encryption fails only for messages beyond 256 GiB; a secret is a few dozen bytes.
        let sealed = key
            .cipher
            .encrypt(XNonce::from_slice(&nonce), payload)
            .unwrap_or_default();
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&sealed);
        format!("{PREFIX}{}:{}", key.id, STANDARD.encode(blob))
    }

    /// Opens a stored value (sealed, or in clear from before a key was configured).
    pub fn open(&self, stored: &str, context: &str) -> Result<Secret, SealError> {
        let Some(rest) = stored.strip_prefix(PREFIX) else {
            return Ok(Secret::new(stored));
        };
        let (id, blob) = rest.split_once(':').ok_or(SealError::Corrupt)?;
        let key = (self.current.iter().chain(&self.retired))
            .find(|k| k.id == id)
            .ok_or_else(|| match self.current {
                None if self.retired.is_empty() => SealError::NoKey,
                _ => SealError::UnknownKey(id.to_string()),
            })?;
        let blob = STANDARD.decode(blob).map_err(|_| SealError::Corrupt)?;
        if blob.len() < NONCE_LEN {
            return Err(SealError::Corrupt);
        }
        let (nonce, sealed) = blob.split_at(NONCE_LEN);
        let payload = Payload {
            msg: sealed,
            aad: context.as_bytes(),
        };
        let clear = (key.cipher)
            .decrypt(XNonce::from_slice(nonce), payload)
            .map_err(|_| SealError::Corrupt)?;
        String::from_utf8(clear)
            .map(Secret::new)
            .map_err(|_| SealError::Corrupt)
    }

    /// Whether a stored value is as this keyring would store it now (sealed under the current
    /// key, or in clear when there is none): what re-encryption leaves alone.
    pub fn is_current(&self, stored: &str) -> bool {
        match (&self.current, stored.strip_prefix(PREFIX)) {
            (None, rest) => rest.is_none(),
            (Some(key), Some(rest)) => rest.split_once(':').is_some_and(|(id, _)| id == key.id),
            (Some(_), None) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_in_their_place_only() {
        let ring = Keyring::new(Some([7; 32]), &[]);
        let sealed = ring.seal("whsec_abc", "tenants.webhook_secret:acme");
        assert!(
            sealed.starts_with("enc:v1:") && !sealed.contains("abc"),
            "{sealed}"
        );
        assert_ne!(
            sealed,
            ring.seal("whsec_abc", "tenants.webhook_secret:acme"),
            "random nonce"
        );
        let opened = ring.open(&sealed, "tenants.webhook_secret:acme").unwrap();
        assert_eq!(opened.expose(), "whsec_abc");
        assert_eq!(
            ring.open(&sealed, "tenants.webhook_secret:globex")
                .unwrap_err(),
            SealError::Corrupt
        );
        let tampered = format!("{}A", &sealed[..sealed.len() - 1]);
        assert!(ring.open(&tampered, "tenants.webhook_secret:acme").is_err());
        assert!(ring.is_current(&sealed));
    }

    #[test]
    fn retired_keys_open_old_values_and_clear_values_still_read() {
        let old = Keyring::new(Some([1; 32]), &[]);
        let sealed = old.seal("whsec_x", "c");
        let rotated = Keyring::new(Some([2; 32]), &[[1; 32]]);
        assert_eq!(rotated.open(&sealed, "c").unwrap().expose(), "whsec_x");
        assert!(!rotated.is_current(&sealed));
        let without = Keyring::new(Some([2; 32]), &[]);
        assert!(matches!(
            without.open(&sealed, "c"),
            Err(SealError::UnknownKey(_))
        ));
        assert_eq!(
            Keyring::plaintext().open(&sealed, "c").unwrap_err(),
            SealError::NoKey
        );
        assert_eq!(
            rotated.open("whsec_clear", "c").unwrap().expose(),
            "whsec_clear"
        );
        assert!(!rotated.is_current("whsec_clear"));
        assert!(Keyring::plaintext().is_current("whsec_clear"));
        assert_eq!(Keyring::plaintext().seal("whsec_y", "c"), "whsec_y");
    }

    #[test]
    fn keys_parse_from_base64_or_hex() {
        let b64 = Keyring::generate_key();
        assert!(Keyring::parse_key(&format!(" {b64}\n")).is_ok());
        assert_eq!(Keyring::parse_key(&"ab".repeat(32)).unwrap(), [0xab; 32]);
        assert!(Keyring::parse_key("c2hvcnQ=")
            .unwrap_err()
            .contains("32 bytes"));
        assert!(Keyring::parse_key("not a key!").is_err());
    }
}
