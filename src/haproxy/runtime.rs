//! HAProxy runtime (admin) socket client, written against 2.6's real behaviour.
//!
//! One persistent session in interactive `prompt` mode: every reply ends
//! with the `\n> ` prompt, which frames replies reliably even for 2.6's
//! `add server`/`del server` messages that lack the blank-line terminator of
//! non-interactive mode. Commands are pipelined in bounded windows (write a
//! window, read its replies) so neither side's buffer can fill up and
//! deadlock, and one connection carries thousands of commands per second.
//! A line is never empty, never longer than HAProxy's buffer and never
//! contains `;` or a newline (an empty command makes HAProxy dump its help
//! text; a `;` would split a command; a line longer than `tune.bufsize`
//! makes HAProxy close the session). Payloads (`<<`) are refused above
//! 15 KiB because 2.6 drops larger ones silently. The limits are
//! `model::grammar`'s, the same validation applies to documents.
//!
//! A command the client refuses to send is reported in
//! [`ApplyReport::failed`] (prefixed `not sent:`) and skipped; the commands
//! around it are still applied, so one bad value never blocks the unrelated
//! changes of a pass (drains, weights).

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::time::timeout;

use crate::model::observed::{ObservedData, ObservedServers};
use crate::plan::command::ReplyError;
use crate::plan::Command;

use super::parse;

/// Commands written before their replies are read.
const WINDOW: usize = 200;
use crate::model::grammar::MAX_COMMAND_LINE;
/// Largest payload HAProxy 2.6 accepts (tune.bufsize 16 KiB minus headroom).
pub use crate::model::grammar::MAX_PAYLOAD;
/// Largest reply we are willing to buffer (show servers state of 20k servers ≈ 1.4 MB).
const MAX_REPLY: usize = 256 * 1024 * 1024;
const PROMPT: &[u8] = b"\n> ";

/// Why a runtime-socket exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("connecting to {path}: {source}")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("runtime socket I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("runtime socket: no reply within {0:?}")]
    Timeout(Duration),
    #[error("runtime socket closed by HAProxy")]
    Closed,
    #[error("refusing to send {0:?}: empty, longer than {MAX_COMMAND_LINE} bytes, or contains ';' or a newline")]
    BadLine(String),
    #[error("payload of {0} bytes exceeds {MAX_PAYLOAD} bytes")]
    PayloadTooLarge(usize),
    #[error("reply larger than {MAX_REPLY} bytes")]
    ReplyTooLarge,
    #[error(transparent)]
    Parse(#[from] parse::ParseError),
}

/// Where the runtime socket is and how long to wait for it.
#[derive(Debug, Clone)]
pub struct RuntimeClient {
    pub path: PathBuf,
    /// Bound on connect and on every single reply.
    pub timeout: Duration,
}

/// An interactive session on the runtime socket.
pub struct Session {
    stream: UnixStream,
    buf: Vec<u8>,
    timeout: Duration,
}

/// What applying a list of commands did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ApplyReport {
    /// Commands HAProxy accepted.
    pub ok: usize,
    /// Refused for a transient reason (e.g. `del server` with lingering connections).
    pub soft: Vec<String>,
    /// Refused or answered unexpectedly: the state did not converge.
    pub failed: Vec<String>,
    /// Of `failed`, the commands the client would not send at all (`not
    /// sent:`): repairing them at runtime is pointless, only a reload helps.
    pub unsent: usize,
}

fn check_line(line: &str) -> Result<(), RuntimeError> {
    if line.trim().is_empty()
        || line.len() > MAX_COMMAND_LINE
        || line.contains(';')
        || line.contains('\n')
        || line.contains('\r')
    {
        let shown: String = line.chars().take(120).collect();
        return Err(RuntimeError::BadLine(shown));
    }
    Ok(())
}

/// Why the client will not send `c` at all, if it will not.
fn refusal(c: &Command) -> Option<String> {
    let not_sent = |why: String| Some(format!("not sent: {c}: {why}"));
    match c {
        Command::ReplaceMap { entries, .. } => entries
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .find(|l| l.len() + 1 > MAX_PAYLOAD || l.contains('\n'))
            .and_then(|l| {
                not_sent(format!(
                    "an entry of {} bytes does not fit a payload",
                    l.len()
                ))
            }),
        Command::ReplaceAcl { patterns, .. } => patterns
            .iter()
            .find(|l| l.len() + 1 > MAX_PAYLOAD || l.contains('\n') || l.trim().is_empty())
            .and_then(|l| {
                not_sent(format!(
                    "a pattern of {} bytes does not fit a payload",
                    l.len()
                ))
            }),
        Command::SetCert { pem, .. } => {
            let body: usize = pem
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| l.len() + 1)
                .sum();
            (body > MAX_PAYLOAD).then(|| {
                format!("not sent: {c}: {body} bytes exceed the {MAX_PAYLOAD}-byte payload limit")
            })
        }
        _ => check_line(&c.to_line())
            .err()
            .map(|e| format!("not sent: {e}")),
    }
}

