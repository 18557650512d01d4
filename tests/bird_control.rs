//! The control-socket client against one real BIRD 2 (no BGP peer needed):
//! configure outcomes, `8002` with the old configuration kept, `8007` after
//! `restrict`, async `+` lines, reconnect after a restart, bounded reads on
//! a frozen BIRD, and the publisher's confirmation of sets too large for
//! `eval` to print.

#![allow(clippy::disallowed_methods)] // waits bounded in real time (docs/testing.md)

mod common;
use common::bird;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use lb_agent::bird::control::{EvalSet, ProtocolRow};
use lb_agent::bird::include::{self, IncludeLayout};
use lb_agent::bird::{
    BirdControl, BirdStatus, ConfigureOutcome, ControlError, ControlOptions, DesiredAnnouncements,
    Publisher, PublisherOptions, ResetBird,
};
use lb_agent::config::{BirdConfig, OnStop, OnUnhealthy};
use nix::sys::signal::Signal;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use bird::Bird;

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn bird_config(dir: &Path) -> BirdConfig {
    BirdConfig {
        include_file: dir.join("acast-prefixes.conf"),
        control_socket: dir.join("bird.ctl"),
        ipv4_variable: "ACAST_PS_ADVERTISE".into(),
        ipv6_variable: "ACAST6_PS_ADVERTISE".into(),
        dummy_ipv4: net("10.189.200.255/32"),
        dummy_ipv6: net("2001:db8:ffff::1/128"),
        drain_variable: None,
        drain_grace: Duration::from_secs(30),
        demote_variable: None,
        on_unhealthy: OnUnhealthy::Withdraw,
        on_stop: OnStop::Withdraw,
        export_protocols: vec![],
    }
}

fn write_include(cfg: &BirdConfig, desired: &DesiredAnnouncements) {
    let layout = IncludeLayout::from_config(cfg).unwrap();
    let text = include::render(&layout, desired).unwrap();
    std::fs::write(&cfg.include_file, text).unwrap();
}

/// A BIRD in the root namespace that touches no kernel table: device and
/// static protocols only, the include's sets referenced by nothing but `eval`.
fn start_bird(dir: &Path, cfg: &BirdConfig) -> Bird {
    write_include(cfg, &DesiredAnnouncements::default());
    let mut statics = String::new();
    for i in 0..100 {
        statics.push_str(&format!(
            "  route 10.77.{}.{}/32 blackhole;\n",
            i / 250,
            i % 250
        ));
    }
    let conf = format!(
        "router id 10.255.0.1;\n{log}include \"{inc}\";\nprotocol device {{ }}\n\
         protocol static static_acast {{\n  ipv4;\n  route 192.0.2.10/32 blackhole;\n{statics}}}\n",
        log = Bird::log_line(dir),
        inc = cfg.include_file.display(),
    );
    Bird::start(dir, &conf, None)
}

fn client(cfg: &BirdConfig) -> BirdControl {
    BirdControl::new(
        &cfg.control_socket,
        ControlOptions {
            connect_timeout: Duration::from_millis(500),
            reply_timeout: Duration::from_secs(2),
        },
    )
}

async fn eval_exact(ctl: &mut BirdControl, var: &str) -> BTreeSet<IpNet> {
    match ctl.eval_prefix_set(var).await.unwrap() {
        EvalSet::Complete(d) => {
            assert!(d.patterns.is_empty());
            d.exact
        }
        EvalSet::TooLong => panic!("{var} too long for eval"),
    }
}

