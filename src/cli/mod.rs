//! Command-line interface (clap). `main` dispatches; this module holds the
//! argument types and the offline commands (`check-config`, `render`);
//! [`client`] holds the commands that talk to a running agent.
//!
//! Exit codes (docs/status.md, "CLI"): 0 ok, 1 runtime error, 2 usage or configuration
//! error, 3 agent unreachable.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use crate::config::{self, Config, DEFAULT_PATH};

// --- status-socket client (h/status-cli) ---
pub mod client;
pub mod etcd;
// --- end status-socket client ---

/// Exit code: success.
pub const EXIT_OK: i32 = 0;
/// Exit code: runtime error.
pub const EXIT_RUNTIME: i32 = 1;
/// Exit code: usage or configuration error.
pub const EXIT_USAGE: i32 = 2;
/// Exit code: the agent's status socket is unreachable.
pub const EXIT_UNREACHABLE: i32 = 3;

/// lb-agent: node agent for HAProxy load balancers on an anycast + ECMP platform.
#[derive(Debug, Parser)]
#[command(name = "lb-agent", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Run the agent (the systemd service).
    Run {
        /// agent.toml to use.
        #[arg(long, short, env = "LB_AGENT_CONFIG", default_value = DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Validate agent.toml and report every problem with file, line and key.
    CheckConfig {
        /// agent.toml to check.
        #[arg(long, short, env = "LB_AGENT_CONFIG", default_value = DEFAULT_PATH)]
        config: PathBuf,
        /// Also validate the cached last-known-good document (`source.cache`)
        /// the way this version would at start, VIP rules and this host
        /// included (the packages run it before an upgrade's restart).
        #[arg(long)]
        cache: bool,
    },
    /// Withdraw everything: write the dummy-only BIRD include and reconfigure BIRD.
    ///
    /// Used by the packages so that BIRD never starts announcing before checks
    /// passed (bird.service ExecStartPre) and so that a crashed or killed agent
    /// leaves nothing announced (lb-agent.service ExecStopPost).
    Reset {
        /// agent.toml to use.
        #[arg(long, short, env = "LB_AGENT_CONFIG", default_value = DEFAULT_PATH)]
        config: PathBuf,
        /// Only when systemd reports the service failed ($SERVICE_RESULT is not "success"),
        /// so that a clean stop with `on_stop = "keep"` or a hand-over keeps the announcements.
        #[arg(long)]
        if_failed: bool,
    },
    /// Ask the running agent to keep its announcements when it is next stopped
    /// (within two minutes), e.g. for a package upgrade's restart.
    Handover {
        /// agent.toml to use (for `node.state_dir`).
        #[arg(long, short, env = "LB_AGENT_CONFIG", default_value = DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Check this host against agent.toml: HAProxy's and BIRD's sockets and
    /// versions, bird.conf's include and export filter, the VIP interface,
    /// the status-socket group and the state dir; a fix for each failure.
    /// Exit 0 when every check passes, 1 when one fails, 2 for a bad agent.toml.
    Doctor {
        /// agent.toml to use.
        #[arg(long, short, env = "LB_AGENT_CONFIG", default_value = DEFAULT_PATH)]
        config: PathBuf,
        /// BIRD's main configuration, which must include the agent's file.
        #[arg(long, default_value = crate::doctor::DEFAULT_BIRD_CONF)]
        bird_conf: PathBuf,
        /// Print the checks as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Print the haproxy.cfg the agent would install for a desired-state document (dry run).
    Render {
        /// The desired-state document (JSON, schema 1).
        #[arg(long)]
        desired: PathBuf,
        /// agent.toml for paths and templates; built-in defaults when absent.
        #[arg(long, short, env = "LB_AGENT_CONFIG")]
        config: Option<PathBuf>,
        /// Check the VIPs against the `vip` rules of agent.toml only, not against
        /// this host's addresses and routes (to render a document for another host).
        #[arg(long)]
        skip_host_check: bool,
    },
    /// Publish a desired-state document to etcd: validate it, diff it against
    /// the keys under the prefix and write the changes in one transaction
    /// (refused if another publisher changed the group in between).
    Publish {
        /// etcd://host:port[,host:port…]/<prefix>
        #[arg(long)]
        to: String,
        /// The document (JSON, schema 1); its "revision" is ignored (etcd's is used).
        file: PathBuf,
        /// Print what would change; write nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        etcd: etcd::EtcdArgs,
    },
    /// Print the schema-1 document held in etcd under a prefix.
    Export {
        /// etcd://host:port[,host:port…]/<prefix>
        #[arg(long)]
        from: String,
        #[command(flatten)]
        etcd: etcd::EtcdArgs,
    },
    // --- status-socket client (h/status-cli): status, vips, drain, undrain,
    // reconcile, completions, man; see `client::ClientCmd` ---
    #[command(flatten)]
    Client(client::ClientCmd),
    // --- end status-socket client ---
}

/// An error with the exit code it maps to.
#[derive(Debug)]
pub struct Failure {
    pub code: i32,
    pub message: String,
}

impl Failure {
    pub fn usage(message: impl Into<String>) -> Failure {
        Failure {
            code: EXIT_USAGE,
            message: message.into(),
        }
    }
    pub fn runtime(message: impl Into<String>) -> Failure {
        Failure {
            code: EXIT_RUNTIME,
            message: message.into(),
        }
    }
}

/// Loads agent.toml, mapping every problem to a usage failure listing them all.
pub fn load_config(path: &Path) -> Result<Config, Failure> {
    config::load(path).map_err(|e| Failure::usage(format!("{} is invalid:\n{e}", path.display())))
}

/// Writes to stdout; a closed pipe (`| head`) ends the program quietly.
pub fn print(text: &str) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(EXIT_OK),
        Err(e) => Err(Failure::runtime(format!("writing to stdout: {e}"))),
    }
}

