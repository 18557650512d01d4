//! [`BirdControl`], the async client of one BIRD control socket: one
//! persistent connection, reconnected on error, every read bounded by a timeout.
//! Part of [`crate::bird::control`] (docs/architecture.md).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::time::Instant;
use tracing::{debug, info};

use crate::bird::include::is_symbol;

use super::framing::{Decoder, Frame, FramingError, Reply, CODE_CONFIG_OK, CODE_GREETING};
use super::parse::{
    parse_configure, parse_eval_bool, parse_eval_set, parse_protocols, parse_route_export,
    reply_error, ConfigureOutcome, ControlError, EvalSet, ProtocolRow,
};

/// Longest line accepted from BIRD; BIRD itself never sends more than ~512 bytes.
const MAX_LINE: u64 = 64 * 1024;
/// Async `+` lines kept for [`BirdControl::take_async_lines`].
const MAX_ASYNC_LINES: usize = 1024;
/// Most bytes of pipelined commands in flight at once. BIRD 2.0.12 resets
/// the control connection when more than about 1 KiB of unprocessed input
/// is waiting (measured: 40 pipelined `eval`s, 880 bytes, pass; 50, 1100
/// bytes, get ECONNRESET), so larger batches are sent in chunks, each one
/// after the replies to the previous.
const PIPELINE_BYTES: usize = 512;

/// Timeouts of the control connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlOptions {
    /// Bound on connecting and reading the greeting.
    pub connect_timeout: Duration,
    /// Bound on one complete reply (all its lines).
    pub reply_timeout: Duration,
}

impl Default for ControlOptions {
    fn default() -> Self {
        ControlOptions {
            connect_timeout: Duration::from_secs(2),
            // `configure` on a large ToR-size config can take a while.
            reply_timeout: Duration::from_secs(10),
        }
    }
}

pub(super) struct Connection {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    decoder: Decoder,
    /// Whether a request already went through (a failure on a reused
    /// connection may just mean BIRD restarted since).
    used: bool,
}

/// A persistent client of one BIRD control socket.
///
/// Connects lazily, keeps the connection, drops it on any transport error
/// and reconnects on the next request. A request that fails because the
/// idle connection was closed under it (BIRD restarted) is retried once on a
/// fresh connection; all commands this module sends are idempotent.
/// Per-connection state (`restrict`, `echo`) is lost on a reconnect.
pub struct BirdControl {
    path: PathBuf,
    opts: ControlOptions,
    conn: Option<Connection>,
    greeting: Option<String>,
    async_lines: VecDeque<String>,
    connects: u64,
}

impl fmt::Debug for BirdControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BirdControl")
            .field("path", &self.path)
            .field("connected", &self.conn.is_some())
            .field("connects", &self.connects)
            .finish()
    }
}

impl BirdControl {
    /// A client for the socket at `path`; nothing is opened yet.
    pub fn new(path: impl Into<PathBuf>, opts: ControlOptions) -> Self {
        BirdControl {
            path: path.into(),
            opts,
            conn: None,
            greeting: None,
            async_lines: VecDeque::new(),
            connects: 0,
        }
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many connections were opened so far (reconnects show up here).
    pub fn connects(&self) -> u64 {
        self.connects
    }

    /// Whether a connection is open.
    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }

    /// Closes the connection (the next request reconnects).
    pub fn disconnect(&mut self) {
        self.conn = None;
    }

    /// Async `+` lines received so far (after `echo all`), oldest first.
    pub fn take_async_lines(&mut self) -> Vec<String> {
        self.async_lines.drain(..).collect()
    }

