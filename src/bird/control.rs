//! BIRD's control-socket protocol, spoken natively (no `birdc` process).
//!
//! Why native: a `birdc` process costs about 3–4 ms per call, a command on an
//! open socket about 0.3 ms, and the withdrawal budget (docs/performance.md, "The targets": failed
//! service → prefix gone from the ToR within `fall × interval + 200 ms`) is
//! spent mostly elsewhere. Why careful: BIRD's reply to `configure` is the
//! only place a broken include shows up (`8002`), and BIRD keeps announcing
//! the old set in that case, so the reply must be read exactly.
//!
//! The protocol (BIRD 2.0.12, `fixtures/bird/`): on connect
//! BIRD greets with `0001 BIRD 2.0.12 ready.`; the client sends one command
//! per line; every reply line is `DDDD-text` (more follows), ` text` (a
//! continuation of the previous code) or `DDDD text` (the last line of the
//! reply). After `echo all`, log lines arrive as `+text` at any moment, even
//! between a command and its reply; they are collected, logged, and never
//! taken for a reply.
//!
//! Layers: [`Decoder`] is the pure framing state machine; the `parse_*`
//! functions are pure parsers of typed replies, unit-tested over captured
//! transcripts; [`BirdControl`] is the async client: one persistent
//! connection, reconnected on error, every read bounded by a timeout.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::time::Instant;
use tracing::{debug, info};

use super::include::is_symbol;

/// Code of BIRD's greeting (`0001 BIRD 2.0.12 ready.`).
pub const CODE_GREETING: u16 = 1;
/// `0003 Reconfigured`.
pub const CODE_RECONFIGURED: u16 = 3;
/// `0004 Reconfiguration in progress`.
pub const CODE_RECONFIGURING: u16 = 4;
/// `0005 Reconfiguration already in progress, queueing new config`.
pub const CODE_QUEUED: u16 = 5;
/// `0020 Configuration OK` (answer to `configure check`).
pub const CODE_CONFIG_OK: u16 = 20;
/// `0023 <value>` (answer to `eval`).
pub const CODE_EVAL: u16 = 23;
/// `8000 <line overflow>`: BIRD could not fit one output line (about 512 bytes).
pub const CODE_OVERFLOW: u16 = 8000;
/// `8002 <file>:<line>:<col> <message>`: configuration error, old config kept.
pub const CODE_CONFIG_ERROR: u16 = 8002;
/// `8007 Access denied` (after `restrict`).
pub const CODE_ACCESS_DENIED: u16 = 8007;

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

/// One line of a reply, its code resolved (a continuation carries the code
/// of the line it continues).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// Four-digit reply code.
    pub code: u16,
    /// Text after the code and separator (or after the continuation space).
    pub text: String,
}

/// A complete reply: every line up to and including the final `DDDD text` one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Code of the final line: 0xxx done, 8xxx runtime error, 9xxx parse error.
    pub code: u16,
    /// All lines, the final one included.
    pub lines: Vec<Line>,
}

impl Reply {
    /// Text of the final line (`Reconfigured`, `Access denied`, ...).
    pub fn message(&self) -> &str {
        self.lines.last().map(|l| l.text.as_str()).unwrap_or("")
    }

    /// Whether BIRD reported an error (8xxx runtime, 9xxx command parse).
    pub fn is_error(&self) -> bool {
        self.code >= 8000
    }

    /// Texts of the lines carrying `code`.
    pub fn texts(&self, code: u16) -> impl Iterator<Item = &str> {
        self.lines
            .iter()
            .filter(move |l| l.code == code)
            .map(|l| l.text.as_str())
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04} {}", self.code, self.message())
    }
}

/// What one received line completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// An asynchronous log line (`+text`, after `echo all`), text without the `+`.
    Async(String),
    /// A complete reply.
    Reply(Reply),
}

/// A line that is not valid control-socket framing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed line from BIRD ({reason}): {line:?}")]
pub struct FramingError {
    /// The offending line.
    pub line: String,
    /// Why it does not fit the framing.
    pub reason: &'static str,
}

/// The framing state machine: feed it lines, it yields frames. Pure.
#[derive(Debug, Default)]
pub struct Decoder {
    lines: Vec<Line>,
    current: Option<u16>,
}

impl Decoder {
    /// A decoder between replies.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a reply has started but not ended.
    pub fn in_reply(&self) -> bool {
        self.current.is_some()
    }

