//! Rendering a prompt template (MiniJinja: variables, loops, conditionals) safely: the environment
//! has no loader (no file or network access; `include` finds nothing), undefined variables are
//! errors, execution is metered by fuel (a template cannot loop without end), and output stops at
//! a byte limit (a template cannot build a string beyond it).

use std::io::Write;

use minijinja::{Environment, ErrorKind, UndefinedBehavior};

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
}

/// An environment with nothing but the built-in filters and tests, and these limits.
fn environment(limits: Limits) -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(limits.fuel));
    env.set_recursion_limit(limits.max_depth);
    env
}

/// Checks that `source` parses (when a prompt version is saved).
pub fn check(source: &str) -> Result<(), RenderError> {
    environment(Limits::default())
        .template_from_str(source)
        .map(|_| ())
        .map_err(|e| RenderError::Syntax(describe(&e)))
}

/// Renders `source` with `variables` (a JSON object) within `limits`.
pub fn render(
    source: &str,
    variables: &serde_json::Value,
    limits: Limits,
) -> Result<String, RenderError> {
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
    fn templates_reach_no_file() {
        let include = render("{% include '/etc/passwd' %}", &json!({}), Limits::default());
        assert!(
            matches!(include, Err(RenderError::Failed(_))),
            "{include:?}"
        );
    }
}
