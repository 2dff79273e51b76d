//! The job state machine, mirrored in Postgres by CHECK constraints (see the first migration).

use serde::{Deserialize, Serialize};

/// Where a job is. Who moves it out of each state is documented per variant. Stored as the text of
/// `jobs.state`, whose CHECK constraint lists the same four values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum JobState {
    /// Accepted, waiting for a worker: entered at intake (or on HTTP submission, then ready once its
    /// message is taken in), or when a worker hands the job back for a delayed retry (`ready_at`).
    /// A dispatch moves it to `Running`.
    Queued,
    /// Dispatched to a worker (each dispatch bumps `attempts`; `holder` names the worker). The
    /// holder's outcome commit moves it on; when the holder's lease ends it is `Queued` again.
    Running,
    /// Terminal: the result is stored.
    Succeeded,
    /// Terminal: the error code and message are stored.
    Failed,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "queued" => Some(Self::Queued),
            "running" => Some(Self::Running),
            "succeeded" => Some(Self::Succeeded),
            "failed" => Some(Self::Failed),
            _ => None,
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in [
            JobState::Queued,
            JobState::Running,
            JobState::Succeeded,
            JobState::Failed,
        ] {
            assert_eq!(JobState::parse(s.as_str()), Some(s));
        }
        assert_eq!(JobState::parse("done"), None);
        assert!(JobState::Failed.is_terminal() && !JobState::Running.is_terminal());
    }
}
