//! Runtime-socket commands the planner emits, and how their replies are judged.
//!
//! Each command knows its exact success reply (HAProxy 2.6, verified in
//! docs/api.md, "HAProxy 2.6 runtime-socket facts", and our integration tests): anything else is
//! a failure, never assumed to be fine.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use crate::model::grammar::cli_value;
use crate::model::ServerState;

/// One runtime-socket command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `set server B/S addr IP port P` (IP literals only).
    SetAddr {
        backend: String,
        server: String,
        addr: IpAddr,
        port: u16,
    },
    /// `set server B/S weight W`.
    SetWeight {
        backend: String,
        server: String,
        weight: u16,
    },
    /// `set server B/S state ready|drain|maint`.
    SetState {
        backend: String,
        server: String,
        state: ServerState,
    },
    /// `add server B/S ADDR:PORT weight W [check ...]`; the server starts in
    /// maintenance (never `enabled`: on 2.6 such a server shows UP but gets no
    /// traffic), so a `SetState` follows.
    AddServer {
        backend: String,
        server: String,
        addr: IpAddr,
        port: u16,
        weight: u16,
        check: Option<String>,
    },
    /// `enable health B/S` (checks of an added server start disabled).
    EnableHealth { backend: String, server: String },
    /// `del server B/S` (must be in maintenance, refused while connections linger).
    DelServer { backend: String, server: String },
    /// `add map FILE KEY VALUE`.
    AddMap {
        file: String,
        key: String,
        value: String,
    },
    /// `set map FILE KEY VALUE` (changes every entry with that key).
    SetMap {
        file: String,
        key: String,
        value: String,
    },
    /// `del map FILE KEY` (removes every entry with that key).
    DelMap { file: String, key: String },
    /// `add acl FILE PATTERN`.
    AddAcl { file: String, pattern: String },
    /// `del acl FILE PATTERN`.
    DelAcl { file: String, pattern: String },
    /// Transaction: `prepare map`, `add map @V FILE <<` in payload chunks under 16 KiB, `commit map`.
    ReplaceMap {
        file: String,
        entries: Vec<(String, String)>,
    },
    /// Transaction: `prepare acl`, `add acl @V FILE <<` in chunks, `commit acl`.
    ReplaceAcl { file: String, patterns: Vec<String> },
    /// Transaction: `set ssl cert FILE <<` + PEM, then `commit ssl cert FILE`.
    SetCert { file: String, pem: String },
}

/// How a reply failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// HAProxy refused for a transient reason (e.g. lingering connections); try later.
    #[error("{0}")]
    Soft(String),
    /// HAProxy refused or answered something unexpected.
    #[error("{0}")]
    Hard(String),
}

impl Command {
    /// The command line sent to HAProxy (no trailing `;` or newline).
    pub fn to_line(&self) -> String {
        self.to_string()
    }

    /// The backend this command acts on.
    pub fn backend(&self) -> &str {
        match self {
            Command::SetAddr { backend, .. }
            | Command::SetWeight { backend, .. }
            | Command::SetState { backend, .. }
            | Command::AddServer { backend, .. }
            | Command::EnableHealth { backend, .. }
            | Command::DelServer { backend, .. } => backend,
            Command::AddMap { file, .. }
            | Command::SetMap { file, .. }
            | Command::DelMap { file, .. }
            | Command::AddAcl { file, .. }
            | Command::DelAcl { file, .. }
            | Command::ReplaceMap { file, .. }
            | Command::ReplaceAcl { file, .. }
            | Command::SetCert { file, .. } => file,
        }
    }

    /// True for multi-step transactions that cannot be pipelined as one line.
    pub fn is_transaction(&self) -> bool {
        matches!(
            self,
            Command::ReplaceMap { .. } | Command::ReplaceAcl { .. } | Command::SetCert { .. }
        )
    }

