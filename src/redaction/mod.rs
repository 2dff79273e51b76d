//! PII redaction: personal data found in a job's text (prompts and system text, questions,
//! documents being ingested) is handled by the policy that applies to the job, before the text
//! is stored or sent to a provider.
//!
//! - `mask`: each value becomes a typed placeholder (`[EMAIL_1]`, `[CARD_2]`; the same value the
//!   same placeholder within a job). Providers, `jobs.input`, the vector store and results see
//!   placeholders; with `restore`, the values are put back into the result (which is then stored
//!   and delivered with them).
//! - `block`: a job with any finding fails with `pii_blocked`, naming the kinds found, never the
//!   values; its stored input is masked.
//! - `detect`: the text is left alone; the kinds found are counted.
//!
//! Policies are named in config and apply per feature tag (first) or per tenant. Masking is a pure
//! function of the text and the policy, so a redelivered message masks to the same placeholders.

pub mod detect;

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use crate::jobs::JobKind;
use detect::{BuiltIn, Detector};

/// What a policy does with what it finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Mask,
    Block,
    Detect,
}

impl Mode {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "mask" => Ok(Mode::Mask),
            "block" => Ok(Mode::Block),
            "detect" => Ok(Mode::Detect),
            other => Err(format!("mode is mask, block or detect, not `{other}`")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Mask => "mask",
            Mode::Block => "block",
            Mode::Detect => "detect",
        }
    }
}

/// A named policy: a mode and the detectors it runs, in order.
#[derive(Debug, Clone)]
pub struct Policy {
    pub name: String,
    pub mode: Mode,
    pub restore: bool,
    detectors: Vec<Detector>,
}

/// `[redaction]`: the policies, and which applies to which tenant and feature.
#[derive(Debug, Clone, Default)]
pub struct RedactionConfig {
    policies: HashMap<String, std::sync::Arc<Policy>>,
    tenants: HashMap<String, String>,
    features: HashMap<String, String>,
    default: Option<String>,
}

/// The raw `[redaction]` section.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRedaction {
    pub policies: BTreeMap<String, RawPolicy>,
    /// Tenant id → policy name.
    pub tenants: BTreeMap<String, String>,
    /// Feature tag → policy name; wins over the tenant's.
    pub features: BTreeMap<String, String>,
    /// The policy of every other job (none: such jobs are not redacted).
    pub default: Option<String>,
    /// Detectors of the operator's own, by name: `{ name = "ticket", pattern = "TCK-[0-9]{6}" }`.
    pub custom: Vec<RawCustom>,
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    pub mode: String,
    /// Kinds to find: email, card, iban, national_id, ip, phone, and custom names; default all.
    #[serde(default)]
    pub kinds: Option<Vec<String>>,
    /// `mask` only: put the values back into the result.
    #[serde(default)]
    pub restore: bool,
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCustom {
    pub name: String,
    pub pattern: String,
}

impl RedactionConfig {
    /// Validates the section, adding every problem to `problems`.
    pub fn from_raw(raw: &RawRedaction, problems: &mut Vec<String>) -> Self {
        let mut custom = Vec::new();
        for c in &raw.custom {
            let taken = BuiltIn::ALL.iter().any(|b| b.name() == c.name);
            let well_named = !c.name.is_empty()
                && c.name
                    .chars()
                    .all(|ch| ch.is_ascii_lowercase() || ch == '_');
            if taken || !well_named {
                problems.push(format!(
                    "redaction.custom `{}`: a name of lowercase letters and _, not a built-in kind",
                    c.name
                ));
                continue;
            }
            match Detector::custom(&c.name, &c.pattern) {
                Ok(d) => custom.push(d),
                Err(e) => problems.push(format!("redaction.custom: {e}")),
            }
        }
        let mut policies = HashMap::new();
        for (name, p) in &raw.policies {
            match policy(name, p, &custom) {
                Ok(policy) => {
                    policies.insert(name.clone(), std::sync::Arc::new(policy));
                }
                Err(e) => problems.push(format!("redaction.policies.{name}: {e}")),
            }
        }
        for (scope, map) in [("tenants", &raw.tenants), ("features", &raw.features)] {
            for (key, name) in map {
                if !policies.contains_key(name) {
                    problems.push(format!("redaction.{scope}.{key}: no policy `{name}`"));
                }
            }
        }
        if let Some(name) = raw.default.as_ref().filter(|n| !policies.contains_key(*n)) {
            problems.push(format!("redaction.default: no policy `{name}`"));
        }
        Self {
            policies,
            tenants: raw.tenants.clone().into_iter().collect(),
            features: raw.features.clone().into_iter().collect(),
            default: raw.default.clone(),
        }
    }

    /// The policy for a job of `tenant` tagged `feature`: the feature's, else the tenant's, else
    /// the default.
    pub fn policy_for(&self, tenant: &str, feature: Option<&str>) -> Option<&Policy> {
        let name = feature
            .and_then(|f| self.features.get(f))
            .or_else(|| self.tenants.get(tenant))
            .or(self.default.as_ref())?;
        self.policies.get(name).map(|p| p.as_ref())
    }
}

