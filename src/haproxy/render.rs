//! Renders the whole desired state into `haproxy.cfg` plus its data files (pure).
//!
//! Templates are tera files (the operator's, trusted). The defaults ship in the repository (`templates/`)
//! and are compiled into the binary; an operator may override any of them
//! by putting a file with the same name into `[haproxy] templates` (a missing
//! directory or file falls back to the built-in one), and may add extra
//! `*.tera` files to include from there.
//!
//! Logic snippets from the document are *not* tera: they are rendered and
//! checked by the sandbox in `crate::logic` (bounded minijinja, allow-listed
//! directives), and only the checked lines reach the frontend template.
//!
//! Rendering is pure: [`Renderer::new`] is the only step reading files. The
//! output ([`Rendered`]) holds the config text and every map, ACL and
//! certificate file it refers to, with paths below `data_dir`; the reload
//! scheduler stages, validates and installs them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config::SlotPolicy;
use crate::model::validate::error_chain;
use crate::model::{DesiredState, HealthKind};
use crate::plan::{check_keywords, pool_layout, Structure};

/// The built-in templates: (name, source).
pub const DEFAULT_TEMPLATES: &[(&str, &str)] = &[
    (
        "haproxy.cfg.tera",
        include_str!("../../templates/haproxy.cfg.tera"),
    ),
    (
        "global.cfg.tera",
        include_str!("../../templates/global.cfg.tera"),
    ),
    (
        "frontend.cfg.tera",
        include_str!("../../templates/frontend.cfg.tera"),
    ),
    (
        "backend.cfg.tera",
        include_str!("../../templates/backend.cfg.tera"),
    ),
];

const MAIN: &str = "haproxy.cfg.tera";

/// Why a config could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("reading template {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("template {name}: {message}")]
    Template { name: String, message: String },
    #[error("logic {logic} for {target}: {message}")]
    Logic {
        logic: String,
        /// `frontend NAME` or `pool NAME`.
        target: String,
        message: String,
    },
}

/// Host settings rendered into the global section and the agent header.
#[derive(Debug, Clone, Serialize)]
pub struct RenderSettings {
    pub runtime_socket: PathBuf,
    pub state_file: PathBuf,
    pub hard_stop_after: Duration,
    pub data_dir: PathBuf,
    pub slot_policy_pow2: bool,
    pub node_name: String,
    pub node_group: String,
    pub node_az: Option<String>,
    /// Host tuning, log targets and host-local listeners (`[haproxy]` keys).
    pub global: crate::haproxy::global::GlobalSettings,
}

impl RenderSettings {
    pub fn slot_policy(&self) -> SlotPolicy {
        if self.slot_policy_pow2 {
            SlotPolicy::Pow2
        } else {
            SlotPolicy::Exact
        }
    }
}

/// A rendered configuration and the files it refers to.
///
/// Only [`Renderer::render`] makes one (a private field), so everything
/// that validates or installs a config (`reload::Installer`) gets text whose
/// logic snippets passed the sandbox's checker.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub config: String,
    /// Data files: path relative to `data_dir` → content.
    pub files: BTreeMap<PathBuf, Vec<u8>>,
    /// Logic snippets inserted, every one checked (`crate::logic`).
    checked_snippets: usize,
}

impl Rendered {
    /// How many logic snippets the config holds (each passed the checker).
    pub fn checked_snippets(&self) -> usize {
        self.checked_snippets
    }
}

/// The template set plus host settings.
#[derive(Debug)]
pub struct Renderer {
    tera: tera::Tera,
    settings: RenderSettings,
    /// Digest of template sources and settings: part of the structure.
    global_digest: String,
}

/// The data-file naming shared with the planner and the logic sandbox.
pub use crate::model::files::{acl_path, cert_path, map_path};

#[derive(Serialize)]
struct Snippet {
    name: String,
    lines: Vec<String>,
}

#[derive(Serialize)]
struct FrontendCtx {
    name: String,
    mode: &'static str,
    /// The frontend terminates TLS (its log format adds the TLS fields).
    tls: bool,
    binds: Vec<String>,
    certificates: Vec<String>,
    maxconn: Option<u32>,
    default_pool: Option<String>,
    logic: Vec<Snippet>,
    /// AZ routing rules for the default pool (`plan::az::frontend_rules`).
    routing: Vec<String>,
}