    /// Consumes one line (with or without its `\n`).
    pub fn push(&mut self, raw: &str) -> Result<Option<Frame>, FramingError> {
        let line = raw.strip_suffix('\n').unwrap_or(raw);
        let line = line.strip_suffix('\r').unwrap_or(line);
        let bad = |reason| FramingError {
            line: line.to_string(),
            reason,
        };
        if let Some(text) = line.strip_prefix('+') {
            return Ok(Some(Frame::Async(text.to_string())));
        }
        if let Some(text) = line.strip_prefix(' ') {
            let code = self
                .current
                .ok_or_else(|| bad("continuation line outside a reply"))?;
            self.lines.push(Line {
                code,
                text: text.to_string(),
            });
            return Ok(None);
        }
        let bytes = line.as_bytes();
        if bytes.len() < 4 || !bytes[..4].iter().all(u8::is_ascii_digit) {
            return Err(bad(
                "neither a coded line, a continuation nor an async line",
            ));
        }
        let code: u16 = line[..4].parse().expect("four ASCII digits");
        let (last, text) = match bytes.get(4) {
            None => (true, ""),
            Some(b' ') => (true, &line[5..]),
            Some(b'-') => (false, &line[5..]),
            Some(_) => return Err(bad("code not followed by ' ' or '-'")),
        };
        self.lines.push(Line {
            code,
            text: text.to_string(),
        });
        if last {
            self.current = None;
            Ok(Some(Frame::Reply(Reply {
                code,
                lines: std::mem::take(&mut self.lines),
            })))
        } else {
            self.current = Some(code);
            Ok(None)
        }
    }
}

/// The location and message of an `8002` configuration error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigRejection {
    /// File BIRD blames (as BIRD names it), when it gave one.
    pub file: Option<String>,
    /// 1-based line, when given.
    pub line: Option<u32>,
    /// 1-based column, when given.
    pub column: Option<u32>,
    /// BIRD's message (`syntax error, unexpected IP4`).
    pub message: String,
    /// The whole text after `8002 `, verbatim.
    pub text: String,
}

impl ConfigRejection {
    /// Parses `file:line:col message` (or `file: message`, or just a message).
    /// The file name may contain spaces and colons: the location is the
    /// first `:<digits>:<digits> ` in the text.
    pub fn parse(text: &str) -> ConfigRejection {
        for (i, _) in text.match_indices(':') {
            if let Some((line, column, message)) = location_after(&text[i + 1..]) {
                return ConfigRejection {
                    file: Some(text[..i].to_string()),
                    line: Some(line),
                    column: Some(column),
                    message: message.to_string(),
                    text: text.to_string(),
                };
            }
        }
        let (file, message) = match text.split_once(": ") {
            Some((file, msg)) if !file.contains(' ') => (Some(file.to_string()), msg),
            _ => (None, text),
        };
        ConfigRejection {
            file,
            line: None,
            column: None,
            message: message.to_string(),
            text: text.to_string(),
        }
    }
}

/// `<line>:<col> <message>` → its parts.
fn location_after(rest: &str) -> Option<(u32, u32, &str)> {
    let (line, rest) = rest.split_once(':')?;
    let (column, message) = rest.split_once(' ')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(line) || !digits(column) {
        return None;
    }
    Some((line.parse().ok()?, column.parse().ok()?, message))
}

impl fmt::Display for ConfigRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A typed reply that does not have the expected shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("reply to `{command}`, line {line}: {message}: {text:?}")]
pub struct OutputError {
    /// The command whose reply this was.
    pub command: String,
    /// 1-based line within the reply.
    pub line: usize,
    /// The line's text.
    pub text: String,
    /// What was wrong.
    pub message: String,
}

