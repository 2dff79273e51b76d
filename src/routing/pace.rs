//! Pacing calls under a model's rate limits (requests and tokens per minute), shared fairly by
//! the live workers.
//!
//! Each limit is a GCRA pacer (the virtual-scheduling form of a token bucket): a call reserves
//! its slot at once and sleeps until it, so waiters are served in order without polling, and a
//! burst of one second's share passes unpaced. Every worker paces at `limit × share`, where the
//! share is 1 / live workers, learned from a heartbeat table (`routing::membership`) every few
//! seconds, never per call. A reservation further away than the caller can wait is refused and
//! the call goes elsewhere, or back to the queue with that delay. A 429 with Retry-After pauses
//! the model for every call of this worker.

use std::time::{Duration, Instant};

/// One limit, in units (requests or tokens) per second.
#[derive(Debug, Clone)]
pub struct Pacer {
    per_minute: f64,
    per_sec: f64,
    /// The theoretical arrival time of the next unit, as an offset from `base`.
    tat: Duration,
    base: Instant,
}

impl Pacer {
    pub fn new(per_minute: f64, share: f64, now: Instant) -> Self {
        Self {
            per_minute,
            per_sec: per_minute * share / 60.0,
            tat: Duration::ZERO,
            base: now,
        }
    }

    /// Rescales to this worker's share of the limit; reservations already made stand.
    pub fn set_share(&mut self, share: f64) {
        self.per_sec = self.per_minute * share / 60.0;
    }

    /// How long until `cost` units may be spent, without reserving them.
    pub fn wait_for(&self, cost: f64, now: Instant) -> Duration {
        let now = now.saturating_duration_since(self.base);
        let tat = self.tat.max(now);
        // A call larger than the burst passes when the pacer is idle, then pays its debt.
        let burst = self.burst_window().max(self.interval(cost));
        let at = tat + self.interval(cost);
        at.saturating_sub(now + burst)
    }

    /// Reserves `cost` units; returns how long to wait before spending them, or `Err(wait)` if
    /// that is longer than `max_wait` (then nothing is reserved).
    pub fn reserve(
        &mut self,
        cost: f64,
        now: Instant,
        max_wait: Duration,
    ) -> Result<Duration, Duration> {
        let wait = self.wait_for(cost, now);
        if wait > max_wait {
            return Err(wait);
        }
        let now = now.saturating_duration_since(self.base);
        self.tat = self.tat.max(now) + self.interval(cost);
        Ok(wait)
    }

    /// Nothing may be spent before `until` (a provider's Retry-After).
    pub fn pause_until(&mut self, until: Instant) {
        let at = until.saturating_duration_since(self.base) + self.burst_window();
        self.tat = self.tat.max(at);
    }

    fn interval(&self, cost: f64) -> Duration {
        if self.per_sec <= 0.0 {
            return Duration::from_secs(3600);
        }
        Duration::from_secs_f64(cost / self.per_sec)
    }

    /// One second's share passes as a burst (at least one unit).
    fn burst_window(&self) -> Duration {
        self.interval(self.per_sec.max(1.0))
    }
}

/// A model's request and token pacers (either may be absent: no such limit).
#[derive(Debug, Clone, Default)]
pub struct ModelPace {
    requests: Option<Pacer>,
    tokens: Option<Pacer>,
}

impl ModelPace {
    pub fn new(rpm: Option<u32>, tpm: Option<u64>, share: f64, now: Instant) -> Self {
        Self {
            requests: rpm.map(|r| Pacer::new(f64::from(r), share, now)),
            tokens: tpm.map(|t| Pacer::new(t as f64, share, now)),
        }
    }

    pub fn set_share(&mut self, share: f64) {
        for p in [&mut self.requests, &mut self.tokens].into_iter().flatten() {
            p.set_share(share);
        }
    }

