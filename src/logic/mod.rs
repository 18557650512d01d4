//! The business-logic sandbox: document templates → checked config lines (pure).
//!
//! A logic snippet (`logic[].template` in the API document) is rendered per
//! frontend or pool it is attached to and inserted into that frontend's
//! section of `haproxy.cfg`, or into every backend of that pool (a pool
//! routed by AZ has a spill backend and one per zone: each gets the same
//! lines). The API is trusted to describe load balancing, never to
//! run code or reshape the host (`docs/security.md`), so two things stand
//! between a template and HAProxy:
//!
//! 1. [`engine`]: templates render with bounded time, memory, output and
//!    recursion, with no access to the environment or the filesystem;
//! 2. [`check`]: the *rendered* text of every snippet must stay inside its
//!    section: an allow-list of directives and actions, with Lua, programs,
//!    environment expansion and foreign files refused.
//!
//! [`render_logic`] does both for a whole document. Validation
//! (`model::validate`) calls it so a bad snippet is a validation error with
//! its JSON path; the haproxy.cfg renderer calls it again and can only
//! insert [`CheckedSnippet`]s, which nothing else can make, so no caller can
//! skip the check before `haproxy -c` runs on a candidate.
//!
//! What templates see and what the limits are is documented for API authors
//! in `docs/logic.md`.

pub mod check;
pub mod engine;
pub mod lexer;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use minijinja::value::{Serde, Value};
use serde::Serialize;

use crate::model::{DesiredState, Frontend, Name, Pool};

pub use check::{check_snippet, check_snippet_with_files, Section, Violation};
pub use engine::{Budget, Engine, Limits, TemplateError, LIMITS};

/// Host facts a snippet may use, and where the data files live.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LogicHost {
    pub node_name: String,
    pub node_group: String,
    pub node_az: Option<String>,
    /// Directory of the map, ACL and certificate files (the real one, or a
    /// staging directory while validating a candidate).
    pub data_dir: PathBuf,
}

impl LogicHost {
    /// This host's facts, from agent.toml (what the daemon's document parser
    /// should validate with).
    pub fn from_config(cfg: &crate::config::Config) -> LogicHost {
        LogicHost {
            node_name: cfg.node.name.clone(),
            node_group: cfg.node.group.clone(),
            node_az: cfg.node.az.clone(),
            data_dir: cfg.haproxy.data_dir.clone(),
        }
    }

    /// Placeholder host facts, for validating a document without knowing
    /// the host (the renderer checks again with the real ones).
    pub fn unknown(group: &str) -> LogicHost {
        LogicHost {
            node_name: String::new(),
            node_group: group.to_string(),
            node_az: None,
            data_dir: PathBuf::from("/etc/haproxy/lb-agent"),
        }
    }
}

/// A rendered snippet that passed the checker. Only this module makes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedSnippet {
    logic: Name,
    lines: Vec<String>,
}

impl CheckedSnippet {
    /// The logic object it was rendered from.
    pub fn name(&self) -> &Name {
        &self.logic
    }

    /// Non-empty lines, leading and trailing blanks removed.
    pub fn lines(&self) -> &[String] {
        &self.lines
    }
}

/// What went wrong with one logic object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// Did not compile or render within its bounds.
    Template(TemplateError),
    /// Rendered, but the text leaves its section.
    Violation(Violation),
}

/// Why a document's logic could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicError {
    pub logic: Name,
    /// What it was being rendered for (`None`: it did not compile).
    pub target: Option<Target>,
    pub problem: Problem,
}

impl fmt::Display for LogicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "logic {}", self.logic)?;
        if let Some(t) = &self.target {
            write!(f, " rendered for {t}")?;
        }
        match &self.problem {
            Problem::Template(e) => write!(f, ": {e}"),
            Problem::Violation(v) => write!(f, ": {v}"),
        }
    }
}