/// Everything that can go wrong talking to BIRD. Callers branch on
/// [`ControlError::ConfigRejected`] (the include or bird.conf is broken; BIRD
/// kept its old configuration) versus transport errors (retry later).
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The socket could not be opened (BIRD not running, wrong path, permissions).
    #[error("cannot connect to BIRD control socket {path}: {source}")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: io::Error,
    },
    /// Read or write failed on an open connection.
    #[error("BIRD control socket I/O: {0}")]
    Io(#[from] io::Error),
    /// No complete answer within the configured timeout.
    #[error("BIRD did not answer within {0:?}")]
    Timeout(Duration),
    /// BIRD closed the connection.
    #[error("BIRD closed the control connection")]
    Closed,
    /// The first reply was not `0001 ... ready.`.
    #[error("unexpected greeting from BIRD: {0}")]
    Greeting(String),
    /// A line that does not fit the framing.
    #[error(transparent)]
    Framing(#[from] FramingError),
    /// `8002`: BIRD refused the configuration and keeps running the old one.
    #[error("BIRD rejected the configuration (8002): {0}")]
    ConfigRejected(ConfigRejection),
    /// `8007`: the connection is restricted (`restrict`, or `birdc -r`).
    #[error("BIRD denied access (8007 Access denied)")]
    AccessDenied,
    /// Any other error reply (`9001 syntax error ...`, `8001 Network not found`, ...).
    #[error("BIRD answered {code:04} {text}")]
    Command {
        /// Reply code.
        code: u16,
        /// Text of the final line.
        text: String,
    },
    /// A success code that the command does not produce.
    #[error("unexpected reply to `{command}`: {code:04} {text}")]
    Unexpected {
        /// The command.
        command: String,
        /// Reply code.
        code: u16,
        /// Text of the final line.
        text: String,
    },
    /// An argument that would not be a single safe command token.
    #[error("refusing to send an invalid argument to BIRD: {0:?}")]
    InvalidArgument(String),
    /// A reply whose content does not parse.
    #[error(transparent)]
    Output(#[from] OutputError),
}

impl ControlError {
    /// Whether the connection is unusable after this error (it is dropped and
    /// re-opened on the next request).
    pub fn is_transport(&self) -> bool {
        matches!(
            self,
            ControlError::Connect { .. }
                | ControlError::Io(_)
                | ControlError::Timeout(_)
                | ControlError::Closed
                | ControlError::Greeting(_)
                | ControlError::Framing(_)
        )
    }

    /// Whether this looks like a connection BIRD closed while it sat idle
    /// (BIRD restarted): the request never reached a live BIRD.
    fn is_stale(&self) -> bool {
        match self {
            ControlError::Closed => true,
            ControlError::Io(e) => matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::NotConnected
            ),
            _ => false,
        }
    }
}

/// The error a reply carries, if it is an error reply.
pub fn reply_error(reply: &Reply) -> Option<ControlError> {
    match reply.code {
        CODE_CONFIG_ERROR => Some(ControlError::ConfigRejected(ConfigRejection::parse(
            reply.message(),
        ))),
        CODE_ACCESS_DENIED => Some(ControlError::AccessDenied),
        c if c >= 8000 => Some(ControlError::Command {
            code: c,
            text: reply.message().to_string(),
        }),
        _ => None,
    }
}

/// What BIRD said it did with a `configure`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConfigureOutcome {
    /// `0003 Reconfigured`: the new configuration is active.
    Reconfigured,
    /// `0004 Reconfiguration in progress`: accepted; protocols are being
    /// restarted or shut down asynchronously.
    InProgress,
    /// `0005 Reconfiguration already in progress, queueing new config`:
    /// accepted, applied when the running reconfiguration completes.
    Queued,
}

/// Interprets the reply to `configure` (any variant: `soft`, `timeout`, ...).
pub fn parse_configure(command: &str, reply: &Reply) -> Result<ConfigureOutcome, ControlError> {
    if let Some(e) = reply_error(reply) {
        return Err(e);
    }
    match reply.code {
        CODE_RECONFIGURED => Ok(ConfigureOutcome::Reconfigured),
        CODE_RECONFIGURING => Ok(ConfigureOutcome::InProgress),
        CODE_QUEUED => Ok(ConfigureOutcome::Queued),
        code => Err(ControlError::Unexpected {
            command: command.to_string(),
            code,
            text: reply.message().to_string(),
        }),
    }
}

fn output_error(command: &str, line: usize, text: &str, message: impl Into<String>) -> OutputError {
    OutputError {
        command: command.to_string(),
        line,
        text: text.to_string(),
        message: message.into(),
    }
}

/// Prefixes listed by `show route export <protocol>` (every table).
///
/// Route lines start with the network; lines starting with whitespace are
/// further paths, `via` lines or attributes, `Table ...:` heads a table.
///
/// A protocol whose channels are not up (a BGP session that is down) makes
/// BIRD answer `9001 No valid tables`; that is an empty set, because nothing
/// is exported through it.
pub fn parse_route_export(command: &str, reply: &Reply) -> Result<BTreeSet<IpNet>, ControlError> {
    if reply.code == 9001 && reply.message() == "No valid tables" {
        return Ok(BTreeSet::new());
    }
    if let Some(e) = reply_error(reply) {
        return Err(e);
    }
    let mut nets = BTreeSet::new();
    for (i, line) in reply.lines.iter().enumerate() {
        if line.code != 1007 {
            continue;
        }
        let text = line.text.as_str();
        if text.is_empty() || text.starts_with(char::is_whitespace) || text.starts_with("Table ") {
            continue;
        }
        let first = text.split_whitespace().next().unwrap_or("");
        let net: IpNet = first.parse().map_err(|_| {
            output_error(
                command,
                i + 1,
                text,
                "route line does not start with a prefix",
            )
        })?;
        nets.insert(net);
    }
    Ok(nets)
}

/// One row of `show protocols`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolRow {
    /// Protocol instance name (`tor`).
    pub name: String,
    /// Protocol type (`BGP`, `Static`, `Kernel`, ...).
    pub proto: String,
    /// Table (`master4`, `---`).
    pub table: String,
    /// `up`, `down`, `start`, `stop`.
    pub state: String,
    /// Time of the last state change, as BIRD formats it. A BGP session that
    /// was not reset keeps the same value across reconfigures.
    pub since: String,
    /// Free text (`Established`, `Active  Socket: Connection refused`), whitespace-collapsed.
    pub info: String,
}

