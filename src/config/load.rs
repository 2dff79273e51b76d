//! Reading the raw configuration tree so that a person can fix every problem in one go: the file
//! and the environment are merged, then deserialized key by key; each problem (unknown key, wrong
//! type, missing field) is reported once, with its key path and, for keys in the file, its line.
//!
//! serde stops at the first error, so after each one the merged tree is repaired (the offending key
//! removed, a missing one given a placeholder) and read again, until it reads or the list is long.

use serde_json::Value;
use serde_path_to_error::Segment;

use super::raw::RawConfig;
use super::ConfigError;

/// Most problems reported from one file.
const MAX_PROBLEMS: usize = 32;

/// Values tried in turn for a missing field until one has the right type; errors they cause are
/// not reported (the missing field is).
fn placeholders() -> [Value; 5] {
    [
        Value::String(String::new()),
        Value::from(0),
        Value::Bool(false),
        Value::Array(Vec::new()),
        Value::Object(Default::default()),
    ]
}

/// Deserializes the merged tree, reporting every problem; `file` is the TOML text, for lines.
pub fn raw_config(mut tree: Value, file: Option<&str>) -> Result<RawConfig, ConfigError> {
    let doc = file.and_then(|text| toml_edit::ImDocument::parse(text).ok());
    let line = |path: &[Key]| doc.as_ref().and_then(|d| line_of(d, path));
    let mut problems: Vec<String> = Vec::new();
    // The placeholder being tried for a missing field: its path and the next candidate.
    let mut trying: Option<(Vec<Key>, usize)> = None;
    while problems.len() < MAX_PROBLEMS {
        let error = match serde_path_to_error::deserialize::<_, RawConfig>(&tree) {
            Ok(raw) if problems.is_empty() => return Ok(raw),
            Ok(_) => break,
            Err(e) => e,
        };
        let mut path = keys(error.path());
        let message = error.inner().to_string();
        if let Some((at, next)) = trying.take() {
            if path == at && next < placeholders().len() {
                set(&mut tree, &at, placeholders()[next].clone());
                trying = Some((at, next + 1));
                continue;
            }
        }
        if let Some(field) = missing_field(&message) {
            let at_line = line(&path);
            path.push(Key::Field(field.to_string()));
            problems.push(describe(&path, at_line, &message));
            set(&mut tree, &path, placeholders()[0].clone());
            trying = Some((path, 1));
        } else {
            problems.push(describe(&path, line(&path), &message));
            if !remove(&mut tree, &path) {
                break;
            }
        }
    }
    Err(ConfigError::Invalid(problems))
}

/// One step of a key path.
#[derive(Debug, Clone, PartialEq)]
enum Key {
    Field(String),
    Index(usize),
}

fn keys(path: &serde_path_to_error::Path) -> Vec<Key> {
    path.iter()
        .filter_map(|s| match s {
            Segment::Map { key } => Some(Key::Field(key.clone())),
            Segment::Seq { index } => Some(Key::Index(*index)),
            Segment::Enum { .. } | Segment::Unknown => None,
        })
        .collect()
}

fn describe(path: &[Key], line: Option<usize>, message: &str) -> String {
    let mut key = String::new();
    for k in path {
        match k {
            Key::Field(f) if key.is_empty() => key.push_str(f),
            Key::Field(f) => {
                key.push('.');
                key.push_str(f);
            }
            Key::Index(i) => key.push_str(&format!("[{i}]")),
        }
    }
    let key = if key.is_empty() { "(top level)" } else { &key };
    match line {
        Some(n) => format!("{key} (line {n}): {message}"),
        None => format!("{key}: {message}"),
    }
}

/// The field a "missing field `x`" error names.
fn missing_field(message: &str) -> Option<&str> {
    message.strip_prefix("missing field `")?.split('`').next()
}

/// Removes the value at `path`; false when there is nothing there to remove (the error cannot be
/// repaired, so reading stops).
fn remove(tree: &mut Value, path: &[Key]) -> bool {
    let Some((last, parent)) = path.split_last() else {
        return false;
    };
    match (node(tree, parent), last) {
        (Some(Value::Object(map)), Key::Field(f)) => map.remove(f).is_some(),
        (Some(Value::Array(items)), Key::Index(i)) if *i < items.len() => {
            items.remove(*i);
            true
        }
        _ => false,
    }
}

fn set(tree: &mut Value, path: &[Key], value: Value) {
    if let Some((Key::Field(f), parent)) = path.split_last() {
        if let Some(Value::Object(map)) = node(tree, parent) {
            map.insert(f.clone(), value);
        }
    }
}

fn node<'a>(tree: &'a mut Value, path: &[Key]) -> Option<&'a mut Value> {
    path.iter().try_fold(tree, |v, k| match k {
        Key::Field(f) => v.get_mut(f.as_str()),
        Key::Index(i) => v.get_mut(*i),
    })
}

/// The line in the file of the deepest part of `path` it holds.
fn line_of(doc: &toml_edit::ImDocument<&str>, path: &[Key]) -> Option<usize> {
    let mut item: &toml_edit::Item = doc.as_item();
    let mut span = None;
    for k in path {
        let next = match (k, item) {
            (Key::Field(f), _) => item.get(f.as_str()),
            (Key::Index(i), toml_edit::Item::ArrayOfTables(tables)) => {
                // A `[[models]]` entry: its header's line, which a missing field points at.
                span = tables.get(*i).and_then(|t| t.span()).or(span);
                tables.get(*i).map(|_| item).and_then(|it| it.get(*i))
            }
            (Key::Index(i), _) => item.get(*i),
        };
        let Some(next) = next else { break };
        span = next
            .span()
            .or_else(|| next.as_table().and_then(|t| t.span()))
            .or(span);
        item = next;
    }
    let offset = span?.start;
    Some(doc.raw().get(..offset)?.matches('\n').count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        let tree: Value = toml_edit::de::from_str(text).unwrap();
        match raw_config(tree, Some(text)) {
            Err(ConfigError::Invalid(p)) => p,
            other => panic!("expected problems, got {other:?}"),
        }
    }

    #[test]
    fn every_problem_is_reported_once_with_its_key_and_line() {
        let text = "[queue]\nprefetch = \"many\"\nprefetchh = 3\n\n[[models]]\nname = \"m\"\n";
        let p = problems(text);
        // The model misses four more required fields; each is named once, at its table's line.
        let missing: Vec<&String> = p.iter().filter(|l| l.contains("missing field")).collect();
        assert_eq!(missing.len(), 5, "{p:#?}");
        assert!(missing.iter().all(|l| l.contains("(line 5)")), "{p:#?}");
        assert_eq!(p.len(), 7, "{p:#?}");
        assert!(
            p[0].starts_with("queue.prefetch (line 2): invalid type"),
            "{p:#?}"
        );
        assert!(
            p[1].starts_with("queue.prefetchh (line 3): unknown field"),
            "{p:#?}"
        );
        assert!(
            p[2].starts_with("models[0].provider (line 5): missing field"),
            "{p:#?}"
        );
    }

    #[test]
    fn a_valid_tree_reads() {
        let raw = raw_config(Value::Object(Default::default()), None).unwrap();
        assert!(!raw.providers.is_empty());
    }
}
