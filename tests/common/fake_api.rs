//! A scripted fake of the central config API, on a real socket.
//!
//! A test lists the requests it expects, in order, each with matchers
//! (method, path, query parameters, headers) and the reply to give (status,
//! body, headers, gzip, a delay, or "hold until released" for long-poll).
//! The server records every request; `finish()` (or dropping the server)
//! fails the test if an expected request never came, if an unexpected one
//! arrived, or if a request did not match its step. A mismatching request
//! still gets its step's reply, so the test runs on and `finish()` reports
//! every mismatch at once.
//!
//! Part of the test harness module (`tests/common/mod.rs`).

use std::collections::VecDeque;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use axum::Router;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

/// Path the fake serves the document on.
pub const PATH: &str = "/v1/groups/blue/config";

/// How a header must look.
#[derive(Debug, Clone)]
enum HeaderMatch {
    Equals(String),
    Contains(String),
    Absent,
}

/// One expected request and the reply to it.
pub struct Step {
    label: String,
    method: Method,
    path: String,
    query: Vec<(String, Option<String>)>,
    headers: Vec<(String, HeaderMatch)>,
    reply: Option<Reply>,
}

impl Step {
    /// An expected `GET` of [`PATH`]; `label` names it in failure messages.
    pub fn get(label: &str) -> Step {
        Step {
            label: label.to_string(),
            method: Method::GET,
            path: PATH.to_string(),
            query: Vec::new(),
            headers: Vec::new(),
            reply: None,
        }
    }

    /// Query parameter `key` must equal `value`.
    pub fn query(mut self, key: &str, value: &str) -> Step {
        self.query.push((key.into(), Some(value.into())));
        self
    }

    /// Query parameter `key` must be absent.
    pub fn no_query(mut self, key: &str) -> Step {
        self.query.push((key.into(), None));
        self
    }

    /// Long-poll parameters for `revision`, with the default 30 s wait.
    pub fn long_poll(self, revision: u64) -> Step {
        self.query("wait", "30s")
            .query("revision", &revision.to_string())
    }

    /// No long-poll parameters (first request).
    pub fn no_long_poll(self) -> Step {
        self.no_query("wait").no_query("revision")
    }

    /// Header `name` must equal `value`.
    pub fn header(mut self, name: &str, value: &str) -> Step {
        self.headers
            .push((name.to_ascii_lowercase(), HeaderMatch::Equals(value.into())));
        self
    }

    /// Header `name` must contain `part`.
    pub fn header_contains(mut self, name: &str, part: &str) -> Step {
        self.headers.push((
            name.to_ascii_lowercase(),
            HeaderMatch::Contains(part.into()),
        ));
        self
    }

    /// Header `name` must be absent.
    pub fn no_header(mut self, name: &str) -> Step {
        self.headers
            .push((name.to_ascii_lowercase(), HeaderMatch::Absent));
        self
    }

    pub fn reply(mut self, reply: Reply) -> Step {
        self.reply = Some(reply);
        self
    }

    /// Every mismatch between this step and a request.
    fn mismatches(
        &self,
        method: &Method,
        uri: &axum::http::Uri,
        headers: &HeaderMap,
    ) -> Vec<String> {
        let mut out = Vec::new();
        if method != self.method {
            out.push(format!("method {method}, expected {}", self.method));
        }
        if uri.path() != self.path {
            out.push(format!("path {:?}, expected {:?}", uri.path(), self.path));
        }
        let pairs: Vec<(String, String)> =
            url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
                .into_owned()
                .collect();
        for (key, want) in &self.query {
            let got: Vec<&String> = pairs
                .iter()
                .filter(|(k, _)| k == key)
                .map(|(_, v)| v)
                .collect();
            match want {
                Some(v) if got != [v] => out.push(format!("query {key}={got:?}, expected [{v:?}]")),
                None if !got.is_empty() => {
                    out.push(format!("query {key}={got:?}, expected absent"))
                }
                _ => {}
            }
        }
        for (name, m) in &self.headers {
            let got: Option<&str> = headers.get(name.as_str()).and_then(|v| v.to_str().ok());
            let ok = match (m, got) {
                (HeaderMatch::Equals(v), Some(g)) => g == v,
                (HeaderMatch::Contains(v), Some(g)) => g.contains(v.as_str()),
                (HeaderMatch::Absent, None) => true,
                _ => false,
            };
            if !ok {
                out.push(format!("header {name}: {got:?}, expected {m:?}"));
            }
        }
        out
    }
}