impl RuntimeClient {
    pub fn new(path: impl Into<PathBuf>, timeout: Duration) -> RuntimeClient {
        RuntimeClient {
            path: path.into(),
            timeout,
        }
    }

    /// Opens a session and switches it to prompt mode.
    pub async fn connect(&self) -> Result<Session, RuntimeError> {
        let stream = timeout(self.timeout, UnixStream::connect(&self.path))
            .await
            .map_err(|_| RuntimeError::Timeout(self.timeout))?
            .map_err(|source| RuntimeError::Connect {
                path: self.path.clone(),
                source,
            })?;
        let mut s = Session {
            stream,
            buf: Vec::with_capacity(64 * 1024),
            timeout: self.timeout,
        };
        s.stream.write_all(b"prompt\n").await?;
        s.read_reply().await?;
        Ok(s)
    }

    /// Socket path, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Session {
    /// Reads one reply, up to and excluding the next prompt; trailing newlines stripped.
    async fn read_reply(&mut self) -> Result<String, RuntimeError> {
        let mut scanned: usize = 0;
        loop {
            // The prompt may straddle two reads: rescan the last two bytes.
            let from = scanned.saturating_sub(PROMPT.len() - 1);
            if let Some(i) = find(&self.buf[from..], PROMPT) {
                let end = from + i;
                let reply = String::from_utf8_lossy(&self.buf[..end])
                    .trim_end_matches('\n')
                    .to_string();
                self.buf.drain(..end + PROMPT.len());
                return Ok(reply);
            }
            scanned = self.buf.len();
            if self.buf.len() > MAX_REPLY {
                return Err(RuntimeError::ReplyTooLarge);
            }
            // Read straight into the buffer: a stack array here would live in every
            // future that awaits a reply.
            self.buf.reserve(64 * 1024);
            let n = timeout(self.timeout, self.stream.read_buf(&mut self.buf))
                .await
                .map_err(|_| RuntimeError::Timeout(self.timeout))??;
            if n == 0 {
                return Err(RuntimeError::Closed);
            }
        }
    }

    /// Sends one command and returns its reply.
    pub async fn command(&mut self, line: &str) -> Result<String, RuntimeError> {
        check_line(line)?;
        self.stream
            .write_all(format!("{line}\n").as_bytes())
            .await?;
        self.read_reply().await
    }

    /// Sends many commands, pipelined in windows; returns one reply per command, in order.
    pub async fn pipeline(&mut self, lines: &[String]) -> Result<Vec<String>, RuntimeError> {
        for l in lines {
            check_line(l)?;
        }
        let mut replies = Vec::with_capacity(lines.len());
        for window in lines.chunks(WINDOW) {
            let mut out = String::with_capacity(window.len() * 48);
            for l in window {
                out.push_str(l);
                out.push('\n');
            }
            self.stream.write_all(out.as_bytes()).await?;
            for _ in window {
                replies.push(self.read_reply().await?);
            }
        }
        Ok(replies)
    }

