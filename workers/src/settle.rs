//! How a delivery ends: pure functions from what happened (the claim's answer, the attempt's
//! result, the commit's answer) to what is committed and how the delivery is settled.
//!
//! | what happened                                  | committed              | delivery                   |
//! | ---------------------------------------------- | ---------------------- | -------------------------- |
//! | claim: outcome already committed               | nothing                | ack                        |
//! | claim: the job runs under another delivery    | nothing                | retry queue (first tier)   |
//! | claim: the database refused the job's rows     | nothing                | dead-letter with reason    |
//! | claim: database unreachable                    | nothing                | left unacked (redelivered) |
//! | attempt succeeded                              | `succeeded`            | ack                        |
//! | permanent failure                              | `failed`               | ack                        |
//! | retryable failure, attempts left               | `queued` (for a retry) | retry queue (its delay)    |
//! | retryable failure, attempts spent              | `failed`               | ack                        |
//! | panic, attempts left                           | `queued`               | retry queue                |
//! | panic, attempts spent                          | `failed`               | dead-letter with reason    |
//! | outcome fenced (another delivery took over)    | nothing                | ack                        |
//! | outcome not committed (database unreachable)   | nothing                | left unacked (redelivered) |

use std::time::Duration;

use serde_json::Value;

use ragq::spend::budget::Admission;

use crate::commit::{Claim, CommitError, Finish, FinishResult};
use crate::error::JobError;

/// How a delivery is settled once its processing is over.
#[derive(Debug, Clone, PartialEq)]
pub enum Disposition {
    Ack,
    /// Publish to the dead-letter queue with this reason, then ack.
    DeadLetter(String),
    /// Publish to the retry queue whose delay is nearest, then ack.
    Retry(Duration),
    /// Leave it unacked; the broker redelivers when the channel closes.
    Abandon,
}

/// How many attempts a job gets and how long it waits between them.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy<'a> {
    pub max_attempts: i32,
    /// The retry queues' delays, shortest first; attempt `n` waits `delays[n - 1]` (the last tier
    /// for every attempt beyond).
    pub delays: &'a [Duration],
}

impl RetryPolicy<'_> {
    /// Delay before the attempt after `attempt`.
    pub fn delay_after(&self, attempt: i32) -> Duration {
        let step = usize::try_from(attempt.max(1) - 1).unwrap_or(0);
        let last = self.delays.len().saturating_sub(1);
        self.delays
            .get(step.min(last))
            .copied()
            .unwrap_or(Duration::from_secs(1))
    }

    /// Delay for a delivery handed back without spending an attempt.
    pub fn shortest(&self) -> Duration {
        self.delay_after(1)
    }
}

/// The attempt a claim granted, or how to settle the delivery when it granted none.
pub fn on_claim(
    claim: Result<Claim, CommitError>,
    policy: RetryPolicy<'_>,
) -> Result<(i32, Admission), Disposition> {
    match claim {
        Ok(Claim::Run { attempt, admission }) => Ok((attempt, admission)),
        Ok(Claim::AlreadyFinished) => Err(Disposition::Ack),
        Ok(Claim::Busy) => Err(Disposition::Retry(policy.shortest())),
        // The database refused this job's rows: retrying cannot help, so it is poison.
        Err(CommitError::Refused(reason)) => Err(Disposition::DeadLetter(format!(
            "refused: the database rejected the job: {reason}"
        ))),
        Err(CommitError::Unavailable(_)) => Err(Disposition::Abandon),
    }
}

/// Whether a granted attempt may run, and under which per-call cost cap (a budget downgrade).
/// A job claimed more often than it has attempts (its holders died mid-attempt) fails for good.
pub fn admit(
    attempt: i32,
    admission: Admission,
    policy: RetryPolicy<'_>,
) -> Result<Option<i64>, JobError> {
    let max = policy.max_attempts;
    if attempt > max {
        return Err(JobError::permanent(
            "attempts_exhausted",
            format!("claimed {attempt} times (limit {max}); previous attempts did not finish"),
        ));
    }
    match admission {
        Admission::Denied { reason } => Err(JobError::permanent("budget_exceeded", reason)),
        Admission::Admitted { cost_cap_micros } => Ok(cost_cap_micros),
    }
}

/// What to commit after an attempt, and how to settle the delivery once it is committed.
#[derive(Debug, Clone, PartialEq)]
pub struct Settlement {
    pub finish: Finish,
    pub then: Disposition,
}

/// The settlement of attempt number `attempt` that ended with `result`.
pub fn after_attempt(
    result: Result<Value, JobError>,
    attempt: i32,
    policy: RetryPolicy<'_>,
) -> Settlement {
    let error = match result {
        Ok(value) => {
            return Settlement {
                finish: Finish::Succeeded(value),
                then: Disposition::Ack,
            }
        }
        Err(e) => e,
    };
    let code = error.code().to_string();
    if error.is_retryable() && attempt < policy.max_attempts {
        let delay = error
            .retry_after()
            .unwrap_or_else(|| policy.delay_after(attempt));
        return Settlement {
            finish: Finish::Retry {
                code,
                message: error.message().to_string(),
            },
            then: Disposition::Retry(delay),
        };
    }
    let message = match &error {
        JobError::Permanent { message, .. } => message.clone(),
        _ => format!("attempts exhausted; last error: {}", error.message()),
    };
    let then = match &error {
        JobError::Panicked { .. } => Disposition::DeadLetter(format!("{code}: {message}")),
        _ => Disposition::Ack,
    };
    Settlement {
        finish: Finish::Failed { code, message },
        then,
    }
}