#[tokio::test]
async fn configure_applies_the_include_and_eval_shows_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = bird_config(dir.path());
    let _bird = start_bird(dir.path(), &cfg);
    let mut ctl = client(&cfg);
    assert!(ctl.connect().await.unwrap().starts_with("BIRD 2."));

    assert_eq!(
        eval_exact(&mut ctl, "ACAST_PS_ADVERTISE").await,
        [net("10.189.200.255/32")].into()
    );
    let desired =
        DesiredAnnouncements::advertise([net("192.0.2.10/32"), net("2001:db8:10::10/128")]);
    write_include(&cfg, &desired);
    assert_eq!(
        ctl.configure().await.unwrap(),
        ConfigureOutcome::Reconfigured
    );
    assert_eq!(
        eval_exact(&mut ctl, "ACAST_PS_ADVERTISE").await,
        [net("10.189.200.255/32"), net("192.0.2.10/32")].into()
    );
    assert_eq!(
        eval_exact(&mut ctl, "ACAST6_PS_ADVERTISE").await,
        [net("2001:db8:ffff::1/128"), net("2001:db8:10::10/128")].into()
    );
    let member = ctl
        .eval_membership(
            "ACAST_PS_ADVERTISE",
            &[net("192.0.2.10/32"), net("192.0.2.11/32")].into(),
        )
        .await
        .unwrap();
    assert_eq!(
        member.into_iter().collect::<Vec<_>>(),
        vec![(net("192.0.2.10/32"), true), (net("192.0.2.11/32"), false)]
    );
    // Far more than BIRD's ~1 KiB input buffer, pipelined: chunked, all answered.
    let many: Vec<String> = (0..500).map(|i| format!("eval {i}+1")).collect();
    let replies = ctl.request_pipelined(&many).await.unwrap();
    assert_eq!(replies.len(), 500);
    for (i, r) in replies.iter().enumerate() {
        assert_eq!((r.code, r.message()), (23, (i + 1).to_string().as_str()));
    }
    // Unchanged content: still a plain 0003.
    assert_eq!(
        ctl.configure().await.unwrap(),
        ConfigureOutcome::Reconfigured
    );
    ctl.configure_check().await.unwrap();

    let rows = ctl.show_protocols().await.unwrap();
    let statics: Vec<&ProtocolRow> = rows.iter().filter(|r| r.name == "static_acast").collect();
    assert_eq!(statics.len(), 1, "{rows:?}");
    assert_eq!(
        (statics[0].proto.as_str(), statics[0].state.as_str()),
        ("Static", "up")
    );
    // Names that would smuggle a second command are refused before sending.
    assert!(matches!(
        ctl.show_route_export("tor\nconfigure").await,
        Err(ControlError::InvalidArgument(_))
    ));
    assert!(matches!(
        ctl.request("show status\nconfigure").await,
        Err(ControlError::InvalidArgument(_))
    ));
    assert_eq!(ctl.connects(), 1, "one persistent connection");
}

#[tokio::test]
async fn broken_include_is_rejected_with_its_location_and_the_old_config_stays() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = bird_config(dir.path());
    let _bird = start_bird(dir.path(), &cfg);
    let mut ctl = client(&cfg);
    write_include(
        &cfg,
        &DesiredAnnouncements::advertise([net("192.0.2.10/32")]),
    );
    ctl.configure().await.unwrap();

    // The missing-comma variant from the lab transcripts, on line 2.
    std::fs::write(
        &cfg.include_file,
        "# hand-edited\ndefine ACAST_PS_ADVERTISE = [ 10.189.200.255/32 192.0.2.11/32 ];\n\
         define ACAST6_PS_ADVERTISE = [ 2001:db8:ffff::1/128 ];\n",
    )
    .unwrap();
    let Err(ControlError::ConfigRejected(rejection)) = ctl.configure().await else {
        panic!("broken include accepted");
    };
    assert_eq!(
        rejection.file.as_deref(),
        Some(cfg.include_file.to_str().unwrap())
    );
    assert_eq!(rejection.line, Some(2));
    assert!(rejection.column.is_some());
    assert!(rejection.message.contains("syntax error"), "{rejection}");
    // Our own parser refuses it on the same line.
    assert_eq!(
        include::parse(&std::fs::read_to_string(&cfg.include_file).unwrap())
            .unwrap_err()
            .line,
        2
    );
    // The old configuration still runs: still announcing 192.0.2.10.
    assert_eq!(
        eval_exact(&mut ctl, "ACAST_PS_ADVERTISE").await,
        [net("10.189.200.255/32"), net("192.0.2.10/32")].into()
    );
    // A rejected configure does not break the connection.
    assert_eq!(ctl.connects(), 1);
    std::fs::remove_file(&cfg.include_file).unwrap();
    let Err(ControlError::ConfigRejected(rejection)) = ctl.configure().await else {
        panic!("missing include accepted");
    };
    assert!(
        rejection.message.contains("Unable to open included file"),
        "{rejection}"
    );
    assert_eq!(
        rejection.file.as_deref(),
        Some(_bird.config.to_str().unwrap())
    );
}