/// What `lb-agent run` does before anything else: raise the descriptor
/// limit (see [`crate::fdbudget`]) and log the warnings of
/// [`config::warnings`]. Nothing here stops the start.
pub fn startup_checks(cfg: &Config) {
    match crate::fdbudget::raise_nofile_limit() {
        Ok(l) => {
            tracing::info!(
                soft = l.soft,
                hard = l.hard,
                before = l.before,
                "descriptor limit"
            );
            let metrics = cfg
                .status
                .metrics_listen
                .map(|_| cfg.status.metrics_max_connections);
            if let Err(problem) =
                crate::fdbudget::budget(l.soft, cfg.status.max_connections, metrics)
            {
                tracing::warn!("{problem}");
            }
        }
        Err(error) => tracing::warn!(%error, "cannot raise the descriptor limit"),
    }
    for w in config::warnings(cfg) {
        tracing::warn!("{w}");
    }
}

/// `lb-agent check-config [--cache]`: errors fail it; warnings are printed,
/// and do not. With `cache`, a cached document this version would refuse
/// fails it, naming every problem.
pub fn check_config(path: &Path, cache: bool) -> Result<(), Failure> {
    let cfg = load_config(path)?;
    // Settings valid on their own that this host cannot apply (more pinned
    // threads than allowed CPUs), as `run` would find them.
    crate::setup::host_global(&cfg)
        .map_err(|e| Failure::usage(format!("{} is invalid on this host:\n{e}", path.display())))?;
    for w in config::warnings(&cfg) {
        eprintln!("warning: {}: {w}", path.display());
    }
    if cache {
        check_cache(&cfg)?;
    }
    print(&format!(
        "{}: OK (node {}, group {}, source {})\n",
        path.display(),
        cfg.node.name,
        cfg.node.group,
        match &cfg.source.url {
            config::SourceUrl::Http(u) => u.clone(),
            config::SourceUrl::File(p) => format!("file://{}", p.display()),
            config::SourceUrl::Etcd(e) => e.display(),
        }
    ))
}

/// Validates `[source] cache` as the agent would at start; a missing cache
/// is fine (nothing to keep serving).
fn check_cache(cfg: &Config) -> Result<(), Failure> {
    let path = &cfg.source.cache;
    let body = match crate::fsutil::read_optional(path) {
        Ok(Some(b)) => b,
        Ok(None) => return print(&format!("{}: no cached document\n", path.display())),
        Err(e) => return Err(Failure::runtime(format!("reading {}: {e}", path.display()))),
    };
    match crate::vip::HostValidator::new(cfg).parse(&body) {
        Ok(d) => print(&format!(
            "{}: revision {} is valid for this host ({} VIPs)\n",
            path.display(),
            d.revision,
            d.vips.len()
        )),
        Err(e) => Err(Failure::runtime(format!(
            "{} (the cached document) would be REFUSED by this version: at start the agent would have \
             no desired state and withdraw every VIP until the API serves a document that passes:\n{}",
            path.display(),
            e.0.iter()
                .map(|x| format!("  {x}"))
                .collect::<Vec<_>>()
                .join("\n")
        ))),
    }
}

