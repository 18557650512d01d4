use super::*;
use std::path::Path;
use std::time::Duration;

use crate::cli::{EXIT_RUNTIME, EXIT_UNREACHABLE};

use crate::status::types::*;
use std::time::UNIX_EPOCH;

const PLAIN: Style = Style { colour: false };

fn at(secs: u64) -> Timestamp {
    Timestamp(UNIX_EPOCH + Duration::from_secs(secs))
}

fn snapshot() -> Snapshot {
    Snapshot {
        node: "lb1".into(),
        group: "blue".into(),
        version: "0.1.0".into(),
        revision: Some(1042),
        drained: true,
        drain: Some(DrainInfo {
            reason: "kernel upgrade".into(),
            since: Some(at(1_000_000)),
            by: Some("uid 0 (root)".into()),
            withdraw_at: None,
        }),
        source: SourceStatus {
            state: SourceState::Stale,
            url: "https://api/v1/groups/blue/config".into(),
            last_success: Some(at(999_700)),
            error: Some("connect: refused\n\x1b[31mboom".into()),
            consecutive_failures: 4,
            ..Default::default()
        },
        haproxy: HaproxyStatus {
            converged: true,
            reloads: 3,
            runtime_commands: 120,
            last_reload: Some(at(999_400)),
            pending_reload: vec!["new frontend".into()],
            ..Default::default()
        },
        bird: BirdStatus {
            ok: true,
            last_reconfigure: Some(at(999_990)),
            ..Default::default()
        },
        vips: vec![
            VipStatus {
                address: "192.0.2.10/32".into(),
                announced: false,
                reason: Some("drained".into()),
                services: vec![
                    ServiceStatus {
                        name: "www_https".into(),
                        healthy: true,
                        ..Default::default()
                    },
                    ServiceStatus {
                        name: "git_ssh".into(),
                        healthy: false,
                        ..Default::default()
                    },
                ],
                ..Default::default()
            },
            VipStatus {
                address: "2001:db8:10::10/128".into(),
                announced: true,
                services: vec![ServiceStatus {
                    name: "www_https".into(),
                    healthy: true,
                    ..Default::default()
                }],
                ..Default::default()
            },
        ],
        ..Default::default()
    }
}

