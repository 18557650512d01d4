//! A real BIRD 2 for integration tests.
//!
//! [`Bird::start`] writes `bird.conf` into a directory, runs
//! `bird -f -c <conf> -s <sock> -P <pid>` (optionally inside a network
//! namespace, through `ip netns exec`, which execs BIRD so the child PID is
//! BIRD's), and waits, bounded, for the control socket's `0001` greeting.
//! On drop it stops BIRD by PID: SIGTERM, then SIGKILL after a grace period.
//! A missing `bird` binary is a test failure, not a skip: the CI installs it.

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A running BIRD, stopped on drop.
#[derive(Debug)]
pub struct Bird {
    child: Option<Child>,
    /// Directory holding bird.conf, the socket, the pid file and the logs.
    pub dir: PathBuf,
    /// Control socket.
    pub socket: PathBuf,
    /// Main configuration file.
    pub config: PathBuf,
    netns: Option<String>,
}

impl Bird {
    /// Writes `config_text` to `<dir>/bird.conf` and starts BIRD on it.
    pub fn start(dir: &Path, config_text: &str, netns: Option<&str>) -> Bird {
        fs::create_dir_all(dir).unwrap();
        let config = dir.join("bird.conf");
        fs::write(&config, config_text).unwrap();
        let mut bird = Bird {
            child: None,
            dir: dir.to_path_buf(),
            socket: dir.join("bird.ctl"),
            config,
            netns: netns.map(str::to_string),
        };
        bird.spawn();
        bird
    }

    /// Starts BIRD again on the same files (after [`Bird::stop`]).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    fn spawn(&mut self) {
        assert!(
            Path::new("/usr/sbin/bird").exists() || which("bird"),
            "BIRD 2 is not installed: apt-get install -y bird2"
        );
        let _ = fs::remove_file(&self.socket);
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "bird"]);
                c
            }
            None => Command::new("bird"),
        };
        cmd.arg("-f")
            .arg("-c")
            .arg(&self.config)
            .arg("-s")
            .arg(&self.socket)
            .arg("-P")
            .arg(self.dir.join("bird.pid"))
            .stdin(Stdio::null())
            .stdout(fs::File::create(self.dir.join("bird.stdout")).unwrap())
            .stderr(fs::File::create(self.dir.join("bird.stderr")).unwrap());
        let child = cmd.spawn().expect("spawning bird");
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(10));
    }

    fn wait_ready(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "bird exited during startup ({status}); stderr: {}\nlog: {}",
                    fs::read_to_string(self.dir.join("bird.stderr")).unwrap_or_default(),
                    self.log()
                );
            }
            if let Ok(s) = UnixStream::connect(&self.socket) {
                s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
                let mut line = String::new();
                if BufReader::new(&s).read_line(&mut line).is_ok() && line.starts_with("0001 ") {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "bird did not greet on {} within {limit:?}; log: {}",
                self.socket.display(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// BIRD's PID (the child's PID).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("bird running").id()
    }

    /// Sends a signal to BIRD by PID.
    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.pid() as i32), sig).unwrap();
    }

    /// Stops BIRD: SIGTERM, then SIGKILL after 3 s; reaps it.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = Pid::from_raw(child.id() as i32);
        // A SIGSTOPped BIRD ignores SIGTERM until continued.
        let _ = kill(pid, Signal::SIGCONT);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = kill(pid, Signal::SIGKILL);
        let _ = child.wait();
    }

    /// BIRD's log file, if the config logs to `<dir>/bird.log`.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("bird.log")).unwrap_or_default()
    }

    /// `log "<dir>/bird.log" all;`: a line to put in a test config.
    pub fn log_line(dir: &Path) -> String {
        format!("log \"{}\" all;\n", dir.join("bird.log").display())
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        self.stop();
    }
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

/// BGP timers of the lab notes, with a hold time long enough that a starved
/// CI machine does not reset sessions mid-test; sessions come up in about a second.
pub const TIMERS: &str =
    "hold time 30; keepalive time 10; connect delay time 1; connect retry time 2; error wait time 1, 10;";

/// BFD for the lab's ToR sessions, on both sides (`bfd on` in each BGP
/// protocol). 100 ms like the packaged bird.conf, but 5 missed packets
/// rather than 3: a BFD flap in these labs would reset a session and fail
/// assertions that are about something else, so they get more slack against
/// a starved CI machine. The BFD figures themselves are measured with the
/// packaged timers (tests/bird_packaged.rs).
pub const LAB_BFD: &str = "protocol bfd {\n    interface \"*\" { min rx interval 100 ms; \
     min tx interval 100 ms; multiplier 5; };\n}\n";

