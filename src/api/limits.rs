//! Bounded abuse of the api: a request rate per API key (429 with Retry-After past it) and a
//! deadline on every request.
//!
//! The rate is a GCRA pacer per presented key (routing's [`Pacer`], the same arithmetic that paces
//! provider calls), a burst of one second's worth. Keys are told apart by a hash of the bearer
//! token, so the limiter holds no secret; requests without one share a bucket. Limits hold per api
//! process: with N replicas behind a balancer a key gets up to N times the rate.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, ApiState};
use crate::routing::pace::Pacer;

/// Keys tracked at most; past it, keys idle for a second (their buckets full again) are dropped.
const MAX_KEYS: usize = 100_000;

/// Requests per second per API key (`api.rate_limit_per_s`; 0: unlimited).
#[derive(Debug)]
pub(crate) struct KeyLimiter {
    per_minute: f64,
    keys: Mutex<HashMap<[u8; 32], Pacer>>,
}

impl KeyLimiter {
    pub(crate) fn new(per_s: u32) -> Self {
        Self {
            per_minute: f64::from(per_s) * 60.0,
            keys: Mutex::new(HashMap::new()),
        }
    }

    /// Admits one request of `key` now, or says how long until it would be admitted.
    fn admit(&self, key: [u8; 32], now: Instant) -> Result<(), Duration> {
        if self.per_minute <= 0.0 {
            return Ok(());
        }
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if keys.len() >= MAX_KEYS && !keys.contains_key(&key) {
            keys.retain(|_, p| p.wait_for(self.per_minute / 60.0, now) > Duration::ZERO);
        }
        let pacer = (keys.entry(key)).or_insert_with(|| Pacer::new(self.per_minute, 1.0, now));
        pacer.reserve(1.0, now, Duration::ZERO).map(|_| ())
    }
}

/// The hash a request's key is counted under (all-zero for requests without one).
fn key_of(request: &Request) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    super::bearer(request.headers()).map_or([0; 32], |k| Sha256::digest(k.as_bytes()).into())
}

/// Middleware: 429 with `Retry-After` past the rate of the presented secret. This guards the
/// database from floods of unknown keys; [`KeyLimiter::admit_key`] then holds a known key to
/// the same rate across its secrets, so a rotation's grace period does not double it.
pub(crate) async fn rate_limit(
    State(state): State<Arc<ApiState>>,
    request: Request,
    next: Next,
) -> Response {
    match state.limiter.check(key_of(&request), Instant::now()) {
        Ok(()) => next.run(request).await,
        Err(refusal) => refusal.into_response(),
    }
}

impl KeyLimiter {
    /// Admits one request of the API key `key_id` (whichever of its secrets it came with).
    pub(crate) fn admit_key(&self, key_id: &str) -> Result<(), ApiError> {
        use sha2::{Digest, Sha256};
        let bucket: [u8; 32] = Sha256::digest(format!("id:{key_id}").as_bytes()).into();
        self.check(bucket, Instant::now())
    }

    /// [`KeyLimiter::admit`] as the api answers it: 429 with whole seconds to wait (at least 1).
    fn check(&self, bucket: [u8; 32], now: Instant) -> Result<(), ApiError> {
        self.admit(bucket, now).map_err(|wait| {
            let secs = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
            ApiError::TooManyRequests(
                format!(
                    "more than {} requests per second with this API key; retry in {secs} s",
                    self.per_minute / 60.0
                ),
                secs,
            )
        })
    }
}

/// Middleware: a request still running after `api.request_timeout_ms` gets 503 (a submission
/// may be sent again with the same id: ids are idempotency keys).
pub(crate) async fn deadline(
    State(state): State<Arc<ApiState>>,
    request: Request,
    next: Next,
) -> Response {
    match tokio::time::timeout(state.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::Unavailable(format!(
            "request took longer than {} ms",
            state.request_timeout.as_millis()
        ))
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_gets_a_seconds_burst_then_waits_and_others_are_untouched() {
        let limiter = KeyLimiter::new(5);
        let now = Instant::now();
        let (a, b) = ([1; 32], [2; 32]);
        for i in 0..5 {
            assert!(limiter.admit(a, now).is_ok(), "request {i} of the burst");
        }
        let wait = limiter.admit(a, now).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(200),
            "{wait:?}"
        );
        assert!(
            limiter.admit(b, now).is_ok(),
            "another key has its own bucket"
        );
        assert!(limiter.admit(a, now + Duration::from_millis(200)).is_ok());
        let off = KeyLimiter::new(0);
        assert!((0..1000).all(|_| off.admit(a, now).is_ok()));
    }
}
