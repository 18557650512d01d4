//! Pure parsers of typed BIRD replies and the error type of the control
//! client ([`ControlError`]); unit-tested over captured transcripts.
//! Part of [`crate::bird::control`] (docs/architecture.md).

use std::collections::{BTreeSet, VecDeque};
use std::fmt;
use std::io;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use super::framing::{
    FramingError, Reply, CODE_ACCESS_DENIED, CODE_CONFIG_ERROR, CODE_EVAL, CODE_OVERFLOW,
    CODE_QUEUED, CODE_RECONFIGURED, CODE_RECONFIGURING,
};

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
    pub(super) fn is_stale(&self) -> bool {
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
pub(super) fn mask_lengths(mask: IpAddr) -> Vec<u8> {
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