#[tokio::test]
async fn restricted_connection_gets_access_denied() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = bird_config(dir.path());
    let _bird = start_bird(dir.path(), &cfg);
    let mut ctl = client(&cfg);
    ctl.restrict().await.unwrap();
    assert!(matches!(
        ctl.configure().await,
        Err(ControlError::AccessDenied)
    ));
    // Reading is still allowed, on the same connection.
    assert!(!ctl.show_protocols().await.unwrap().is_empty());
    eval_exact(&mut ctl, "ACAST_PS_ADVERTISE").await;
    assert_eq!(ctl.connects(), 1);
    // Restriction is per connection.
    let mut other = client(&cfg);
    assert_eq!(
        other.configure().await.unwrap(),
        ConfigureOutcome::Reconfigured
    );
}

#[tokio::test]
async fn async_lines_after_echo_all_do_not_confuse_framing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = bird_config(dir.path());
    let _bird = start_bird(dir.path(), &cfg);
    let mut ctl = client(&cfg);
    ctl.set_echo(true).await.unwrap();
    let a = DesiredAnnouncements::advertise([net("192.0.2.10/32")]);
    let b = DesiredAnnouncements::default();
    for round in 0..20 {
        let d = if round % 2 == 0 { &a } else { &b };
        write_include(&cfg, d);
        // Pipelined: BIRD's log lines for the configure interleave with the
        // replies that follow it.
        let replies = ctl
            .request_pipelined(&[
                "configure".to_string(),
                "eval ACAST_PS_ADVERTISE".to_string(),
                "show protocols".to_string(),
                "show status".to_string(),
            ])
            .await
            .unwrap();
        assert_eq!(replies.len(), 4);
        assert_eq!(replies[0].code, 3, "configure: {}", replies[0]);
        assert_eq!(replies[1].code, 23, "eval: {}", replies[1]);
        let want = if round % 2 == 0 {
            "[10.189.200.255/32{0.0.0.1}, 192.0.2.10/32{0.0.0.1}]"
        } else {
            "[10.189.200.255/32{0.0.0.1}]"
        };
        assert_eq!(replies[1].message(), want);
        assert_eq!(replies[2].code, 0);
        assert!(replies[2]
            .texts(1002)
            .any(|t| t.starts_with("static_acast")));
        assert_eq!(replies[3].code, 13, "show status: {}", replies[3]);
    }
    // Log lines of the last configure may still be in flight: poll, bounded.
    let mut lines = ctl.take_async_lines();
    let deadline = Instant::now() + Duration::from_secs(3);
    while lines.iter().filter(|l| l.contains("Reconfigured")).count() < 20
        && Instant::now() < deadline
    {
        ctl.request("show status").await.unwrap();
        lines.extend(ctl.take_async_lines());
    }
    assert!(
        lines.iter().filter(|l| l.contains("Reconfigured")).count() >= 20,
        "async lines: {lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("Reconfiguring")),
        "{lines:?}"
    );
    ctl.set_echo(false).await.unwrap();
    assert_eq!(
        ctl.configure().await.unwrap(),
        ConfigureOutcome::Reconfigured
    );
}