    /// Judges HAProxy's reply (trailing newlines already stripped).
    pub fn check_reply(&self, reply: &str) -> Result<(), ReplyError> {
        let hard = || {
            Err(ReplyError::Hard(format!(
                "{:?} answered {reply:?}",
                self.to_line()
            )))
        };
        match self {
            Command::SetWeight { .. }
            | Command::SetState { .. }
            | Command::EnableHealth { .. }
            | Command::AddMap { .. }
            | Command::SetMap { .. }
            | Command::DelMap { .. }
            | Command::AddAcl { .. }
            | Command::DelAcl { .. } => {
                if reply.is_empty() {
                    Ok(())
                } else {
                    hard()
                }
            }
            Command::SetAddr { .. } => {
                if (reply.starts_with("IP changed from '")
                    || reply.starts_with("no need to change the addr"))
                    && !reply.contains('\n')
                {
                    Ok(())
                } else {
                    hard()
                }
            }
            Command::AddServer { .. } => {
                if reply == "New server registered." {
                    Ok(())
                } else {
                    hard()
                }
            }
            Command::DelServer { .. } => match reply {
                "Server deleted." => Ok(()),
                r if r.starts_with("Server still has connections attached") => Err(
                    ReplyError::Soft(format!("{:?}: {r} (left in maintenance)", self.to_line())),
                ),
                _ => hard(),
            },
            // Transactions are judged step by step by the runtime client.
            Command::ReplaceMap { .. } | Command::ReplaceAcl { .. } | Command::SetCert { .. } => {
                Ok(())
            }
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::SetAddr {
                backend,
                server,
                addr,
                port,
            } => {
                write!(f, "set server {backend}/{server} addr {addr} port {port}")
            }
            Command::SetWeight {
                backend,
                server,
                weight,
            } => write!(f, "set server {backend}/{server} weight {weight}"),
            Command::SetState {
                backend,
                server,
                state,
            } => {
                write!(f, "set server {backend}/{server} state {}", state.as_str())
            }
            Command::AddServer {
                backend,
                server,
                addr,
                port,
                weight,
                check,
            } => {
                write!(
                    f,
                    "add server {backend}/{server} {} weight {weight}",
                    SocketAddr::new(*addr, *port)
                )?;
                if let Some(c) = check {
                    write!(f, " {c}")?;
                }
                Ok(())
            }
            Command::EnableHealth { backend, server } => {
                write!(f, "enable health {backend}/{server}")
            }
            Command::DelServer { backend, server } => write!(f, "del server {backend}/{server}"),
            // Inner spaces of a value are escaped for HAProxy's CLI tokenizer.
            Command::AddMap { file, key, value } => {
                write!(f, "add map {file} {key} {}", cli_value(value))
            }
            Command::SetMap { file, key, value } => {
                write!(f, "set map {file} {key} {}", cli_value(value))
            }
            Command::DelMap { file, key } => write!(f, "del map {file} {key}"),
            Command::AddAcl { file, pattern } => write!(f, "add acl {file} {pattern}"),
            Command::DelAcl { file, pattern } => write!(f, "del acl {file} {pattern}"),
            Command::ReplaceMap { file, entries } => {
                write!(f, "replace map {file} ({} entries)", entries.len())
            }
            Command::ReplaceAcl { file, patterns } => {
                write!(f, "replace acl {file} ({} patterns)", patterns.len())
            }
            Command::SetCert { file, .. } => write!(f, "set ssl cert {file}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        let c = Command::AddServer {
            backend: "www".into(),
            server: "a".into(),
            addr: "2001:db8::1".parse().unwrap(),
            port: 80,
            weight: 5,
            check: Some("check inter 2000ms".into()),
        };
        assert_eq!(
            c.to_line(),
            "add server www/a [2001:db8::1]:80 weight 5 check inter 2000ms"
        );
        let s = Command::SetState {
            backend: "b".into(),
            server: "s".into(),
            state: ServerState::Drain,
        };
        assert_eq!(s.to_line(), "set server b/s state drain");
    }

    #[test]
    fn replies_are_checked_exactly() {
        let w = Command::SetWeight {
            backend: "b".into(),
            server: "s".into(),
            weight: 1,
        };
        assert!(w.check_reply("").is_ok());
        assert!(w.check_reply("No such server.").is_err());
        let a = Command::SetAddr {
            backend: "b".into(),
            server: "s".into(),
            addr: "10.0.0.1".parse().unwrap(),
            port: 1,
        };
        assert!(a.check_reply("IP changed from '127.0.0.1' to '10.0.0.1', port changed from '1' to '80' by 'stats socket command'").is_ok());
        assert!(a.check_reply("no need to change the addr, port changed from '1' to '18083' by 'stats socket command'").is_ok());
        assert!(a
            .check_reply("Invalid addr 'x' by 'stats socket command'")
            .is_err());
        let d = Command::DelServer {
            backend: "b".into(),
            server: "s".into(),
        };
        assert!(matches!(
            d.check_reply("Server still has connections attached to it, cannot remove it."),
            Err(ReplyError::Soft(_))
        ));
        assert!(matches!(
            d.check_reply("Only servers in maintenance mode can be deleted."),
            Err(ReplyError::Hard(_))
        ));
    }
}