/// When a reply is sent.
enum Hold {
    /// After `Reply::delay`.
    No,
    /// When the test calls [`Release::release`] (or the server stops).
    Until(oneshot::Receiver<()>),
    /// Never (until the server stops): the poller's last, idle long-poll.
    Forever,
}

/// The answer to one step.
pub struct Reply {
    status: u16,
    body: Vec<u8>,
    headers: Vec<(String, String)>,
    gzip: bool,
    delay: Duration,
    hold: Hold,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            body: Vec::new(),
            headers: Vec::new(),
            gzip: false,
            delay: Duration::ZERO,
            hold: Hold::No,
        }
    }

    /// `200` with a JSON document.
    pub fn json(body: &str) -> Reply {
        Reply::status(200)
            .body(body)
            .header("content-type", "application/json")
    }

    pub fn not_modified() -> Reply {
        Reply::status(304)
    }

    /// A request the server holds until it is shut down (an idle long-poll).
    pub fn idle() -> Reply {
        let mut r = Reply::status(503);
        r.hold = Hold::Forever;
        r
    }

    pub fn body(mut self, body: &str) -> Reply {
        self.body = body.as_bytes().to_vec();
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn etag(self, etag: &str) -> Reply {
        self.header("etag", etag)
    }

    /// Send the body gzip-compressed, with `Content-Encoding: gzip`.
    pub fn gzip(mut self) -> Reply {
        self.gzip = true;
        self
    }

    pub fn delay(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }

    /// Hold the reply until the returned [`Release`] is released.
    pub fn held(mut self) -> (Reply, Release) {
        let (tx, rx) = oneshot::channel();
        self.hold = Hold::Until(rx);
        (self, Release(tx))
    }
}

/// Releases a held reply (a "publish" on a long-polling server).
pub struct Release(oneshot::Sender<()>);

impl Release {
    /// Releases the reply; returns the instant just before, for latency measurements.
    pub fn release(self) -> Instant {
        let now = Instant::now();
        // The receiver is gone only if the server stopped: nothing to release.
        let _ = self.0.send(());
        now
    }
}

/// A request as it arrived.
#[derive(Debug, Clone)]
pub struct Arrival {
    pub at: Instant,
    pub method: Method,
    pub uri: String,
    pub headers: HeaderMap,
}

struct Inner {
    steps: VecDeque<Step>,
    expected: usize,
    arrivals: Vec<Arrival>,
    problems: Vec<String>,
}

#[derive(Clone)]
struct Shared {
    inner: Arc<Mutex<Inner>>,
    count: watch::Sender<usize>,
    stop: CancellationToken,
}

/// The running fake API.
pub struct FakeApi {
    addr: SocketAddr,
    scheme: &'static str,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
    finished: bool,
}

