//! The CLI commands that talk to a running agent over its status socket
//! (`status`, `vips`, `drain`, `undrain`, `reconcile`), plus `completions`
//! and the hidden `man` used by the packages.
//!
//! Each command is one HTTP/1.1 request on a fresh connection to the UNIX
//! socket (hyper's client connection over `tokio::net::UnixStream`; no
//! pool, nothing to keep alive for a one-shot tool). Read commands print a
//! human view by default and the agent's JSON unchanged with `--json`, so
//! scripts see exactly what the socket serves, including keys this CLI
//! does not know yet.
//!
//! Exit codes (docs/status.md, "CLI"): 0 ok; 1 runtime error (the agent answered an
//! error, refused the request, or sent something unreadable; permission
//! denied on the socket); 2 usage (clap); 3 agent unreachable (no socket,
//! connection refused, or no answer within `--timeout`).

#![warn(missing_docs)]

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use clap::{Args, CommandFactory, Subcommand};
use clap_complete::Shell;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, CONTENT_TYPE, HOST, USER_AGENT};
use hyper::{Method, StatusCode};
use hyper_util::rt::TokioIo;

use super::{print, Cli, Failure, EXIT_RUNTIME, EXIT_UNREACHABLE};
use crate::status::types::{DrainBody, ErrorBody, Snapshot, SourceState, Timestamp, VipStatus};

/// Where the agent listens unless told otherwise (`status.socket`'s default).
pub const DEFAULT_SOCKET: &str = "/run/lb-agent/status.sock";

/// How to reach the agent; flattened into every socket command.
#[derive(Debug, Clone, Args)]
pub struct SocketArgs {
    /// The agent's status socket.
    #[arg(long, env = "LB_AGENT_SOCKET", default_value = DEFAULT_SOCKET, value_name = "PATH")]
    pub socket: PathBuf,
    /// Give up when the agent has not answered within this long (e.g. "10s").
    #[arg(long, default_value = "70s", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// The status-socket subcommands (flattened into [`super::Cmd`]).
#[derive(Debug, Subcommand)]
pub enum ClientCmd {
    /// Show the agent's state: source, HAProxy, BIRD, drain, and a VIP table.
    Status {
        /// How to reach the agent.
        #[command(flatten)]
        socket: SocketArgs,
        /// Print the agent's JSON snapshot unchanged (stable keys).
        #[arg(long)]
        json: bool,
    },
    /// One line per VIP: address, announced, services (name:up/down), reason.
    Vips {
        /// How to reach the agent.
        #[command(flatten)]
        socket: SocketArgs,
        /// Print the agent's JSON array of VIPs unchanged.
        #[arg(long)]
        json: bool,
    },
    /// Withdraw every VIP from BGP on this node; persists until `undrain`.
    ///
    /// Needs root, the agent's user, or membership of the status group.
    Drain {
        /// How to reach the agent.
        #[command(flatten)]
        socket: SocketArgs,
        /// Why (shown by `status`, logged with who asked).
        #[arg(long, value_name = "TEXT")]
        reason: String,
    },
    /// Lift a drain: VIPs are announced again as their checks allow.
    Undrain {
        /// How to reach the agent.
        #[command(flatten)]
        socket: SocketArgs,
    },
    /// Force a full re-render and convergence check of HAProxy now.
    Reconcile {
        /// How to reach the agent.
        #[command(flatten)]
        socket: SocketArgs,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Print the lb-agent(8) man page (roff), for the packages.
    #[command(hide = true)]
    Man,
}

/// Why a request to the agent failed; [`ClientError::exit_code`] maps it.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No socket, or nobody listening on it.
    #[error("cannot reach the agent at {socket}: {reason}")]
    Unreachable {
        /// The socket path.
        socket: PathBuf,
        /// What happened, with a hint.
        reason: String,
    },
    /// The socket exists but this user may not connect.
    #[error("permission denied on {socket}: run as root or as a member of the socket's group (status.group)")]
    PermissionDenied {
        /// The socket path.
        socket: PathBuf,
    },
    /// Connected, but no answer in time.
    #[error("the agent at {socket} did not answer within {}", humantime::format_duration(*.timeout))]
    Timeout {
        /// The socket path.
        socket: PathBuf,
        /// The limit.
        timeout: Duration,
    },
    /// The HTTP exchange broke (agent died mid-request, ...).
    #[error("talking to the agent at {socket}: {source}")]
    Http {
        /// The socket path.
        socket: PathBuf,
        /// The cause.
        source: hyper::Error,
    },
    /// The agent answered with an error status.
    #[error("the agent answered {status}: {message}")]
    Agent {
        /// HTTP status.
        status: StatusCode,
        /// The agent's `error` text.
        message: String,
    },
    /// The answer was not what the API promises.
    #[error("unexpected answer from the agent: {0}")]
    BadAnswer(String),
}

impl ClientError {
    /// 3 when the agent cannot be reached, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            ClientError::Unreachable { .. } | ClientError::Timeout { .. } => EXIT_UNREACHABLE,
            _ => EXIT_RUNTIME,
        }
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Failure {
        Failure {
            code: e.exit_code(),
            message: e.to_string(),
        }
    }
}

