//! The template engine for document (API) templates: minijinja, metered.
//!
//! Logic templates come from the central API, which is trusted to describe
//! load balancing but not to run code on the host. So they are rendered by
//! an engine built for untrusted templates, with every bound set explicitly:
//!
//! - **time and memory**: minijinja's fuel charges every instruction and
//!   every byte a template creates or writes, and checks allocations of a
//!   known size before making them, so a loop, a huge `range`, string
//!   doubling or `"x" * n` runs out of fuel instead of memory; each render
//!   gets [`Limits::fuel_per_render`], a whole document
//!   [`Limits::fuel_per_document`];
//! - **recursion**: [`Limits::recursion`] (a macro counts four levels), far
//!   below what overflows a 2 MiB thread stack;
//! - **output**: a rendered snippet is cut off at [`Limits::output_bytes`];
//! - **size**: a template's source is at most [`Limits::template_bytes`];
//! - **no environment, no files**: minijinja has neither a `get_env` nor a
//!   file loader unless one is installed, and none is; there is no
//!   `include`/`import` source either.
//!
//! Syntax is Jinja2's, which is what the API's tera templates already use
//! for `{{ x }}`, `{% if %}`, `{% for %}` and filters. Differences for API
//! authors are in `docs/logic.md`; the one the fixtures need,
//! `default(value="x")` with tera's keyword argument, is provided.

use std::io;

use minijinja::value::{Kwargs, Value};
use minijinja::{AutoEscape, Environment, Error, ErrorKind, UndefinedBehavior};

/// Bounds of document templates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest template source, bytes.
    pub template_bytes: usize,
    /// Fuel for one render of one template (about 64 bytes or one instruction per unit).
    pub fuel_per_render: u64,
    /// Fuel for all renders of one document together.
    pub fuel_per_document: u64,
    /// Largest rendered snippet, bytes.
    pub output_bytes: usize,
    /// Largest rendered logic of a whole document, bytes.
    pub output_bytes_per_document: usize,
    /// minijinja recursion depth (a loop level counts 1, a macro call 4).
    pub recursion: usize,
}

/// The bounds the agent uses (documented in `docs/logic.md`).
pub const LIMITS: Limits = Limits {
    template_bytes: 16 * 1024,
    fuel_per_render: 50_000,
    fuel_per_document: 5_000_000,
    output_bytes: 16 * 1024,
    output_bytes_per_document: 16 * 1024 * 1024,
    recursion: 64,
};

/// Why a template could not be compiled or rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("template is {0} bytes, the limit is {max}", max = LIMITS.template_bytes)]
    TooLarge(usize),
    #[error("template does not parse: {0}")]
    Syntax(String),
    #[error("rendering failed: {0}")]
    Render(String),
    #[error("template exceeded its fuel ({0} units per render): it loops or builds too much")]
    OutOfFuel(u64),
    #[error("template recursion deeper than {0} levels")]
    Recursion(usize),
    #[error("rendered snippet is larger than {0} bytes")]
    OutputTooLarge(usize),
    #[error("the document's templates together exceed their budget ({0})")]
    DocumentBudget(String),
}

/// What a whole document may still spend.
#[derive(Debug, Clone)]
pub struct Budget {
    fuel: u64,
    output: usize,
}

impl Budget {
    /// A fresh budget for one document.
    pub fn new(limits: &Limits) -> Budget {
        Budget {
            fuel: limits.fuel_per_document,
            output: limits.output_bytes_per_document,
        }
    }
}

/// A configured minijinja environment for document templates.
///
/// Cheap to build (a few microseconds); the templates it compiles borrow
/// their sources for `'s`, so one is built per document.
pub struct Engine<'s> {
    env: Environment<'s>,
    limits: Limits,
}

impl std::fmt::Debug for Engine<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("limits", &self.limits)
            .finish()
    }
}

impl Default for Engine<'_> {
    fn default() -> Self {
        Engine::new(LIMITS)
    }
}

/// A template compiled by an [`Engine`], ready to render for many objects.
pub struct Compiled<'e, 's> {
    template: minijinja::Template<'e, 's>,
    engine: &'e Engine<'s>,
}