#[test]
fn status_view_summarises_and_aligns_the_vip_table() {
    let out = render_status(
        &snapshot(),
        UNIX_EPOCH + Duration::from_secs(1_000_060),
        PLAIN,
    );
    let expected = "\
node      lb1 (group blue), lb-agent 0.1.0
revision  1042
drained   yes: kernel upgrade (since 1970-01-12T13:46:40.000Z, 1m ago) by uid 0 (root)
source    stale https://api/v1/groups/blue/config, last success 6m ago
          error (4 in a row): connect: refused\\n\\u{1b}[31mboom
haproxy   converged, 3 reloads (last 11m ago), 120 runtime commands
          reload pending: new frontend
bird      ok, last reconfigure 1m 10s ago
vips      1/2 announced

ADDRESS              ANNOUNCED  HEALTHY  REASON
192.0.2.10/32        no         1/2      drained
2001:db8:10::10/128  yes        1/1      -
";
    assert_eq!(out, expected, "\n{out}");
    assert!(!out.contains('\x1b'), "no escape codes without colour");
}

#[test]
fn status_view_shows_the_export_check() {
    let now = UNIX_EPOCH + Duration::from_secs(1_000_060);
    let mut s = snapshot();
    s.bird.export_check = "discovered".into();
    s.bird.export_protocols = vec!["tor1".into(), "tor2".into()];
    s.bird.not_exported = vec!["2001:db8:10::10/128".into()];
    s.vips[1].exported = Some(false);
    let out = render_status(&s, now, PLAIN);
    assert!(
        out.contains(
            "\n          not exported by any BGP protocol (tor1, tor2): 2001:db8:10::10/128\n"
        ),
        "\n{out}"
    );
    assert!(
        out.contains("\n2001:db8:10::10/128  yes, not exported  1/1      -\n"),
        "\n{out}"
    );
    s.bird.export_check = "no_bgp_session_up".into();
    s.bird.export_protocols.clear();
    s.bird.not_exported.clear();
    s.vips[1].exported = None;
    let out = render_status(&s, now, PLAIN);
    assert!(
        out.contains("\n          exports not confirmed: no BGP session is up\n"),
        "\n{out}"
    );
    // Discovered and all exported: nothing more than before.
    s.bird.export_check = "discovered".into();
    assert!(!render_status(&s, now, PLAIN).contains("export"));
}

#[test]
fn vips_view_has_one_line_per_vip() {
    let out = render_vips(&snapshot().vips, PLAIN);
    let expected = "\
ADDRESS              ANNOUNCED  SERVICES                   REASON
192.0.2.10/32        no         www_https:up git_ssh:down  drained
2001:db8:10::10/128  yes        www_https:up               -
";
    assert_eq!(out, expected, "\n{out}");
    assert_eq!(render_vips(&[], PLAIN), "no VIPs in the applied document\n");
}

#[test]
fn colour_wraps_cells_without_breaking_alignment() {
    let colour = Style { colour: true };
    let out = render_vips(&snapshot().vips, colour);
    assert!(out.contains("\x1b[31mno\x1b[0m"), "{out:?}");
    assert!(out.contains("\x1b[32myes\x1b[0m"), "{out:?}");
    // Stripping the codes gives the plain table back.
    let stripped = out
        .replace("\x1b[0m", "")
        .replace("\x1b[1m", "")
        .replace("\x1b[31m", "")
        .replace("\x1b[32m", "");
    assert_eq!(stripped, render_vips(&snapshot().vips, PLAIN));
}

#[test]
fn minimal_snapshot_renders_without_extras() {
    let s = Snapshot {
        node: "n".into(),
        ..Default::default()
    };
    let out = render_status(&s, crate::clock::wall(), PLAIN);
    assert!(out.contains("revision  none applied yet"), "{out}");
    assert!(out.contains("source    init, last success never"), "{out}");
    assert!(out.contains("vips      0/0 announced"), "{out}");
    assert!(!out.contains("ADDRESS"), "{out}");
}

#[test]
fn connect_errors_map_to_exit_codes() {
    let p = Path::new("/x.sock");
    let e = connect_error(p, std::io::Error::from(std::io::ErrorKind::NotFound));
    assert_eq!(e.exit_code(), EXIT_UNREACHABLE);
    assert!(e.to_string().contains("no such socket"), "{e}");
    let e = connect_error(
        p,
        std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
    );
    assert_eq!(e.exit_code(), EXIT_UNREACHABLE);
    let e = connect_error(
        p,
        std::io::Error::from(std::io::ErrorKind::PermissionDenied),
    );
    assert_eq!(e.exit_code(), EXIT_RUNTIME);
    assert!(e.to_string().contains("status.group"), "{e}");
}

#[test]
fn man_page_is_section_8_with_exit_codes() {
    let page = man_page().unwrap();
    let preamble = clap_mangen::roff::Roff::new().render();
    assert!(
        page.starts_with(&format!("{preamble}.TH lb-agent 8 ")),
        "{}",
        &page[..120.min(page.len())]
    );
    assert_eq!(page.matches(&preamble).count(), 1);
    for needle in [
        "\\fBlb\\-agent status\\fR",
        "] \\fB\\-\\-reason\\fR \\fITEXT\\fR\nWithdraw every VIP",
        "[\\fB\\-\\-json\\fR]\nShow the agent",
        "\\fBlb\\-agent vips\\fR [\\fB\\-\\-socket\\fR \\fIPATH\\fR]",
        ".SH \"EXIT STATUS\"",
        "Environment: LB_AGENT_SOCKET.",
        "\\fBlb\\-agent completions\\fR \\fISHELL\\fR",
    ] {
        assert!(page.contains(needle), "man page lacks {needle}:\n{page}");
    }
    assert!(
        !page.contains("lb\\-agent man"),
        "the hidden man command is listed"
    );
    assert!(
        !page.contains("lb\\-agent\\-status(8)"),
        "points at a page that does not exist"
    );
}

/// [`snapshot`] with every optional line of the status view present: uptime,
/// the cached document, a watch-based source, HAProxy not converged with an
/// error, failed and retried reloads, old workers, a rejected document,
/// warnings, AZ routing (served, spilling, going nowhere), BIRD not ok with
/// an error and a prefix not exported.
fn rich_snapshot() -> Snapshot {
    let mut s = snapshot();
    s.started_at = Some(at(996_000));
    s.source.from_cache = true;
    s.source.stream = Some(StreamStatus {
        endpoint: "etcd1:2379".into(),
        watch_state: "watching".into(),
        revision: Some(88),
        lists: 2,
        compactions: 1,
        ..Default::default()
    });
    let h = &mut s.haproxy;
    h.converged = false;
    h.error = Some("set server: no such server".into());
    h.reload_failures = 2;
    h.reload_attempts = 3;
    h.next_reload_at = Some(at(1_000_080));
    h.old_workers = 1;
    h.rejected = Some(Rejected {
        revision: 1043,
        error: "removal ratio 0.9 above 0.5".into(),
        at: None,
    });
    h.document_warnings = vec![
        "pools[0].timeout: unknown field, ignored".into(),
        "pools[1].x: unknown field, ignored".into(),
    ];
    let zone = |zone: &str, to: &[&str], reason: Option<&str>| crate::plan::az::ZoneRoute {
        zone: zone.into(),
        servers: 2,
        healthy: if reason.is_some() { 0 } else { 2 },
        evacuated: false,
        to: to.iter().map(|z| z.to_string()).collect(),
        reason: reason.map(Into::into),
    };
    h.az_routing = vec![crate::plan::az::PoolRoutes {
        pool: "www".into(),
        zones: vec![
            zone("az1", &["az1"], None),
            zone("az2", &["az1"], Some("az2 has no usable server")),
            zone("az3", &[], Some("az3 evacuated")),
        ],
    }];
    s.bird.ok = false;
    s.bird.error = Some("configure: syntax error".into());
    s.bird.export_check = "discovered".into();
    s.bird.export_protocols = vec!["tor1".into()];
    s.bird.not_exported = vec!["2001:db8:10::10/128".into()];
    s.vips[1].exported = Some(false);
    s
}

#[test]
fn status_view_shows_every_optional_line() {
    let now = UNIX_EPOCH + Duration::from_secs(1_000_060);
    let out = render_status(&rich_snapshot(), now, PLAIN);
    let expected = "\
node      lb1 (group blue), lb-agent 0.1.0, up 1h 7m 40s
revision  1042
drained   yes: kernel upgrade (since 1970-01-12T13:46:40.000Z, 1m ago) by uid 0 (root)
source    stale https://api/v1/groups/blue/config, last success 6m ago, running from the cached document
          watching on etcd1:2379, store revision 88, 2 listings, 1 compactions
          error (4 in a row): connect: refused\\n\\u{1b}[31mboom
haproxy   not converged, 3 reloads (last 11m ago), 120 runtime commands, 2 failed reloads, retrying (attempt 3 failed, next in 20s), 1 old workers
          error: set server: no such server
          reload pending: new frontend
rejected  revision 1043: removal ratio 0.9 above 0.5
warnings  pools[0].timeout: unknown field, ignored
          pools[1].x: unknown field, ignored
routing   www 2/2 healthy: az1 → az1
          www 0/2 healthy: az2 → az1 (az2 has no usable server)
          www 0/2 healthy: az3 → nothing (az3 evacuated)
bird      not ok, last reconfigure 1m 10s ago
          error: configure: syntax error
          not exported by any BGP protocol (tor1): 2001:db8:10::10/128
vips      1/2 announced

ADDRESS              ANNOUNCED          HEALTHY  REASON
192.0.2.10/32        no                 1/2      drained
2001:db8:10::10/128  yes, not exported  1/1      -
";
    assert_eq!(out, expected, "\n{out}");
}

/// The painted pieces of `out` in order, as `code:text` (`31:stale`).
fn painted(out: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = out;
    while let Some(i) = rest.find('\x1b') {
        let after = &rest[i + 2..];
        let (code, tail) = after.split_once('m').expect("an SGR code");
        let (text, tail) = tail.split_once("\x1b[0m").expect("a reset");
        found.push(format!("{code}:{text}"));
        rest = tail;
    }
    found
}

#[test]
fn status_view_colours_each_section() {
    let now = UNIX_EPOCH + Duration::from_secs(1_000_060);
    let colour = Style { colour: true };
    let out = render_status(&rich_snapshot(), now, colour);
    let stripped = painted(&out).iter().fold(out.clone(), |o, p| {
        let (code, text) = p.split_once(':').unwrap();
        o.replacen(&format!("\x1b[{code}m{text}\x1b[0m"), text, 1)
    });
    assert_eq!(stripped, render_status(&rich_snapshot(), now, PLAIN));
    assert_eq!(
        painted(&out),
        [
            "33:yes",
            "31:stale",
            "31:error (4 in a row): connect: refused\\n\\u{1b}[31mboom",
            "31:not converged",
            "31:error: set server: no such server",
            "31:revision 1043: removal ratio 0.9 above 0.5",
            "33:pools[0].timeout: unknown field, ignored",
            "33:pools[1].x: unknown field, ignored",
            "33:az2 → az1 (az2 has no usable server)",
            "31:az3 → nothing (az3 evacuated)",
            "31:not ok",
            "31:error: configure: syntax error",
            "33:not exported by any BGP protocol (tor1): 2001:db8:10::10/128",
            "1:ADDRESS",
            "1:ANNOUNCED",
            "1:HEALTHY",
            "1:REASON",
            "31:no",
            "31:1/2",
            "31:yes, not exported",
            "32:1/1",
        ],
        "{out:?}"
    );
    let healthy = painted(&render_status(&snapshot(), now, colour));
    assert_eq!(
        healthy[..3],
        [
            "33:yes",
            "31:stale",
            "31:error (4 in a row): connect: refused\\n\\u{1b}[31mboom"
        ],
        "{healthy:?}"
    );
    assert_eq!(healthy[3..5], ["32:converged", "32:ok"], "{healthy:?}");
}

/// The whole man page, byte for byte (the version as `@VERSION@`).
/// `UPDATE_GOLDEN=1 cargo test --lib cli::client` rewrites the golden file;
/// review its diff like any other change.
#[test]
fn man_page_is_the_golden_file() {
    let page = man_page()
        .unwrap()
        .replace(env!("CARGO_PKG_VERSION"), "@VERSION@");
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/golden/lb-agent.8");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &page).unwrap();
    }
    let want = std::fs::read_to_string(&golden)
        .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1)", golden.display()));
    assert_eq!(page, want, "{} differs from the man page", golden.display());
}
