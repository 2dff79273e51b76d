//! How a message and a job end: pure functions from what happened (the intake's answer, the
//! admission's, the attempt's result, the commit's answer) to what is committed and how the
//! delivery is settled.
//!
//! A message is settled when it is taken in; the job then lives in Postgres:
//!
//! | what happened                                  | committed              | delivery                   |
//! | ---------------------------------------------- | ---------------------- | -------------------------- |
//! | intake: queued, or the id was known            | `queued` (if new)      | ack                        |
//! | intake: the database refused the job's rows    | nothing                | dead-letter with reason    |
//! | intake: database unreachable                   | nothing                | left unacked (redelivered) |
//!
//! | what happened to a dispatched attempt          | committed              | then                       |
//! | ---------------------------------------------- | ---------------------- | -------------------------- |
//! | admission fenced (queued again, taken by another) | nothing             | dropped                    |
//! | attempt succeeded                              | `succeeded`            | webhook                    |
//! | permanent failure                              | `failed`               | webhook                    |
//! | retryable failure, attempts left               | `queued`, ready after its delay | —                 |
//! | retryable failure, attempts spent              | `failed`               | webhook                    |
//! | panic, attempts left                           | `queued`, ready after its delay | —                 |
//! | panic, attempts spent                          | `failed`               | webhook, dead letter       |
//! | outcome fenced, or database unreachable        | nothing                | the job is queued again when this worker's lease ends |

use std::time::Duration;

use serde_json::Value;

use ragq::spend::budget::Admission;

use crate::commit::{Admit, CommitError, Finish, Taken};
use crate::error::JobError;

/// How a delivery is settled once it is taken in (or cannot be).
#[derive(Debug, Clone, PartialEq)]
pub enum Disposition {
    Ack,
    /// Publish to the dead-letter queue with this reason, then ack.
    DeadLetter(String),
    /// Leave it unacked; the broker redelivers when the channel closes.
    Abandon,
}

/// How many attempts a job gets and how long it waits between them.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy<'a> {
    pub max_attempts: i32,
    /// The delays between attempts, shortest first; attempt `n` waits `delays[n - 1]` (the last
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
}

/// How to settle a delivery after its intake.
pub fn on_intake(taken: Result<Taken, CommitError>) -> Disposition {
    match taken {
        Ok(Taken::New | Taken::Known) => Disposition::Ack,
        // The database refused this job's rows: retrying cannot help, so it is poison.
        Err(CommitError::Refused(reason)) => {
            Disposition::DeadLetter(format!("refused: the database rejected the job: {reason}"))
        }
        Err(CommitError::Unavailable(_)) => Disposition::Abandon,
    }
}

/// Whether a dispatched attempt runs (`Some`, with its admission), or is dropped: fenced, or the
/// database gone at shutdown (the job is queued again when this worker's lease ends). A refused
/// admission fails the attempt.
pub fn on_admit(admit: Result<Admit, CommitError>) -> Result<Option<Admission>, JobError> {
    match admit {
        Ok(Admit::Run(admission)) => Ok(Some(admission)),
        Ok(Admit::Fenced) | Err(CommitError::Unavailable(_)) => Ok(None),
        Err(CommitError::Refused(reason)) => Err(JobError::permanent(
            "refused",
            format!("the database rejected the job's admission: {reason}"),
        )),
    }
}

/// Whether an admitted attempt may run, and under which per-call cost cap (a budget downgrade).
/// A job dispatched more often than it has attempts (its holders died mid-attempt) fails for good.
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