/// `lb-agent reset [--if-failed]`.
pub fn reset(config_path: &Path, if_failed: bool) -> Result<(), Failure> {
    if if_failed {
        let result = std::env::var("SERVICE_RESULT").unwrap_or_default();
        if result == "success" {
            return print(&format!(
                "service result is {result:?}: announcements left as they are\n"
            ));
        }
    }
    let cfg = load_config(config_path)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::runtime(format!("starting the runtime: {e}")))?;
    let report = rt
        .block_on(crate::bird::publisher::reset(&cfg.bird))
        .map_err(|e| Failure::runtime(format!("reset failed: {e}")))?;
    let bird = match report.bird {
        crate::bird::publisher::ResetBird::NotRunning => {
            "BIRD is not running; it will read the dummy-only include at start".to_string()
        }
        crate::bird::publisher::ResetBird::Reconfigured(o) => {
            format!("BIRD reconfigured ({o:?}) and holds only the dummy prefixes")
        }
    };
    print(&format!(
        "{}: {}; {bird}\n",
        cfg.bird.include_file.display(),
        if report.written {
            "reset to the dummy prefixes"
        } else {
            "already held only the dummy prefixes"
        }
    ))
}

/// `lb-agent handover`: the next stop within two minutes keeps announcements.
pub fn handover(config_path: &Path) -> Result<(), Failure> {
    let cfg = load_config(config_path)?;
    let path = cfg.node.state_dir.join(crate::anycast::HANDOVER_FILE);
    let stamp = humantime::format_rfc3339_seconds(crate::clock::wall()).to_string();
    crate::fsutil::write_atomic(&path, stamp.as_bytes(), 0o644)
        .map_err(|e| Failure::runtime(format!("writing {}: {e}", path.display())))?;
    print(&format!(
        "{}: the agent keeps its announcements if it stops within {} s\n",
        path.display(),
        crate::anycast::HANDOVER_VALIDITY.as_secs()
    ))
}

/// `lb-agent doctor`: one line per check (or `--json`); fails with
/// [`EXIT_RUNTIME`] when a check failed.
pub fn doctor(config_path: &Path, bird_conf: &Path, json: bool) -> Result<(), Failure> {
    let cfg = load_config(config_path)?;
    let checks = crate::doctor::run(&cfg, bird_conf);
    let failed = checks.iter().filter(|c| !c.ok).count();
    if json {
        let report = crate::doctor::Report {
            ok: failed == 0,
            config: config_path.to_path_buf(),
            bird_conf: bird_conf.to_path_buf(),
            checks: &checks,
        };
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| Failure::runtime(format!("encoding the report: {e}")))?;
        print(&format!("{text}\n"))?;
    } else {
        let lines: String = checks.iter().map(|c| c.line() + "\n").collect();
        print(&lines)?;
    }
    if failed > 0 {
        return Err(Failure::runtime(format!(
            "doctor: {failed} of {} checks failed",
            checks.len()
        )));
    }
    Ok(())
}

/// `lb-agent render --desired FILE`.
/// VIPs are checked as the agent on this host would, unless `skip_host_check`.
pub fn render(
    desired: &Path,
    config_path: Option<&Path>,
    skip_host_check: bool,
) -> Result<(), Failure> {
    let body = std::fs::read(desired)
        .map_err(|e| Failure::usage(format!("reading {}: {e}", desired.display())))?;
    let cfg = match config_path {
        Some(p) => load_config(p)?,
        None => {
            let mut c =
                config::parse_str("", "<defaults>").map_err(|e| Failure::usage(e.to_string()))?;
            // Without an agent.toml, accept the document's own group.
            if let Some(g) = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("group").and_then(|g| g.as_str()).map(str::to_string))
            {
                c.node.group = g;
            }
            c
        }
    };
    // Validated exactly as the agent would on this host: logic rendered
    // with this host's facts, [vip] rules and this host's addresses and
    // routes included (unless asked not to).
    let parsed = if skip_host_check {
        crate::model::validate::parse_document_on_host(
            &body,
            &crate::model::validate::ValidateContext {
                group: cfg.node.group.clone(),
            },
            &crate::logic::LogicHost::from_config(&cfg),
            &crate::model::hostnet::VipPolicy::from_config(&cfg.vip, &cfg.bird),
        )
    } else {
        crate::vip::HostValidator::new(&cfg).parse(&body)
    };
    let d = parsed.map_err(|e| {
        Failure::runtime(format!(
            "{} is invalid:\n{}",
            desired.display(),
            e.0.iter()
                .map(|x| format!("  {x}"))
                .collect::<Vec<_>>()
                .join("\n")
        ))
    })?;
    let r = crate::setup::renderer(&cfg).map_err(|e| Failure::usage(format!("{e:#}")))?;
    let out = r
        .render(&d, &cfg.haproxy.data_dir)
        .map_err(|e| Failure::runtime(e.to_string()))?;
    print(&out.config)
}