/// Absolute paths of the document's map and ACL files below `data_dir`:
/// the only files a snippet may reference.
pub fn data_files(d: &DesiredState, data_dir: &Path) -> BTreeSet<String> {
    use crate::model::files::{acl_path, map_path};
    d.maps
        .keys()
        .map(|n| data_dir.join(map_path(n.as_str())))
        .chain(d.acls.keys().map(|n| data_dir.join(acl_path(n.as_str()))))
        .map(|p| p.display().to_string())
        .collect()
}

/// What a template sees of a frontend: what needs a reload to change (its
/// VIP health check is the agent's business and left out).
#[derive(Serialize)]
struct FrontendView<'a> {
    name: &'a Name,
    bind: Vec<String>,
    mode: &'static str,
    tls: Option<&'a crate::model::FrontendTls>,
    default_pool: Option<&'a Name>,
    logic: &'a [Name],
    maxconn: Option<u32>,
}

/// What a template sees of a pool: what needs a reload to change. No
/// servers (they change at runtime without a reload); the structure digest
/// covers each snippet's rendered text anyway (`plan::structure`).
#[derive(Serialize)]
struct PoolView<'a> {
    name: &'a Name,
    mode: &'static str,
    balance: &'a str,
    routing: crate::model::Routing,
    stickiness: crate::model::Stickiness,
    logic: &'a [Name],
}

fn frontend_value(f: &Frontend) -> Value {
    Value::from(Serde(FrontendView {
        name: &f.name,
        bind: f.bind.iter().map(|b| b.to_string()).collect(),
        mode: f.mode.as_str(),
        tls: f.tls.as_ref(),
        default_pool: f.default_pool.as_ref(),
        logic: &f.logic,
        maxconn: f.maxconn,
    }))
}

fn pool_value(p: &Pool) -> Value {
    Value::from(Serde(PoolView {
        name: &p.name,
        mode: p.mode.as_str(),
        balance: &p.balance.0,
        routing: p.routing,
        stickiness: p.stickiness,
        logic: &p.logic,
    }))
}

/// The parts of a template's context that are the same for every object.
struct Shared {
    node: Value,
    maps: Value,
    acls: Value,
    az: Value,
    pools: BTreeMap<Name, Value>,
    all_pools: Value,
}

impl Shared {
    fn new(d: &DesiredState, host: &LogicHost) -> Shared {
        let paths = |names: Vec<&Name>, f: fn(&str) -> PathBuf| -> Value {
            Value::from(Serde(
                names
                    .into_iter()
                    .map(|n| {
                        let p = host.data_dir.join(f(n.as_str())).display().to_string();
                        (n.to_string(), p)
                    })
                    .collect::<BTreeMap<_, _>>(),
            ))
        };
        let pools: BTreeMap<Name, Value> = d
            .pools
            .values()
            .map(|p| (p.name.clone(), pool_value(p)))
            .collect();
        Shared {
            node: Value::from(Serde(serde_json::json!({
                "name": host.node_name, "group": host.node_group, "az": host.node_az,
            }))),
            maps: paths(d.maps.keys().collect(), crate::model::files::map_path),
            acls: paths(d.acls.keys().collect(), crate::model::files::acl_path),
            az: match &d.availability_zones {
                Some(a) => Value::from(Serde(serde_json::json!({
                    "zones": a.zones, "evacuated": a.evacuated,
                }))),
                None => Value::from(Serde(serde_json::json!({
                    "zones": [], "evacuated": [],
                }))),
            },
            all_pools: Value::from(
                pools
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.clone()))
                    .collect::<BTreeMap<String, Value>>(),
            ),
            pools,
        }
    }

    /// `frontend` (none for a pool's snippet), `pool` (the pool, or a
    /// frontend's default pool), `pools`, `az`, `node`, `maps`, `acls`.
    fn context(&self, frontend: Option<&Frontend>, pool: Option<&Name>) -> Value {
        minijinja::context! {
            frontend => frontend.map(frontend_value),
            pool => pool.and_then(|p| self.pools.get(p).cloned()),
            pools => self.all_pools.clone(),
            az => self.az.clone(),
            node => self.node.clone(),
            maps => self.maps.clone(),
            acls => self.acls.clone(),
        }
    }
}

