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