#[tokio::test]
async fn reconnects_after_bird_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = bird_config(dir.path());
    let mut bird = start_bird(dir.path(), &cfg);
    let mut ctl = client(&cfg);
    ctl.show_protocols().await.unwrap();
    assert_eq!(ctl.connects(), 1);

    // Restarted while the client sat idle: the next request goes through,
    // transparently, on a new connection.
    bird.restart();
    ctl.show_protocols().await.unwrap();
    assert_eq!(ctl.connects(), 2);

    // While BIRD is down: a prompt, typed connect error.
    bird.stop();
    let started = Instant::now();
    let err = ctl.configure().await.unwrap_err();
    assert!(matches!(err, ControlError::Connect { .. }), "{err}");
    assert!(err.is_transport());
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(!ctl.is_connected());

    // And back.
    bird.restart();
    assert_eq!(
        ctl.configure().await.unwrap(),
        ConfigureOutcome::Reconfigured
    );
    assert_eq!(ctl.connects(), 3);
}

#[tokio::test]
async fn a_frozen_bird_costs_a_bounded_wait() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = bird_config(dir.path());
    let bird = start_bird(dir.path(), &cfg);
    let mut ctl = client(&cfg);
    ctl.show_protocols().await.unwrap();

    bird.signal(Signal::SIGSTOP);
    let started = Instant::now();
    let err = ctl.configure().await.unwrap_err();
    let waited = started.elapsed();
    assert!(matches!(err, ControlError::Timeout(_)), "{err}");
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
    // A fresh connection to a frozen BIRD: no greeting, bounded by connect_timeout.
    let started = Instant::now();
    let err = ctl.show_protocols().await.unwrap_err();
    assert!(matches!(err, ControlError::Timeout(_)), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));

    bird.signal(Signal::SIGCONT);
    // The queued commands of the dropped connections do not leak into a new one.
    let rows = ctl.show_protocols().await.unwrap();
    assert!(rows.iter().any(|r| r.name == "static_acast"));
    assert_eq!(
        ctl.configure().await.unwrap(),
        ConfigureOutcome::Reconfigured
    );
}

async fn wait_status(
    rx: &mut watch::Receiver<BirdStatus>,
    what: &str,
    limit: Duration,
    pred: impl Fn(&BirdStatus) -> bool,
) -> BirdStatus {
    let result = tokio::time::timeout(limit, rx.wait_for(|s| pred(s)))
        .await
        .map(|r| r.map(|s| s.clone()));
    match result {
        Ok(Ok(s)) => s,
        _ => panic!("timed out waiting for {what}; status: {:?}", *rx.borrow()),
    }
}

#[tokio::test]
async fn publisher_confirms_sets_too_large_for_eval() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = bird_config(dir.path());
    let _bird = start_bird(dir.path(), &cfg);
    let big: BTreeSet<IpNet> = (0..100)
        .map(|i| net(&format!("10.77.{}.{}/32", i / 250, i % 250)))
        .chain((0..60).map(|i| net(&format!("2001:db8:77::{i:x}/128"))))
        .collect();
    let (tx, rx) = watch::channel(DesiredAnnouncements::advertise(big.clone()));
    let (status_tx, mut status) = watch::channel(BirdStatus::default());
    let cancel = CancellationToken::new();
    let publisher = Publisher::new(&cfg, PublisherOptions::default()).unwrap();
    let task = tokio::spawn(publisher.run(rx, status_tx, cancel.clone()));

    let s = wait_status(
        &mut status,
        "large set confirmed",
        Duration::from_secs(5),
        |s| s.ok,
    )
    .await;
    assert_eq!(s.announced.as_ref().unwrap().advertise, big);
    assert_eq!((s.writes, s.reconfigures, s.failures), (1, 1, 0), "{s:?}");
    // The confirmation really had to take the membership path.
    let mut ctl = client(&cfg);
    assert_eq!(
        ctl.eval_prefix_set("ACAST_PS_ADVERTISE").await.unwrap(),
        EvalSet::TooLong
    );
    assert_eq!(
        ctl.eval_prefix_set("ACAST6_PS_ADVERTISE").await.unwrap(),
        EvalSet::TooLong
    );

    // Shrink to half: the withdrawn half must be proven absent.
    let half: BTreeSet<IpNet> = big.iter().step_by(2).copied().collect();
    tx.send(DesiredAnnouncements::advertise(half.clone()))
        .unwrap();
    let s = wait_status(&mut status, "half confirmed", Duration::from_secs(5), |s| {
        s.ok && s.announced.as_ref().is_some_and(|a| a.advertise == half)
    })
    .await;
    assert_eq!((s.writes, s.reconfigures, s.failures), (2, 2, 0), "{s:?}");
    let member = ctl
        .eval_membership(
            "ACAST_PS_ADVERTISE",
            &big.iter().filter(|n| n.addr().is_ipv4()).copied().collect(),
        )
        .await
        .unwrap();
    for (n, present) in member {
        assert_eq!(present, half.contains(&n), "{n}");
    }
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn reset_without_a_running_bird_still_writes_the_dummy_only_include() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = bird_config(dir.path());
    write_include(
        &cfg,
        &DesiredAnnouncements::advertise([net("192.0.2.10/32")]),
    );
    let report = lb_agent::bird::reset(&cfg).await.unwrap();
    assert_eq!(report.bird, ResetBird::NotRunning);
    assert!(report.written);
    let announced = lb_agent::bird::read_announced(&cfg).unwrap().unwrap();
    assert!(announced.announcements.is_empty());
    assert!(announced.missing.is_empty());
    let report = lb_agent::bird::reset(&cfg).await.unwrap();
    assert!(!report.written, "second reset rewrote an identical file");
}

