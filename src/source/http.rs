//! One HTTP(S) poll of the central API (docs/api.md, "The request"), and the TLS client behind it.
//!
//! [`HttpFetcher`] turns "what we already have" (ETag, revision) into one
//! conditional, possibly long-polling `GET`, and the answer into
//! [`Fetched`] or a [`FetchError`]. It does not parse documents and does not
//! decide timing; the loop in `poll` does.
//!
//! TLS is rustls with the *ring* provider. Trust: with `ca_file` set, only
//! the CAs in that bundle are trusted for the API (an internal API has an
//! internal CA, and trusting every public CA as well would let any of them
//! vouch for the API's name); without it, the system trust store via
//! rustls-platform-verifier (reqwest's default). The CA bundle and the client
//! certificate/key are re-read when their files change, so certificate
//! rotation needs no restart; the bearer token is re-read for every request.

use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_LENGTH, ETAG, IF_NONE_MATCH};
use reqwest::StatusCode;
use url::Url;

use super::poll::{Fetch, Fetched, Known};
use super::FetchError;
use crate::config::SourceConfig;

/// Installs rustls' *ring* crypto provider as the process default, once.
///
/// reqwest is built with `rustls-no-provider`, and its client builder panics
/// when no default provider is installed, even for plain `http://` URLs. Safe
/// to call from anywhere, any number of times; a provider installed earlier
/// by someone else is left alone.
pub fn ensure_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            // Err only means another thread won the race: fine either way.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
    });
}

/// The URL of one poll: `base` plus `wait=<secs>s&revision=<rev>` once a
/// revision has been accepted. Other query parameters are kept byte for
/// byte; stale `wait`/`revision` parameters in `base` are replaced.
pub(crate) fn poll_url(base: &Url, long_poll: Duration, revision: Option<u64>) -> Url {
    let Some(revision) = revision else {
        // Nothing to wait for: the server must answer at once.
        return base.clone();
    };
    let wait = long_poll.as_secs() + u64::from(long_poll.subsec_nanos() > 0);
    let mut query: Vec<&str> = base
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|pair| {
            let key = pair.split('=').next().unwrap_or("");
            !pair.is_empty() && key != "wait" && key != "revision"
        })
        .collect();
    let ours = format!("wait={wait}s&revision={revision}");
    query.push(&ours);
    let mut url = base.clone();
    url.set_query(Some(&query.join("&")));
    url
}

/// Most redirects followed for one poll.
const MAX_REDIRECTS: usize = 5;

/// Redirects are followed (an API behind a load balancer may move), but
/// never from `https` to anything else: that would send the poll, and the
/// document it returns, over plain text, so anyone on the path could feed
/// this host its desired state. reqwest's default policy follows that
/// downgrade; this one stops with an error naming both URLs.
fn redirect_policy() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let downgrade = attempt.previous().iter().any(|u| u.scheme() == "https")
            && attempt.url().scheme() != "https";
        if downgrade {
            let from = attempt
                .previous()
                .last()
                .map(|u| redact(u.as_str()))
                .unwrap_or_default();
            let to = redact(attempt.url().as_str());
            attempt.error(format!(
                "refusing the redirect from {from} to {to}: it leaves https"
            ))
        } else if attempt.previous().len() > MAX_REDIRECTS {
            attempt.error(format!("more than {MAX_REDIRECTS} redirects"))
        } else {
            attempt.follow()
        }
    })
}