/// Rows of `show protocols` (the `1002` lines).
pub fn parse_protocols(command: &str, reply: &Reply) -> Result<Vec<ProtocolRow>, ControlError> {
    if let Some(e) = reply_error(reply) {
        return Err(e);
    }
    let mut rows = Vec::new();
    for (i, line) in reply.lines.iter().enumerate() {
        if line.code != 1002 {
            continue;
        }
        let mut words: VecDeque<&str> = line.text.split_whitespace().collect();
        if words.len() < 5 {
            return Err(output_error(command, i + 1, &line.text, "fewer than 5 columns").into());
        }
        let mut next = || words.pop_front().expect("length checked").to_string();
        let (name, proto, table, state, mut since) = (next(), next(), next(), next(), next());
        // A `timeformat protocol` with a date and a time ("2026-11-22 05:16:45")
        // puts a space inside the Since column.
        if is_date(&since) && words.front().is_some_and(|w| is_time(w)) {
            since = format!("{since} {}", words.pop_front().expect("checked"));
        }
        rows.push(ProtocolRow {
            name,
            proto,
            table,
            state,
            since,
            info: words.into_iter().collect::<Vec<_>>().join(" "),
        });
    }
    Ok(rows)
}

fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && s.replace('-', "").bytes().all(|c| c.is_ascii_digit())
}

fn is_time(s: &str) -> bool {
    s.len() >= 8
        && s.as_bytes()[2] == b':'
        && s.bytes()
            .all(|c| c.is_ascii_digit() || c == b':' || c == b'.')
}

/// A prefix set as `eval` prints it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrefixSetDump {
    /// Exact prefixes in the set.
    pub exact: BTreeSet<IpNet>,
    /// Range patterns (`10.0.0.0/8{24,32}`-like nodes), as printed. lb-agent
    /// never writes any, so a non-empty list means someone else did.
    pub patterns: Vec<String>,
}

/// Result of `eval <prefix set>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EvalSet {
    /// The whole set.
    Complete(PrefixSetDump),
    /// `8000 <line overflow>`: the set does not fit BIRD's ~512-byte output
    /// line (about 20 IPv4 /32s). Use membership queries instead.
    TooLong,
}

/// Parses the reply to `eval <VARIABLE>` where the variable is a prefix set.
///
/// BIRD 2.0.12 prints its trie: `[10.189.200.255/32{0.0.0.1}, ...]`. Each node
/// is `net{mask}`: bit *i* of the mask (counted from the most significant,
/// starting at 0) set means prefixes of length *i+1* under `net` match. A node
/// whose only length is its own is an exact prefix; any other length makes a
/// pattern (`+`, `-`, `{a,b}` in the config). `0.0.0.0/0` (no mask) is the
/// zero-length prefix.
pub fn parse_eval_set(command: &str, reply: &Reply) -> Result<EvalSet, ControlError> {
    if reply.code == CODE_OVERFLOW
        || reply
            .lines
            .iter()
            .any(|l| l.code == CODE_OVERFLOW && l.text.contains("overflow"))
    {
        return Ok(EvalSet::TooLong);
    }
    if let Some(e) = reply_error(reply) {
        return Err(e);
    }
    let text = reply.message();
    let err = |m: &str| ControlError::from(output_error(command, reply.lines.len(), text, m));
    if reply.code != CODE_EVAL {
        return Err(ControlError::Unexpected {
            command: command.to_string(),
            code: reply.code,
            text: text.to_string(),
        });
    }
    let inner = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .ok_or_else(|| err("not a prefix set"))?;
    let mut dump = PrefixSetDump::default();
    if inner.trim().is_empty() {
        return Ok(EvalSet::Complete(dump));
    }
    for item in inner.split(", ") {
        let (net, mask) = match item.split_once('{') {
            Some((n, m)) => (
                n,
                Some(m.strip_suffix('}').ok_or_else(|| err("unclosed '{'"))?),
            ),
            None => (item, None),
        };
        let net: IpNet = net.parse().map_err(|_| err("item is not a prefix"))?;
        let lengths: Vec<u8> = match mask {
            None => vec![net.prefix_len()],
            Some(m) => {
                let mask: IpAddr = m.parse().map_err(|_| err("mask is not an address"))?;
                mask_lengths(mask)
            }
        };
        for l in lengths {
            if l == net.prefix_len() {
                dump.exact.insert(net);
            } else {
                dump.patterns.push(format!("{net}{{{l},{l}}}"));
            }
        }
    }
    Ok(EvalSet::Complete(dump))
}

/// Prefix lengths whose bits are set in a trie accept mask.
fn mask_lengths(mask: IpAddr) -> Vec<u8> {
    let (bits, width): (u128, u32) = match mask {
        IpAddr::V4(a) => (u32::from(a) as u128, 32),
        IpAddr::V6(a) => (u128::from(a), 128),
    };
    (0..width)
        .filter(|i| bits & (1u128 << (width - 1 - i)) != 0)
        .map(|i| (i + 1) as u8)
        .collect()
}