    /// Reserves one request of up to `tokens` tokens under both limits, or neither.
    pub fn reserve(
        &mut self,
        tokens: u64,
        now: Instant,
        max_wait: Duration,
    ) -> Result<Duration, Duration> {
        let need = |p: &Option<Pacer>, cost: f64| {
            p.as_ref().map_or(Duration::ZERO, |p| p.wait_for(cost, now))
        };
        let wait = need(&self.requests, 1.0).max(need(&self.tokens, tokens as f64));
        if wait > max_wait {
            return Err(wait);
        }
        // Both fit within `max_wait`; reserve each (the later one sets the wait).
        let mut longest = Duration::ZERO;
        if let Some(p) = &mut self.requests {
            longest = longest.max(p.reserve(1.0, now, Duration::MAX).unwrap_or(Duration::ZERO));
        }
        if let Some(p) = &mut self.tokens {
            longest = longest.max(
                p.reserve(tokens as f64, now, Duration::MAX)
                    .unwrap_or(Duration::ZERO),
            );
        }
        Ok(longest)
    }

    pub fn pause_until(&mut self, until: Instant) {
        for p in [&mut self.requests, &mut self.tokens].into_iter().flatten() {
            p.pause_until(until);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn paces_at_the_share_of_the_limit_after_a_one_second_burst() {
        let t0 = Instant::now();
        // 120 per minute, half of it: 1 per second, burst 1.
        let mut p = Pacer::new(120.0, 0.5, t0);
        let waits: Vec<Duration> = (0..4)
            .map(|_| p.reserve(1.0, t0, Duration::MAX).unwrap())
            .collect();
        assert_eq!(waits, vec![Duration::ZERO, SEC, 2 * SEC, 3 * SEC]);
        // Over a long run, no more than the share per second (plus the burst).
        let mut q = Pacer::new(600.0, 0.5, t0);
        let mut spent = 0;
        let mut now = t0;
        while now < t0 + 10 * SEC {
            if q.reserve(1.0, now, Duration::ZERO).is_ok() {
                spent += 1;
            }
            now += Duration::from_millis(10);
        }
        assert!((50..=56).contains(&spent), "{spent} in 10 s at 5/s");
    }

    #[test]
    fn refuses_a_slot_further_than_the_caller_can_wait_and_reserves_nothing() {
        let t0 = Instant::now();
        let mut p = Pacer::new(60.0, 1.0, t0);
        assert_eq!(p.reserve(1.0, t0, Duration::ZERO), Ok(Duration::ZERO));
        assert_eq!(p.reserve(1.0, t0, Duration::from_millis(500)), Err(SEC));
        assert_eq!(p.reserve(1.0, t0 + SEC, Duration::ZERO), Ok(Duration::ZERO));
    }

    #[test]
    fn a_smaller_share_slows_the_pace_and_retry_after_pauses_it() {
        let t0 = Instant::now();
        let mut p = Pacer::new(60.0, 1.0, t0);
        p.set_share(0.25);
        p.reserve(1.0, t0, Duration::MAX).unwrap();
        assert_eq!(
            p.wait_for(1.0, t0),
            Duration::from_secs(4),
            "a quarter of 1/s"
        );
        let mut m = ModelPace::new(Some(6_000), None, 1.0, t0);
        m.pause_until(t0 + 2 * SEC);
        assert!(m.reserve(1, t0, Duration::MAX).unwrap() >= Duration::from_millis(1_990));
    }

    #[test]
    fn tokens_per_minute_bound_large_requests() {
        let t0 = Instant::now();
        // 60,000 tokens a minute: 1,000 a second. A 3,000-token call passes an idle pacer, and
        // the next waits for the tokens the first spent.
        let mut m = ModelPace::new(None, Some(60_000), 1.0, t0);
        assert_eq!(m.reserve(3_000, t0, Duration::MAX), Ok(Duration::ZERO));
        assert_eq!(m.reserve(3_000, t0, Duration::MAX), Ok(3 * SEC));
        assert!(m.reserve(3_000, t0, SEC).is_err());
    }
}