    /// Opens the connection if needed and returns BIRD's greeting text
    /// (`BIRD 2.0.12 ready.`).
    pub async fn connect(&mut self) -> Result<&str, ControlError> {
        if self.conn.is_none() {
            let stream =
                tokio::time::timeout(self.opts.connect_timeout, UnixStream::connect(&self.path))
                    .await
                    .map_err(|_| ControlError::Timeout(self.opts.connect_timeout))?
                    .map_err(|source| ControlError::Connect {
                        path: self.path.clone(),
                        source,
                    })?;
            let (r, w) = stream.into_split();
            let mut conn = Connection {
                reader: BufReader::new(r),
                writer: w,
                decoder: Decoder::new(),
                used: false,
            };
            let deadline = Instant::now() + self.opts.connect_timeout;
            let greeting = read_reply(
                &mut conn,
                deadline,
                self.opts.connect_timeout,
                &mut self.async_lines,
            )
            .await?;
            if greeting.code != CODE_GREETING {
                return Err(ControlError::Greeting(greeting.to_string()));
            }
            self.connects += 1;
            debug!(socket = %self.path.display(), greeting = %greeting.message(), "connected to BIRD");
            self.greeting = Some(greeting.message().to_string());
            self.conn = Some(conn);
        }
        Ok(self.greeting.as_deref().unwrap_or(""))
    }

    /// Sends one command and returns its reply, error replies included (use
    /// the typed helpers to turn those into errors).
    pub async fn request(&mut self, command: &str) -> Result<Reply, ControlError> {
        let mut replies = self.request_pipelined(&[command.to_string()]).await?;
        Ok(replies.pop().expect("one reply per command"))
    }

    /// Sends several commands pipelined (in chunks of at most 512 bytes, see
    /// `PIPELINE_BYTES`) and returns their replies in order.
    pub async fn request_pipelined(
        &mut self,
        commands: &[String],
    ) -> Result<Vec<Reply>, ControlError> {
        for c in commands {
            if c.is_empty() || c.len() >= PIPELINE_BYTES || c.contains(['\n', '\r', '\0']) {
                return Err(ControlError::InvalidArgument(c.clone()));
            }
        }
        if commands.is_empty() {
            return Ok(Vec::new());
        }
        let reused = self.conn.as_ref().is_some_and(|c| c.used);
        match self.exchange(commands).await {
            Err(e) if reused && e.is_stale() => {
                info!(socket = %self.path.display(), error = %e, "BIRD control connection went stale; reconnecting");
                self.exchange(commands).await
            }
            other => other,
        }
    }

    async fn exchange(&mut self, commands: &[String]) -> Result<Vec<Reply>, ControlError> {
        self.connect().await?;
        let timeout = self.opts.reply_timeout;
        let conn = self.conn.as_mut().expect("connected above");
        let result = async {
            let mut replies = Vec::with_capacity(commands.len());
            let mut rest = commands;
            while !rest.is_empty() {
                // At least one command per chunk; each is shorter than the limit.
                let mut n = 0;
                let mut bytes = 0;
                while n < rest.len() && (n == 0 || bytes + rest[n].len() < PIPELINE_BYTES) {
                    bytes += rest[n].len() + 1;
                    n += 1;
                }
                let mut payload = rest[..n].join("\n");
                payload.push('\n');
                tokio::time::timeout(timeout, conn.writer.write_all(payload.as_bytes()))
                    .await
                    .map_err(|_| ControlError::Timeout(timeout))??;
                conn.used = true;
                for _ in 0..n {
                    let deadline = Instant::now() + timeout;
                    replies.push(read_reply(conn, deadline, timeout, &mut self.async_lines).await?);
                }
                rest = &rest[n..];
            }
            Ok(replies)
        }
        .await;
        if result.is_err() {
            self.conn = None;
        }
        result
    }

    /// `configure`: re-read the configuration files (and so the include).
    pub async fn configure(&mut self) -> Result<ConfigureOutcome, ControlError> {
        let reply = self.request("configure").await?;
        parse_configure("configure", &reply)
    }

    /// `configure check`: parse the configuration without applying it.
    pub async fn configure_check(&mut self) -> Result<(), ControlError> {
        let reply = self.request("configure check").await?;
        if let Some(e) = reply_error(&reply) {
            return Err(e);
        }
        match reply.code {
            CODE_CONFIG_OK => Ok(()),
            code => Err(ControlError::Unexpected {
                command: "configure check".into(),
                code,
                text: reply.message().into(),
            }),
        }
    }

    /// `show route export <protocol>`: the prefixes the protocol exports now
    /// (as its export filter judges the current table, all channels; empty
    /// when the protocol is down, see [`parse_route_export`]).
    pub async fn show_route_export(
        &mut self,
        protocol: &str,
    ) -> Result<BTreeSet<IpNet>, ControlError> {
        if !is_symbol(protocol) {
            return Err(ControlError::InvalidArgument(protocol.to_string()));
        }
        let command = format!("show route export {protocol}");
        let reply = self.request(&command).await?;
        parse_route_export(&command, &reply)
    }