/// Parses `0023 TRUE` / `0023 FALSE` (the reply to `eval <net> ~ <set>`).
pub fn parse_eval_bool(command: &str, reply: &Reply) -> Result<bool, ControlError> {
    if let Some(e) = reply_error(reply) {
        return Err(e);
    }
    match (reply.code, reply.message()) {
        (CODE_EVAL, "TRUE") => Ok(true),
        (CODE_EVAL, "FALSE") => Ok(false),
        (code, text) => Err(ControlError::Unexpected {
            command: command.to_string(),
            code,
            text: text.to_string(),
        }),
    }
}

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

struct Connection {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// One exchange of a transcript: the command sent (`None` for what BIRD
    /// sent unprompted, like the greeting) and the lines received.
    #[derive(Debug)]
    struct Exchange {
        command: Option<String>,
        received: Vec<String>,
    }

    /// Reads the transcript notation of `fixtures/bird/`:
    /// `C:` sent, `S:` received, `$` end of line, `^I` TAB, `#` local notes.
    /// Pipelined commands are grouped: their replies follow all of them.
    fn transcript(text: &str) -> Vec<Exchange> {
        let mut out: Vec<Exchange> = vec![Exchange {
            command: None,
            received: vec![],
        }];
        let mut pending: Vec<String> = vec![];
        for raw in text.lines() {
            if let Some(c) = raw.strip_prefix("C: ") {
                let c = c.split("   (pipelined").next().unwrap().trim_end();
                pending.push(c.to_string());
            } else if let Some(s) = raw.strip_prefix("S: ") {
                for c in pending.drain(..) {
                    out.push(Exchange {
                        command: Some(c),
                        received: vec![],
                    });
                }
                let s = s.strip_suffix('$').unwrap_or(s).replace("^I", "\t");
                out.last_mut().unwrap().received.push(s);
            } else if raw.starts_with("S:") {
                // "S: " with nothing after cannot occur: BIRD lines are non-empty.
                panic!("unexpected transcript line {raw:?}");
            }
        }
        out
    }

    /// Decodes every line BIRD sent in a transcript, in order, as one stream.
    fn decode_all(text: &str) -> (Vec<(Option<String>, Reply)>, Vec<String>) {
        let mut d = Decoder::new();
        let mut replies = vec![];
        let mut asyncs = vec![];
        let exchanges = transcript(text);
        // Commands in order; replies are matched to commands in order too.
        let mut commands: VecDeque<Option<String>> =
            exchanges.iter().map(|e| e.command.clone()).collect();
        // A reply-less prefix: the greeting has no command.
        for e in &exchanges {
            for l in &e.received {
                match d.push(l).unwrap() {
                    None => {}
                    Some(Frame::Async(a)) => asyncs.push(a),
                    Some(Frame::Reply(r)) => replies.push((commands.pop_front().unwrap(), r)),
                }
            }
        }
        assert!(!d.in_reply(), "transcript ends inside a reply");
        (replies, asyncs)
    }

