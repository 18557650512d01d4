//! The master CLI (`haproxy -W -S <socket>`): `show proc` and `reload`.
//!
//! In HAProxy 2.6 the master's `reload` answers nothing and the reload
//! command's exit code proves nothing, so `show proc` is the only witness of
//! a reload's outcome: the master's reload counter goes up on every attempt,
//! `[failed: N]` says whether it failed, and a new worker PID appears on
//! success. During a reload the master re-executes itself and its socket
//! refuses connections for a moment (about 1.5 s was seen), so callers retry.

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::time::timeout;

use crate::model::observed::ProcStatus;

use super::parse;

/// Why a master-CLI exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    #[error("connecting to master socket {path}: {source}")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("master socket I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("master socket: no answer within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Parse(#[from] parse::ParseError),
}

/// Client of the master CLI: one connection per command (the master closes it).
#[derive(Debug, Clone)]
pub struct MasterClient {
    pub path: PathBuf,
    pub timeout: Duration,
}

impl MasterClient {
    pub fn new(path: impl Into<PathBuf>, timeout: Duration) -> MasterClient {
        MasterClient {
            path: path.into(),
            timeout,
        }
    }

    async fn exchange(&self, line: &str) -> Result<String, MasterError> {
        let fut = async {
            let mut s =
                UnixStream::connect(&self.path)
                    .await
                    .map_err(|source| MasterError::Connect {
                        path: self.path.clone(),
                        source,
                    })?;
            s.write_all(format!("{line}\n").as_bytes()).await?;
            // The master keeps the connection open until it sees our end of input.
            s.shutdown().await?;
            let mut out = Vec::new();
            s.read_to_end(&mut out).await?;
            Ok::<_, MasterError>(String::from_utf8_lossy(&out).into_owned())
        };
        timeout(self.timeout, fut)
            .await
            .map_err(|_| MasterError::Timeout(self.timeout))?
    }

    /// `show proc`, parsed.
    pub async fn show_proc(&self) -> Result<ProcStatus, MasterError> {
        let text = self.exchange("show proc").await?;
        Ok(parse::show_proc(&text)?)
    }

    /// Asks the master to reload (asynchronous in 2.6: confirm with [`show_proc`](Self::show_proc)).
    pub async fn reload(&self) -> Result<(), MasterError> {
        self.exchange("reload").await.map(|_| ())
    }
}
