//! Test harness: real `etcd` members (Debian's etcd-server 3.4) on loopback
//! ports with temp data dirs, killed by PID on drop; a TCP "cable" between
//! the agent and a member that a test can cut (a network fault, not a fake
//! etcd); and small write helpers over the etcd-client crate.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, Txn, TxnOp};

/// True when `etcd` is installed; skips `test` otherwise ([`super::skip`]).
pub fn available(test: &str) -> bool {
    let ok = Command::new("etcd")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        super::skip::skip(
            test,
            "etcd not installed; apt-get install -y etcd-server etcd-client (.ci/run does)",
        );
    }
    ok
}

/// A free loopback port (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One running member.
pub struct Member {
    pub name: String,
    pub client_port: u16,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Member {
    /// `127.0.0.1:port`, the agent's endpoint spelling.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// SIGKILL and reap (bounded).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A cluster of 1 or more members.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub members: Vec<Member>,
}

impl Cluster {
    /// Starts `n` members and waits until every one answers (bounded).
    pub async fn start(n: usize) -> Cluster {
        Self::start_on(n, None).await
    }

    /// [`Cluster::start`] with member 0's client port fixed.
    pub async fn start_on(n: usize, first_port: Option<u16>) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<(u16, u16)> = (0..n)
            .map(|i| {
                let c = if i == 0 {
                    first_port.unwrap_or_else(free_port)
                } else {
                    free_port()
                };
                (c, free_port())
            })
            .collect();
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, p))| format!("m{i}=http://127.0.0.1:{p}"))
            .collect();
        let initial = initial.join(",");
        let mut members = Vec::new();
        for (i, (c, p)) in ports.iter().enumerate() {
            let name = format!("m{i}");
            let log = dir.path().join(format!("{name}.log"));
            let out = std::fs::File::create(&log).unwrap();
            let child = Command::new("etcd")
                .args(["--name", &name])
                .arg("--data-dir")
                .arg(dir.path().join(&name))
                .args(["--listen-client-urls", &format!("http://127.0.0.1:{c}")])
                .args(["--advertise-client-urls", &format!("http://127.0.0.1:{c}")])
                .args(["--listen-peer-urls", &format!("http://127.0.0.1:{p}")])
                .args([
                    "--initial-advertise-peer-urls",
                    &format!("http://127.0.0.1:{p}"),
                ])
                .args(["--initial-cluster", &initial])
                .args(["--initial-cluster-state", "new"])
                .args([
                    "--initial-cluster-token",
                    &format!("lbtest-{}", std::process::id()),
                ])
                .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
                // A 20k-server group published in one transaction.
                .args(["--max-txn-ops", "100000", "--max-request-bytes", "67108864"])
                .args(["--logger", "zap", "--log-outputs", "stderr"])
                .stdin(Stdio::null())
                .stdout(out.try_clone().unwrap())
                .stderr(out)
                .spawn()
                .expect("spawning etcd");
            members.push(Member {
                name,
                client_port: *c,
                child: Some(child),
                log,
            });
        }
        let cluster = Cluster { dir, members };
        for m in &cluster.members {
            cluster.wait_ready(&m.endpoint()).await;
        }
        cluster
    }

    async fn wait_ready(&self, endpoint: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = String::new();
        while Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_secs(2), async {
                let mut c = Client::connect([format!("http://{endpoint}")], None).await?;
                c.get("lbtest-ready", None).await
            })
            .await
            {
                Ok(Ok(_)) => return,
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "timeout".into(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("etcd {endpoint} not ready in 30 s: {last}\n{}", self.logs());
    }

    /// Every member's endpoint.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::endpoint).collect()
    }

    /// A client balanced over the members still running.
    pub async fn client(&self) -> Client {
        let urls: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.child.is_some())
            .map(|m| format!("http://{}", m.endpoint()))
            .collect();
        Client::connect(urls, None).await.unwrap()
    }

    /// The last lines of every member's log.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for m in &self.members {
            let text = std::fs::read_to_string(&m.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            out.push_str(&format!("--- {} ---\n", m.name));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// The member whose endpoint is `endpoint`.
    pub fn member_mut(&mut self, endpoint: &str) -> &mut Member {
        self.members
            .iter_mut()
            .find(|m| m.endpoint() == endpoint)
            .unwrap_or_else(|| panic!("no member {endpoint}"))
    }
}