/// The ToR: kernel protocol with `merge paths on` (G1), one eBGP session per
/// LB, BFD on every session.
pub fn tor_bird_conf(dir: &Path, lbs: u32) -> String {
    tor_bird_conf_bfd(dir, &vec![true; lbs as usize])
}

/// [`tor_bird_conf`] with BFD chosen per LB session (`bfd[n - 1]` for lbN),
/// for comparing a session with BFD to one without in the same run.
pub fn tor_bird_conf_bfd(dir: &Path, bfd: &[bool]) -> String {
    let mut conf = format!(
        "router id 10.0.0.254;\n{log}protocol device {{ }}\n{LAB_BFD}\
         protocol kernel kernel4 {{ ipv4 {{ import none; export all; }}; merge paths on; }}\n\
         template bgp lbs {{\n    {TIMERS}\n\
             ipv4 {{ import where net ~ [ 192.0.2.0/24{{32,32}} ]; export none; }};\n}}\n",
        log = Bird::log_line(dir)
    );
    for (i, on) in bfd.iter().enumerate() {
        let n = i + 1;
        conf.push_str(&format!(
            "protocol bgp lb{n} from lbs {{ local 10.0.{n}.1 as 65000; neighbor 10.0.{n}.2 as {}; bfd {}; }}\n",
            65000 + n,
            if *on { "on" } else { "off" }
        ));
    }
    conf
}

/// One row of `show bfd sessions`.
#[derive(Debug, Clone, PartialEq)]
pub struct BfdSession {
    /// Neighbour address.
    pub peer: String,
    /// `Up`, `Down`, `Init`, `AdminDown`.
    pub state: String,
    /// Detection time for the neighbour, in seconds (the `Timeout` column):
    /// multiplier × interval once the session runs at its fast rate, longer
    /// while it still runs at the idle rate.
    pub timeout: f64,
}

/// `show bfd sessions` of a BIRD.
pub async fn bfd_sessions(ctl: &mut lb_agent::bird::BirdControl) -> Vec<BfdSession> {
    let reply = ctl.request("show bfd sessions").await.unwrap();
    assert!(!reply.is_error(), "show bfd sessions: {reply}");
    reply
        .lines
        .iter()
        .filter_map(|l| {
            let w: Vec<&str> = l.text.split_whitespace().collect();
            let peer: std::net::IpAddr = w.first()?.parse().ok()?;
            Some(BfdSession {
                peer: peer.to_string(),
                state: w.get(2)?.to_string(),
                timeout: w.last()?.parse().ok()?,
            })
        })
        .collect()
}

/// Asserts that no BGP session was reset between two `show protocols`
/// snapshots: the same rows, states and infos, and the same "Since" up to a
/// few milliseconds.
///
/// BIRD keeps the time of a state change on its monotonic clock and turns it
/// into wall-clock time each time it prints it (now_real − (now − t)), so the
/// same, untouched session can print 09:14:09.329 once and 09:14:09.330 the
/// next time. A reset session cannot come back that fast: `TIMERS` hold the
/// first connect attempt back for a second (`connect delay time 1`), so a
/// real reset moves "Since" by a second or more.
pub fn assert_sessions_kept(
    before: &[lb_agent::bird::control::ProtocolRow],
    after: &[lb_agent::bird::control::ProtocolRow],
    context: &str,
) {
    const JITTER_MS: i64 = 100;
    let key = |r: &lb_agent::bird::control::ProtocolRow| {
        (
            r.name.clone(),
            r.proto.clone(),
            r.table.clone(),
            r.state.clone(),
            r.info.clone(),
        )
    };
    let (kb, ka): (Vec<_>, Vec<_>) = (
        before.iter().map(key).collect(),
        after.iter().map(key).collect(),
    );
    assert_eq!(kb, ka, "{context}: protocol rows changed");
    for (b, a) in before.iter().zip(after) {
        let (tb, ta) = (since_ms(&b.since), since_ms(&a.since));
        let moved = match (tb, ta) {
            (Some(tb), Some(ta)) => (ta - tb).abs() > JITTER_MS,
            _ => b.since != a.since,
        };
        assert!(
            !moved,
            "{context}: session {} was reset: since {} → {}",
            b.name, b.since, a.since
        );
    }
}

/// Milliseconds of the day of a "Since" column ("09:14:09.329",
/// "2026-11-22 09:14:09"), if it ends in a time of day.
fn since_ms(since: &str) -> Option<i64> {
    let time = since.rsplit(' ').next()?;
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut parts = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (h, m, s) = (parts.next()??, parts.next()??, parts.next()??);
    let frac_ms = format!("{frac:0<3}")[..3].parse::<i64>().ok()?;
    Some(((h * 60 + m) * 60 + s) * 1000 + frac_ms)
}