/// One request to the agent: `method path` with an optional JSON body.
/// Returns the body of a 2xx answer; any other status is
/// [`ClientError::Agent`] with the agent's error text.
pub async fn call(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<String>,
    timeout: Duration,
) -> Result<Bytes, ClientError> {
    match tokio::time::timeout(timeout, exchange(socket, method, path, body)).await {
        Ok(r) => r,
        Err(_) => Err(ClientError::Timeout {
            socket: socket.to_path_buf(),
            timeout,
        }),
    }
}

async fn exchange(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<String>,
) -> Result<Bytes, ClientError> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| connect_error(socket, e))?;
    let http = |source| ClientError::Http {
        socket: socket.to_path_buf(),
        source,
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http)?;
    // The connection future drives the socket; its errors also fail
    // `send_request` below, which is where they are reported.
    let driver = tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, HeaderValue::from_static("lb-agent"))
        .header(
            USER_AGENT,
            HeaderValue::from_static(concat!("lb-agent-cli/", env!("CARGO_PKG_VERSION"))),
        );
    if body.is_some() {
        req = req.header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| ClientError::BadAnswer(format!("building the request: {e}")))?;
    let resp = sender.send_request(req).await.map_err(http)?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await.map_err(http)?.to_bytes();
    driver.abort();
    if status.is_success() {
        return Ok(bytes);
    }
    let message = match serde_json::from_slice::<ErrorBody>(&bytes) {
        Ok(e) => e.error,
        Err(_) => String::from_utf8_lossy(&bytes).trim().to_string(),
    };
    Err(ClientError::Agent {
        status,
        message: sanitize(&message),
    })
}

fn connect_error(socket: &Path, e: std::io::Error) -> ClientError {
    use std::io::ErrorKind::*;
    let reason = match e.kind() {
        NotFound => {
            "no such socket (is lb-agent running? see --socket / LB_AGENT_SOCKET)".to_string()
        }
        ConnectionRefused => {
            "connection refused (the agent is not running; the socket is stale)".to_string()
        }
        PermissionDenied => {
            return ClientError::PermissionDenied {
                socket: socket.to_path_buf(),
            }
        }
        _ => e.to_string(),
    };
    ClientError::Unreachable {
        socket: socket.to_path_buf(),
        reason,
    }
}

/// Runs one client subcommand to completion.
pub fn run(cmd: ClientCmd) -> Result<(), Failure> {
    match cmd {
        ClientCmd::Completions { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "lb-agent", &mut out);
            print(&String::from_utf8_lossy(&out))
        }
        ClientCmd::Man => print(
            &man_page().map_err(|e| Failure::runtime(format!("rendering the man page: {e}")))?,
        ),
        other => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| Failure::runtime(format!("starting the runtime: {e}")))?;
            rt.block_on(run_socket_command(other))
        }
    }
}

