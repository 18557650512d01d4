//! The socket subcommands ([`ClientCmd`]) and their dispatch ([`run`]).
//! Part of [`crate::cli::client`] (docs/architecture.md).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, CommandFactory, Subcommand};
use clap_complete::Shell;
use hyper::Method;

use crate::cli::{print, Cli, Failure};
use crate::status::types::{DrainBody, Snapshot, VipStatus};

use super::man::man_page;
use super::table::{sanitize, Style};
use super::transport::{call, ClientError};
use super::views::{render_status, render_vips};

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