impl FakeApi {
    /// Serves `steps` over plain HTTP on 127.0.0.1:0.
    pub async fn start(steps: Vec<Step>) -> FakeApi {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let shared = Shared::new(steps);
        let router = router(shared.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.expect("serve");
        });
        FakeApi {
            addr,
            scheme: "http",
            shared,
            task,
            finished: false,
        }
    }

    /// Serves `steps` over HTTPS with `tls` (handshake failures are not requests).
    pub async fn start_tls(steps: Vec<Step>, tls: Arc<rustls::ServerConfig>) -> FakeApi {
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = tcp.local_addr().expect("local addr");
        let shared = Shared::new(steps);
        let router = router(shared.clone());
        let listener = TlsListener {
            tcp,
            acceptor: tokio_rustls::TlsAcceptor::from(tls),
        };
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.expect("serve");
        });
        FakeApi {
            addr,
            scheme: "https",
            shared,
            task,
            finished: false,
        }
    }

    /// The document URL (`http[s]://127.0.0.1:<port>/v1/groups/blue/config`).
    pub fn url(&self) -> String {
        format!("{}://{}{PATH}", self.scheme, self.addr)
    }

    /// All requests so far.
    pub fn arrivals(&self) -> Vec<Arrival> {
        self.shared.inner.lock().unwrap().arrivals.clone()
    }

    /// Waits until `n` requests arrived; fails the test after `timeout`.
    pub async fn wait_for_requests(&self, n: usize, timeout: Duration) {
        let mut count = self.shared.count.subscribe();
        let reached = tokio::time::timeout(timeout, count.wait_for(|c| *c >= n))
            .await
            .is_ok_and(|r| r.is_ok());
        if !reached {
            panic!(
                "waited {timeout:?} for request #{n}, got {}\n{}",
                *count.borrow(),
                self.report()
            );
        }
    }

    /// Stops the server and fails the test unless every step was requested
    /// and matched, and nothing else arrived. Returns the requests.
    pub async fn finish(mut self) -> Vec<Arrival> {
        self.finished = true;
        self.shared.stop.cancel();
        self.task.abort();
        let (clean, arrivals) = {
            let inner = self.shared.inner.lock().unwrap();
            (
                inner.problems.is_empty() && inner.steps.is_empty(),
                inner.arrivals.clone(),
            )
        };
        assert!(clean, "fake API scenario failed:\n{}", self.report());
        arrivals
    }

    /// Human-readable state of the scenario, for failure messages.
    pub fn report(&self) -> String {
        let inner = self.shared.inner.lock().unwrap();
        let mut out = format!(
            "scenario: {} of {} steps requested\n",
            inner.expected - inner.steps.len(),
            inner.expected
        );
        for (i, a) in inner.arrivals.iter().enumerate() {
            out.push_str(&format!("  request #{}: {} {}\n", i + 1, a.method, a.uri));
        }
        for p in &inner.problems {
            out.push_str(&format!("  PROBLEM: {p}\n"));
        }
        for s in &inner.steps {
            out.push_str(&format!("  MISSING: {}\n", s.label));
        }
        out
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.shared.stop.cancel();
        self.task.abort();
        if !self.finished && !std::thread::panicking() {
            panic!("FakeApi dropped without finish():\n{}", self.report());
        }
    }
}

impl Shared {
    fn new(steps: Vec<Step>) -> Shared {
        Shared {
            inner: Arc::new(Mutex::new(Inner {
                expected: steps.len(),
                steps: steps.into(),
                arrivals: Vec::new(),
                problems: Vec::new(),
            })),
            count: watch::Sender::new(0),
            stop: CancellationToken::new(),
        }
    }
}

fn router(shared: Shared) -> Router {
    Router::new().fallback(handle).with_state(shared)
}