impl<'s> Engine<'s> {
    /// An engine with the given bounds.
    pub fn new(limits: Limits) -> Engine<'s> {
        let mut env = Environment::new();
        env.set_fuel(Some(limits.fuel_per_render));
        env.set_recursion_limit(limits.recursion);
        // Like tera: an undefined value in output is an error, in `if` it is false.
        env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        // `none` (a JSON null such as an unset `node.az`) prints as nothing, as in tera.
        env.set_formatter(|out, state, value| {
            if value.is_none() {
                Ok(())
            } else {
                minijinja::escape_formatter(out, state, value)
            }
        });
        env.add_filter("default", default_filter);
        Engine { env, limits }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Compiles a template source (syntax and size only).
    pub fn compile<'e>(&'e self, source: &'s str) -> Result<Compiled<'e, 's>, TemplateError> {
        if source.len() > self.limits.template_bytes {
            return Err(TemplateError::TooLarge(source.len()));
        }
        let template = self
            .env
            .template_from_str(source)
            .map_err(|e| TemplateError::Syntax(describe(&e)))?;
        Ok(Compiled {
            template,
            engine: self,
        })
    }
}

impl Compiled<'_, '_> {
    /// Renders with `ctx`, charging `budget`; bounded in time, memory and output.
    pub fn render(&self, ctx: &Value, budget: &mut Budget) -> Result<String, TemplateError> {
        let limits = &self.engine.limits;
        if budget.fuel == 0 || budget.output == 0 {
            return Err(TemplateError::DocumentBudget(format!(
                "{} fuel, {} bytes of output",
                limits.fuel_per_document, limits.output_bytes_per_document
            )));
        }
        let cap = limits.output_bytes.min(budget.output);
        let mut out = Capped {
            buf: Vec::new(),
            cap,
            overflow: false,
        };
        let result = self.template.render_captured_to(ctx.clone(), &mut out);
        let spent = match &result {
            Ok(c) => c
                .state()
                .fuel_levels()
                .map_or(limits.fuel_per_render, |(used, _)| used),
            Err(_) => limits.fuel_per_render,
        };
        budget.fuel = budget.fuel.saturating_sub(spent.max(1));
        budget.output = budget.output.saturating_sub(out.buf.len());
        match result {
            Ok(_) => String::from_utf8(out.buf)
                .map_err(|_| TemplateError::Render("output is not UTF-8".into())),
            Err(_) if out.overflow => Err(TemplateError::OutputTooLarge(cap)),
            Err(e) => Err(classify(&e, limits)),
        }
    }
}

/// An `io::Write` that refuses to grow past `cap` bytes.
struct Capped {
    buf: Vec<u8>,
    cap: usize,
    overflow: bool,
}