/// `url` for logs and the status socket: a password in it is masked.
pub(crate) fn redact(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            // set_password only fails for URLs that cannot have one.
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

/// Identity of the TLS files (path, mtime, size) the current client was built from.
type TlsFilesKey = Vec<(PathBuf, Option<(SystemTime, u64)>)>;

/// Polls an `http://` or `https://` URL.
pub(crate) struct HttpFetcher {
    url: Result<Url, String>,
    raw_url: String,
    cfg: SourceConfig,
    user_agent: String,
    max_bytes: usize,
    client: Option<(TlsFilesKey, reqwest::Client)>,
}

impl HttpFetcher {
    pub(crate) fn new(url: &str, cfg: SourceConfig, node_name: &str, max_bytes: usize) -> Self {
        HttpFetcher {
            url: Url::parse(url).map_err(|e| e.to_string()),
            raw_url: url.to_string(),
            cfg,
            user_agent: format!("lb-agent/{} ({node_name})", env!("CARGO_PKG_VERSION")),
            max_bytes,
            client: None,
        }
    }

    /// Whole-request timeout: a held long-poll plus the time to connect.
    fn request_timeout(&self) -> Duration {
        self.cfg.long_poll + self.cfg.connect_timeout
    }

    fn tls_files(&self) -> Vec<&Path> {
        [
            &self.cfg.ca_file,
            &self.cfg.client_cert,
            &self.cfg.client_key,
        ]
        .into_iter()
        .flatten()
        .map(PathBuf::as_path)
        .collect()
    }

    fn tls_files_key(&self) -> TlsFilesKey {
        self.tls_files()
            .into_iter()
            .map(|p| {
                let stamp = std::fs::metadata(p)
                    .ok()
                    .and_then(|m| Some((m.modified().ok()?, m.len())));
                (p.to_path_buf(), stamp)
            })
            .collect()
    }

    /// The client, (re)built when the TLS files changed since the last build.
    fn client(&mut self) -> Result<reqwest::Client, FetchError> {
        let key = self.tls_files_key();
        if let Some((built_from, client)) = &self.client {
            if *built_from == key {
                return Ok(client.clone());
            }
            tracing::info!("TLS files changed; rebuilding the API client");
        }
        let client = self.build_client()?;
        self.client = Some((key, client.clone()));
        Ok(client)
    }

    fn build_client(&self) -> Result<reqwest::Client, FetchError> {
        ensure_crypto_provider();
        let read = |p: &Path| {
            std::fs::read(p)
                .map_err(|e| FetchError::Client(format!("reading {}: {e}", p.display())))
        };
        let mut builder = reqwest::Client::builder()
            .user_agent(self.user_agent.clone())
            .connect_timeout(self.cfg.connect_timeout)
            .timeout(self.request_timeout())
            .redirect(redirect_policy());
        if let Some(ca) = &self.cfg.ca_file {
            let certs = reqwest::Certificate::from_pem_bundle(&read(ca)?).map_err(|e| {
                FetchError::Client(format!("ca_file {}: {}", ca.display(), error_chain(&e)))
            })?;
            if certs.is_empty() {
                return Err(FetchError::Client(format!(
                    "ca_file {}: no PEM certificate in it",
                    ca.display()
                )));
            }
            builder = builder.tls_certs_only(certs);
        }
        match (&self.cfg.client_cert, &self.cfg.client_key) {
            (Some(cert), Some(key)) => {
                let mut pem = read(cert)?;
                pem.push(b'\n');
                pem.extend(read(key)?);
                let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
                    FetchError::Client(format!(
                        "client_cert {} / client_key {}: {}",
                        cert.display(),
                        key.display(),
                        error_chain(&e)
                    ))
                })?;
                builder = builder.identity(identity);
            }
            (None, None) => {}
            _ => {
                return Err(FetchError::Client(
                    "client_cert and client_key must be set together".into(),
                ))
            }
        }
        builder
            .build()
            .map_err(|e| FetchError::Client(error_chain(&e)))
    }

    async fn bearer(&self) -> Result<Option<HeaderValue>, FetchError> {
        let Some(path) = &self.cfg.token_file else {
            return Ok(None);
        };
        let token_error = |reason: String| FetchError::Token {
            path: path.clone(),
            reason,
        };
        let text = tokio::fs::read_to_string(path)
            .await
            .map_err(|e| token_error(e.to_string()))?;
        let token = text.trim();
        if token.is_empty() {
            return Err(token_error("the file is empty".into()));
        }
        let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
            token_error("the token contains characters not allowed in a header".into())
        })?;
        value.set_sensitive(true);
        Ok(Some(value))
    }

    async fn fetch_once(&mut self, known: Known) -> Result<Fetched, FetchError> {
        let base = self.url.clone().map_err(|reason| FetchError::Url {
            url: redact(&self.raw_url),
            reason,
        })?;
        let client = self.client()?;
        let url = poll_url(&base, self.cfg.long_poll, known.revision);
        let mut request = client.get(url).header(ACCEPT, "application/json");
        if let Some(etag) = &known.etag {
            if let Ok(v) = HeaderValue::from_str(etag) {
                request = request.header(IF_NONE_MATCH, v);
            }
        }
        if let Some(token) = self.bearer().await? {
            request = request.header(AUTHORIZATION, token);
        }
        let timeout = self.request_timeout();
        let response = request.send().await.map_err(|e| classify(&e, timeout))?;
        match response.status() {
            StatusCode::OK => {
                let etag = response
                    .headers()
                    .get(ETAG)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let raw = read_body(response, self.max_bytes, timeout).await?;
                Ok(Fetched::Document { raw, etag })
            }
            StatusCode::NOT_MODIFIED => Ok(Fetched::NotModified),
            status => {
                // A few bytes of the body usually say why (proxy error page,
                // "invalid token", ...); never more.
                let body = read_prefix(response, 1024).await;
                let snippet: String = String::from_utf8_lossy(&body)
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(200)
                    .collect();
                Err(FetchError::Status {
                    status: status.as_u16(),
                    reason: status.canonical_reason().unwrap_or("").to_string(),
                    body: snippet.trim().to_string(),
                })
            }
        }
    }
}

