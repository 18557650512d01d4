//! HAProxy runtime (admin) socket client, written against 2.6's real behaviour.
//!
//! One persistent session in interactive `prompt` mode: every reply ends
//! with the `\n> ` prompt, which frames replies reliably even for 2.6's
//! `add server`/`del server` messages that lack the blank-line terminator of
//! non-interactive mode. Commands are pipelined in bounded windows (write a
//! window, read its replies) so neither side's buffer can fill up and
//! deadlock, and one connection carries thousands of commands per second.
//! A line is never empty and never contains `;` or a newline (an empty
//! command makes HAProxy dump its help text; a `;` would split a command).
//! Payloads (`<<`) are refused above 15 KiB because 2.6 drops larger ones
//! silently.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::time::timeout;

use crate::model::observed::ObservedServers;
use crate::plan::command::ReplyError;
use crate::plan::Command;

use super::parse;

/// Commands written before their replies are read.
const WINDOW: usize = 200;
/// Largest payload HAProxy 2.6 accepts (tune.bufsize 16 KiB minus headroom).
pub const MAX_PAYLOAD: usize = 15 * 1024;
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
    #[error("refusing to send {0:?}: empty, or contains ';' or a newline")]
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
}

fn check_line(line: &str) -> Result<(), RuntimeError> {
    if line.trim().is_empty() || line.contains(';') || line.contains('\n') || line.contains('\r') {
        return Err(RuntimeError::BadLine(line.to_string()));
    }
    Ok(())
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
            let mut chunk = [0u8; 64 * 1024];
            let n = timeout(self.timeout, self.stream.read(&mut chunk))
                .await
                .map_err(|_| RuntimeError::Timeout(self.timeout))??;
            if n == 0 {
                return Err(RuntimeError::Closed);
            }
            self.buf.extend_from_slice(&chunk[..n]);
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

    /// `show servers state` as raw text (for the server-state file).
    pub async fn servers_state_raw(&mut self) -> Result<String, RuntimeError> {
        self.command("show servers state").await
    }

    /// Applies commands pipelined, judging every reply exactly.
    pub async fn apply(&mut self, cmds: &[Command]) -> Result<ApplyReport, RuntimeError> {
        let lines: Vec<String> = cmds.iter().map(|c| c.to_line()).collect();
        let replies = self.pipeline(&lines).await?;
        let mut report = ApplyReport::default();
        for (c, r) in cmds.iter().zip(&replies) {
            match c.check_reply(r) {
                Ok(()) => report.ok += 1,
                Err(ReplyError::Soft(m)) => report.soft.push(m),
                Err(ReplyError::Hard(m)) => report.failed.push(m),
            }
        }
        Ok(report)
    }

    /// Ends the session politely.
    pub async fn quit(mut self) {
        let _ = self.stream.write_all(b"quit\n").await;
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

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
