//! Rendering a prompt template (MiniJinja: variables, loops, conditionals) safely: the environment
//! has no loader (no file or network access; `include` finds nothing), undefined variables are
//! errors, execution is metered by fuel (a template cannot loop without end), and output stops at
//! a byte limit.
//!
//! The output limit alone would not stop a template from building a huge string in memory before
//! writing it (`{% set s = s ~ s %}` thirty times is 8 GiB from 8 bytes). So nothing in a template
//! can make a value much larger than its inputs: the operators that join or repeat (`~`, `+`,
//! `*`, `**`) and the blocks whose output is kept in memory (`filter`, a block `set`, `macro`,
//! `call`) are refused when a template is checked, the filters that could grow a value past
//! the limit (`join`, `replace`) are replaced by versions that refuse to, those that take a width
//! or re-escape (`indent`, `format`, `pprint`, `escape`) are gone, and so is `namespace` (state
//! carried across loop iterations). A value is then never larger than a few times the largest
//! input (a variable, a literal of the template) or the output limit.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use minijinja::{Environment, ErrorKind, UndefinedBehavior, Value};

/// What one render may use (`[prompts]` in the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// MiniJinja's fuel: roughly one unit per instruction executed.
    pub fuel: u64,
    pub max_output_bytes: usize,
    /// Deepest nesting of loops, conditionals and calls.
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            fuel: 100_000,
            max_output_bytes: 256 * 1024,
            max_depth: 32,
        }
    }
}

/// Why a template cannot be used or rendered; the text names the problem for the tenant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("template does not parse: {0}")]
    Syntax(String),
    #[error("template used more than its {0} units of fuel (a loop too long?)")]
    OutOfFuel(u64),
    #[error("rendered text is over the {0}-byte limit")]
    TooLong(usize),
    #[error("template failed: {0}")]
    Failed(String),
    #[error("{0}")]
    Refused(String),
}

/// An environment and the limits it was built for.
type Built = (Limits, Arc<Environment<'static>>);

/// The environment for `limits`, built once: each render only parses its template.
fn environment(limits: Limits) -> Arc<Environment<'static>> {
    static BUILT: OnceLock<Mutex<Vec<Built>>> = OnceLock::new();
    let mut built = BUILT
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((_, env)) = built.iter().find(|(l, _)| *l == limits) {
        return Arc::clone(env);
    }
    let env = Arc::new(build(limits));
    // A process renders under one configuration; tests use a few.
    if built.len() >= 8 {
        built.clear();
    }
    built.push((limits, Arc::clone(&env)));
    env
}

/// An environment with the built-in tests and the filters that cannot grow a value past
/// `limits`, and these limits.
fn build(limits: Limits) -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(limits.fuel));
    env.set_recursion_limit(limits.max_depth);
    for unbounded in ["indent", "format", "pprint", "escape", "e"] {
        env.remove_filter(unbounded);
    }
    for global in ["namespace", "debug"] {
        env.remove_global(global);
    }
    let max = limits.max_output_bytes;
    env.add_filter("join", move |v: &Value, joiner: Option<&str>| {
        join(v, joiner, max)
    });
    env.add_filter("replace", move |s: &str, from: &str, to: &str| {
        replace(s, from, to, max)
    });
    env
}

/// Checks that `source` parses and uses no operator that joins or repeats values (when a prompt
/// version is saved, and before each render).
pub fn check(source: &str) -> Result<(), RenderError> {
    if let Some(op) = growing_construct(source) {
        return Err(RenderError::Refused(op));
    }
    environment(Limits::default())
        .template_from_str(source)
        .map(|_| ())
        .map_err(|e| RenderError::Syntax(describe(&e)))
}