#[derive(Serialize)]
struct CheckCtx {
    kind: &'static str,
    path: Option<String>,
    host: Option<String>,
    keywords: String,
}

#[derive(Serialize)]
struct ServerCtx {
    name: String,
    address: String,
    weight: u16,
    disabled: bool,
    is_slot: bool,
    /// Extra server keywords (`cookie NAME` for cookie stickiness).
    extra: String,
}

#[derive(Serialize)]
struct PoolCtx {
    name: String,
    mode: &'static str,
    balance: String,
    check: Option<CheckCtx>,
    servers: Vec<ServerCtx>,
    /// Directives from typed pool fields (options, stickiness), one per line.
    options: Vec<String>,
    /// The pool's logic snippets (the same in each of its backends).
    logic: Vec<Snippet>,
}

impl Renderer {
    /// Loads the built-in templates, overridden by files in `dir` when given.
    pub fn new(dir: Option<&Path>, settings: RenderSettings) -> Result<Renderer, RenderError> {
        let mut sources: BTreeMap<String, String> = DEFAULT_TEMPLATES
            .iter()
            .map(|(n, s)| (n.to_string(), s.to_string()))
            .collect();
        if let Some(dir) = dir {
            match std::fs::read_dir(dir) {
                Ok(entries) => {
                    for e in entries.flatten() {
                        let path = e.path();
                        let Some(name) = path
                            .file_name()
                            .and_then(|n| n.to_str())
                            .map(str::to_string)
                        else {
                            continue;
                        };
                        if !name.ends_with(".tera") || !path.is_file() {
                            continue;
                        }
                        let text =
                            std::fs::read_to_string(&path).map_err(|source| RenderError::Io {
                                path: path.clone(),
                                source,
                            })?;
                        sources.insert(name, text);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(RenderError::Io {
                        path: dir.to_path_buf(),
                        source,
                    })
                }
            }
        }
        let mut tera = tera::Tera::default();
        tera.autoescape_on(vec![]);
        tera.add_raw_templates(
            sources
                .iter()
                .map(|(n, s)| (n.as_str(), s.as_str()))
                .collect::<Vec<_>>(),
        )
        .map_err(|e| RenderError::Template {
            name: "templates".into(),
            message: error_chain(&e),
        })?;
        let mut h = Sha256::new();
        for (n, s) in &sources {
            h.update(n.as_bytes());
            h.update([0]);
            h.update(s.as_bytes());
            h.update([0]);
        }
        h.update(serde_json::to_vec(&settings).unwrap_or_default());
        let global_digest = hex::encode(&h.finalize()[..8]);
        Ok(Renderer {
            tera,
            settings,
            global_digest,
        })
    }

    /// Digest of templates + settings, the `global` part of a [`Structure`].
    pub fn global_digest(&self) -> &str {
        &self.global_digest
    }

    pub fn settings(&self) -> &RenderSettings {
        &self.settings
    }

    /// The structure of `d` under these templates.
    pub fn structure(&self, d: &DesiredState) -> Structure {
        let s = &self.settings;
        let host = crate::logic::LogicHost {
            node_name: s.node_name.clone(),
            node_group: s.node_group.clone(),
            node_az: s.node_az.clone(),
            data_dir: s.data_dir.clone(),
        };
        Structure::of_host(d, &self.global_digest, &host)
    }

    /// Renders `d` with data-file paths below `data_dir` (the real one, or a
    /// staging directory for validation): the data files, the checked logic,
    /// the template contexts, then the main template.
    pub fn render(&self, d: &DesiredState, data_dir: &Path) -> Result<Rendered, RenderError> {
        let s = &self.settings;
        let data = data_files(d, data_dir);
        let host = crate::logic::LogicHost {
            node_name: s.node_name.clone(),
            node_group: s.node_group.clone(),
            node_az: s.node_az.clone(),
            data_dir: data_dir.to_path_buf(),
        };
        // Rendered, bounded and checked by the logic sandbox: only
        // `CheckedSnippet`s reach the config, so no candidate that `haproxy -c`
        // sees carries a snippet that left its section.
        let mut logic = crate::logic::render_logic(d, &host).map_err(logic_error)?;
        let mut pools = Vec::new();
        let mut checked_snippets = logic.frontends.values().map(Vec::len).sum::<usize>();
        for b in crate::plan::az::backends(d) {
            let snippets = logic
                .pools
                .get(&b.base.name)
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            checked_snippets += snippets.len();
            pools.push(pool_ctx(&b, s.slot_policy(), snippets));
        }
        let frontends = self.frontend_ctxs(d, data_dir, &mut logic);

        let mut ctx = tera::Context::new();
        ctx.insert(
            "agent",
            &serde_json::json!({
                "version": env!("CARGO_PKG_VERSION"),
                "revision": d.revision,
                "structure": self.structure(d).digest(),
            }),
        );
        ctx.insert(
            "node",
            &serde_json::json!({ "name": s.node_name, "group": s.node_group, "az": s.node_az }),
        );
        ctx.insert("global", &self.global_ctx(data_dir));
        ctx.insert("frontends", &frontends);
        ctx.insert("pools", &pools);
        ctx.insert("maps", &data.maps);
        ctx.insert("acls", &data.acls);
        let config = self
            .tera
            .render(MAIN, &ctx)
            .map_err(|e| RenderError::Template {
                name: MAIN.into(),
                message: error_chain(&e),
            })?;
        Ok(Rendered {
            config: tidy(&config),
            files: data.files,
            checked_snippets,
        })
    }

    /// Every frontend's template context; takes each one's checked snippets
    /// out of `logic`.
    fn frontend_ctxs(
        &self,
        d: &DesiredState,
        data_dir: &Path,
        logic: &mut crate::logic::RenderedLogic,
    ) -> Vec<FrontendCtx> {
        let client_map = data_dir
            .join(map_path(crate::plan::az::CLIENT_MAP))
            .display()
            .to_string();
        let node_az = self.settings.node_az.as_deref();
        d.frontends
            .values()
            .map(|f| {
                let logic = logic
                    .frontends
                    .remove(&f.name)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|c| Snippet {
                        name: c.name().to_string(),
                        lines: c.lines().to_vec(),
                    })
                    .collect();
                let certificates: Vec<String> = f
                    .tls
                    .as_ref()
                    .map(|t| {
                        t.certificates
                            .iter()
                            .map(|c| data_dir.join(cert_path(c.as_str())).display().to_string())
                            .collect()
                    })
                    .unwrap_or_default();
                FrontendCtx {
                    name: f.name.to_string(),
                    mode: f.mode.as_str(),
                    tls: !certificates.is_empty(),
                    binds: f.bind.iter().map(|b| b.to_string()).collect(),
                    certificates,
                    maxconn: f.maxconn,
                    default_pool: f.default_pool.as_ref().map(|p| p.to_string()),
                    logic,
                    routing: f
                        .default_pool
                        .as_ref()
                        .and_then(|p| d.pools.get(p))
                        .map(|p| crate::plan::az::frontend_rules(d, p, &client_map, node_az))
                        .unwrap_or_default(),
                }
            })
            .collect()
    }