/// What a snippet is attached to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    Frontend(Name),
    Pool(Name),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Frontend(n) => write!(f, "frontend {n}"),
            Target::Pool(n) => write!(f, "pool {n}"),
        }
    }
}

/// Every checked snippet of a document, per frontend and per pool (in the
/// order of the object's `logic`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RenderedLogic {
    pub frontends: BTreeMap<Name, Vec<CheckedSnippet>>,
    pub pools: BTreeMap<Name, Vec<CheckedSnippet>>,
}

/// Renders and checks every snippet of every frontend of `d`
/// ([`render_logic`], the frontends' part).
pub fn render_frontend_logic(
    d: &DesiredState,
    host: &LogicHost,
) -> Result<BTreeMap<Name, Vec<CheckedSnippet>>, Vec<LogicError>> {
    render_logic(d, host).map(|r| r.frontends)
}

/// Renders and checks every snippet of every frontend and pool of `d`:
/// a frontend's against [`Section::Frontend`], a pool's (inserted in each
/// of the pool's backends) against [`Section::Backend`].
///
/// Returns the checked snippets, or every problem found: at most one per
/// logic object (the first object it fails for), or a budget error when the
/// document's templates together exceed [`Limits::fuel_per_document`].
pub fn render_logic(d: &DesiredState, host: &LogicHost) -> Result<RenderedLogic, Vec<LogicError>> {
    let engine = Engine::default();
    let mut errors: Vec<LogicError> = Vec::new();
    let mut compiled = BTreeMap::new();
    for l in d.logic.values() {
        match engine.compile(&l.template) {
            Ok(c) => {
                compiled.insert(&l.name, c);
            }
            Err(e) => errors.push(LogicError {
                logic: l.name.clone(),
                target: None,
                problem: Problem::Template(e),
            }),
        }
    }
    let files = data_files(d, &host.data_dir);
    let shared = Shared::new(d, host);
    let mut failed: BTreeSet<Name> = errors.iter().map(|e| e.logic.clone()).collect();
    let mut budget = Budget::new(engine.limits());
    let mut out = RenderedLogic::default();
    let targets = d
        .frontends
        .values()
        .filter(|f| !f.logic.is_empty())
        .map(|f| {
            let ctx = shared.context(Some(f), f.default_pool.as_ref());
            (
                Target::Frontend(f.name.clone()),
                &f.logic,
                ctx,
                Section::Frontend,
            )
        })
        .chain(d.pools.values().filter(|p| !p.logic.is_empty()).map(|p| {
            let ctx = shared.context(None, Some(&p.name));
            (
                Target::Pool(p.name.clone()),
                &p.logic,
                ctx,
                Section::Backend,
            )
        }));
    for (target, names, ctx, section) in targets {
        let mut snippets = Vec::with_capacity(names.len());
        for ln in names {
            if failed.contains(ln) {
                continue;
            }
            let Some(c) = compiled.get(ln) else { continue };
            let fail = |problem| LogicError {
                logic: ln.clone(),
                target: Some(target.clone()),
                problem,
            };
            let text = match c.render(&ctx, &mut budget) {
                Ok(t) => t,
                Err(e @ TemplateError::DocumentBudget(_)) => {
                    errors.push(fail(Problem::Template(e)));
                    return Err(errors);
                }
                Err(e) => {
                    errors.push(fail(Problem::Template(e)));
                    failed.insert(ln.clone());
                    continue;
                }
            };
            if let Err(v) = check_snippet_with_files(&text, section, &files) {
                errors.push(fail(Problem::Violation(v)));
                failed.insert(ln.clone());
                continue;
            }
            snippets.push(CheckedSnippet {
                logic: ln.clone(),
                lines: text
                    .split('\n')
                    .map(|l| l.trim_matches(|c| c == ' ' || c == '\t'))
                    .filter(|l| !l.is_empty())
                    .map(str::to_string)
                    .collect(),
            });
        }
        match target {
            Target::Frontend(n) => out.frontends.insert(n, snippets),
            Target::Pool(n) => out.pools.insert(n, snippets),
        };
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests;