    /// Sends a command with a payload (`line <<`, payload lines, empty line).
    ///
    /// Blank lines inside the payload would end it early, so they are dropped.
    pub async fn payload(&mut self, line: &str, payload: &str) -> Result<String, RuntimeError> {
        check_line(line)?;
        let body: String = payload
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| format!("{l}\n"))
            .collect();
        if body.len() > MAX_PAYLOAD {
            return Err(RuntimeError::PayloadTooLarge(body.len()));
        }
        self.stream
            .write_all(format!("{line} <<\n{body}\n").as_bytes())
            .await?;
        let reply = self.read_reply().await?;
        // In payload mode HAProxy may print its "+ " continuation prompt.
        Ok(reply.trim_start_matches("+ ").to_string())
    }

    /// `show servers state`, parsed.
    pub async fn servers_state(&mut self) -> Result<ObservedServers, RuntimeError> {
        let text = self.command("show servers state").await?;
        Ok(parse::servers_state(&text)?)
    }

    /// `show servers state <backend>`: the servers of one backend (a
    /// scoped pass reads only the backends it plans). An unknown backend
    /// is an error (HAProxy answers "Can't find backend.").
    pub async fn servers_state_of(
        &mut self,
        backend: &str,
    ) -> Result<ObservedServers, RuntimeError> {
        if backend.is_empty() || backend.contains(char::is_whitespace) {
            return Err(RuntimeError::BadLine(backend.chars().take(120).collect()));
        }
        let text = self
            .command(&format!("show servers state {backend}"))
            .await?;
        Ok(parse::servers_state(&text)?)
    }

    /// `show servers state` as raw text (for the server-state file).
    pub async fn servers_state_raw(&mut self) -> Result<String, RuntimeError> {
        self.command("show servers state").await
    }

    /// Applies commands in order: runs of plain commands pipelined, transactions
    /// one step at a time; every reply judged exactly.
    ///
    /// A command the client will not send (see the module docs) goes to
    /// `failed` and is skipped; the error return is only for the session
    /// itself (I/O, timeout, HAProxy closing it).
    pub async fn apply(&mut self, cmds: &[Command]) -> Result<ApplyReport, RuntimeError> {
        let mut report = ApplyReport::default();
        let mut sendable: Vec<&Command> = Vec::with_capacity(cmds.len());
        for c in cmds {
            match refusal(c) {
                Some(why) => {
                    report.failed.push(why);
                    report.unsent += 1;
                }
                None => sendable.push(c),
            }
        }
        let mut i = 0;
        while i < sendable.len() {
            if sendable[i].is_transaction() {
                match self.transaction(sendable[i]).await? {
                    Ok(()) => report.ok += 1,
                    Err(m) => report.failed.push(m),
                }
                i += 1;
                continue;
            }
            let end = sendable[i..]
                .iter()
                .position(|c| c.is_transaction())
                .map_or(sendable.len(), |k| i + k);
            let run = &sendable[i..end];
            let lines: Vec<String> = run.iter().map(|c| c.to_line()).collect();
            let replies = self.pipeline(&lines).await?;
            for (c, r) in run.iter().zip(&replies) {
                match c.check_reply(r) {
                    Ok(()) => report.ok += 1,
                    Err(ReplyError::Soft(m)) => report.soft.push(m),
                    Err(ReplyError::Hard(m)) => report.failed.push(m),
                }
            }
            i = end;
        }
        Ok(report)
    }

    /// Runs a multi-step transaction; the outer error is the socket, the inner one HAProxy's refusal.
    async fn transaction(&mut self, c: &Command) -> Result<Result<(), String>, RuntimeError> {
        let refuse = |step: &str, reply: &str| Err(format!("{c}: {step} answered {reply:?}"));
        match c {
            Command::ReplaceMap { file, entries } => {
                let lines: Vec<String> = entries.iter().map(|(k, v)| format!("{k} {v}")).collect();
                self.replace_file("map", file, &lines).await
            }
            Command::ReplaceAcl { file, patterns } => {
                self.replace_file("acl", file, patterns).await
            }
            Command::SetCert { file, pem } => {
                let r = self.payload(&format!("set ssl cert {file}"), pem).await?;
                if !r.contains(&format!("Transaction created for certificate {file}!"))
                    && !r.contains(&format!("Transaction updated for certificate {file}!"))
                {
                    let _ = self.command(&format!("abort ssl cert {file}")).await?;
                    return Ok(refuse("set ssl cert", &r));
                }
                let r = self.command(&format!("commit ssl cert {file}")).await?;
                if r.contains("Success!") && !r.contains("rror") {
                    Ok(Ok(()))
                } else {
                    let _ = self.command(&format!("abort ssl cert {file}")).await?;
                    Ok(refuse("commit ssl cert", &r))
                }
            }
            _ => Ok(Err(format!("{c} is not a transaction"))),
        }
    }

    /// `prepare KIND FILE`, `add KIND @V FILE <<` in chunks under 16 KiB, `commit KIND @V FILE`.
    async fn replace_file(
        &mut self,
        kind: &str,
        file: &str,
        lines: &[String],
    ) -> Result<Result<(), String>, RuntimeError> {
        let r = self.command(&format!("prepare {kind} {file}")).await?;
        let Some(version) = r
            .strip_prefix("New version created: ")
            .and_then(|v| v.trim().parse::<u64>().ok())
        else {
            return Ok(Err(format!("prepare {kind} {file} answered {r:?}")));
        };
        for chunk in chunk_lines(lines, MAX_PAYLOAD) {
            let r = self
                .payload(&format!("add {kind} @{version} {file}"), &chunk)
                .await?;
            if !r.trim().is_empty() {
                return Ok(Err(format!("add {kind} @{version} {file} answered {r:?}")));
            }
        }
        let r = self
            .command(&format!("commit {kind} @{version} {file}"))
            .await?;
        if r.is_empty() {
            Ok(Ok(()))
        } else {
            Ok(Err(format!(
                "commit {kind} @{version} {file} answered {r:?}"
            )))
        }
    }

    /// Reads the contents of the map, ACL and certificate files HAProxy loaded,
    /// restricted to the paths in `want` (our own files).
    pub async fn data(
        &mut self,
        want_maps: &[String],
        want_acls: &[String],
        want_certs: &[String],
    ) -> Result<ObservedData, RuntimeError> {
        let mut out = ObservedData::default();
        if !want_maps.is_empty() {
            let loaded = parse::loaded_files(&self.command("show map").await?);
            for f in want_maps.iter().filter(|f| loaded.contains(f)) {
                let text = self.command(&format!("show map {f}")).await?;
                out.maps.insert(f.clone(), parse::map_entries(&text)?);
            }
        }
        if !want_acls.is_empty() {
            let loaded = parse::loaded_files(&self.command("show acl").await?);
            for f in want_acls.iter().filter(|f| loaded.contains(f)) {
                let text = self.command(&format!("show acl {f}")).await?;
                out.acls.insert(f.clone(), parse::acl_entries(&text)?);
            }
        }
        if !want_certs.is_empty() {
            let loaded = parse::cert_files(&self.command("show ssl cert").await?);
            for f in want_certs.iter().filter(|f| loaded.contains(f)) {
                let text = self.command(&format!("show ssl cert {f}")).await?;
                if let Some(fp) = parse::cert_fingerprint(&text) {
                    out.certs.insert(f.clone(), fp);
                }
            }
        }
        Ok(out)
    }

    /// Ends the session politely.
    pub async fn quit(mut self) {
        let _ = self.stream.write_all(b"quit\n").await;
    }
}