    /// The `global` template context: agent.toml's host settings.
    fn global_ctx(&self, data_dir: &Path) -> serde_json::Value {
        let s = &self.settings;
        serde_json::json!({
            "runtime_socket": s.runtime_socket,
            "state_file": s.state_file,
            "hard_stop_after_ms": s.hard_stop_after.as_millis() as u64,
            "data_dir": data_dir,
            "log": s.global.log,
            "nbthread": s.global.nbthread,
            "cpu_map": s.global.cpu_map,
            "maxconn": s.global.maxconn,
            "tls_min_version": s.global.tls_min_version,
            "prometheus": s.global.prometheus_listen.as_ref().map(|l| serde_json::json!({
                "name": crate::haproxy::global::PROMETHEUS_FRONTEND, "bind": l,
            })),
            "stats": s.global.stats_listen.as_ref().map(|l| serde_json::json!({
                "name": crate::haproxy::global::STATS_FRONTEND, "bind": l, "uri": s.global.stats_uri,
            })),
        })
    }
}

/// The map, ACL and certificate files of a render, and the paths the
/// template names them by.
struct DataFiles {
    /// Relative path → content.
    files: BTreeMap<PathBuf, Vec<u8>>,
    /// Map / ACL name → absolute path below the data directory.
    maps: BTreeMap<String, String>,
    acls: BTreeMap<String, String>,
}