/// What to commit after an attempt, and the dead letter a job that panicked to its end leaves.
#[derive(Debug, Clone, PartialEq)]
pub struct Settlement {
    pub finish: Finish,
    pub dead_letter: Option<String>,
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
                dead_letter: None,
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
                delay,
            },
            dead_letter: None,
        };
    }
    let message = match &error {
        JobError::Permanent { message, .. } => message.clone(),
        _ => format!("attempts exhausted; last error: {}", error.message()),
    };
    let dead_letter = match &error {
        JobError::Panicked { .. } => Some(format!("{code}: {message}")),
        _ => None,
    };
    Settlement {
        finish: Finish::Failed { code, message },
        dead_letter,
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
    fn each_intake_answer_has_one_settlement() {
        assert_eq!(on_intake(Ok(Taken::New)), Disposition::Ack);
        assert_eq!(on_intake(Ok(Taken::Known)), Disposition::Ack);
        let refused = on_intake(Err(CommitError::Refused("bad row".into())));
        assert!(matches!(refused, Disposition::DeadLetter(r) if r.contains("bad row")));
        let down = on_intake(Err(CommitError::Unavailable("gone".into())));
        assert_eq!(down, Disposition::Abandon);
    }

    #[test]
    fn a_fenced_admission_drops_the_attempt_and_a_refused_one_fails_it() {
        let admitted = Admission::Admitted {
            cost_cap_micros: None,
        };
        assert_eq!(
            on_admit(Ok(Admit::Run(admitted.clone()))),
            Ok(Some(admitted))
        );
        assert_eq!(on_admit(Ok(Admit::Fenced)), Ok(None));
        assert_eq!(
            on_admit(Err(CommitError::Unavailable("gone".into()))),
            Ok(None)
        );
        let refused = on_admit(Err(CommitError::Refused("bad".into()))).unwrap_err();
        assert_eq!(refused.code(), "refused");
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
    fn success_commits_with_no_dead_letter() {
        let s = after_attempt(Ok(json!({"ok": 1})), 1, policy());
        assert_eq!(s.finish, Finish::Succeeded(json!({"ok": 1})));
        assert_eq!(s.dead_letter, None);
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
        assert_eq!(s.dead_letter, None);
    }

    #[test]
    fn retryable_failure_waits_its_delay_or_the_providers() {
        let s = after_attempt(Err(transient(None)), 2, policy());
        assert!(matches!(
            s.finish,
            Finish::Retry { ref code, delay, .. } if code == "provider_unavailable" && delay == DELAYS[1]
        ));
        let asked = Duration::from_secs(7);
        let s = after_attempt(Err(transient(Some(asked))), 1, policy());
        assert!(matches!(s.finish, Finish::Retry { delay, .. } if delay == asked));
    }

    #[test]
    fn retryable_failure_on_the_last_attempt_fails_naming_the_last_error() {
        let s = after_attempt(Err(transient(None)), 3, policy());
        let Finish::Failed { code, message } = s.finish else {
            panic!("expected failure, got {:?}", s.finish);
        };
        assert_eq!(code, "provider_unavailable");
        assert_eq!(message, "attempts exhausted; last error: HTTP 503");
        assert_eq!(s.dead_letter, None);
    }

    #[test]
    fn a_panic_is_retried_then_failed_and_dead_lettered() {
        let panic = || JobError::from_panic(&"index out of bounds");
        let s = after_attempt(Err(panic()), 1, policy());
        assert!(matches!(s.finish, Finish::Retry { delay, .. } if delay == DELAYS[0]));
        let s = after_attempt(Err(panic()), 3, policy());
        assert!(matches!(s.finish, Finish::Failed { ref code, .. } if code == "handler_panicked"));
        assert!(
            matches!(&s.dead_letter, Some(r) if r.contains("index out of bounds")),
            "{:?}",
            s.dead_letter
        );
    }

    #[test]
    fn attempts_beyond_the_delays_wait_the_longest() {
        assert_eq!(policy().delay_after(0), DELAYS[0]);
        assert_eq!(policy().delay_after(9), DELAYS[2]);
        let none = RetryPolicy {
            max_attempts: 1,
            delays: &[],
        };
        assert_eq!(none.delay_after(1), Duration::from_secs(1));
    }
}