async fn run_socket_command(cmd: ClientCmd) -> Result<(), Failure> {
    let style = Style::for_stdout();
    match cmd {
        ClientCmd::Status { socket, json } => {
            let body = call(
                &socket.socket,
                Method::GET,
                "/v1/status",
                None,
                socket.timeout,
            )
            .await?;
            if json {
                return print_json(&body);
            }
            let snap: Snapshot = parse(&body)?;
            print(&render_status(&snap, crate::clock::wall(), style))
        }
        ClientCmd::Vips { socket, json } => {
            let body = call(
                &socket.socket,
                Method::GET,
                "/v1/vips",
                None,
                socket.timeout,
            )
            .await?;
            if json {
                return print_json(&body);
            }
            let vips: Vec<VipStatus> = parse(&body)?;
            print(&render_vips(&vips, style))
        }
        ClientCmd::Drain { socket, reason } => {
            let body = serde_json::to_string(&DrainBody {
                reason: reason.clone(),
            })
            .map_err(|e| Failure::runtime(format!("encoding the request: {e}")))?;
            call(
                &socket.socket,
                Method::POST,
                "/v1/drain",
                Some(body),
                socket.timeout,
            )
            .await?;
            print(&format!(
                "drain: ok (reason: {})\n",
                sanitize(reason.trim())
            ))
        }
        ClientCmd::Undrain { socket } => {
            call(
                &socket.socket,
                Method::POST,
                "/v1/undrain",
                None,
                socket.timeout,
            )
            .await?;
            print("undrain: ok\n")
        }
        ClientCmd::Reconcile { socket } => {
            call(
                &socket.socket,
                Method::POST,
                "/v1/reconcile",
                None,
                socket.timeout,
            )
            .await?;
            print("reconcile: ok\n")
        }
        ClientCmd::Completions { .. } | ClientCmd::Man => Ok(()),
    }
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Failure> {
    serde_json::from_slice(body).map_err(|e| ClientError::BadAnswer(format!("{e}")).into())
}

/// Prints the agent's JSON as it came, after checking it is JSON.
fn print_json(body: &[u8]) -> Result<(), Failure> {
    serde_json::from_slice::<serde_json::Value>(body)
        .map_err(|e| Failure::from(ClientError::BadAnswer(format!("{e}"))))?;
    let mut text = String::from_utf8_lossy(body).into_owned();
    if !text.ends_with('\n') {
        text.push('\n');
    }
    print(&text)
}

/// The man page, one self-contained lb-agent(8): clap's title, name,
/// synopsis and description, then every visible subcommand with its
/// options (clap_mangen alone would point at per-subcommand pages that are
/// not shipped), exit status, environment and files.
pub fn man_page() -> std::io::Result<String> {
    use clap_mangen::roff::{bold, italic, roman, Inline, Roff};
    let mut cmd = Cli::command();
    cmd.build();
    let man = clap_mangen::Man::new(cmd.clone())
        .section("8")
        .manual("System Administration");
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;

    let mut r = Roff::new();
    let item = |r: &mut Roff, term: Vec<Inline>, text: &str| {
        r.control("TP", std::iter::empty::<&str>());
        r.text(term);
        r.text([roman(text)]);
    };
    r.control("SH", ["COMMANDS"]);
    r.text([roman(
        "status, vips, drain, undrain and reconcile talk HTTP/1.1 to the running agent over its UNIX status socket. \
         Mutations need root, the agent's user, or membership of the socket's group (status.group).",
    )]);
    for sub in cmd
        .get_subcommands()
        .filter(|c| !c.is_hide_set() && c.get_name() != "help")
    {
        let args: Vec<&clap::Arg> = sub
            .get_arguments()
            .filter(|a| !a.is_hide_set() && !matches!(a.get_id().as_str(), "help" | "version"))
            .collect();
        // `--long VALUE` (or `VALUE` for a positional) as roff inlines.
        let usage = |a: &clap::Arg| -> Vec<Inline> {
            let value = a.get_action().takes_values().then(|| {
                a.get_value_names()
                    .and_then(|v| v.first())
                    .map_or_else(|| a.get_id().to_string().to_uppercase(), |v| v.to_string())
            });
            match (a.get_long(), value) {
                (Some(l), Some(v)) => vec![bold(format!("--{l}")), roman(" "), italic(v)],
                (Some(l), None) => vec![bold(format!("--{l}"))],
                (None, v) => vec![italic(
                    v.unwrap_or_else(|| a.get_id().to_string().to_uppercase()),
                )],
            }
        };
        let mut term = vec![bold(format!("lb-agent {}", sub.get_name()))];
        for a in &args {
            term.push(roman(" "));
            if a.is_required_set() {
                term.extend(usage(a));
            } else {
                term.push(roman("["));
                term.extend(usage(a));
                term.push(roman("]"));
            }
        }
        item(
            &mut r,
            term,
            &sub.get_about().map(|a| a.to_string()).unwrap_or_default(),
        );
        if args.is_empty() {
            continue;
        }
        r.control("RS", std::iter::empty::<&str>());
        for a in &args {
            let mut help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
            if !help.is_empty() && !help.ends_with('.') {
                help.push('.');
            }
            let defaults: Vec<String> = a
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            if a.get_action().takes_values() && !defaults.is_empty() {
                help.push_str(&format!(" Default: {}.", defaults.join(", ")));
            }
            if let Some(env) = a.get_env() {
                help.push_str(&format!(" Environment: {}.", env.to_string_lossy()));
            }
            let values: Vec<String> = a
                .get_possible_values()
                .iter()
                .filter(|v| !v.is_hide_set())
                .map(|v| v.get_name().to_string())
                .collect();
            if a.get_action().takes_values() && !values.is_empty() {
                help.push_str(&format!(" One of: {}.", values.join(", ")));
            }
            item(&mut r, usage(a), &help);
        }
        r.control("RE", std::iter::empty::<&str>());
    }
    r.control("SH", ["EXIT STATUS"]);
    item(&mut r, vec![bold("0")], "Success.");
    item(&mut r, vec![bold("1")], "Runtime error: the agent answered an error or refused the request, or the socket is not accessible.");
    item(&mut r, vec![bold("2")], "Usage or configuration error.");
    item(
        &mut r,
        vec![bold("3")],
        "The agent is unreachable: no socket, connection refused, or no answer in time.",
    );
    r.control("SH", ["ENVIRONMENT"]);
    item(
        &mut r,
        vec![bold("LB_AGENT_SOCKET")],
        "Default for --socket.",
    );
    item(
        &mut r,
        vec![bold("LB_AGENT_CONFIG")],
        "Default for --config.",
    );
    item(&mut r, vec![bold("NO_COLOR")], "When set and not empty, the human views are not coloured (they never are when stdout is not a terminal).");
    r.control("SH", ["FILES"]);
    item(
        &mut r,
        vec![italic(crate::config::DEFAULT_PATH)],
        "Agent configuration.",
    );
    item(&mut r, vec![italic(DEFAULT_SOCKET)], "Status socket: GET /v1/status, /v1/vips, /metrics; POST /v1/drain, /v1/undrain, /v1/reconcile.");
    r.control("SH", ["SEE ALSO"]);
    r.text([
        bold("haproxy"),
        roman("(1), "),
        bold("bird"),
        roman("(8), "),
        bold("birdc"),
        roman("(8)"),
    ]);
    r.to_writer(&mut out)?;
    man.render_version_section(&mut out)?;
    let page = String::from_utf8(out).map_err(std::io::Error::other)?;
    // Each piece above starts with roff's apostrophe preamble; keep one.
    let preamble = Roff::new().render();
    Ok(format!("{preamble}{}", page.replace(&preamble, "")))
}

/// Whether to colour the human views.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    /// Emit ANSI colour codes.
    pub colour: bool,
}