impl Fetch for HttpFetcher {
    fn fetch(
        &mut self,
        known: Known,
    ) -> impl std::future::Future<Output = Result<Fetched, FetchError>> + Send {
        self.fetch_once(known)
    }
}

/// Reads the body, refusing more than `limit` bytes.
async fn read_body(
    mut response: reqwest::Response,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, FetchError> {
    let declared = response
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(FetchError::TooLarge { limit });
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| classify(&e, timeout))? {
        if body.len() + chunk.len() > limit {
            return Err(FetchError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// At most `max` bytes of an error answer's body (for the error message).
async fn read_prefix(mut response: reqwest::Response, max: usize) -> Bytes {
    let mut body = BytesMut::new();
    while body.len() < max {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let take = chunk.len().min(max - body.len());
                body.extend_from_slice(&chunk[..take]);
            }
            _ => break,
        }
    }
    body.freeze()
}

fn classify(e: &reqwest::Error, timeout: Duration) -> FetchError {
    if e.is_timeout() {
        FetchError::Timeout(timeout)
    } else if e.is_connect() {
        FetchError::Connect(error_chain(e))
    } else {
        FetchError::Request(error_chain(e))
    }
}

/// An error and its sources, joined with ": " (reqwest's own Display hides
/// the useful part, e.g. "Connection refused" or the TLS alert).
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let text = err.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = err.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn no_long_poll_parameters_before_a_revision_is_known() {
        let base = url("https://api.example.net/v1/groups/blue/config?format=json");
        assert_eq!(poll_url(&base, Duration::from_secs(30), None), base);
    }

    #[test]
    fn long_poll_parameters_are_appended_and_the_query_kept() {
        let d = Duration::from_secs(30);
        assert_eq!(
            poll_url(&url("https://a.example/v1/config"), d, Some(1042)).as_str(),
            "https://a.example/v1/config?wait=30s&revision=1042"
        );
        assert_eq!(
            poll_url(&url("https://a.example/c?format=json&x=a%20b"), d, Some(7)).as_str(),
            "https://a.example/c?format=json&x=a%20b&wait=30s&revision=7"
        );
        // Stale parameters in the configured URL are replaced, not duplicated.
        assert_eq!(
            poll_url(&url("http://a/c?wait=5s&revision=1&k=v"), d, Some(2)).as_str(),
            "http://a/c?k=v&wait=30s&revision=2"
        );
        // Sub-second remainders round up: never ask for less than configured.
        assert_eq!(
            poll_url(&url("http://a/c"), Duration::from_millis(1500), Some(2)).as_str(),
            "http://a/c?wait=2s&revision=2"
        );
    }

    #[test]
    fn passwords_are_masked() {
        assert_eq!(
            redact("https://u:secret@a.example/c"),
            "https://u:***@a.example/c"
        );
        assert_eq!(redact("https://a.example/c"), "https://a.example/c");
        assert_eq!(redact("not a url"), "not a url");
    }

    /// The installed default is *ring*, a second call keeps it (the same
    /// provider, not a new one), and what the clients need builds from it.
    #[test]
    fn crypto_provider_install_is_idempotent() {
        ensure_crypto_provider();
        let first = rustls::crypto::CryptoProvider::get_default()
            .expect("a default provider after ensure_crypto_provider")
            .clone();
        ensure_crypto_provider();
        let second = rustls::crypto::CryptoProvider::get_default().expect("still installed");
        assert!(
            std::sync::Arc::ptr_eq(&first, second),
            "the provider was replaced"
        );
        let suites = |p: &rustls::crypto::CryptoProvider| -> Vec<String> {
            p.cipher_suites
                .iter()
                .map(|s| format!("{:?}", s.suite()))
                .collect()
        };
        assert_eq!(
            suites(&first),
            suites(&rustls::crypto::ring::default_provider()),
            "the default provider is not ring's"
        );
        let tls = rustls::ClientConfig::builder_with_provider(first.clone())
            .with_safe_default_protocol_versions();
        assert!(tls.is_ok(), "no TLS client config from it: {:?}", tls.err());
        let client = reqwest::Client::builder().build();
        assert!(client.is_ok(), "reqwest client: {:?}", client.err());
    }
}