fn data_files(d: &DesiredState, data_dir: &Path) -> DataFiles {
    let mut out = DataFiles {
        files: BTreeMap::new(),
        maps: BTreeMap::new(),
        acls: BTreeMap::new(),
    };
    let abs = |rel: &Path| data_dir.join(rel).display().to_string();
    for m in crate::plan::az::all_maps(d) {
        let rel = map_path(m.name.as_str());
        let mut body = String::new();
        for (k, v) in &m.entries {
            body.push_str(k);
            body.push(' ');
            body.push_str(v);
            body.push('\n');
        }
        out.maps.insert(m.name.to_string(), abs(&rel));
        out.files.insert(rel, body.into_bytes());
    }
    for a in d.acls.values() {
        let rel = acl_path(a.name.as_str());
        let mut body = String::new();
        for e in &a.entries {
            body.push_str(e);
            body.push('\n');
        }
        out.acls.insert(a.name.to_string(), abs(&rel));
        out.files.insert(rel, body.into_bytes());
    }
    for c in d.certificates.values() {
        let mut pem = c.pem.clone();
        if !pem.ends_with('\n') {
            pem.push('\n');
        }
        out.files
            .insert(cert_path(c.name.as_str()), pem.into_bytes());
    }
    out
}

/// The first error of the logic sandbox, as a render error.
fn logic_error(errs: Vec<crate::logic::LogicError>) -> RenderError {
    let first = &errs[0];
    RenderError::Logic {
        logic: first.logic.to_string(),
        target: first
            .target
            .as_ref()
            .map(|t| t.to_string())
            .unwrap_or_else(|| "-".into()),
        message: match &first.problem {
            crate::logic::Problem::Template(e) => e.to_string(),
            crate::logic::Problem::Violation(v) => v.to_string(),
        },
    }
}

/// One backend's template context; `logic` are its pool's checked snippets.
fn pool_ctx(
    b: &crate::plan::az::Backend<'_>,
    policy: SlotPolicy,
    logic: &[crate::logic::CheckedSnippet],
) -> PoolCtx {
    let p = b.pool.as_ref();
    let cookie = b.base.stickiness == crate::model::Stickiness::Cookie;
    let slowstart = crate::model::options::server_keywords(&b.base.options);
    let servers = pool_layout(p, policy)
        .into_iter()
        .map(|l| ServerCtx {
            extra: {
                let mut extra: Vec<String> = Vec::new();
                if cookie {
                    extra.push(format!("cookie {}", l.name));
                }
                if b.base.options.backup.contains(l.name.as_str()) {
                    extra.push("backup".into());
                }
                extra.extend(slowstart.clone());
                extra.join(" ")
            },
            name: l.name,
            address: std::net::SocketAddr::new(l.addr, l.port).to_string(),
            weight: l.weight,
            disabled: l.disabled,
            is_slot: l.is_slot,
        })
        .collect();
    let check = p.check.as_ref().map(|c| {
        let mut keywords = check_keywords(c);
        if c.kind == HealthKind::Tls {
            keywords.push_str(" check-ssl verify none");
        }
        CheckCtx {
            kind: match c.kind {
                HealthKind::Tcp => "tcp",
                HealthKind::Http => "http",
                HealthKind::Tls => "tls",
            },
            path: c.path.clone(),
            host: c.host.clone(),
            keywords,
        }
    });
    PoolCtx {
        name: p.name.to_string(),
        mode: p.mode.as_str(),
        balance: p.balance.0.clone(),
        check,
        servers,
        options: crate::model::options::backend_lines(&b.base.options)
            .into_iter()
            .chain(crate::plan::az::stickiness_lines(b.base))
            .collect(),
        logic: logic
            .iter()
            .map(|c| Snippet {
                name: c.name().to_string(),
                lines: c.lines().to_vec(),
            })
            .collect(),
    }
}

/// Collapses runs of blank lines left by template control flow.
fn tidy(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut blank = 0;
    for line in s.lines() {
        let line = line.trim_end();
        if line.is_empty() {
            blank += 1;
            if blank > 1 {
                continue;
            }
        } else {
            blank = 0;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Reads the structure digest embedded in a rendered config's header.
pub fn embedded_structure_digest(config: &str) -> Option<String> {
    config
        .lines()
        .take(10)
        .find_map(|l| l.strip_prefix("# lb-agent-structure: "))
        .map(|s| s.trim().to_string())
}
