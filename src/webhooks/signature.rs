//! Standard Webhooks signatures: `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`, where the
//! key is the base64 part of the tenant's `whsec_` secret.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("webhook secret must be `whsec_` followed by base64")]
    BadSecret,
    #[error("timestamp is outside the tolerance window")]
    Stale,
    #[error("no signature matches")]
    Mismatch,
}

fn key_bytes(secret: &str) -> Result<Vec<u8>, SignatureError> {
    let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
    STANDARD
        .decode(encoded)
        .map_err(|_| SignatureError::BadSecret)
}

fn mac(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> Result<HmacSha256, SignatureError> {
    let mut mac = HmacSha256::new_from_slice(key).map_err(|_| SignatureError::BadSecret)?;
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Ok(mac)
}

/// The `webhook-signature` header value for one message.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Result<String, SignatureError> {
    let key = key_bytes(secret)?;
    let tag = mac(&key, id, timestamp, body)?.finalize().into_bytes();
    Ok(format!("v1,{}", STANDARD.encode(tag)))
}

/// The header value signed with each of `secrets`, space-separated (the Standard Webhooks header
/// holds several so receivers can move between secrets without a gap).
pub fn sign_all(
    secrets: &[crate::secret::Secret],
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<String, SignatureError> {
    let signatures: Result<Vec<String>, _> = (secrets.iter())
        .map(|s| sign(s.expose(), id, timestamp, body))
        .collect();
    Ok(signatures?.join(" "))
}

/// Verifies a received webhook as a receiver would: any `v1` signature in the space-separated header
/// may match, in constant time, and the timestamp must be within `tolerance_secs` of `now`.
pub fn verify(
    secret: &str,
    id: &str,
    timestamp: i64,
    signature_header: &str,
    body: &[u8],
    now: i64,
    tolerance_secs: i64,
) -> Result<(), SignatureError> {
    if (now - timestamp).abs() > tolerance_secs {
        return Err(SignatureError::Stale);
    }
    let key = key_bytes(secret)?;
    for candidate in signature_header.split(' ') {
        let Some(encoded) = candidate.strip_prefix("v1,") else {
            continue;
        };
        let Ok(expected) = STANDARD.decode(encoded) else {
            continue;
        };
        if mac(&key, id, timestamp, body)?
            .verify_slice(&expected)
            .is_ok()
        {
            return Ok(());
        }
    }
    Err(SignatureError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Test vector from the Standard Webhooks specification's reference libraries.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: i64 = 1614265330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const EXPECTED: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn matches_the_specification_vector() {
        assert_eq!(sign(SECRET, ID, TS, BODY).expect("sign"), EXPECTED);
    }

    #[test]
    fn verify_accepts_good_and_rejects_tampered_or_stale() {
        let header = format!("v1,bogus {EXPECTED}");
        assert_eq!(verify(SECRET, ID, TS, &header, BODY, TS + 10, 300), Ok(()));
        assert_eq!(
            verify(SECRET, ID, TS, EXPECTED, b"{}", TS, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(SECRET, ID, TS, EXPECTED, BODY, TS + 301, 300),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            sign("whsec_!!", ID, TS, BODY),
            Err(SignatureError::BadSecret)
        );
    }
}