    /// `show protocols`.
    pub async fn show_protocols(&mut self) -> Result<Vec<ProtocolRow>, ControlError> {
        let reply = self.request("show protocols").await?;
        parse_protocols("show protocols", &reply)
    }

    /// `eval <variable>`: the prefix set the *running* configuration holds.
    pub async fn eval_prefix_set(&mut self, variable: &str) -> Result<EvalSet, ControlError> {
        if !is_symbol(variable) {
            return Err(ControlError::InvalidArgument(variable.to_string()));
        }
        let command = format!("eval {variable}");
        let reply = self.request(&command).await?;
        parse_eval_set(&command, &reply)
    }

    /// `eval <net> ~ <variable>` for every prefix, pipelined: membership of
    /// each prefix in the running configuration's set. Works for sets of any
    /// size (where [`BirdControl::eval_prefix_set`] overflows).
    pub async fn eval_membership(
        &mut self,
        variable: &str,
        prefixes: &BTreeSet<IpNet>,
    ) -> Result<BTreeMap<IpNet, bool>, ControlError> {
        if !is_symbol(variable) {
            return Err(ControlError::InvalidArgument(variable.to_string()));
        }
        let commands: Vec<String> = prefixes
            .iter()
            .map(|p| format!("eval {p} ~ {variable}"))
            .collect();
        let replies = self.request_pipelined(&commands).await?;
        prefixes
            .iter()
            .zip(commands.iter().zip(&replies))
            .map(|(p, (c, r))| Ok((*p, parse_eval_bool(c, r)?)))
            .collect()
    }

    /// `restrict`: from now on this connection may only read (BIRD answers
    /// `8007 Access denied` to `configure`). Lost on reconnect.
    pub async fn restrict(&mut self) -> Result<(), ControlError> {
        let reply = self.request("restrict").await?;
        expect_code("restrict", &reply, 16)
    }

    /// `echo all` / `echo off`: BIRD's log lines on this connection as `+` lines.
    pub async fn set_echo(&mut self, on: bool) -> Result<(), ControlError> {
        let command = if on { "echo all" } else { "echo off" };
        let reply = self.request(command).await?;
        expect_code(command, &reply, 0)
    }
}

fn expect_code(command: &str, reply: &Reply, code: u16) -> Result<(), ControlError> {
    if let Some(e) = reply_error(reply) {
        return Err(e);
    }
    if reply.code == code {
        Ok(())
    } else {
        Err(ControlError::Unexpected {
            command: command.to_string(),
            code: reply.code,
            text: reply.message().to_string(),
        })
    }
}

/// Reads lines until one reply is complete, collecting async lines on the way.
async fn read_reply(
    conn: &mut Connection,
    deadline: Instant,
    timeout: Duration,
    async_lines: &mut VecDeque<String>,
) -> Result<Reply, ControlError> {
    let mut buf = Vec::with_capacity(128);
    loop {
        buf.clear();
        let n = tokio::time::timeout_at(
            deadline,
            (&mut conn.reader)
                .take(MAX_LINE)
                .read_until(b'\n', &mut buf),
        )
        .await
        .map_err(|_| ControlError::Timeout(timeout))??;
        if n == 0 {
            return Err(ControlError::Closed);
        }
        if buf.last() != Some(&b'\n') {
            let line = String::from_utf8_lossy(&buf).into_owned();
            return Err(if n as u64 >= MAX_LINE {
                FramingError {
                    line,
                    reason: "line too long",
                }
                .into()
            } else {
                ControlError::Closed
            });
        }
        let line = String::from_utf8_lossy(&buf);
        match conn.decoder.push(&line)? {
            None => {}
            Some(Frame::Async(text)) => {
                debug!(line = %text, "BIRD async line");
                if async_lines.len() >= MAX_ASYNC_LINES {
                    async_lines.pop_front();
                }
                async_lines.push_back(text);
            }
            Some(Frame::Reply(reply)) => return Ok(reply),
        }
    }
}
