//! `lb-agent publish --to etcd://… FILE` and `lb-agent export --from etcd://…`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::{print, Failure};
use crate::publish::{self, PublishError};
use crate::source::etcd::Credentials;

/// How to reach etcd (the `[source]` keys of the same names).
#[derive(Debug, Clone, Args)]
pub struct EtcdArgs {
    /// PEM CA bundle for etcd (enables TLS).
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for mTLS (enables TLS); needs --client-key.
    #[arg(long, requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// Client private key (PEM) for mTLS.
    #[arg(long, requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    /// etcd user name; needs --password-file.
    #[arg(long, requires = "password_file")]
    pub username: Option<String>,
    /// File holding the etcd user's password.
    #[arg(long, requires = "username")]
    pub password_file: Option<PathBuf>,
    /// Largest document handled, in bytes.
    #[arg(long, default_value_t = 64 << 20)]
    pub max_document_size: usize,
}

impl EtcdArgs {
    fn credentials(&self) -> Credentials {
        Credentials {
            ca_file: self.ca_file.clone(),
            client_cert: self.client_cert.clone(),
            client_key: self.client_key.clone(),
            username: self.username.clone(),
            password_file: self.password_file.clone(),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

fn etcd_url(s: &str) -> Result<crate::config::EtcdUrl, Failure> {
    let text = format!("[source]\nurl = {}\n", toml_string(s));
    match crate::config::parse_str(&text, "--to/--from") {
        Ok(c) => match c.source.url {
            crate::config::SourceUrl::Etcd(u) => Ok(u),
            _ => Err(Failure::usage(format!("{s}: expected an etcd:// URL"))),
        },
        Err(e) => Err(Failure::usage(
            e.0.iter()
                .map(|e| e.message.clone())
                .collect::<Vec<_>>()
                .join("; "),
        )),
    }
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    crate::source::ensure_crypto_provider();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::runtime(format!("starting the runtime: {e}")))
}

fn failure(e: PublishError) -> Failure {
    match e {
        PublishError::Invalid(m) => Failure::usage(m),
        e => Failure::runtime(e.to_string()),
    }
}

/// `lb-agent publish --to URL FILE [--dry-run]`.
pub fn publish(to: &str, file: &PathBuf, dry_run: bool, args: &EtcdArgs) -> Result<(), Failure> {
    let url = etcd_url(to)?;
    let body = std::fs::read(file)
        .map_err(|e| Failure::usage(format!("reading {}: {e}", file.display())))?;
    let report = runtime()?
        .block_on(publish::publish(
            &url,
            &args.credentials(),
            &body,
            dry_run,
            args.max_document_size,
        ))
        .map_err(failure)?;
    let mut out = String::new();
    for c in &report.changes {
        out.push_str(&format!("{c}\n"));
    }
    let n = report.changes.len();
    out.push_str(&match (report.revision, dry_run) {
        _ if n == 0 => format!(
            "no change under {} (etcd revision {})\n",
            url.prefix, report.read_revision
        ),
        (_, true) => format!(
            "dry run: {n} keys would change under {} (read at etcd revision {})\n",
            url.prefix, report.read_revision
        ),
        (Some(r), false) => format!(
            "published {n} changed keys under {} as etcd revision {r}\n",
            url.prefix
        ),
        (None, false) => format!("published {n} changed keys under {}\n", url.prefix),
    });
    print(&out)
}

/// `lb-agent export --from URL`.
pub fn export(from: &str, args: &EtcdArgs) -> Result<(), Failure> {
    let url = etcd_url(from)?;
    let doc = runtime()?
        .block_on(publish::export(
            &url,
            &args.credentials(),
            args.max_document_size,
        ))
        .map_err(failure)?;
    let mut text = serde_json::to_string_pretty(&doc).expect("a Value serialises");
    text.push('\n');
    print(&text)
}
