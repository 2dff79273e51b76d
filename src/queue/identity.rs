//! Who published a job message, kept across ragq's own re-publishes.
//!
//! RabbitMQ validates a message's `user_id` against the connection's user, so on a first publish
//! it names the publisher. When a worker re-publishes a message (to a retry queue, to the
//! dead-letter queue), the copy carries the worker's user instead; ragq then writes the original
//! publisher in [`PUBLISHER_HEADER`], and a message coming back (a retry's TTL, an operator
//! replaying the dead-letter queue) is authorized as that publisher again. The header is believed
//! only on messages whose `user_id` is ragq's own AMQP user; set by anyone else it is a forgery, and
//! the message is dead-lettered saying so.

/// The header with the original publisher ("" for a message that had no `user_id`).
pub const PUBLISHER_HEADER: &str = "x-ragq-publisher";

/// The publisher a delivery is authorized as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Validated by RabbitMQ, or carried over by one of ragq's re-publishes.
    Publisher(String),
    /// The message had no `user_id`.
    Anonymous,
    /// The publisher header came from someone other than ragq (`by`: its `user_id`).
    Forged { by: Option<String> },
}

impl Origin {
    /// Decides the origin from the message's `user_id`, its publisher header and ragq's own user.
    pub fn of(user_id: Option<&str>, header: Option<&str>, own_user: &str) -> Self {
        match (user_id, header) {
            (Some(user), Some(carried)) if user == own_user => match carried {
                "" => Self::Anonymous,
                publisher => Self::Publisher(publisher.to_string()),
            },
            (by, Some(_)) => Self::Forged {
                by: by.map(str::to_string),
            },
            (Some(user), None) => Self::Publisher(user.to_string()),
            (None, None) => Self::Anonymous,
        }
    }

    /// What ragq writes in [`PUBLISHER_HEADER`] when it re-publishes the message: the publisher
    /// it would be authorized as, or the forger's user, so a replay is refused the same way.
    pub fn header_value(&self) -> &str {
        match self {
            Self::Publisher(p) | Self::Forged { by: Some(p) } => p,
            Self::Anonymous | Self::Forged { by: None } => "",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAGQ: &str = "ragq-worker";

    #[test]
    fn the_header_counts_only_on_ragqs_own_messages() {
        let publisher = |p: &str| Origin::Publisher(p.into());
        assert_eq!(Origin::of(Some("acme"), None, RAGQ), publisher("acme"));
        assert_eq!(Origin::of(None, None, RAGQ), Origin::Anonymous);
        // A retry or replay of acme's message: ragq's user carries acme on.
        assert_eq!(
            Origin::of(Some(RAGQ), Some("acme"), RAGQ),
            publisher("acme")
        );
        assert_eq!(Origin::of(Some(RAGQ), Some(""), RAGQ), Origin::Anonymous);
        assert_eq!(Origin::of(Some(RAGQ), None, RAGQ), publisher(RAGQ));
        // Anyone else setting it forges it.
        let forged = Origin::of(Some("acme"), Some("ragq-api"), RAGQ);
        assert_eq!(
            forged,
            Origin::Forged {
                by: Some("acme".into())
            }
        );
        assert_eq!(forged.header_value(), "acme");
        assert_eq!(
            Origin::of(None, Some("ragq-api"), RAGQ),
            Origin::Forged { by: None }
        );
    }
}
