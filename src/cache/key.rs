//! What identifies a cached answer: a hash of the normalized request.
//!
//! The key covers everything that can change the answer or the model chosen for it: the tenant
//! (so no key of one tenant can equal another's), the routing policy with its candidate models (an
//! operator who changes them gets answers from the new ones) and the tenant's plan (which choose
//! the model), every message, `max_tokens` and `temperature`. The scope is the same hash
//! without the last user message: a semantic match must share it, so a paraphrase only ever
//! matches a prompt asked with the same system text, parameters and policy.

use sha2::{Digest, Sha256};

use crate::providers::ChatRequest;

/// A request's cache identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    pub key: [u8; 32],
    pub scope: [u8; 32],
}

/// Bumped when what the key covers changes, so old entries simply stop matching.
const VERSION: &[u8] = b"ragq-cache-v1";

/// Who makes a call, and under what routing: what a key shares with every call of the same kind.
#[derive(Debug, Clone, Copy)]
pub struct CallOf<'a> {
    pub tenant: &'a str,
    pub policy: &'a str,
    /// The policy's candidate models, in order.
    pub models: &'a [String],
    pub plan: Option<&'a str>,
}

/// The fingerprint of `request`, for the call `of`.
pub fn fingerprint(of: CallOf<'_>, request: &ChatRequest) -> Fingerprint {
    let mut scope = Sha256::new();
    for part in [VERSION, of.tenant.as_bytes(), of.policy.as_bytes()] {
        field(&mut scope, part);
    }
    field(&mut scope, &(of.models.len() as u64).to_le_bytes());
    for m in of.models {
        field(&mut scope, m.as_bytes());
    }
    field(&mut scope, of.plan.unwrap_or("").as_bytes());
    field(&mut scope, &request.max_tokens.unwrap_or(0).to_le_bytes());
    // The bits, not the value: an absent temperature (the provider's default) is not 0.
    let temperature = request
        .temperature
        .map_or(u64::MAX, |t| u64::from(t.to_bits()));
    field(&mut scope, &temperature.to_le_bytes());
    let (last, earlier) = match request.messages.split_last() {
        Some((last, earlier)) => (Some(last), earlier),
        None => (None, &[][..]),
    };
    for m in earlier {
        message(&mut scope, &m.role, &m.content);
    }
    let mut key = scope.clone();
    if let Some(m) = last {
        field(&mut scope, m.role.as_bytes());
        message(&mut key, &m.role, &m.content);
    }
    Fingerprint {
        key: key.finalize().into(),
        scope: scope.finalize().into(),
    }
}

/// The text a semantic lookup embeds: the user message of a single-turn prompt (at most one
/// system message before it), if it is no longer than `max_bytes`.
pub fn semantic_text(request: &ChatRequest, max_bytes: usize) -> Option<&str> {
    let (last, earlier) = request.messages.split_last()?;
    let single_turn =
        last.role == "user" && earlier.len() <= 1 && earlier.iter().all(|m| m.role == "system");
    let text = normalized(&last.content);
    (single_turn && !text.is_empty() && text.len() <= max_bytes).then_some(text)
}

/// Message text as keyed: leading and trailing whitespace never changes an answer.
fn normalized(content: &str) -> &str {
    content.trim()
}

fn message(h: &mut Sha256, role: &str, content: &str) {
    field(h, role.as_bytes());
    field(h, normalized(content).as_bytes());
}

/// Length-prefixed, so no two different field lists hash the same bytes.
fn field(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::ChatMessage;

    fn request(system: Option<&str>, user: &str) -> ChatRequest {
        let mut messages: Vec<ChatMessage> = system
            .map(|s| ChatMessage {
                role: "system".into(),
                content: s.into(),
            })
            .into_iter()
            .collect();
        messages.push(ChatMessage {
            role: "user".into(),
            content: user.into(),
        });
        ChatRequest {
            messages,
            max_tokens: Some(100),
            temperature: None,
            call_id: Some("differs/per/call".into()),
            counted_input_tokens: None,
            credential: None,
        }
    }

    #[test]
    fn the_key_covers_tenant_policy_plan_messages_and_parameters_and_nothing_else() {
        let base = request(Some("Be brief."), "What is the refund policy?");
        let models = ["small".to_string(), "large".to_string()];
        let f = |tenant, policy, plan, r: &ChatRequest| {
            let of = CallOf {
                tenant,
                policy,
                models: &models,
                plan,
            };
            fingerprint(of, r)
        };
        let k = f("acme", "p", Some("pro"), &base);
        let mut other_call = base.clone();
        other_call.call_id = Some("another".into());
        other_call.counted_input_tokens = Some(12);
        assert_eq!(f("acme", "p", Some("pro"), &other_call), k);
        let padded = request(Some(" Be brief.\n"), "What is the refund policy?  ");
        assert_eq!(f("acme", "p", Some("pro"), &padded), k, "outer whitespace");
        assert_ne!(f("globex", "p", Some("pro"), &base).key, k.key);
        assert_ne!(f("acme", "q", Some("pro"), &base).key, k.key);
        assert_ne!(f("acme", "p", None, &base).key, k.key);
        let mut longer = base.clone();
        longer.max_tokens = Some(101);
        assert_ne!(f("acme", "p", Some("pro"), &longer).key, k.key);
        let mut warm = base.clone();
        warm.temperature = Some(0.0);
        assert_ne!(
            f("acme", "p", Some("pro"), &warm).key,
            k.key,
            "0 is not unset"
        );
        let paraphrase = request(Some("Be brief."), "How do refunds work?");
        let p = f("acme", "p", Some("pro"), &paraphrase);
        assert_ne!(p.key, k.key);
        assert_eq!(
            p.scope, k.scope,
            "same system text and parameters: same scope"
        );
        let other_system = request(Some("Be long."), "How do refunds work?");
        assert_ne!(f("acme", "p", Some("pro"), &other_system).scope, k.scope);
        let no_system = request(None, "How do refunds work?");
        assert_ne!(f("acme", "p", Some("pro"), &no_system).scope, k.scope);
        let other_models = CallOf {
            tenant: "acme",
            policy: "p",
            models: &models[..1],
            plan: Some("pro"),
        };
        assert_ne!(
            fingerprint(other_models, &base).key,
            k.key,
            "the policy's models changed"
        );
    }

    #[test]
    fn only_single_turn_prompts_within_the_size_are_embedded() {
        let r = request(Some("sys"), "  a question ");
        assert_eq!(semantic_text(&r, 100), Some("a question"));
        assert_eq!(semantic_text(&r, 5), None);
        let mut multi = r.clone();
        multi.messages.insert(
            1,
            ChatMessage {
                role: "assistant".into(),
                content: "earlier".into(),
            },
        );
        assert_eq!(semantic_text(&multi, 100), None);
    }
}