impl io::Write for Capped {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() + data.len() > self.cap {
            self.overflow = true;
            return Err(io::Error::other("snippet output limit"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn classify(e: &Error, limits: &Limits) -> TemplateError {
    match e.kind() {
        ErrorKind::OutOfFuel => TemplateError::OutOfFuel(limits.fuel_per_render),
        _ if describe(e).contains("recursion limit exceeded") => {
            TemplateError::Recursion(limits.recursion)
        }
        _ => TemplateError::Render(describe(e)),
    }
}

/// minijinja's message with its detail and line, without the source dump.
fn describe(e: &Error) -> String {
    let mut s = e.to_string();
    let mut cur = std::error::Error::source(e);
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// `default(x)` and tera's `default(value=x)`: the fallback for an undefined
/// or `none` value.
fn default_filter(value: &Value, other: Option<Value>, kwargs: Kwargs) -> Result<Value, Error> {
    let named: Option<Value> = kwargs.get("value")?;
    kwargs.assert_all_used()?;
    let fallback = match (other, named) {
        (Some(_), Some(_)) => {
            return Err(Error::new(
                ErrorKind::TooManyArguments,
                "default takes its fallback once, positionally or as value=",
            ))
        }
        (Some(v), None) | (None, Some(v)) => v,
        (None, None) => Value::from(""),
    };
    if value.is_undefined() || value.is_none() {
        Ok(fallback)
    } else {
        Ok(value.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use minijinja::value::Serde;
    use std::time::Duration;

    fn render(src: &str, ctx: serde_json::Value) -> Result<String, TemplateError> {
        let e = Engine::default();
        let c = e.compile(src)?;
        c.render(&Value::from(Serde(&ctx)), &mut Budget::new(&LIMITS))
    }

    #[test]
    fn the_syntax_the_api_uses_renders() {
        let ctx = serde_json::json!({
            "frontend": {"name": "www", "bind": ["192.0.2.10:80"]},
            "pool": {"name": "web"},
            "node": {"name": "lb1", "az": null},
            "maps": {"hosts": "/d/maps/hosts.map"},
        });
        for (src, want) in [
            (
                "http-request del-header X-{{ frontend.name }}",
                "http-request del-header X-www",
            ),
            ("{{ node.az | default(value=\"none\") }}", "none"),
            ("{{ node.az | default(\"none\") }}", "none"),
            ("{{ node.name | default(value=\"x\") }}", "lb1"),
            ("{{ node.az }}", ""),
            ("{{ node.nosuch | default(value=\"d\") }}", "d"),
            ("{% if node.name == \"lb1\" %}a{% else %}b{% endif %}", "a"),
            ("{% if node.nosuch %}a{% else %}b{% endif %}", "b"),
            (
                "{% for b in frontend.bind %}{{ b }};{% endfor %}",
                "192.0.2.10:80;",
            ),
            ("{{ maps.hosts }}", "/d/maps/hosts.map"),
            ("{{ frontend.name | upper }}", "WWW"),
        ] {
            assert_eq!(render(src, ctx.clone()).as_deref(), Ok(want), "{src}");
        }
        // Printing an undefined value is an error, as in tera.
        assert!(matches!(
            render("{{ nosuch }}", ctx.clone()),
            Err(TemplateError::Render(_))
        ));
    }

    #[test]
    fn no_environment_or_filesystem() {
        std::env::set_var("LB_AGENT_TEST_SECRET", "s3cr3t");
        for src in [
            "{{ get_env(name=\"LB_AGENT_TEST_SECRET\") }}",
            "{{ env.LB_AGENT_TEST_SECRET }}",
            "{% include \"/etc/passwd\" %}",
            "{% import \"/etc/passwd\" as x %}",
            "{{ range(3e9) }}",
        ] {
            if let Ok(out) = render(src, serde_json::json!({})) {
                assert!(
                    !out.contains("s3cr3t") && !out.contains("root:"),
                    "{src}: {out}"
                );
            }
        }
        assert!(render("{{ get_env(name=\"HOME\") }}", serde_json::json!({})).is_err());
        assert!(render("{% include \"/etc/passwd\" %}", serde_json::json!({})).is_err());
    }

    fn bounded(src: &str) -> (TemplateError, Duration) {
        let t = crate::clock::now();
        let e = render(src, serde_json::json!({})).unwrap_err();
        (e, t.elapsed())
    }

    #[test]
    fn hostile_templates_stop_quickly() {
        let cases = [
            "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
            "{% for i in range(3000000000) %}x{% endfor %}",
            "{% for a in range(99999) %}{% for b in range(99999) %}{% for c in range(99999) %}{% endfor %}{% endfor %}{% endfor %}",
            "{% set ns = namespace(s=\"xx\") %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
            "{{ \"x\" * 100000000 }}",
            "{% for i in range(100000) %}0123456789abcdef{% endfor %}",
        ];
        for src in cases {
            let (e, took) = bounded(src);
            println!("{took:?} {e} <- {src}");
            assert!(took < Duration::from_secs(5), "{src}: {took:?}");
        }
        assert!(matches!(bounded(cases[0]).0, TemplateError::Recursion(_)));
        assert!(matches!(bounded(cases[2]).0, TemplateError::OutOfFuel(_)));
    }

    /// The recursion limit is far below what a small thread stack can hold.
    #[test]
    fn deep_recursion_fits_a_small_stack() {
        let h = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(|| {
                render(
                    "{% macro f(n) %}{% for i in [1] %}{% if true %}{{ f(n + 1) }}{% endif %}{% endfor %}{% endmacro %}{{ f(0) }}",
                    serde_json::json!({}),
                )
            })
            .unwrap();
        assert!(matches!(
            h.join().unwrap(),
            Err(TemplateError::Recursion(_))
        ));
    }

    #[test]
    fn a_document_has_one_budget() {
        let e = Engine::default();
        let c = e
            .compile("{% for i in range(1000) %}{{ i }}{% endfor %}")
            .unwrap();
        let mut b = Budget::new(&LIMITS);
        let ctx = Value::from(());
        let mut n = 0;
        let err = loop {
            match c.render(&ctx, &mut b) {
                Ok(_) => n += 1,
                Err(e) => break e,
            }
            assert!(n < 1_000_000, "the budget never ran out");
        };
        assert!(matches!(err, TemplateError::DocumentBudget(_)), "{err}");
        assert!(n > 10, "{n} renders");
    }

    #[test]
    fn size_limits() {
        let big = "x".repeat(LIMITS.template_bytes + 1);
        assert!(matches!(
            Engine::default().compile(&big),
            Err(TemplateError::TooLarge(_))
        ));
        let (e, _) = bounded("{{ \"x\" * 17000 }}");
        assert!(matches!(e, TemplateError::OutputTooLarge(_)), "{e}");
    }
}