async fn handle(State(shared): State<Shared>, request: Request) -> Response {
    let (method, uri, headers) = (
        request.method().clone(),
        request.uri().clone(),
        request.headers().clone(),
    );
    let step = {
        let mut inner = shared.inner.lock().unwrap();
        inner.arrivals.push(Arrival {
            at: Instant::now(),
            method: method.clone(),
            uri: uri.to_string(),
            headers: headers.clone(),
        });
        let n = inner.arrivals.len();
        let step = inner.steps.pop_front();
        match &step {
            None => inner
                .problems
                .push(format!("unexpected request #{n}: {method} {uri}")),
            Some(step) => {
                let bad = step.mismatches(&method, &uri, &headers);
                if !bad.is_empty() {
                    inner.problems.push(format!(
                        "request #{n} ({}) {method} {uri}: {}",
                        step.label,
                        bad.join("; ")
                    ));
                }
            }
        }
        step
    };
    shared.count.send_modify(|c| *c += 1);
    let Some(mut step) = step else {
        return plain(StatusCode::INTERNAL_SERVER_ERROR, "unexpected request");
    };
    let Some(reply) = step.reply.take() else {
        return plain(StatusCode::INTERNAL_SERVER_ERROR, "step without a reply");
    };
    tokio::time::sleep(reply.delay).await;
    match reply.hold {
        Hold::No => {}
        Hold::Until(rx) => {
            tokio::select! {
                _ = rx => {}
                _ = shared.stop.cancelled() => return plain(StatusCode::SERVICE_UNAVAILABLE, "stopping"),
            }
        }
        Hold::Forever => {
            shared.stop.cancelled().await;
            return plain(StatusCode::SERVICE_UNAVAILABLE, "stopping");
        }
    }
    let body = if reply.gzip {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(&reply.body).expect("gzip");
        enc.finish().expect("gzip")
    } else {
        reply.body
    };
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = StatusCode::from_u16(reply.status).expect("status code");
    for (name, value) in reply.headers {
        response.headers_mut().append(
            axum::http::HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            HeaderValue::from_str(&value).expect("header value"),
        );
    }
    if reply.gzip {
        response
            .headers_mut()
            .insert("content-encoding", HeaderValue::from_static("gzip"));
    }
    response
}

fn plain(status: StatusCode, text: &'static str) -> Response {
    let mut r = Response::new(Body::from(text));
    *r.status_mut() = status;
    r
}

/// TLS on top of a TCP listener for `axum::serve`. Handshakes run inline
/// (bounded by a timeout); a failed handshake is skipped, like a refused
/// connection.
struct TlsListener {
    tcp: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                // e.g. EMFILE: do not spin.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let handshake = self.acceptor.accept(tcp);
            if let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(5), handshake).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// Test PKI made with rcgen: a CA, and leaf certificates it signs.
pub mod pki {
    use std::sync::Arc;

    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

    /// A certificate authority.
    pub struct Ca {
        issuer: CertifiedIssuer<'static, KeyPair>,
    }

    /// A leaf certificate and its key, in PEM and DER.
    pub struct Leaf {
        pub cert_pem: String,
        pub key_pem: String,
        pub cert_der: CertificateDer<'static>,
        pub key_der: PrivateKeyDer<'static>,
    }

    impl Ca {
        pub fn new(name: &str) -> Ca {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            let issuer =
                CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
            Ca { issuer }
        }

        pub fn pem(&self) -> String {
            self.issuer.pem()
        }

        pub fn der(&self) -> CertificateDer<'static> {
            self.issuer.der().clone()
        }

        /// A server certificate for 127.0.0.1 and localhost.
        pub fn server(&self) -> Leaf {
            self.leaf(
                vec!["127.0.0.1".into(), "localhost".into()],
                ExtendedKeyUsagePurpose::ServerAuth,
            )
        }

        /// A client certificate named `name`.
        pub fn client(&self, name: &str) -> Leaf {
            self.leaf(vec![name.into()], ExtendedKeyUsagePurpose::ClientAuth)
        }

        fn leaf(&self, names: Vec<String>, usage: ExtendedKeyUsagePurpose) -> Leaf {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(names).unwrap();
            params.extended_key_usages = vec![usage];
            let cert = params.signed_by(&key, &self.issuer).unwrap();
            Leaf {
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
                cert_der: cert.der().clone(),
                key_der: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            }
        }
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// Server TLS config presenting `leaf`; with `client_ca`, a client
    /// certificate signed by it is required.
    pub fn server_config(leaf: &Leaf, client_ca: Option<&Ca>) -> Arc<rustls::ServerConfig> {
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                roots.add(ca.der()).unwrap();
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider(),
                )
                .build()
                .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
        };
        Arc::new(
            builder
                .with_single_cert(vec![leaf.cert_der.clone()], leaf.key_der.clone_key())
                .unwrap(),
        )
    }
}
