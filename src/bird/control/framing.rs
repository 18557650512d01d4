//! Framing of BIRD's control protocol: reply codes, [`Line`], [`Reply`] and the
//! pure [`Decoder`] state machine that turns received lines into frames.
//! Part of [`crate::bird::control`] (docs/architecture.md).

use std::fmt;

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