impl Style {
    /// Colour only on a terminal, and only when `NO_COLOR` is unset or empty.
    pub fn for_stdout() -> Style {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Style {
            colour: !no_color && std::io::stdout().is_terminal(),
        }
    }

    fn paint(self, colour: Colour, text: &str) -> String {
        if !self.colour || colour == Colour::None {
            return text.to_string();
        }
        let code = match colour {
            Colour::Green => "32",
            Colour::Yellow => "33",
            Colour::Red => "31",
            Colour::Bold => "1",
            Colour::None => "0",
        };
        format!("\x1b[{code}m{text}\x1b[0m")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Colour {
    None,
    Green,
    Yellow,
    Red,
    Bold,
}

/// A table cell: the text and its colour.
type Cell = (String, Colour);

/// Aligns `rows` under `header`; the last column is not padded. Widths are
/// measured on the plain text, so colour codes do not skew the alignment.
fn table(header: &[&str], rows: &[Vec<Cell>], style: Style) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, (text, _)) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(text.chars().count());
            }
        }
    }
    let mut out = String::new();
    let header_cells: Vec<Cell> = header
        .iter()
        .map(|h| (h.to_string(), Colour::Bold))
        .collect();
    for row in std::iter::once(&header_cells).chain(rows) {
        let last = row.len().saturating_sub(1);
        let mut line = String::new();
        for (i, (text, colour)) in row.iter().enumerate() {
            line.push_str(&style.paint(*colour, text));
            if i < last {
                let pad = widths
                    .get(i)
                    .copied()
                    .unwrap_or(0)
                    .saturating_sub(text.chars().count())
                    + 2;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Makes agent-supplied text safe for a terminal: control characters
/// (newlines, escape sequences) are shown escaped instead of interpreted.
fn sanitize(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// `3m 12s ago`, or `never`; a time ahead of `now` (clock skew) reads `0s ago`.
fn when(t: Option<&Timestamp>, now: SystemTime) -> String {
    match t {
        None => "never".to_string(),
        Some(t) => format!("{} ago", whole_secs(t.age(now))),
    }
}

/// `in 20s` for a time still to come (a scheduled retry), `now` once due.
fn until(t: Option<&Timestamp>, now: SystemTime) -> String {
    match t.map(|t| t.0.duration_since(now)) {
        None => "never".to_string(),
        Some(Ok(ahead)) if ahead >= Duration::from_secs(1) => format!("in {}", whole_secs(ahead)),
        Some(_) => "now".to_string(),
    }
}

fn whole_secs(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(Duration::from_secs(d.as_secs()))
}

/// One line per zone of each AZ-routed pool: `www 2/2 healthy: az1 → az1`,
/// spills in yellow (`az1 → az2+az3 (az1 evacuated)`), a zone going
/// nowhere in red.
fn az_routing_lines(
    pools: &[crate::plan::az::PoolRoutes],
    style: Style,
) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    for p in pools {
        for z in &p.zones {
            let arrow = sanitize(&z.arrow());
            let arrow = match (&z.reason, z.to.is_empty()) {
                (None, _) => arrow,
                (Some(_), false) => style.paint(Colour::Yellow, &arrow),
                (Some(_), true) => style.paint(Colour::Red, &arrow),
            };
            let label = if out.is_empty() { "routing" } else { "" };
            out.push((
                label,
                format!(
                    "{} {}/{} healthy: {arrow}",
                    sanitize(&p.pool),
                    z.healthy,
                    z.servers
                ),
            ));
        }
    }
    out
}

/// The human view of `lb-agent status`: a summary block, then the VIP table.
pub fn render_status(s: &Snapshot, now: SystemTime, style: Style) -> String {
    let mut lines: Vec<(&str, String)> = Vec::new();
    let mut node = format!(
        "{} (group {}), lb-agent {}",
        sanitize(&s.node),
        sanitize(&s.group),
        sanitize(&s.version)
    );
    if let Some(t) = &s.started_at {
        let _ = write!(
            node,
            ", up {}",
            humantime::format_duration(Duration::from_secs(t.age(now).as_secs()))
        );
    }
    lines.push(("node", node));
    lines.push((
        "revision",
        s.revision
            .map_or_else(|| "none applied yet".to_string(), |r| r.to_string()),
    ));

    let drained = if s.drained {
        let mut d = style.paint(Colour::Yellow, "yes");
        if let Some(info) = &s.drain {
            let _ = write!(d, ": {}", sanitize(&info.reason));
            if let Some(since) = &info.since {
                let _ = write!(d, " (since {}, {})", since, when(Some(since), now));
            }
            if let Some(by) = &info.by {
                let _ = write!(d, " by {}", sanitize(by));
            }
        }
        d
    } else {
        "no".to_string()
    };
    lines.push(("drained", drained));

    let src = &s.source;
    let state_colour = match src.state {
        SourceState::Ok => Colour::Green,
        SourceState::Init | SourceState::Error => Colour::Yellow,
        SourceState::Stale | SourceState::Unknown => Colour::Red,
    };
    let mut source = style.paint(state_colour, src.state.as_str());
    if !src.url.is_empty() {
        let _ = write!(source, " {}", sanitize(&src.url));
    }
    let _ = write!(
        source,
        ", last success {}",
        when(src.last_success.as_ref(), now)
    );
    if src.from_cache {
        source.push_str(", running from the cached document");
    }
    lines.push(("source", source));
    if let Some(st) = &src.stream {
        let revision = st
            .revision
            .map_or_else(|| "none".to_string(), |r| r.to_string());
        lines.push((
            "",
            format!(
                "{} on {}, store revision {revision}, {} listings, {} compactions",
                sanitize(&st.watch_state),
                sanitize(&st.endpoint),
                st.lists,
                st.compactions
            ),
        ));
    }
    if let Some(e) = &src.error {
        let n = src.consecutive_failures;
        let times = if n > 0 {
            format!(" ({n} in a row)")
        } else {
            String::new()
        };
        lines.push((
            "",
            style.paint(Colour::Red, &format!("error{times}: {}", sanitize(e))),
        ));
    }

    let h = &s.haproxy;
    let mut haproxy = if h.converged {
        style.paint(Colour::Green, "converged")
    } else {
        style.paint(Colour::Red, "not converged")
    };
    let _ = write!(
        haproxy,
        ", {} reloads (last {}), {} runtime commands",
        h.reloads,
        when(h.last_reload.as_ref(), now),
        h.runtime_commands
    );
    if h.reload_failures > 0 {
        let _ = write!(haproxy, ", {} failed reloads", h.reload_failures);
    }
    if h.reload_attempts > 0 {
        let _ = write!(
            haproxy,
            ", retrying (attempt {} failed, next {})",
            h.reload_attempts,
            until(h.next_reload_at.as_ref(), now)
        );
    }
    if h.old_workers > 0 {
        let _ = write!(haproxy, ", {} old workers", h.old_workers);
    }
    lines.push(("haproxy", haproxy));
    if let Some(e) = &h.error {
        lines.push((
            "",
            style.paint(Colour::Red, &format!("error: {}", sanitize(e))),
        ));
    }
    if !h.pending_reload.is_empty() {
        let reasons: Vec<String> = h.pending_reload.iter().map(|r| sanitize(r)).collect();
        lines.push(("", format!("reload pending: {}", reasons.join("; "))));
    }
    if let Some(rej) = &h.rejected {
        lines.push((
            "rejected",
            style.paint(
                Colour::Red,
                &format!("revision {}: {}", rej.revision, sanitize(&rej.error)),
            ),
        ));
    }

    for (i, w) in h.document_warnings.iter().enumerate() {
        lines.push((
            if i == 0 { "warnings" } else { "" },
            style.paint(Colour::Yellow, &sanitize(w)),
        ));
    }
    lines.extend(az_routing_lines(&h.az_routing, style));

    let b = &s.bird;
    let mut bird = if b.ok {
        style.paint(Colour::Green, "ok")
    } else {
        style.paint(Colour::Red, "not ok")
    };
    let _ = write!(
        bird,
        ", last reconfigure {}",
        when(b.last_reconfigure.as_ref(), now)
    );
    lines.push(("bird", bird));
    if let Some(e) = &b.error {
        lines.push((
            "",
            style.paint(Colour::Red, &format!("error: {}", sanitize(e))),
        ));
    }
    if let Some(line) = export_line(b) {
        lines.push(("", style.paint(Colour::Yellow, &line)));
    }

    let announced = s.vips.iter().filter(|v| v.announced).count();
    lines.push(("vips", format!("{announced}/{} announced", s.vips.len())));

    let mut out = String::new();
    for (label, value) in lines {
        let _ = writeln!(out, "{:<10}{}", label, value);
    }
    if !s.vips.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<Cell>> = s
            .vips
            .iter()
            .map(|v| {
                let healthy = v.services.iter().filter(|s| s.healthy).count();
                let all = healthy == v.services.len() && !v.services.is_empty();
                vec![
                    (sanitize(&v.address), Colour::None),
                    announced_cell(v),
                    (
                        format!("{healthy}/{}", v.services.len()),
                        if all { Colour::Green } else { Colour::Red },
                    ),
                    (
                        v.reason
                            .as_deref()
                            .map_or_else(|| "-".to_string(), sanitize),
                        Colour::None,
                    ),
                ]
            })
            .collect();
        out.push_str(&table(
            &["ADDRESS", "ANNOUNCED", "HEALTHY", "REASON"],
            &rows,
            style,
        ));
    }
    out
}

/// The export check's line under `bird`, when it has something to say.
fn export_line(b: &crate::status::types::BirdStatus) -> Option<String> {
    let protocols: Vec<String> = b.export_protocols.iter().map(|p| sanitize(p)).collect();
    if !b.not_exported.is_empty() {
        let p: Vec<String> = b.not_exported.iter().map(|p| sanitize(p)).collect();
        return Some(format!(
            "not exported by any BGP protocol ({}): {}",
            protocols.join(", "),
            p.join(", ")
        ));
    }
    (b.export_check == "no_bgp_session_up")
        .then(|| "exports not confirmed: no BGP session is up".to_string())
}

fn announced_cell(v: &VipStatus) -> Cell {
    if v.exported == Some(false) {
        let (text, _) = announced_cell(&VipStatus {
            exported: None,
            ..v.clone()
        });
        return (format!("{text}, not exported"), Colour::Red);
    }
    let (text, colour) = if v.draining {
        ("draining", Colour::Yellow)
    } else if v.demoted {
        ("demoted", Colour::Yellow)
    } else if v.announced {
        ("yes", Colour::Green)
    } else {
        ("no", Colour::Red)
    };
    (text.to_string(), colour)
}

/// The human view of `lb-agent vips`: a header, then one line per VIP.
pub fn render_vips(vips: &[VipStatus], style: Style) -> String {
    if vips.is_empty() {
        return "no VIPs in the applied document\n".to_string();
    }
    let rows: Vec<Vec<Cell>> = vips
        .iter()
        .map(|v| {
            // Colour inside the cell would skew the width; colour the whole
            // cell red when any service is down instead.
            let services: Vec<String> = v
                .services
                .iter()
                .map(|s| {
                    let state = match (s.healthy, s.pending) {
                        (true, _) => "up",
                        (false, true) => "pending",
                        (false, false) => "down",
                    };
                    format!("{}:{state}", sanitize(&s.name))
                })
                .collect();
            let any_down = v.services.iter().any(|s| !s.healthy && !s.pending);
            let text = if services.is_empty() {
                "(none)".to_string()
            } else {
                services.join(" ")
            };
            vec![
                (sanitize(&v.address), Colour::None),
                announced_cell(v),
                (
                    text,
                    if any_down || v.services.is_empty() {
                        Colour::Red
                    } else {
                        Colour::Green
                    },
                ),
                (
                    v.reason
                        .as_deref()
                        .map_or_else(|| "-".to_string(), sanitize),
                    Colour::None,
                ),
            ]
        })
        .collect();
    table(
        &["ADDRESS", "ANNOUNCED", "SERVICES", "REASON"],
        &rows,
        style,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::types::*;
    use std::time::UNIX_EPOCH;

    const PLAIN: Style = Style { colour: false };

    fn at(secs: u64) -> Timestamp {
        Timestamp(UNIX_EPOCH + Duration::from_secs(secs))
    }

    fn snapshot() -> Snapshot {
        Snapshot {
            node: "lb1".into(),
            group: "blue".into(),
            version: "0.1.0".into(),
            revision: Some(1042),
            drained: true,
            drain: Some(DrainInfo {
                reason: "kernel upgrade".into(),
                since: Some(at(1_000_000)),
                by: Some("uid 0 (root)".into()),
                withdraw_at: None,
            }),
            source: SourceStatus {
                state: SourceState::Stale,
                url: "https://api/v1/groups/blue/config".into(),
                last_success: Some(at(999_700)),
                error: Some("connect: refused\n\x1b[31mboom".into()),
                consecutive_failures: 4,
                ..Default::default()
            },
            haproxy: HaproxyStatus {
                converged: true,
                reloads: 3,
                runtime_commands: 120,
                last_reload: Some(at(999_400)),
                pending_reload: vec!["new frontend".into()],
                ..Default::default()
            },
            bird: BirdStatus {
                ok: true,
                last_reconfigure: Some(at(999_990)),
                ..Default::default()
            },
            vips: vec![
                VipStatus {
                    address: "192.0.2.10/32".into(),
                    announced: false,
                    reason: Some("drained".into()),
                    services: vec![
                        ServiceStatus {
                            name: "www_https".into(),
                            healthy: true,
                            ..Default::default()
                        },
                        ServiceStatus {
                            name: "git_ssh".into(),
                            healthy: false,
                            ..Default::default()
                        },
                    ],
                    ..Default::default()
                },
                VipStatus {
                    address: "2001:db8:10::10/128".into(),
                    announced: true,
                    services: vec![ServiceStatus {
                        name: "www_https".into(),
                        healthy: true,
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn status_view_summarises_and_aligns_the_vip_table() {
        let out = render_status(
            &snapshot(),
            UNIX_EPOCH + Duration::from_secs(1_000_060),
            PLAIN,
        );
        let expected = "\
node      lb1 (group blue), lb-agent 0.1.0
revision  1042
drained   yes: kernel upgrade (since 1970-01-12T13:46:40.000Z, 1m ago) by uid 0 (root)
source    stale https://api/v1/groups/blue/config, last success 6m ago
          error (4 in a row): connect: refused\\n\\u{1b}[31mboom
haproxy   converged, 3 reloads (last 11m ago), 120 runtime commands
          reload pending: new frontend
bird      ok, last reconfigure 1m 10s ago
vips      1/2 announced

ADDRESS              ANNOUNCED  HEALTHY  REASON
192.0.2.10/32        no         1/2      drained
2001:db8:10::10/128  yes        1/1      -
";
        assert_eq!(out, expected, "\n{out}");
        assert!(!out.contains('\x1b'), "no escape codes without colour");
    }

    #[test]
    fn status_view_shows_the_export_check() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_060);
        let mut s = snapshot();
        s.bird.export_check = "discovered".into();
        s.bird.export_protocols = vec!["tor1".into(), "tor2".into()];
        s.bird.not_exported = vec!["2001:db8:10::10/128".into()];
        s.vips[1].exported = Some(false);
        let out = render_status(&s, now, PLAIN);
        assert!(
            out.contains(
                "\n          not exported by any BGP protocol (tor1, tor2): 2001:db8:10::10/128\n"
            ),
            "\n{out}"
        );
        assert!(
            out.contains("\n2001:db8:10::10/128  yes, not exported  1/1      -\n"),
            "\n{out}"
        );
        s.bird.export_check = "no_bgp_session_up".into();
        s.bird.export_protocols.clear();
        s.bird.not_exported.clear();
        s.vips[1].exported = None;
        let out = render_status(&s, now, PLAIN);
        assert!(
            out.contains("\n          exports not confirmed: no BGP session is up\n"),
            "\n{out}"
        );
        // Discovered and all exported: nothing more than before.
        s.bird.export_check = "discovered".into();
        assert!(!render_status(&s, now, PLAIN).contains("export"));
    }

    #[test]
    fn vips_view_has_one_line_per_vip() {
        let out = render_vips(&snapshot().vips, PLAIN);
        let expected = "\
ADDRESS              ANNOUNCED  SERVICES                   REASON
192.0.2.10/32        no         www_https:up git_ssh:down  drained
2001:db8:10::10/128  yes        www_https:up               -
";
        assert_eq!(out, expected, "\n{out}");
        assert_eq!(render_vips(&[], PLAIN), "no VIPs in the applied document\n");
    }

    #[test]
    fn colour_wraps_cells_without_breaking_alignment() {
        let colour = Style { colour: true };
        let out = render_vips(&snapshot().vips, colour);
        assert!(out.contains("\x1b[31mno\x1b[0m"), "{out:?}");
        assert!(out.contains("\x1b[32myes\x1b[0m"), "{out:?}");
        // Stripping the codes gives the plain table back.
        let stripped = out
            .replace("\x1b[0m", "")
            .replace("\x1b[1m", "")
            .replace("\x1b[31m", "")
            .replace("\x1b[32m", "");
        assert_eq!(stripped, render_vips(&snapshot().vips, PLAIN));
    }

    #[test]
    fn minimal_snapshot_renders_without_extras() {
        let s = Snapshot {
            node: "n".into(),
            ..Default::default()
        };
        let out = render_status(&s, crate::clock::wall(), PLAIN);
        assert!(out.contains("revision  none applied yet"), "{out}");
        assert!(out.contains("source    init, last success never"), "{out}");
        assert!(out.contains("vips      0/0 announced"), "{out}");
        assert!(!out.contains("ADDRESS"), "{out}");
    }

    #[test]
    fn connect_errors_map_to_exit_codes() {
        let p = Path::new("/x.sock");
        let e = connect_error(p, std::io::Error::from(std::io::ErrorKind::NotFound));
        assert_eq!(e.exit_code(), EXIT_UNREACHABLE);
        assert!(e.to_string().contains("no such socket"), "{e}");
        let e = connect_error(
            p,
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        );
        assert_eq!(e.exit_code(), EXIT_UNREACHABLE);
        let e = connect_error(
            p,
            std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        );
        assert_eq!(e.exit_code(), EXIT_RUNTIME);
        assert!(e.to_string().contains("status.group"), "{e}");
    }

    #[test]
    fn man_page_is_section_8_with_exit_codes() {
        let page = man_page().unwrap();
        let preamble = clap_mangen::roff::Roff::new().render();
        assert!(
            page.starts_with(&format!("{preamble}.TH lb-agent 8 ")),
            "{}",
            &page[..120.min(page.len())]
        );
        assert_eq!(page.matches(&preamble).count(), 1);
        for needle in [
            "\\fBlb\\-agent status\\fR",
            "] \\fB\\-\\-reason\\fR \\fITEXT\\fR\nWithdraw every VIP",
            "[\\fB\\-\\-json\\fR]\nShow the agent",
            "\\fBlb\\-agent vips\\fR [\\fB\\-\\-socket\\fR \\fIPATH\\fR]",
            ".SH \"EXIT STATUS\"",
            "Environment: LB_AGENT_SOCKET.",
            "\\fBlb\\-agent completions\\fR \\fISHELL\\fR",
        ] {
            assert!(page.contains(needle), "man page lacks {needle}:\n{page}");
        }
        assert!(
            !page.contains("lb\\-agent man"),
            "the hidden man command is listed"
        );
        assert!(
            !page.contains("lb\\-agent\\-status(8)"),
            "points at a page that does not exist"
        );
    }
}