/// The first construct of `source` that could build a value larger than its inputs (see the
/// module's note): an operator that joins or repeats, or a block whose output is kept in memory
/// instead of going to the bounded writer (`filter`, a block `set`, `macro` and `call`). The
/// source is scanned as tokens before it is compiled: the compiler folds constant expressions, so
/// compiling `'x' * 100000000` would build the string.
fn growing_construct(source: &str) -> Option<String> {
    use minijinja::machinery::{tokenize, Token, WhitespaceConfig};
    // A unit struct in this build; `default()` keeps working if custom syntax is turned on.
    #[allow(clippy::default_constructed_unit_structs)]
    let syntax = minijinja::syntax::SyntaxConfig::default();
    let tokens: Vec<Token<'_>> = tokenize(source, false, syntax, WhitespaceConfig::default())
        .map_while(|t| t.ok().map(|(token, _)| token))
        .collect();
    let operator = tokens.iter().find_map(|t| match t {
        Token::Tilde => Some("`~`"),
        Token::Plus => Some("`+`"),
        Token::Mul => Some("`*`"),
        Token::Pow => Some("`**`"),
        _ => None,
    });
    if let Some(op) = operator {
        return Some(format!(
            "templates may not use {op} (it could build a string beyond the limit in memory): \
             write `{{{{ a }}}}{{{{ b }}}}` to put values side by side"
        ));
    }
    let captured = tokens.windows(2).enumerate().find_map(|(i, w)| match w {
        [Token::BlockStart, Token::Ident(name @ ("filter" | "macro" | "call"))] => Some(*name),
        [Token::BlockStart, Token::Ident("set")] => {
            let statement = tokens[i + 2..]
                .iter()
                .take_while(|t| !matches!(t, Token::BlockEnd));
            let assigns = statement.into_iter().any(|t| matches!(t, Token::Assign));
            (!assigns).then_some("set … endset")
        }
        _ => None,
    })?;
    Some(format!(
        "templates may not use `{{% {captured} %}}` blocks (their output is built in memory, past \
         the output limit)"
    ))
}

/// MiniJinja's `join`, refusing a result over `max` bytes.
fn join(value: &Value, joiner: Option<&str>, max: usize) -> Result<String, minijinja::Error> {
    let joiner = joiner.unwrap_or_default();
    let mut out = String::new();
    for (i, item) in value.try_iter()?.enumerate() {
        if i > 0 {
            out.push_str(joiner);
        }
        match item.as_str() {
            Some(s) => out.push_str(s),
            None => out.push_str(&item.to_string()),
        }
        if out.len() > max {
            return Err(over_limit("join", max));
        }
    }
    Ok(out)
}

/// MiniJinja's `replace`, refusing a result over `max` bytes (computed before it is built).
fn replace(s: &str, from: &str, to: &str, max: usize) -> Result<String, minijinja::Error> {
    let places = if from.is_empty() {
        s.chars().count() + 1
    } else {
        s.matches(from).count()
    };
    let size = s.len() + places.saturating_mul(to.len());
    if size > max {
        return Err(over_limit("replace", max));
    }
    Ok(s.replace(from, to))
}

fn over_limit(filter: &str, max: usize) -> minijinja::Error {
    minijinja::Error::new(
        ErrorKind::InvalidOperation,
        format!("`{filter}` would make a value over the {max}-byte limit"),
    )
}

/// Renders `source` with `variables` (a JSON object) within `limits`.
pub fn render(
    source: &str,
    variables: &serde_json::Value,
    limits: Limits,
) -> Result<String, RenderError> {
    // Saved versions were checked; this keeps a version saved before the check from running.
    if let Some(op) = growing_construct(source) {
        return Err(RenderError::Refused(op));
    }
    let env = environment(limits);
    let template = env
        .template_from_str(source)
        .map_err(|e| RenderError::Syntax(describe(&e)))?;
    let mut out = Bounded {
        bytes: Vec::new(),
        max: limits.max_output_bytes,
    };
    let rendered = template.render_captured_to(variables, &mut out).map(|_| ());
    match rendered {
        Ok(_) => String::from_utf8(out.bytes).map_err(|e| RenderError::Failed(e.to_string())),
        Err(e) if e.kind() == ErrorKind::OutOfFuel => Err(RenderError::OutOfFuel(limits.fuel)),
        Err(e) if e.kind() == ErrorKind::WriteFailure => {
            Err(RenderError::TooLong(limits.max_output_bytes))
        }
        Err(e) => Err(RenderError::Failed(describe(&e))),
    }
}

/// The error and its place in the template, without MiniJinja's debug dump.
fn describe(e: &minijinja::Error) -> String {
    match e.line() {
        Some(line) => format!(
            "{} (line {line})",
            e.detail().unwrap_or(&e.kind().to_string())
        ),
        None => e
            .detail()
            .map_or_else(|| e.kind().to_string(), str::to_string),
    }
}

/// A writer that refuses to grow past `max` bytes.
struct Bounded {
    bytes: Vec<u8>,
    max: usize,
}