fn policy(name: &str, raw: &RawPolicy, custom: &[Detector]) -> Result<Policy, String> {
    let mode = Mode::parse(&raw.mode)?;
    if raw.restore && mode != Mode::Mask {
        return Err("restore applies to mode mask only".into());
    }
    let all = || {
        (BuiltIn::ALL.iter().map(|b| Detector::built_in(*b)))
            .chain(custom.iter().cloned())
            .collect::<Vec<_>>()
    };
    let detectors = match &raw.kinds {
        None => all(),
        Some(kinds) => {
            let mut chosen = Vec::new();
            for kind in kinds {
                let found = all().into_iter().find(|d| &d.kind == kind);
                chosen.push(found.ok_or_else(|| format!("unknown kind `{kind}`"))?);
            }
            // Built-ins keep their order (the most specific first), custom ones follow.
            chosen.sort_by_key(|d| {
                (BuiltIn::ALL.iter().position(|b| b.name() == d.kind)).unwrap_or(usize::MAX)
            });
            chosen
        }
    };
    Ok(Policy {
        name: name.to_string(),
        mode,
        restore: raw.restore,
        detectors,
    })
}

/// The values a masking replaced, by placeholder, for restoring them in the result.
#[derive(Debug, Clone, Default)]
pub struct Vault {
    /// (kind, placeholder, value), in the order found.
    values: Vec<(String, String, String)>,
    /// Placeholders made so far per kind, to number the next one.
    numbered: HashMap<String, u32>,
}

impl Vault {
    /// The placeholder of `value` of `kind`, the same one for the same value.
    fn placeholder(&mut self, kind: &str, value: &str) -> String {
        let known = (self.values.iter()).find(|(k, _, v)| k == kind && v == value);
        if let Some((_, p, _)) = known {
            return p.clone();
        }
        let n = self.numbered.entry(kind.to_string()).or_default();
        *n += 1;
        let p = format!("[{}_{n}]", kind.to_uppercase());
        (self.values).push((kind.to_string(), p.clone(), value.to_string()));
        p
    }

    /// The vault sealed for storage until its job ends (`None` when it holds nothing): the
    /// values are tenant content, so they rest only under the keyring, bound to their job.
    pub fn seal(&self, keyring: &crate::keyring::Keyring, context: &str) -> Option<String> {
        if self.values.is_empty() {
            return None;
        }
        let text = serde_json::to_string(&self.values).ok()?;
        Some(keyring.seal(&text, context))
    }

    /// A vault [`Self::seal`] stored.
    pub fn open(
        keyring: &crate::keyring::Keyring,
        stored: &str,
        context: &str,
    ) -> Result<Self, String> {
        let text = keyring.open(stored, context).map_err(|e| e.to_string())?;
        let values: Vec<(String, String, String)> =
            serde_json::from_str(text.expose()).map_err(|e| e.to_string())?;
        Ok(Self {
            values,
            numbered: HashMap::new(),
        })
    }

    /// Puts the values back wherever their placeholders appear in `value`'s strings.
    pub fn restore(&self, value: &mut Value) {
        if self.values.is_empty() {
            return;
        }
        visit_strings(value, &mut |s| {
            if s.contains('[') {
                for (_, p, v) in &self.values {
                    if s.contains(p.as_str()) {
                        *s = s.replace(p.as_str(), v);
                    }
                }
            }
        });
    }
}

/// What a policy found in (and did to) one job.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    /// Kinds found, with how many values of each.
    pub found: BTreeMap<String, u32>,
    pub vault: Vault,
}

impl Applied {
    /// `{"policy", "mode", "found": {kind: count}}`, for the job's result.
    pub fn summary(&self, policy: &Policy) -> Value {
        serde_json::json!({"policy": policy.name, "mode": policy.mode.as_str(), "found": self.found})
    }

    /// The kinds found, as `email, card` (never the values).
    pub fn kinds(&self) -> String {
        self.found.keys().cloned().collect::<Vec<_>>().join(", ")
    }
}

impl Policy {
    /// Runs the policy over the text fields of a job's input; masks them unless the mode is
    /// `detect` (a blocked job's stored input is masked too).
    pub fn apply(&self, kind: JobKind, input: &mut Value) -> Applied {
        let mut applied = Applied::default();
        let mask = self.mode != Mode::Detect;
        for_each_text(kind, input, &mut |text| {
            let redacted = self.redact_text(text, &mut applied);
            if mask {
                *text = redacted;
            }
        });
        applied
    }

    /// One text with every finding replaced by its placeholder, counting what was found.
    pub fn redact_text(&self, text: &str, applied: &mut Applied) -> String {
        let mut current = text.to_string();
        for detector in &self.detectors {
            let spans = detector.find(&current);
            if spans.is_empty() {
                continue;
            }
            let mut out = String::with_capacity(current.len());
            let mut at = 0;
            for (start, end) in spans {
                out.push_str(&current[at..start]);
                let p = applied
                    .vault
                    .placeholder(&detector.kind, &current[start..end]);
                out.push_str(&p);
                *applied.found.entry(detector.kind.clone()).or_default() += 1;
                at = end;
            }
            out.push_str(&current[at..]);
            current = out;
        }
        current
    }
}