/// A single member serving clients over TLS only, requiring a client
/// certificate signed by the CA in `ca` (PEM files in the cluster's dir).
pub async fn start_tls(
    cert: &Path,
    key: &Path,
    ca: &Path,
    creds: &lb_agent::source::etcd::Credentials,
) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let (c, p) = (free_port(), free_port());
    let log = dir.path().join("m0.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new("etcd")
        .args(["--name", "m0"])
        .arg("--data-dir")
        .arg(dir.path().join("m0"))
        .args(["--listen-client-urls", &format!("https://127.0.0.1:{c}")])
        .args(["--advertise-client-urls", &format!("https://127.0.0.1:{c}")])
        .args(["--listen-peer-urls", &format!("http://127.0.0.1:{p}")])
        .args([
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{p}"),
        ])
        .args(["--initial-cluster", &format!("m0=http://127.0.0.1:{p}")])
        .arg("--cert-file")
        .arg(cert)
        .arg("--key-file")
        .arg(key)
        .arg("--trusted-ca-file")
        .arg(ca)
        .arg("--client-cert-auth")
        .args(["--logger", "zap", "--log-outputs", "stderr"])
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("spawning etcd");
    let cluster = Cluster {
        dir,
        members: vec![Member {
            name: "m0".into(),
            client_port: c,
            child: Some(child),
            log,
        }],
    };
    let endpoint = cluster.members[0].endpoint();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    while Instant::now() < deadline {
        let probe = tokio::time::timeout(Duration::from_secs(2), async {
            let mut c =
                lb_agent::source::etcd::connect(std::slice::from_ref(&endpoint), creds).await?;
            c.get("lbtest-ready", None).await.map_err(|e| e.to_string())
        })
        .await;
        match probe {
            Ok(Ok(_)) => return cluster,
            Ok(Err(e)) => last = e,
            Err(_) => last = "timeout".into(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("TLS etcd not ready: {last}\n{}", cluster.logs());
}

/// Puts `kvs` (keys relative to `prefix`) and deletes `dels` in one
/// transaction; returns its revision.
pub async fn txn(
    client: &mut Client,
    prefix: &str,
    kvs: &[(String, String)],
    dels: &[String],
) -> i64 {
    let mut ops: Vec<TxnOp> = kvs
        .iter()
        .map(|(k, v)| TxnOp::put(format!("{prefix}{k}"), v.as_bytes().to_vec(), None))
        .collect();
    ops.extend(
        dels.iter()
            .map(|k| TxnOp::delete(format!("{prefix}{k}"), None)),
    );
    let r = client
        .txn(Txn::new().and_then(ops))
        .await
        .expect("etcd txn");
    r.header().unwrap().revision()
}

/// A TCP forwarder `127.0.0.1:<port>` → `target` whose connections a test
/// can cut (and refuse) at will.
pub struct Cable {
    pub port: u16,
    /// Bytes forwarded from the target to the client (what the agent received).
    pub received: Arc<std::sync::atomic::AtomicU64>,
    up: Arc<AtomicBool>,
    generation: Arc<tokio::sync::watch::Sender<u64>>,
    task: tokio::task::JoinHandle<()>,
}

impl Cable {
    pub async fn start(target: SocketAddr) -> Cable {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let (gen_tx, _) = tokio::sync::watch::channel(0u64);
        let generation = Arc::new(gen_tx);
        let (up2, gen2) = (up.clone(), generation.clone());
        let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let received2 = received.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                if !up2.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let mut cut = gen2.subscribe();
                let received = received2.clone();
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let Ok(outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut ci, mut co) = inbound.into_split();
                    let (mut si, mut so) = outbound.into_split();
                    let up = async move {
                        let _ = tokio::io::copy(&mut ci, &mut so).await;
                    };
                    let down = async move {
                        let mut buf = vec![0u8; 64 << 10];
                        loop {
                            let n = match si.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            received.fetch_add(n as u64, Ordering::SeqCst);
                            if co.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    };
                    tokio::select! {
                        _ = async { tokio::join!(up, down) } => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Cable {
            port,
            received,
            up,
            generation,
            task,
        }
    }

    /// `127.0.0.1:port`.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Accepts connections again.
    pub fn mend(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Cable {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Path helper for logs in panics.
pub fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}
