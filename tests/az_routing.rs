//! Issue 10 end to end: AZ-aware routing through the real `lb-agent`,
//! HAProxy 2.6 and BIRD 2 in the anycast lab (`tests/common/lab.rs`).
//!
//! Topology: a ToR (BIRD, ECMP with the L4 hash) in front of two LBs, lb1
//! in az1 and lb2 in az2 (`[node] az`); each LB runs six backends, two per
//! zone (`az1-a@lb1` ...: every LB has its own copy of each server, so the
//! answer says both the zone and which LB served); a client namespace with
//! addresses in three subnets the document maps to the zones (250 in
//! 10.101.0.0/16 → az1, 20 each in 10.102.0.0/16 → az2, 10.103.0.0/16 → az3).
//! The pool routes by AZ with source stickiness; server checks every 300 ms,
//! rise 1, fall 1.
//!
//! Measured and printed (`--nocapture`), asserted only on the properties
//! issue 10 names:
//! 1. all healthy: ≥ 99% of each zone's clients' requests in their zone;
//! 2. az1's servers down (listeners closed on both LBs): az1's clients
//!    split az2/az3 at 50/50 ± 10 over ≥ 1,000 requests, each client on one
//!    zone (across both LBs), the switch time printed;
//! 3. az1 evacuated by a document change: traffic leaves az1 (within a
//!    generous bound; the figure printed) with 0 reloads on both LBs;
//! 4. az3's client subnet remapped to az2 in the document: 0 reloads;
//! 5. lb1 (az1) withdrawn: az1's clients reach lb2 and are still served by
//!    az1's servers.

#![allow(clippy::disallowed_methods)] // waits bounded in real time (docs/testing.md)

mod common;
use common::{lab, netns};

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use lab::{ms, Lab, LabOptions, NsBackend, VIP, VIP_NET};
use netns::skip_without_netns_loudly;

const ZONES: [&str; 3] = ["az1", "az2", "az3"];
const CHECK_INTERVAL: Duration = Duration::from_millis(300);
const AZ1_CLIENTS: u32 = 250;
const OTHER_CLIENTS: u32 = 20;

/// The client addresses of `zone` (10.10N.0.k).
fn clients(zone: usize, n: u32) -> Vec<IpAddr> {
    (1..=n)
        .map(|k| {
            format!("10.10{}.{}.{}", zone + 1, k / 250, k % 250 + 1)
                .parse()
                .unwrap()
        })
        .collect()
}

/// One HTTP request from `src` to the VIP; the backend's name, or why not.
fn request(src: IpAddr) -> Result<String, String> {
    request_within(src, Duration::from_secs(3))
}

/// [`request`] giving up after `limit` (a probe that must not wait out
/// HAProxy's connect retries to a dead server).
fn request_within(src: IpAddr, limit: Duration) -> Result<String, String> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).map_err(|e| e.to_string())?;
    s.bind(&SocketAddr::new(src, 0).into())
        .map_err(|e| format!("bind {src}: {e}"))?;
    let vip: SocketAddr = format!("{VIP}:80").parse().unwrap();
    s.connect_timeout(&vip.into(), Duration::from_secs(2))
        .map_err(|e| format!("connect: {e}"))?;
    let mut s: std::net::TcpStream = s.into();
    s.set_read_timeout(Some(limit)).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\nHost: www\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    let status = out.split(' ').nth(1).unwrap_or("");
    if status != "200" {
        return Err(format!("status {status}"));
    }
    Ok(out
        .rsplit("\r\n\r\n")
        .next()
        .unwrap_or("")
        .trim()
        .to_string())
}