/// How to settle the delivery once the outcome's commit answered.
pub fn after_commit(commit: &Result<FinishResult, CommitError>, then: Disposition) -> Disposition {
    match commit {
        Ok(FinishResult::Committed { .. }) => then,
        // Another delivery took the job over; the outcome is theirs to write.
        Ok(FinishResult::Fenced) => Disposition::Ack,
        Err(_) => Disposition::Abandon,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const DELAYS: [Duration; 3] = [
        Duration::from_secs(1),
        Duration::from_secs(10),
        Duration::from_secs(60),
    ];

    fn policy() -> RetryPolicy<'static> {
        RetryPolicy {
            max_attempts: 3,
            delays: &DELAYS,
        }
    }

    fn transient(retry_after: Option<Duration>) -> JobError {
        JobError::Transient {
            code: "provider_unavailable",
            message: "HTTP 503".into(),
            retry_after,
        }
    }

    #[test]
    fn each_claim_answer_has_one_settlement() {
        let admitted = Admission::Admitted {
            cost_cap_micros: None,
        };
        let run = Ok(Claim::Run {
            attempt: 2,
            admission: admitted.clone(),
        });
        assert_eq!(on_claim(run, policy()), Ok((2, admitted)));
        assert_eq!(
            on_claim(Ok(Claim::AlreadyFinished), policy()),
            Err(Disposition::Ack)
        );
        assert_eq!(
            on_claim(Ok(Claim::Busy), policy()),
            Err(Disposition::Retry(DELAYS[0]))
        );
        let refused = on_claim(Err(CommitError::Refused("bad row".into())), policy());
        assert!(matches!(refused, Err(Disposition::DeadLetter(r)) if r.contains("bad row")));
        let down = on_claim(Err(CommitError::Unavailable("gone".into())), policy());
        assert_eq!(down, Err(Disposition::Abandon));
    }

    #[test]
    fn admission_fails_jobs_over_budget_or_claimed_too_often() {
        let capped = Admission::Admitted {
            cost_cap_micros: Some(500),
        };
        assert_eq!(admit(1, capped.clone(), policy()), Ok(Some(500)));
        let e = admit(4, capped, policy()).unwrap_err();
        assert_eq!(e.code(), "attempts_exhausted");
        assert!(!e.is_retryable());
        let denied = Admission::Denied {
            reason: "hard limit".into(),
        };
        assert_eq!(
            admit(1, denied, policy()).unwrap_err().code(),
            "budget_exceeded"
        );
    }

    #[test]
    fn success_commits_and_acks() {
        let s = after_attempt(Ok(json!({"ok": 1})), 1, policy());
        assert_eq!(s.finish, Finish::Succeeded(json!({"ok": 1})));
        assert_eq!(s.then, Disposition::Ack);
    }

    #[test]
    fn permanent_failure_fails_at_once_whatever_the_attempt() {
        let s = after_attempt(Err(JobError::invalid("no prompts")), 1, policy());
        assert_eq!(
            s.finish,
            Finish::Failed {
                code: "invalid_input".into(),
                message: "no prompts".into()
            }
        );
        assert_eq!(s.then, Disposition::Ack);
    }

    #[test]
    fn retryable_failure_waits_its_tier_or_the_providers_delay() {
        let s = after_attempt(Err(transient(None)), 2, policy());
        assert!(
            matches!(s.finish, Finish::Retry { ref code, .. } if code == "provider_unavailable")
        );
        assert_eq!(s.then, Disposition::Retry(DELAYS[1]));
        let asked = Duration::from_secs(7);
        let s = after_attempt(Err(transient(Some(asked))), 1, policy());
        assert_eq!(s.then, Disposition::Retry(asked));
    }

    #[test]
    fn retryable_failure_on_the_last_attempt_fails_naming_the_last_error() {
        let s = after_attempt(Err(transient(None)), 3, policy());
        let Finish::Failed { code, message } = s.finish else {
            panic!("expected failure, got {:?}", s.finish);
        };
        assert_eq!(code, "provider_unavailable");
        assert_eq!(message, "attempts exhausted; last error: HTTP 503");
        assert_eq!(s.then, Disposition::Ack);
    }

    #[test]
    fn a_panic_is_retried_then_failed_and_dead_lettered() {
        let panic = || JobError::from_panic(&"index out of bounds");
        let s = after_attempt(Err(panic()), 1, policy());
        assert_eq!(s.then, Disposition::Retry(DELAYS[0]));
        let s = after_attempt(Err(panic()), 3, policy());
        assert!(matches!(s.finish, Finish::Failed { ref code, .. } if code == "handler_panicked"));
        assert!(
            matches!(&s.then, Disposition::DeadLetter(r) if r.contains("index out of bounds")),
            "{:?}",
            s.then
        );
    }

    #[test]
    fn only_a_committed_outcome_keeps_its_settlement() {
        let then = Disposition::Retry(DELAYS[0]);
        assert_eq!(
            after_commit(
                &Ok(FinishResult::Committed {
                    accepted_at: chrono::Utc::now()
                }),
                then.clone()
            ),
            then
        );
        assert_eq!(
            after_commit(&Ok(FinishResult::Fenced), then.clone()),
            Disposition::Ack
        );
        let down = Err(CommitError::Unavailable("gone".into()));
        assert_eq!(after_commit(&down, then), Disposition::Abandon);
    }

    #[test]
    fn attempts_beyond_the_tiers_wait_the_longest() {
        assert_eq!(policy().delay_after(0), DELAYS[0]);
        assert_eq!(policy().delay_after(9), DELAYS[2]);
        let none = RetryPolicy {
            max_attempts: 1,
            delays: &[],
        };
        assert_eq!(none.delay_after(1), Duration::from_secs(1));
    }
}