/// Calls `f` on every text of a job's input that may hold personal data: a batch's system text
/// and prompts, a question, the documents being ingested.
fn for_each_text(kind: JobKind, input: &mut Value, f: &mut impl FnMut(&mut String)) {
    let mut at = |pointer: &str, f: &mut dyn FnMut(&mut String)| {
        if let Some(Value::String(s)) = input.pointer_mut(pointer) {
            f(s);
        }
    };
    match kind {
        JobKind::BatchComplete => {
            at("/system", f);
            if let Some(Value::Array(prompts)) = input.get_mut("prompts") {
                for p in prompts {
                    for field in ["prompt", "system"] {
                        if let Some(Value::String(s)) = p.get_mut(field) {
                            f(s);
                        }
                    }
                    // Unrendered variables (intake renders them into the prompt first).
                    if let Some(vars) = p.pointer_mut("/template/variables") {
                        visit_strings(vars, f);
                    }
                }
            }
        }
        JobKind::RagAnswer => {
            at("/question", f);
            // A saved prompt's variables are rendered by the worker, so they are stored.
            if let Some(vars) = input.pointer_mut("/template/variables") {
                visit_strings(vars, f);
            }
        }
        JobKind::Ingest => {
            if let Some(Value::Array(docs)) = input.get_mut("documents") {
                for d in docs {
                    if let Some(Value::String(s)) = d.get_mut("text") {
                        f(s);
                    }
                }
            }
        }
    }
}

fn visit_strings(value: &mut Value, f: &mut impl FnMut(&mut String)) {
    match value {
        Value::String(s) => f(s),
        Value::Array(items) => items.iter_mut().for_each(|v| visit_strings(v, f)),
        Value::Object(map) => map.values_mut().for_each(|v| visit_strings(v, f)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml: &str) -> RedactionConfig {
        let raw: RawRedaction = toml_edit::de::from_str(toml).unwrap();
        let mut problems = Vec::new();
        let cfg = RedactionConfig::from_raw(&raw, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        cfg
    }

    const CONFIG: &str = r#"
        tenants = { acme = "mask" }
        features = { support = "block" }
        custom = [{ name = "ticket", pattern = "TCK-[0-9]{6}" }]
        [policies.mask]
        mode = "mask"
        restore = true
        [policies.block]
        mode = "block"
        kinds = ["card", "email"]
    "#;

    #[test]
    fn masking_is_typed_stable_and_restorable() {
        let cfg = config(CONFIG);
        let policy = cfg.policy_for("acme", None).unwrap();
        let mut input = serde_json::json!({"system": "Reply to jane@example.com",
            "prompts": [{"prompt": "jane@example.com paid with 4111 1111 1111 1111 re TCK-123456"}]});
        let applied = policy.apply(JobKind::BatchComplete, &mut input);
        let text = input.to_string();
        assert!(
            !text.contains("jane@example.com") && !text.contains("4111"),
            "{text}"
        );
        assert_eq!(
            input["prompts"][0]["prompt"],
            "[EMAIL_1] paid with [CARD_1] re [TICKET_1]"
        );
        assert_eq!(input["system"], "Reply to [EMAIL_1]");
        assert_eq!(applied.found.get("email"), Some(&2));
        let mut result =
            serde_json::json!({"completions": [{"text": "Dear [EMAIL_1], card [CARD_1]"}]});
        applied.vault.restore(&mut result);
        assert_eq!(
            result["completions"][0]["text"],
            "Dear jane@example.com, card 4111 1111 1111 1111"
        );
    }

    #[test]
    fn the_feature_policy_wins_and_block_names_kinds_only() {
        let cfg = config(CONFIG);
        let policy = cfg.policy_for("acme", Some("support")).unwrap();
        assert_eq!(policy.mode, Mode::Block);
        let mut input =
            serde_json::json!({"question": "is 4111111111111111 or +44 20 7946 0958 mine?"});
        let applied = policy.apply(JobKind::RagAnswer, &mut input);
        assert_eq!(
            applied.kinds(),
            "card",
            "phone is not among the policy's kinds"
        );
        assert!(!input.to_string().contains("4111111111111111"));
        assert!(cfg.policy_for("globex", None).is_none());
    }

    #[test]
    fn bad_sections_are_reported() {
        let raw: RawRedaction = toml_edit::de::from_str(
            "tenants = { acme = \"nope\" }\ncustom = [{ name = \"email\", pattern = \"x\" }]\n\
             [policies.p]\nmode = \"detect\"\nrestore = true\n",
        )
        .unwrap();
        let mut problems = Vec::new();
        RedactionConfig::from_raw(&raw, &mut problems);
        assert_eq!(problems.len(), 3, "{problems:?}");
    }
}
