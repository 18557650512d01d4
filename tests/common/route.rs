//! Reading a namespace's kernel routing table, where every anycast claim is
//! settled: `ip route show <addr>` parsed into nexthops, and `ip monitor
//! route` time-stamped line by line.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::netns::Netns;

/// Parses `ip route show <addr>`: a single-path route names its gateway on
/// the route line, a multipath route lists `nexthop` lines. Each nexthop
/// reads `via <gw> dev <if>`.
pub fn parse_nexthops(out: &str) -> Vec<String> {
    let via = |l: &str| -> Option<String> {
        let w: Vec<&str> = l.split_whitespace().collect();
        let i = w.iter().position(|x| *x == "via")?;
        let d = w.iter().position(|x| *x == "dev")?;
        Some(format!("via {} dev {}", w.get(i + 1)?, w.get(d + 1)?))
    };
    let hops: Vec<String> = out
        .lines()
        .filter(|l| l.trim_start().starts_with("nexthop"))
        .filter_map(via)
        .collect();
    if !hops.is_empty() {
        return hops;
    }
    out.lines().take(1).filter_map(via).collect()
}

/// Nexthops of `addr` in `ns`'s kernel table, right now (blocking).
pub fn nexthops(ns: &str, addr: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["-n", ns, "route", "show", addr])
        .stdin(Stdio::null())
        .output()
        .expect("ip route show");
    assert!(
        out.status.success(),
        "ip -n {ns} route show {addr}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_nexthops(&String::from_utf8_lossy(&out.stdout))
}

/// `ip -n <ns> monitor route`, read on a thread; every line time-stamped on
/// arrival. Event-driven, so it catches a change that polling `ip route
/// show` (about 4 ms per call) could miss, and times it precisely.
pub struct RouteMonitor {
    child: Child,
    rx: mpsc::Receiver<(SystemTime, String)>,
}

impl RouteMonitor {
    pub fn start(ns: &Netns) -> RouteMonitor {
        let mut child = Command::new("ip")
            .args(["-n", ns.name(), "monitor", "route"])
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send((SystemTime::now(), line)).is_err() {
                    break;
                }
            }
        });
        // `ip monitor` needs a moment to subscribe.
        std::thread::sleep(Duration::from_millis(100));
        RouteMonitor { child, rx }
    }

    /// Forgets every line received so far.
    pub fn drain(&self) {
        while self.rx.try_recv().is_ok() {}
    }

    /// Time of the first line about `addr` (address without length), bounded.
    pub fn next_change(&self, addr: &str, limit: Duration) -> Option<(SystemTime, String)> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.rx.recv_timeout(left) {
                Ok((t, line)) if line.contains(addr) => return Some((t, line)),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    /// Every line received so far that deletes the route to `addr`
    /// (`Deleted <addr> ...`), consumed.
    pub fn deletions(&self, addr: &str) -> Vec<(SystemTime, String)> {
        let mut out = Vec::new();
        while let Ok((t, line)) = self.rx.try_recv() {
            let deleted = line
                .strip_prefix("Deleted ")
                .and_then(|rest| rest.split_whitespace().next())
                == Some(addr);
            if deleted {
                out.push((t, line));
            }
        }
        out
    }
}

impl Drop for RouteMonitor {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}
