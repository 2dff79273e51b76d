//! What the router learns from every call of a model: error rate and latency over a sliding
//! window, and a circuit breaker. Pure state with an injected `now`, so it is tested without
//! sleeping.
//!
//! Breaker: `Closed` until `BREAKER_FAILURES` provider faults in a row (5xx, timeouts, refused
//! connections; never a 4xx, which is the request's fault) open it. `Open` skips the model without
//! a call until the cool-down ends; then `HalfOpen` lets one call through: success closes the
//! breaker, failure opens it again for twice the previous cool-down (capped).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Calls remembered per model.
const WINDOW: usize = 100;
/// Provider faults in a row that open the breaker.
pub const BREAKER_FAILURES: u32 = 5;
pub const COOL_DOWN: Duration = Duration::from_secs(30);
const MAX_COOL_DOWN: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Breaker {
    Closed {
        faults_in_a_row: u32,
    },
    Open {
        until: Instant,
        cool_down: Duration,
    },
    /// One trial call is in flight.
    HalfOpen {
        cool_down: Duration,
    },
}

/// One call in the health window: whether it succeeded, and how long it took.
#[derive(Debug, Clone, Copy)]
struct CallRecord {
    ok: bool,
    latency: Duration,
}

/// One model's record.
#[derive(Debug, Clone)]
pub struct ModelHealth {
    calls: VecDeque<CallRecord>,
    breaker: Breaker,
}

impl Default for ModelHealth {
    fn default() -> Self {
        Self {
            calls: VecDeque::with_capacity(WINDOW),
            breaker: Breaker::Closed { faults_in_a_row: 0 },
        }
    }
}

impl ModelHealth {
    pub fn breaker(&self) -> Breaker {
        self.breaker
    }

    /// Whether a call may go to this model now; an expired open breaker turns half-open and lets
    /// this one call through.
    pub fn admit(&mut self, now: Instant) -> bool {
        match self.breaker {
            Breaker::Closed { .. } => true,
            Breaker::Open { until, cool_down } if now >= until => {
                self.breaker = Breaker::HalfOpen { cool_down };
                true
            }
            Breaker::Open { .. } | Breaker::HalfOpen { .. } => false,
        }
    }

    /// Records a call's outcome: `fault` is a provider fault (not the request's).
    pub fn record(&mut self, now: Instant, ok: bool, fault: bool, latency: Duration) {
        if self.calls.len() == WINDOW {
            self.calls.pop_front();
        }
        self.calls.push_back(CallRecord { ok, latency });
        self.breaker = match (self.breaker, ok, fault) {
            (_, true, _) => Breaker::Closed { faults_in_a_row: 0 },
            (Breaker::HalfOpen { cool_down }, false, true) => {
                let cool_down = (cool_down * 2).min(MAX_COOL_DOWN);
                Breaker::Open {
                    until: now + cool_down,
                    cool_down,
                }
            }
            (Breaker::Closed { faults_in_a_row }, false, true)
                if faults_in_a_row + 1 >= BREAKER_FAILURES =>
            {
                Breaker::Open {
                    until: now + COOL_DOWN,
                    cool_down: COOL_DOWN,
                }
            }
            (Breaker::Closed { faults_in_a_row }, false, true) => Breaker::Closed {
                faults_in_a_row: faults_in_a_row + 1,
            },
            (other, false, _) => other,
        };
    }

    /// Share of failed calls in the window, smoothed so an unknown model is neither perfect nor
    /// hopeless: (failures + 1) / (calls + 20).
    pub fn failure_rate(&self) -> f64 {
        let failures = self.calls.iter().filter(|c| !c.ok).count();
        (failures as f64 + 1.0) / (self.calls.len() as f64 + 20.0)
    }

    /// The 95th percentile latency of successful calls in the window, if any.
    pub fn p95(&self) -> Option<Duration> {
        let mut ok: Vec<Duration> = (self.calls.iter())
            .filter(|c| c.ok)
            .map(|c| c.latency)
            .collect();
        if ok.is_empty() {
            return None;
        }
        ok.sort_unstable();
        Some(ok[(ok.len() - 1) * 95 / 100])
    }
}

/// Expected cost of trying a model first: its cost, plus the chance it fails times what the
/// cheapest alternative would then cost (failed calls are not billed, the fallback is).
pub fn expected_cost(cost: i64, failure_rate: f64, cheapest_other: i64) -> f64 {
    cost as f64 * (1.0 - failure_rate) + failure_rate * cheapest_other as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_in_a_row_open_the_breaker_and_a_cool_down_half_opens_it() {
        let t0 = Instant::now();
        let mut h = ModelHealth::default();
        for _ in 0..BREAKER_FAILURES - 1 {
            h.record(t0, false, true, Duration::ZERO);
        }
        assert!(h.admit(t0), "still closed one fault short");
        h.record(t0, false, false, Duration::ZERO);
        assert!(h.admit(t0), "a 4xx is the request's fault, not the model's");
        h.record(t0, false, true, Duration::ZERO);
        assert!(
            !h.admit(t0 + COOL_DOWN - Duration::from_secs(1)),
            "open: skipped without a call"
        );
        assert!(h.admit(t0 + COOL_DOWN), "half-open: one trial");
        assert!(!h.admit(t0 + COOL_DOWN), "only one trial at a time");
        h.record(t0 + COOL_DOWN, false, true, Duration::ZERO);
        let reopened = t0 + COOL_DOWN;
        assert!(
            !h.admit(reopened + COOL_DOWN),
            "a failed trial doubles the cool-down"
        );
        assert!(h.admit(reopened + 2 * COOL_DOWN));
        h.record(
            reopened + 2 * COOL_DOWN,
            true,
            false,
            Duration::from_millis(5),
        );
        assert_eq!(h.breaker(), Breaker::Closed { faults_in_a_row: 0 });
    }

    #[test]
    fn window_rates_and_latency() {
        let t0 = Instant::now();
        let mut h = ModelHealth::default();
        assert!((h.failure_rate() - 0.05).abs() < 1e-9, "unknown: 1/20");
        for i in 0..200u64 {
            h.record(t0, i % 4 != 0, false, Duration::from_millis(i % 100));
        }
        // The last 100 calls: 25 failures.
        assert!((h.failure_rate() - 26.0 / 120.0).abs() < 1e-9);
        assert_eq!(h.p95(), Some(Duration::from_millis(94)));
    }

    #[test]
    fn expected_cost_charges_a_flaky_model_for_its_fallbacks() {
        // A cheap model failing half the time costs more in expectation than it seems.
        // 100 half the time, else the 300 fallback: 200 expected; 180 that almost never fails wins.
        let cheap = expected_cost(100, 0.5, 300);
        let steady = expected_cost(180, 0.01, 100);
        assert!((cheap - 200.0).abs() < 1e-9);
        assert!(steady < cheap, "{steady} vs {cheap}");
    }
}