impl Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > self.max {
            return Err(std::io::Error::other("output limit"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn variables_loops_and_conditionals_render() {
        let source = "Summarize ticket {{ ticket.id }}{% if urgent %} (urgent){% endif %}:\n\
                      {% for line in ticket.lines %}- {{ line }}\n{% endfor %}";
        let vars = json!({"ticket": {"id": "T-1", "lines": ["a", "b"]}, "urgent": true});
        let text = render(source, &vars, Limits::default()).unwrap();
        assert_eq!(text, "Summarize ticket T-1 (urgent):\n- a\n- b\n");
        assert_eq!(
            render("{{ x }}", &json!({"x": "<b>&"}), Limits::default()).unwrap(),
            "<b>&",
            "prompts are text: nothing is HTML-escaped"
        );
    }

    #[test]
    fn undefined_variables_and_bad_syntax_are_named() {
        let missing = render("Hello {{ name }}", &json!({}), Limits::default()).unwrap_err();
        assert!(
            matches!(&missing, RenderError::Failed(m) if m.contains("undefined")),
            "{missing}"
        );
        let bad = check("{% for x in %}").unwrap_err();
        assert!(
            matches!(&bad, RenderError::Syntax(m) if m.contains("line 1")),
            "{bad}"
        );
        assert!(check("{{ a }} and {% if b %}c{% endif %}").is_ok());
    }

    #[test]
    fn a_template_cannot_loop_without_end_or_grow_without_bound() {
        let limits = Limits {
            fuel: 10_000,
            max_output_bytes: 1024,
            max_depth: 8,
        };
        let long_loop =
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}";
        assert_eq!(
            render(long_loop, &json!({}), limits),
            Err(RenderError::OutOfFuel(10_000))
        );
        let big = "{% for i in range(200) %}0123456789{% endfor %}";
        assert_eq!(
            render(big, &json!({}), limits),
            Err(RenderError::TooLong(1024))
        );
        let nested = "{% macro m(n) %}{{ m(n + 1) }}{% endmacro %}{{ m(0) }}";
        assert!(
            render(nested, &json!({}), limits).is_err(),
            "recursion stops"
        );
    }

    #[test]
    fn no_value_grows_past_its_inputs_or_the_limit() {
        let limits = Limits {
            max_output_bytes: 4096,
            ..Limits::default()
        };
        // Doubling a string thirty times would be 8 GiB from 8 bytes.
        for growing in [
            "{% set s = 'xxxxxxxx' %}{% for i in range(30) %}{% set s = s ~ s %}{% endfor %}{{ s }}",
            "{% set s = 'ab' %}{% set s = s + s %}{{ s }}",
            "{{ 'x' * 100000000 }}",
            "{{ 2 ** 100000 }}",
        ] {
            let refused = check(growing).unwrap_err();
            assert!(matches!(&refused, RenderError::Refused(_)), "{growing}: {refused}");
            assert!(render(growing, &json!({}), limits).is_err(), "{growing}");
        }
        for captured in [
            "{% filter upper %}{% for i in range(10) %}x{% endfor %}{% endfilter %}",
            "{% set s %}{% for i in range(10) %}x{% endfor %}{% endset %}{{ s }}",
            "{% macro m() %}x{% endmacro %}{% set s = m() %}{{ s }}",
            "{% macro m() %}{{ caller() }}{% endmacro %}{% call m() %}x{% endcall %}",
        ] {
            let refused = check(captured).unwrap_err();
            assert!(
                matches!(&refused, RenderError::Refused(m) if m.contains("blocks")),
                "{captured}: {refused}"
            );
        }
        assert!(
            check("{% set s = name | upper %}{{ s }}").is_ok(),
            "a `set` with `=` is fine"
        );
        let bounded = [
            "{{ range(100000) | join('0123456789') }}",
            "{{ 'aaaa' | replace('', 'bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb') | replace('b', 'cccccccccccccccccccccccccccccccccccccccc') }}",
            "{% set ns = namespace(s='x') %}{{ ns.s }}",
            "{{ 'x' | indent(100000000) }}",
        ];
        for bounded in bounded {
            let out = render(bounded, &json!({}), limits);
            assert!(out.is_err(), "{bounded}: {out:?}");
        }
        // What prompts use still works.
        let fine = "{{ tags | join(', ') }} {{ name | replace('-', ' ') | title }} {{ items | length - 1 }}";
        let vars = json!({"tags": ["a", "b"], "name": "ticket-summary", "items": [1, 2, 3]});
        assert_eq!(
            render(fine, &vars, limits).unwrap(),
            "a, b Ticket Summary 2"
        );
    }

    #[test]
    fn templates_reach_no_file() {
        let include = render("{% include '/etc/passwd' %}", &json!({}), Limits::default());
        assert!(
            matches!(include, Err(RenderError::Failed(_))),
            "{include:?}"
        );
    }
}
