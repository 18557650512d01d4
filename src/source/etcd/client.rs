//! Connecting to etcd: endpoints, TLS and authentication, shared by the
//! agent's watcher and `lb-agent publish`/`export`.
//!
//! TLS is used when a CA or a client certificate is configured (the
//! endpoints are then `https://`); the password is read from a file at every
//! connect so it can be rotated without a restart.

use std::path::PathBuf;
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

use crate::config::SourceConfig;

/// How to reach and authenticate to etcd.
#[derive(Debug, Clone, PartialEq)]
pub struct Credentials {
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    /// Connect timeout per endpoint.
    pub connect_timeout: Duration,
}

impl Default for Credentials {
    /// Plain text, no user, a 5 s connect timeout.
    fn default() -> Self {
        Credentials {
            ca_file: None,
            client_cert: None,
            client_key: None,
            username: None,
            password_file: None,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

impl Credentials {
    /// The `[source]` keys that apply to etcd.
    pub fn from_config(cfg: &SourceConfig) -> Self {
        Credentials {
            ca_file: cfg.ca_file.clone(),
            client_cert: cfg.client_cert.clone(),
            client_key: cfg.client_key.clone(),
            username: cfg.username.clone(),
            password_file: cfg.password_file.clone(),
            connect_timeout: cfg.connect_timeout,
        }
    }

    /// True when the endpoints are spoken to over TLS.
    pub fn tls(&self) -> bool {
        self.ca_file.is_some() || self.client_cert.is_some()
    }

    fn options(&self) -> Result<ConnectOptions, String> {
        let mut o = ConnectOptions::new()
            .with_connect_timeout(self.connect_timeout)
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5))
            .with_require_leader(true);
        if let (Some(user), Some(file)) = (&self.username, &self.password_file) {
            let password = std::fs::read_to_string(file)
                .map_err(|e| format!("password_file {}: {e}", file.display()))?;
            o = o.with_user(user.clone(), password.trim().to_string());
        }
        if self.tls() {
            let read = |p: &PathBuf| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
            let mut tls = TlsOptions::new();
            if let Some(ca) = &self.ca_file {
                tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
            }
            if let (Some(cert), Some(key)) = (&self.client_cert, &self.client_key) {
                tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            o = o.with_tls(tls);
        }
        Ok(o)
    }
}

/// Connects to `endpoints` (`host:port`). With several, etcd-client
/// balances over them (what publish and export want); the watcher passes one.
pub async fn connect(endpoints: &[String], creds: &Credentials) -> Result<Client, String> {
    let scheme = if creds.tls() { "https" } else { "http" };
    let urls: Vec<String> = endpoints
        .iter()
        .map(|e| format!("{scheme}://{e}"))
        .collect();
    let options = creds.options()?;
    Client::connect(urls, Some(options))
        .await
        .map_err(|e| e.to_string())
}