/// Runs `f` on a blocking thread inside the client namespace (the
/// backends' tasks keep running on the test's runtime meanwhile).
async fn in_client<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    tokio::task::spawn_blocking(move || {
        let fd = std::fs::File::open(&path).unwrap();
        nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .await
    .unwrap()
}

/// `rounds` requests from every address: (client, served-by) pairs and failures.
async fn traffic(ns: &str, srcs: Vec<IpAddr>, rounds: u32) -> (Vec<(IpAddr, String)>, usize) {
    in_client(ns, move || {
        let mut ok = Vec::new();
        let mut failed = 0;
        for _ in 0..rounds {
            for &src in &srcs {
                match request(src) {
                    Ok(b) => ok.push((src, b)),
                    Err(_) => failed += 1,
                }
            }
        }
        (ok, failed)
    })
    .await
}

/// Polls from `src` (bounded) until `pred` holds for the answer; returns
/// when the first such request was *sent*, after the start of the poll
/// (a request sent to a dead server just before the switch waits out
/// HAProxy's connect retries, about 1 s each, and must not count as the
/// switch time: probes give up after 100 ms), and the failed or abandoned
/// requests on the way.
async fn wait_served(
    ns: &str,
    src: IpAddr,
    limit: Duration,
    pred: fn(&str) -> bool,
) -> (Duration, u32) {
    in_client(ns, move || {
        let t0 = Instant::now();
        let mut failed = 0;
        loop {
            let sent = t0.elapsed();
            match request_within(src, Duration::from_millis(100)) {
                Ok(b) if pred(&b) => return (sent, failed),
                Ok(_) => {}
                Err(_) => failed += 1,
            }
            assert!(t0.elapsed() < limit, "{src}: not switched within {limit:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    })
    .await
}

fn zone_of(body: &str) -> &str {
    &body[..3]
}

fn lb_of(body: &str) -> &str {
    body.rsplit('@').next().unwrap_or("")
}

/// Share of requests per zone, in percent.
fn shares(ok: &[(IpAddr, String)]) -> BTreeMap<String, f64> {
    let mut n: BTreeMap<String, usize> = BTreeMap::new();
    for (_, b) in ok {
        *n.entry(zone_of(b).to_string()).or_default() += 1;
    }
    n.into_iter()
        .map(|(z, k)| (z, 100.0 * k as f64 / ok.len().max(1) as f64))
        .collect()
}

struct AzLab {
    lab: Lab,
    backends: Vec<Vec<NsBackend>>,
    revision: u64,
}

impl AzLab {
    fn document(&self, lb: usize, evacuated: &[&str], az3_clients_to: &str) -> Value {
        let servers: Vec<Value> = self.backends[lb]
            .iter()
            .map(|b| {
                json!({"name": b.name.split('@').next().unwrap(), "address": "127.0.0.1",
                       "port": b.port, "az": &b.name[..3]})
            })
            .collect();
        json!({
            "schema": 1, "revision": self.revision, "group": "blue",
            "availability_zones": {
                "zones": ZONES, "evacuated": evacuated,
                "client_subnets": {"10.101.0.0/16": "az1", "10.102.0.0/16": "az2",
                                   "10.103.0.0/16": az3_clients_to}
            },
            "vips": [{"address": VIP_NET}],
            "frontends": [{"name": "web", "bind": [format!("{VIP}:80")], "mode": "http",
                           "default_pool": "www"}],
            "pools": [{"name": "www", "mode": "http", "routing": "az", "stickiness": "source",
                       // A typo (`timeouts` is the field): applied without it, and reported.
                       "timeout": "5s",
                       "check": {"type": "http", "path": "/", "interval": "300ms", "rise": 1, "fall": 1},
                       "servers": servers}]
        })
    }

    fn write_documents(&mut self, evacuated: &[&str], az3_clients_to: &str) {
        self.revision += 1;
        for (i, lb) in self.lab.lbs.iter().enumerate() {
            let tmp = lb.desired.with_extension("tmp");
            std::fs::write(
                &tmp,
                self.document(i, evacuated, az3_clients_to).to_string(),
            )
            .unwrap();
            std::fs::rename(&tmp, &lb.desired).unwrap();
        }
    }

    /// (reloads, worker pid) of each LB's HAProxy, from `lb-agent status --json`.
    fn reloads(&self) -> Vec<(u64, Option<u64>)> {
        self.lab
            .lbs
            .iter()
            .map(|lb| {
                let (code, out, err) = lb.cli(&["status", "--json"]);
                assert_eq!(code, 0, "status: {err}");
                let v: Value = serde_json::from_str(&out).unwrap();
                (
                    v["haproxy"]["reloads"].as_u64().unwrap(),
                    v["haproxy"]["worker_pid"].as_u64(),
                )
            })
            .collect()
    }

    /// Polls lb1's `lb-agent status` (bounded: the routes are those of the
    /// last reconcile pass, at most `verify_interval` old) until its routing
    /// line for `zone` reads `want`; returns that line of the human view.
    async fn wait_route(&self, zone: &str, want: &str) -> String {
        let t0 = Instant::now();
        loop {
            let (_, out, _) = self.lab.lbs[0].cli(&["status", "--json"]);
            let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
            let found = v["haproxy"]["az_routing"][0]["zones"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|z| z["zone"] == zone)
                .cloned();
            let arrow = found.as_ref().map(|z| {
                let to: Vec<&str> = z["to"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t.as_str().unwrap())
                    .collect();
                match z["reason"].as_str() {
                    None => format!("{zone} → {}", to.join("+")),
                    Some(r) => format!("{zone} → {} ({r})", to.join("+")),
                }
            });
            if arrow.as_deref() == Some(want) {
                let (_, human, _) = self.lab.lbs[0].cli(&["status"]);
                return human
                    .lines()
                    .find(|l| l.contains(want))
                    .unwrap_or("")
                    .to_string();
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "lb1 status never said {want:?}: {found:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits (bounded) until both agents applied the current revision.
    async fn wait_applied(&self) {
        let t0 = Instant::now();
        for lb in &self.lab.lbs {
            loop {
                let (_, out, _) = lb.cli(&["status", "--json"]);
                let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
                if v["revision"].as_u64() == Some(self.revision)
                    && v["haproxy"]["converged"] == true
                {
                    break;
                }
                assert!(
                    t0.elapsed() < Duration::from_secs(20),
                    "lb{} did not apply revision {}: {out}\n{}",
                    lb.n,
                    self.revision,
                    lab::tail(&lb.agent_logs(), 40)
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn az_routing_locality_spill_evacuation_and_cross_az() {
    if skip_without_netns_loudly("az_routing_locality_spill_evacuation_and_cross_az") {
        return;
    }
    let lab = Lab::start(LabOptions {
        lbs: 2,
        client: true,
        start_agents: false,
    })
    .await;
    let client = lab.client.as_ref().unwrap().name().to_string();
    // Client subnets: addresses on the client's link, routed by the ToR.
    let cl = lab.client.as_ref().unwrap();
    let mut batch = String::new();
    for (z, n) in [(0, AZ1_CLIENTS), (1, OTHER_CLIENTS), (2, OTHER_CLIENTS)] {
        for a in clients(z, n) {
            batch.push_str(&format!("addr add {a}/32 dev eth0\n"));
        }
        lab.tor.ip(&[
            "route",
            "add",
            &format!("10.10{}.0.0/16", z + 1),
            "via",
            "10.0.9.2",
        ]);
    }
    let batch_file = lab.dir.path().join("client-addrs.batch");
    std::fs::write(&batch_file, batch).unwrap();
    cl.ip(&["-batch", batch_file.to_str().unwrap()]);

    let mut backends = Vec::new();
    for lb in &lab.lbs {
        let mut v = Vec::new();
        for z in ZONES {
            for k in ["a", "b"] {
                v.push(NsBackend::start(&lb.ns, &format!("{z}-{k}@lb{}", lb.n)));
            }
        }
        backends.push(v);
        lb.write_agent_toml_with(|t| t.az(&format!("az{}", lb.n)));
    }
    let mut az = AzLab {
        lab,
        backends,
        revision: 100,
    };
    az.write_documents(&[], "az3");
    for lb in &mut az.lab.lbs {
        lb.start_agent();
    }
    az.lab.wait_nexthops(VIP, 2, Duration::from_secs(30)).await;
    az.wait_applied().await;
    let before = az.reloads();
    let (_, out, _) = az.lab.lbs[0].cli(&["status", "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    let warnings = &v["haproxy"]["document_warnings"];
    eprintln!("lb1 document warnings: {warnings}");
    assert!(
        warnings[0]
            .as_str()
            .is_some_and(|w| w.starts_with("pools[0].timeout: unknown field, ignored")),
        "{warnings}"
    );
    eprintln!("both LBs announce {VIP}; reloads so far (initial config): {before:?}");

    // 1. All healthy: every zone's clients stay in their zone.
    for (z, n) in [(0, AZ1_CLIENTS), (1, OTHER_CLIENTS), (2, OTHER_CLIENTS)] {
        let rounds = if z == 0 { 4 } else { 50 };
        let (ok, failed) = traffic(&client, clients(z, n), rounds).await;
        let s = shares(&ok);
        let lbs: BTreeSet<&str> = ok.iter().map(|(_, b)| lb_of(b)).collect();
        eprintln!("all healthy, {} clients: {} requests ({failed} failed), zones {s:?}, served by {lbs:?}", ZONES[z], ok.len());
        assert!(
            s.get(ZONES[z]).copied().unwrap_or(0.0) >= 99.0,
            "{} clients left their zone: {s:?}",
            ZONES[z]
        );
        assert!(ok.len() >= 1000);
    }

    // 2. az1's servers down on both LBs.
    let probe = clients(0, 1)[0];
    let t0 = Instant::now();
    for v in &mut az.backends {
        for b in v.iter_mut().filter(|b| b.name.starts_with("az1")) {
            b.close().await;
        }
    }
    let (switch, failed) = wait_served(&client, probe, Duration::from_secs(10), |b| {
        !b.starts_with("az1")
    })
    .await;
    let total = t0.elapsed();
    eprintln!(
        "az1 servers down: the first az1 probe request served outside az1 was sent {:.0} ms after the listeners closed (check interval {:.0} ms, rise/fall 1); the poll ended after {:.0} ms; {failed} failed requests meanwhile",
        ms(switch), ms(CHECK_INTERVAL), ms(total)
    );
    assert!(switch < Duration::from_secs(5), "switch took {switch:?}");
    tokio::time::sleep(CHECK_INTERVAL * 2).await; // both LBs' checks have seen it
    let (ok, failed) = traffic(&client, clients(0, AZ1_CLIENTS), 4).await;
    let s = shares(&ok);
    let mut per_client: BTreeMap<IpAddr, BTreeSet<&str>> = BTreeMap::new();
    for (c, b) in &ok {
        per_client.entry(*c).or_default().insert(zone_of(b));
    }
    let flipping = per_client.values().filter(|z| z.len() > 1).count();
    let lbs: BTreeSet<&str> = ok.iter().map(|(_, b)| lb_of(b)).collect();
    eprintln!(
        "az1 servers down: {} requests from {} az1 clients ({failed} failed): zones {s:?}; clients on more than one zone: {flipping}; served by {lbs:?}",
        ok.len(), per_client.len()
    );
    assert!(ok.len() >= 1000, "{} requests", ok.len());
    assert_eq!(s.get("az1"), None, "az1 is down: {s:?}");
    for z in ["az2", "az3"] {
        let p = s.get(z).copied().unwrap_or(0.0);
        assert!(
            (40.0..=60.0).contains(&p),
            "{z} got {p:.1}%, expected 50 ± 10: {s:?}"
        );
    }
    assert_eq!(flipping, 0, "clients flipped zones: {per_client:?}");
    let line = az
        .wait_route("az1", "az1 → az2+az3 (az1 has no usable server)")
        .await;
    eprintln!("lb1 `lb-agent status`: {line}");
    assert!(line.contains("www 0/2 healthy"), "{line}");
    for (i, v) in az.backends.iter_mut().enumerate() {
        let ns = &az.lab.lbs[i].ns;
        for b in v.iter_mut().filter(|b| b.name.starts_with("az1")) {
            b.reopen(ns);
        }
    }
    let (back, _) = wait_served(&client, probe, Duration::from_secs(10), |b| {
        b.starts_with("az1")
    })
    .await;
    eprintln!(
        "az1 servers back: the probe client in az1 again after {:.0} ms",
        ms(back)
    );
    tokio::time::sleep(CHECK_INTERVAL * 2).await;

    // 3. Evacuation by a document change: runtime only.
    let r0 = az.reloads();
    let t0 = Instant::now();
    az.write_documents(&["az1"], "az3");
    let (moved, failed) = wait_served(&client, probe, Duration::from_secs(10), |b| {
        !b.starts_with("az1")
    })
    .await;
    az.wait_applied().await;
    eprintln!(
        "az1 evacuated by a document change (file source polled every 200 ms): the first probe request served outside az1 was sent {:.0} ms after the write ({failed} failed requests; applied on both LBs after {:.0} ms)",
        ms(moved), ms(t0.elapsed())
    );
    let (ok, failed) = traffic(&client, clients(0, AZ1_CLIENTS), 1).await;
    let s = shares(&ok);
    let r1 = az.reloads();
    eprintln!("az1 evacuated: {} requests from az1 clients ({failed} failed): zones {s:?}; (reloads, worker) {r0:?} → {r1:?}", ok.len());
    assert_eq!(s.get("az1"), None, "evacuated az1 still served: {s:?}");
    assert!(moved < Duration::from_secs(5), "evacuation took {moved:?}");
    assert_eq!(r0, r1, "evacuating reloaded HAProxy");
    let line = az.wait_route("az1", "az1 → az2+az3 (az1 evacuated)").await;
    eprintln!("lb1 `lb-agent status`: {line}");
    let line = az.wait_route("az2", "az2 → az2").await;
    eprintln!("lb1 `lb-agent status`: {line}");

    // 4. A client-map change: az3's subnet now belongs to az2; and az1 back.
    let t0 = Instant::now();
    az.write_documents(&[], "az2");
    let p3 = clients(2, 1)[0];
    let (remapped, _) = wait_served(&client, p3, Duration::from_secs(10), |b| {
        b.starts_with("az2")
    })
    .await;
    az.wait_applied().await;
    let (ok, _) = traffic(&client, clients(2, OTHER_CLIENTS), 10).await;
    let s = shares(&ok);
    let r2 = az.reloads();
    eprintln!(
        "az3's client subnet remapped to az2 (and az1 back): first az3 request served in az2 sent {:.0} ms after the write ({:.0} ms to applied); zones {s:?}; (reloads, worker) {r1:?} → {r2:?}",
        ms(remapped), ms(t0.elapsed())
    );
    assert!(s.get("az2").copied().unwrap_or(0.0) >= 99.0, "{s:?}");
    assert_eq!(r1, r2, "a client-map change reloaded HAProxy");
    az.write_documents(&[], "az3");
    az.wait_applied().await;
    wait_served(&client, probe, Duration::from_secs(10), |b| {
        b.starts_with("az1")
    })
    .await;

    // 5. lb1 (az1) withdrawn: az1's clients reach lb2 (az2), served in az1.
    let (code, _, err) = az.lab.lbs[0].cli(&["drain", "--reason", "az routing test"]);
    assert_eq!(code, 0, "drain: {err}");
    let t = az.lab.wait_nexthops(VIP, 1, Duration::from_secs(10)).await;
    let (ok, failed) = traffic(&client, clients(0, AZ1_CLIENTS), 1).await;
    let s = shares(&ok);
    let lbs: BTreeSet<&str> = ok.iter().map(|(_, b)| lb_of(b)).collect();
    eprintln!(
        "lb1 withdrawn ({:.0} ms to one nexthop): {} requests from az1 clients ({failed} failed): served by {lbs:?}, zones {s:?}",
        ms(t), ok.len()
    );
    assert_eq!(lbs, BTreeSet::from(["lb2"]));
    assert!(s.get("az1").copied().unwrap_or(0.0) >= 99.0, "{s:?}");
    let total = az.reloads();
    eprintln!("reloads over the whole run (initial → end): {before:?} → {total:?}");
}