    fn fixture(name: &str) -> &'static str {
        match name {
            "01" => include_str!("../../fixtures/bird/01-greeting-status.txt"),
            "02" => include_str!("../../fixtures/bird/02-toggle-configure.txt"),
            "03" => include_str!("../../fixtures/bird/03-include-errors.txt"),
            "04" => include_str!("../../fixtures/bird/04-confirm-undo.txt"),
            "05" => include_str!("../../fixtures/bird/05-errors.txt"),
            "06" => include_str!("../../fixtures/bird/06-tor-routes.txt"),
            "07" => include_str!("../../fixtures/bird/07-in-progress-async.txt"),
            "08" => include_str!("../../fixtures/bird/08-eval-prefix-sets.txt"),
            "09" => include_str!("../../fixtures/bird/09-export-two-channels.txt"),
            _ => unreachable!(),
        }
    }

    fn reply_to<'a>(replies: &'a [(Option<String>, Reply)], command: &str) -> Vec<&'a Reply> {
        replies
            .iter()
            .filter(|(c, _)| c.as_deref() == Some(command))
            .map(|(_, r)| r)
            .collect()
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn every_transcript_decodes_into_one_reply_per_command() {
        for f in ["01", "02", "03", "04", "05", "06", "07", "08", "09"] {
            let exchanges = transcript(fixture(f));
            let expected = exchanges.iter().filter(|e| e.command.is_some()).count() + 1; // + greeting
            let (replies, _) = decode_all(fixture(f));
            assert_eq!(replies.len(), expected, "fixture {f}");
            assert_eq!(replies[0].1.code, CODE_GREETING, "fixture {f}");
            assert_eq!(replies[0].1.message(), "BIRD 2.0.12 ready.");
        }
    }

    #[test]
    fn framing_basics() {
        let mut d = Decoder::new();
        assert_eq!(d.push("1007-Table master4:\n").unwrap(), None);
        assert!(d.in_reply());
        assert_eq!(d.push(" 192.0.2.10/32  blackhole\n").unwrap(), None);
        assert_eq!(
            d.push("+Reconfiguring\n").unwrap(),
            Some(Frame::Async("Reconfiguring".into()))
        );
        assert!(d.in_reply(), "an async line does not end or reset a reply");
        let Some(Frame::Reply(r)) = d.push("0000 \n").unwrap() else {
            panic!()
        };
        assert_eq!(r.code, 0);
        assert_eq!(r.message(), "");
        assert_eq!(
            r.lines,
            vec![
                Line {
                    code: 1007,
                    text: "Table master4:".into()
                },
                Line {
                    code: 1007,
                    text: "192.0.2.10/32  blackhole".into()
                },
                Line {
                    code: 0,
                    text: String::new()
                },
            ]
        );
        // Errors: continuation outside a reply, garbage, bad separator.
        assert!(d.push(" orphan").is_err());
        assert!(d.push("hello").is_err());
        assert!(d.push("0003:Reconfigured").is_err());
        assert!(d.push("12").is_err());
        // A bare code is a final line with no text.
        assert!(matches!(
            d.push("0000"),
            Ok(Some(Frame::Reply(Reply { code: 0, .. })))
        ));
    }

    #[test]
    fn configure_outcomes_from_transcripts() {
        let (r, _) = decode_all(fixture("02"));
        for reply in reply_to(&r, "configure") {
            assert_eq!(
                parse_configure("configure", reply).unwrap(),
                ConfigureOutcome::Reconfigured
            );
            assert_eq!(
                reply.texts(2).next().unwrap(),
                "Reading configuration from <lab>/run/lb1/bird.conf"
            );
        }
        let (r, asyncs) = decode_all(fixture("07"));
        let outcomes: Vec<_> = r
            .iter()
            .filter(|(c, _)| c.as_deref().is_some_and(|c| c.starts_with("configure")))
            .map(|(c, reply)| parse_configure(c.as_deref().unwrap(), reply).unwrap())
            .collect();
        use ConfigureOutcome::*;
        assert_eq!(
            outcomes,
            vec![InProgress, InProgress, InProgress, Queued, Queued]
        );
        assert_eq!(
            asyncs,
            ["Reconfiguring", "Restarting protocol tor", "Reconfigured"].repeat(2)
        );
        // `configure timeout` / `undo` replies carry extra 00xx- lines before 0003.
        let (r, _) = decode_all(fixture("04"));
        assert_eq!(
            parse_configure(
                "configure timeout 30",
                reply_to(&r, "configure timeout 30")[0]
            )
            .unwrap(),
            Reconfigured
        );
        assert!(matches!(
            parse_configure("configure confirm", reply_to(&r, "configure confirm")[0]),
            Err(ControlError::Unexpected { code: 18, .. })
        ));
    }

    #[test]
    fn config_rejections_carry_file_line_column_and_message() {
        let (r, _) = decode_all(fixture("03"));
        let errors: Vec<ConfigRejection> = reply_to(&r, "configure")
            .into_iter()
            .filter_map(|reply| match parse_configure("configure", reply) {
                Err(ControlError::ConfigRejected(c)) => Some(c),
                Ok(_) => None,
                Err(e) => panic!("{e}"),
            })
            .collect();
        assert_eq!(errors.len(), 5);
        assert_eq!(
            errors[0].file.as_deref(),
            Some("<lab>/run/lb1/acast-prefixes.conf")
        );
        assert_eq!((errors[0].line, errors[0].column), (Some(1), Some(49)));
        assert_eq!(errors[0].message, "syntax error, unexpected IP4");
        assert_eq!(
            errors[0].to_string(),
            "<lab>/run/lb1/acast-prefixes.conf:1:49 syntax error, unexpected IP4"
        );
        assert_eq!(errors[2].file.as_deref(), Some("<lab>/run/lb1/bird.conf"));
        assert_eq!(errors[2].line, Some(7));
        assert_eq!(
            errors[3].message,
            "Symbol 'ACAST_PS_ADVERTISE' already defined"
        );
        assert!(errors[4]
            .message
            .starts_with("Unable to open included file"));
        // The `configure check` variant, and one without line/column.
        let c = ConfigRejection::parse("nonexistent.conf: No such file or directory");
        assert_eq!(c.file.as_deref(), Some("nonexistent.conf"));
        assert_eq!(c.line, None);
        assert_eq!(c.message, "No such file or directory");
        let c =
            ConfigRejection::parse("/etc/bird/my dir/a:b.conf:12:7 syntax error, unexpected ';'");
        assert_eq!(c.file.as_deref(), Some("/etc/bird/my dir/a:b.conf"));
        assert_eq!((c.line, c.column), (Some(12), Some(7)));
        assert_eq!(c.message, "syntax error, unexpected ';'");
        let c = ConfigRejection::parse("Something odd happened");
        assert_eq!(
            (c.file, c.message.as_str()),
            (None, "Something odd happened")
        );
    }

    #[test]
    fn access_denied_and_command_errors() {
        let (r, _) = decode_all(fixture("05"));
        assert!(matches!(
            parse_configure("configure", reply_to(&r, "configure")[0]),
            Err(ControlError::AccessDenied)
        ));
        assert!(matches!(
            reply_error(reply_to(&r, "foo")[0]),
            Some(ControlError::Command { code: 9001, .. })
        ));
        assert!(matches!(
            reply_error(reply_to(&r, "show route 203.0.113.1/32")[0]),
            Some(ControlError::Command { code: 8001, .. })
        ));
        assert_eq!(reply_to(&r, "restrict")[0].code, 16);
        assert!(reply_error(reply_to(&r, "show status")[0]).is_none());
    }

    #[test]
    fn route_export_from_transcripts() {
        let (r, _) = decode_all(fixture("02"));
        let exports: Vec<BTreeSet<IpNet>> = reply_to(&r, "show route export tor")
            .into_iter()
            .map(|reply| parse_route_export("show route export tor", reply).unwrap())
            .collect();
        let vip: BTreeSet<IpNet> = [net("192.0.2.10/32")].into();
        assert_eq!(exports, vec![vip.clone(), BTreeSet::new(), vip.clone()]);
        // `all` adds 1008 attribute lines; they are not routes.
        let all = reply_to(&r, "show route export tor all")[0];
        assert_eq!(parse_route_export("x", all).unwrap(), vip);
        // The ToR's merged multipath route: `via` continuation lines are skipped.
        let (r, _) = decode_all(fixture("06"));
        for c in [
            "show route export kernel4",
            "show route export kernel4 all",
            "show route 192.0.2.10/32",
        ] {
            assert_eq!(
                parse_route_export(c, reply_to(&r, c)[0]).unwrap(),
                vip,
                "{c}"
            );
        }
        // Two channels: both tables, separated by an empty continuation line.
        let (r, _) = decode_all(fixture("09"));
        assert_eq!(
            parse_route_export("x", reply_to(&r, "show route export tor")[0]).unwrap(),
            [net("192.0.2.10/32"), net("2001:db8:10::10/128")].into()
        );
        // A count line is not a route: refused, with the line number.
        let Err(ControlError::Output(e)) = parse_route_export(
            "show route export tor count",
            reply_to(&r, "show route export tor count")[0],
        ) else {
            panic!()
        };
        assert_eq!(e.line, 1);
        // A protocol that is down exports nothing.
        assert_eq!(
            parse_route_export("x", reply_to(&r, "show route export down1")[0]).unwrap(),
            BTreeSet::new()
        );
        let rows = parse_protocols("x", reply_to(&r, "show protocols")[0]).unwrap();
        assert_eq!(
            (rows[4].state.as_str(), rows[4].info.as_str()),
            ("start", "Active")
        );
    }

    #[test]
    fn protocols_from_transcripts() {
        let (r, _) = decode_all(fixture("06"));
        let rows = parse_protocols("show protocols", reply_to(&r, "show protocols")[0]).unwrap();
        let names: Vec<_> = rows.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["device1", "kernel4", "lb1", "lb2"]);
        assert_eq!(
            rows[2],
            ProtocolRow {
                name: "lb1".into(),
                proto: "BGP".into(),
                table: "---".into(),
                state: "up".into(),
                since: "05:16:46.109".into(),
                info: "Established".into(),
            }
        );
        assert_eq!(rows[0].info, "");
        // Overlong names shift the columns; the rows still split right.
        let (r, _) = decode_all(fixture("01"));
        let rows = parse_protocols("show protocols", reply_to(&r, "show protocols")[0]).unwrap();
        assert_eq!(rows[1].name, "static_acast");
        assert_eq!(rows[1].table, "master4");
        // `show protocols all` : only the 1002 row, not the 1006 details.
        let rows = parse_protocols("x", reply_to(&r, "show protocols all tor")[0]).unwrap();
        assert_eq!(rows.len(), 1);
        // The BGP session restarted by a hard reconfigure shows a new Since.
        let (r, _) = decode_all(fixture("07"));
        let since: Vec<String> = reply_to(&r, "show protocols")
            .into_iter()
            .map(|reply| parse_protocols("x", reply).unwrap()[2].since.clone())
            .collect();
        assert_eq!(since, ["05:17:05.294", "05:17:07.247"]);
    }

    #[test]
    fn protocols_with_a_date_time_since_and_bad_rows() {
        let reply = Reply {
            code: 0,
            lines: vec![
                Line {
                    code: 2002,
                    text: "Name Proto Table State Since Info".into(),
                },
                Line {
                    code: 1002,
                    text: "tor BGP --- up 2026-11-22 05:16:45 Established".into(),
                },
                Line {
                    code: 1002,
                    text: "lb2 BGP --- start 2026-11-22 Active Socket: Connection refused".into(),
                },
                Line {
                    code: 0,
                    text: String::new(),
                },
            ],
        };
        let rows = parse_protocols("x", &reply).unwrap();
        assert_eq!(rows[0].since, "2026-11-22 05:16:45");
        assert_eq!(rows[0].info, "Established");
        assert_eq!(rows[1].since, "2026-11-22");
        assert_eq!(rows[1].info, "Active Socket: Connection refused");
        let bad = Reply {
            code: 0,
            lines: vec![
                Line {
                    code: 1002,
                    text: "tor BGP".into(),
                },
                Line {
                    code: 0,
                    text: String::new(),
                },
            ],
        };
        assert!(matches!(
            parse_protocols("x", &bad),
            Err(ControlError::Output(OutputError { line: 1, .. }))
        ));
    }

    #[test]
    fn eval_prefix_sets_from_captured_output() {
        let (r, _) = decode_all(fixture("08"));
        let get = |c: &str| parse_eval_set(c, reply_to(&r, c)[0]).unwrap();
        let EvalSet::Complete(d) = get("eval ACAST_PS_ADVERTISE") else {
            panic!()
        };
        assert_eq!(
            d.exact,
            [net("10.189.200.255/32"), net("192.0.2.10/32")].into()
        );
        assert!(d.patterns.is_empty());
        let EvalSet::Complete(d) = get("eval ACAST6_PS_ADVERTISE") else {
            panic!()
        };
        assert_eq!(
            d.exact,
            [net("2001:db8:ffff::1/128"), net("2001:db8:10::10/128")].into()
        );
        let EvalSet::Complete(d) = get("eval EMPTY") else {
            panic!()
        };
        assert_eq!(d, PrefixSetDump::default());
        // Nested exact prefixes and the zero-length prefix.
        let EvalSet::Complete(d) = get("eval NESTED") else {
            panic!()
        };
        assert_eq!(
            d.exact,
            [
                "0.0.0.0/0",
                "192.0.2.0/24",
                "192.0.2.0/25",
                "192.0.2.128/25",
                "192.0.2.0/32"
            ]
            .into_iter()
            .map(net)
            .collect()
        );
        assert!(d.patterns.is_empty(), "{:?}", d.patterns);
        // Ranges show up as patterns, never as exact prefixes.
        let EvalSet::Complete(d) = get("eval RANGES") else {
            panic!()
        };
        assert!(d.exact.contains(&net("10.0.0.0/8")));
        assert!(!d.exact.contains(&net("10.0.0.0/9")));
        assert!(
            d.patterns.contains(&"10.0.0.0/8{32,32}".to_string()),
            "{:?}",
            d.patterns
        );
        assert!(d.patterns.contains(&"198.51.100.0/24{25,25}".to_string()));
        // Too long for one line.
        assert_eq!(get("eval BIG"), EvalSet::TooLong);
        // Undefined variable: a command error, not a set.
        assert!(matches!(
            parse_eval_set("eval NOSUCH", reply_to(&r, "eval NOSUCH")[0]),
            Err(ControlError::Command { code: 9001, .. })
        ));
        // Not a set.
        assert!(matches!(
            parse_eval_set("eval 1+1", reply_to(&r, "eval 1+1")[0]),
            Err(ControlError::Output(_))
        ));
        // Membership.
        assert!(parse_eval_bool(
            "x",
            reply_to(&r, "eval 192.0.2.10/32 ~ ACAST_PS_ADVERTISE")[0]
        )
        .unwrap());
        assert!(!parse_eval_bool(
            "x",
            reply_to(&r, "eval 192.0.2.11/32 ~ ACAST_PS_ADVERTISE")[0]
        )
        .unwrap());
    }

    #[test]
    fn mask_bits_map_to_prefix_lengths() {
        assert_eq!(mask_lengths("0.0.0.1".parse().unwrap()), vec![32]);
        assert_eq!(mask_lengths("0.0.1.0".parse().unwrap()), vec![24]);
        assert_eq!(mask_lengths("128.0.0.0".parse().unwrap()), vec![1]);
        assert_eq!(mask_lengths("::1".parse().unwrap()), vec![128]);
        assert_eq!(mask_lengths("0:1::".parse().unwrap()), vec![32]);
        assert_eq!(
            mask_lengths("0.0.0.255".parse().unwrap()),
            (25..=32).collect::<Vec<u8>>()
        );
    }
}