#[tokio::test]
async fn publisher_backs_off_while_bird_is_down_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = bird_config(dir.path());
    let opts = PublisherOptions {
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(200),
        ..PublisherOptions::default()
    };
    let want = DesiredAnnouncements::advertise([net("192.0.2.10/32")]);
    let (_tx, rx) = watch::channel(want.clone());
    let (status_tx, mut status) = watch::channel(BirdStatus::default());
    let cancel = CancellationToken::new();
    let task = tokio::spawn(
        Publisher::new(&cfg, opts)
            .unwrap()
            .run(rx, status_tx, cancel.clone()),
    );

    // No BIRD yet: every pass fails; the retries space out 50, 100, 200, 200, 200 ms.
    let mut failures_at = Vec::new();
    while failures_at.len() < 6 {
        tokio::time::timeout(Duration::from_secs(2), status.changed())
            .await
            .expect("a retry within the backoff cap")
            .unwrap();
        let s = status.borrow_and_update().clone();
        assert!(!s.ok);
        assert_eq!(s.failures as usize, failures_at.len() + 1, "{s:?}");
        assert!(
            s.error.as_deref().unwrap().contains("cannot connect"),
            "{s:?}"
        );
        failures_at.push(Instant::now());
    }
    let gaps: Vec<Duration> = failures_at.windows(2).map(|w| w[1] - w[0]).collect();
    for (gap, want_ms) in gaps.iter().zip([50u64, 100, 200, 200, 200]) {
        let want = Duration::from_millis(want_ms);
        assert!(
            *gap >= want - Duration::from_millis(5) && *gap < want + Duration::from_millis(100),
            "retry gaps {gaps:?}"
        );
    }
    // The desired include is on disk already: a BIRD starting now loads it.
    let s = status.borrow().clone();
    assert_eq!((s.writes, s.reconfigures), (1, 0), "{s:?}");
    let text = std::fs::read_to_string(&cfg.include_file).unwrap();
    assert!(text.contains("192.0.2.10/32"), "{text}");

    // BIRD comes up (on the desired include): confirmed within one capped retry.
    let conf = format!(
        "router id 10.255.0.1;\ninclude \"{}\";\nprotocol device {{ }}\n",
        cfg.include_file.display()
    );
    let _bird = Bird::start(dir.path(), &conf, None);
    let started = Instant::now();
    let s = tokio::time::timeout(Duration::from_secs(2), status.wait_for(|s| s.ok))
        .await
        .expect("recovered")
        .unwrap()
        .clone();
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(s.announced.as_ref(), Some(&want));
    assert!(s.error.is_none());
    // BIRD read the include at start, so no configure was needed.
    assert_eq!((s.writes, s.reconfigures), (1, 0), "{s:?}");
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .unwrap()
        .unwrap();
}