/// Splits lines into payloads of at most `max` bytes (each line kept whole).
fn chunk_lines(lines: &[String], max: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for l in lines {
        if !cur.is_empty() && cur.len() + l.len() + 1 > max {
            out.push(std::mem::take(&mut cur));
        }
        cur.push_str(l);
        cur.push('\n');
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_stay_under_the_payload_limit() {
        let lines: Vec<String> = (0..3000)
            .map(|i| format!("host{i}.example.com backend_{i}"))
            .collect();
        let chunks = chunk_lines(&lines, MAX_PAYLOAD);
        assert!(chunks.len() > 1);
        assert!(chunks.iter().all(|c| c.len() <= MAX_PAYLOAD));
        assert_eq!(chunks.concat().lines().count(), 3000);
    }

    #[test]
    fn refuses_dangerous_lines() {
        for bad in [
            "",
            "  ",
            "show info;",
            "a;;b",
            "show info\nshutdown sessions",
            "x\r",
        ] {
            assert!(check_line(bad).is_err(), "{bad:?}");
        }
        assert!(check_line("set server a/b weight 1").is_ok());
    }

    /// Framing over a real UNIX socket with a scripted peer speaking 2.6's bytes,
    /// including the single-newline `add server` reply and a split prompt.
    #[tokio::test]
    async fn frames_replies_on_the_prompt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let peer = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let mut got = String::new();
            while !got.contains("del server") {
                let n = s.read(&mut buf).await.unwrap();
                got.push_str(std::str::from_utf8(&buf[..n]).unwrap());
            }
            for chunk in [
                &b"\n> "[..],
                b"New server registered.\n",
                b"\n",
                b"> Server deleted.\n",
                b">",
                b" ",
            ] {
                s.write_all(chunk).await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            got
        });
        let stream = UnixStream::connect(&path).await.unwrap();
        let mut sess = Session {
            stream,
            buf: Vec::new(),
            timeout: Duration::from_secs(5),
        };
        sess.stream.write_all(b"prompt\n").await.unwrap();
        let lines = [
            "add server b/s 127.0.0.1:1".to_string(),
            "del server b/s".to_string(),
        ];
        // The initial prompt, then two replies.
        let pipelined = async {
            sess.stream
                .write_all(format!("{}\n{}\n", lines[0], lines[1]).as_bytes())
                .await
                .unwrap();
            let first = sess.read_reply().await.unwrap();
            let a = sess.read_reply().await.unwrap();
            let b = sess.read_reply().await.unwrap();
            (first, a, b)
        };
        let (first, a, b) = pipelined.await;
        assert_eq!(first, "");
        assert_eq!(a, "New server registered.");
        assert_eq!(b, "Server deleted.");
        let sent = peer.await.unwrap();
        assert_eq!(sent, "prompt\nadd server b/s 127.0.0.1:1\ndel server b/s\n");
    }
}
