use super::*;
use std::collections::{BTreeSet, VecDeque};

use ipnet::IpNet;

/// One exchange of a transcript: the command sent (`None` for what BIRD
/// sent unprompted, like the greeting) and the lines received.
#[derive(Debug)]
struct Exchange {
    command: Option<String>,
    received: Vec<String>,
}

/// Reads the transcript notation of `fixtures/bird/`:
/// `C:` sent, `S:` received, `$` end of line, `^I` TAB, `#` local notes.
/// Pipelined commands are grouped: their replies follow all of them.
fn transcript(text: &str) -> Vec<Exchange> {
    let mut out: Vec<Exchange> = vec![Exchange {
        command: None,
        received: vec![],
    }];
    let mut pending: Vec<String> = vec![];
    for raw in text.lines() {
        if let Some(c) = raw.strip_prefix("C: ") {
            let c = c.split("   (pipelined").next().unwrap().trim_end();
            pending.push(c.to_string());
        } else if let Some(s) = raw.strip_prefix("S: ") {
            for c in pending.drain(..) {
                out.push(Exchange {
                    command: Some(c),
                    received: vec![],
                });
            }
            let s = s.strip_suffix('$').unwrap_or(s).replace("^I", "\t");
            out.last_mut().unwrap().received.push(s);
        } else if raw.starts_with("S:") {
            // "S: " with nothing after cannot occur: BIRD lines are non-empty.
            panic!("unexpected transcript line {raw:?}");
        }
    }
    out
}

/// Decodes every line BIRD sent in a transcript, in order, as one stream.
fn decode_all(text: &str) -> (Vec<(Option<String>, Reply)>, Vec<String>) {
    let mut d = Decoder::new();
    let mut replies = vec![];
    let mut asyncs = vec![];
    let exchanges = transcript(text);
    // Commands in order; replies are matched to commands in order too.
    let mut commands: VecDeque<Option<String>> =
        exchanges.iter().map(|e| e.command.clone()).collect();
    // A reply-less prefix: the greeting has no command.
    for e in &exchanges {
        for l in &e.received {
            match d.push(l).unwrap() {
                None => {}
                Some(Frame::Async(a)) => asyncs.push(a),
                Some(Frame::Reply(r)) => replies.push((commands.pop_front().unwrap(), r)),
            }
        }
    }
    assert!(!d.in_reply(), "transcript ends inside a reply");
    (replies, asyncs)
}

fn fixture(name: &str) -> &'static str {
    match name {
        "01" => include_str!("../../../fixtures/bird/01-greeting-status.txt"),
        "02" => include_str!("../../../fixtures/bird/02-toggle-configure.txt"),
        "03" => include_str!("../../../fixtures/bird/03-include-errors.txt"),
        "04" => include_str!("../../../fixtures/bird/04-confirm-undo.txt"),
        "05" => include_str!("../../../fixtures/bird/05-errors.txt"),
        "06" => include_str!("../../../fixtures/bird/06-tor-routes.txt"),
        "07" => include_str!("../../../fixtures/bird/07-in-progress-async.txt"),
        "08" => include_str!("../../../fixtures/bird/08-eval-prefix-sets.txt"),
        "09" => include_str!("../../../fixtures/bird/09-export-two-channels.txt"),
        _ => unreachable!(),
    }
}

fn reply_to<'a>(replies: &'a [(Option<String>, Reply)], command: &str) -> Vec<&'a Reply> {
    replies
        .iter()
        .filter(|(c, _)| c.as_deref() == Some(command))
        .map(|(_, r)| r)
        .collect()
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

#[test]
fn every_transcript_decodes_into_one_reply_per_command() {
    for f in ["01", "02", "03", "04", "05", "06", "07", "08", "09"] {
        let exchanges = transcript(fixture(f));
        let expected = exchanges.iter().filter(|e| e.command.is_some()).count() + 1; // + greeting
        let (replies, _) = decode_all(fixture(f));
        assert_eq!(replies.len(), expected, "fixture {f}");
        assert_eq!(replies[0].1.code, CODE_GREETING, "fixture {f}");
        assert_eq!(replies[0].1.message(), "BIRD 2.0.12 ready.");
    }
}

#[test]
fn framing_basics() {
    let mut d = Decoder::new();
    assert_eq!(d.push("1007-Table master4:\n").unwrap(), None);
    assert!(d.in_reply());
    assert_eq!(d.push(" 192.0.2.10/32  blackhole\n").unwrap(), None);
    assert_eq!(
        d.push("+Reconfiguring\n").unwrap(),
        Some(Frame::Async("Reconfiguring".into()))
    );
    assert!(d.in_reply(), "an async line does not end or reset a reply");
    let Some(Frame::Reply(r)) = d.push("0000 \n").unwrap() else {
        panic!()
    };
    assert_eq!(r.code, 0);
    assert_eq!(r.message(), "");
    assert_eq!(
        r.lines,
        vec![
            Line {
                code: 1007,
                text: "Table master4:".into()
            },
            Line {
                code: 1007,
                text: "192.0.2.10/32  blackhole".into()
            },
            Line {
                code: 0,
                text: String::new()
            },
        ]
    );
    // Errors: continuation outside a reply, garbage, bad separator.
    assert!(d.push(" orphan").is_err());
    assert!(d.push("hello").is_err());
    assert!(d.push("0003:Reconfigured").is_err());
    assert!(d.push("12").is_err());
    // A bare code is a final line with no text.
    assert!(matches!(
        d.push("0000"),
        Ok(Some(Frame::Reply(Reply { code: 0, .. })))
    ));
}

#[test]
fn configure_outcomes_from_transcripts() {
    let (r, _) = decode_all(fixture("02"));
    for reply in reply_to(&r, "configure") {
        assert_eq!(
            parse_configure("configure", reply).unwrap(),
            ConfigureOutcome::Reconfigured
        );
        assert_eq!(
            reply.texts(2).next().unwrap(),
            "Reading configuration from <lab>/run/lb1/bird.conf"
        );
    }
    let (r, asyncs) = decode_all(fixture("07"));
    let outcomes: Vec<_> = r
        .iter()
        .filter(|(c, _)| c.as_deref().is_some_and(|c| c.starts_with("configure")))
        .map(|(c, reply)| parse_configure(c.as_deref().unwrap(), reply).unwrap())
        .collect();
    use ConfigureOutcome::*;
    assert_eq!(
        outcomes,
        vec![InProgress, InProgress, InProgress, Queued, Queued]
    );
    assert_eq!(
        asyncs,
        ["Reconfiguring", "Restarting protocol tor", "Reconfigured"].repeat(2)
    );
    // `configure timeout` / `undo` replies carry extra 00xx- lines before 0003.
    let (r, _) = decode_all(fixture("04"));
    assert_eq!(
        parse_configure(
            "configure timeout 30",
            reply_to(&r, "configure timeout 30")[0]
        )
        .unwrap(),
        Reconfigured
    );
    assert!(matches!(
        parse_configure("configure confirm", reply_to(&r, "configure confirm")[0]),
        Err(ControlError::Unexpected { code: 18, .. })
    ));
}

#[test]
fn config_rejections_carry_file_line_column_and_message() {
    let (r, _) = decode_all(fixture("03"));
    let errors: Vec<ConfigRejection> = reply_to(&r, "configure")
        .into_iter()
        .filter_map(|reply| match parse_configure("configure", reply) {
            Err(ControlError::ConfigRejected(c)) => Some(c),
            Ok(_) => None,
            Err(e) => panic!("{e}"),
        })
        .collect();
    assert_eq!(errors.len(), 5);
    assert_eq!(
        errors[0].file.as_deref(),
        Some("<lab>/run/lb1/acast-prefixes.conf")
    );
    assert_eq!((errors[0].line, errors[0].column), (Some(1), Some(49)));
    assert_eq!(errors[0].message, "syntax error, unexpected IP4");
    assert_eq!(
        errors[0].to_string(),
        "<lab>/run/lb1/acast-prefixes.conf:1:49 syntax error, unexpected IP4"
    );
    assert_eq!(errors[2].file.as_deref(), Some("<lab>/run/lb1/bird.conf"));
    assert_eq!(errors[2].line, Some(7));
    assert_eq!(
        errors[3].message,
        "Symbol 'ACAST_PS_ADVERTISE' already defined"
    );
    assert!(errors[4]
        .message
        .starts_with("Unable to open included file"));
    // The `configure check` variant, and one without line/column.
    let c = ConfigRejection::parse("nonexistent.conf: No such file or directory");
    assert_eq!(c.file.as_deref(), Some("nonexistent.conf"));
    assert_eq!(c.line, None);
    assert_eq!(c.message, "No such file or directory");
    let c = ConfigRejection::parse("/etc/bird/my dir/a:b.conf:12:7 syntax error, unexpected ';'");
    assert_eq!(c.file.as_deref(), Some("/etc/bird/my dir/a:b.conf"));
    assert_eq!((c.line, c.column), (Some(12), Some(7)));
    assert_eq!(c.message, "syntax error, unexpected ';'");
    let c = ConfigRejection::parse("Something odd happened");
    assert_eq!(
        (c.file, c.message.as_str()),
        (None, "Something odd happened")
    );
}

#[test]
fn access_denied_and_command_errors() {
    let (r, _) = decode_all(fixture("05"));
    assert!(matches!(
        parse_configure("configure", reply_to(&r, "configure")[0]),
        Err(ControlError::AccessDenied)
    ));
    assert!(matches!(
        reply_error(reply_to(&r, "foo")[0]),
        Some(ControlError::Command { code: 9001, .. })
    ));
    assert!(matches!(
        reply_error(reply_to(&r, "show route 203.0.113.1/32")[0]),
        Some(ControlError::Command { code: 8001, .. })
    ));
    assert_eq!(reply_to(&r, "restrict")[0].code, 16);
    assert!(reply_error(reply_to(&r, "show status")[0]).is_none());
}

#[test]
fn route_export_from_transcripts() {
    let (r, _) = decode_all(fixture("02"));
    let exports: Vec<BTreeSet<IpNet>> = reply_to(&r, "show route export tor")
        .into_iter()
        .map(|reply| parse_route_export("show route export tor", reply).unwrap())
        .collect();
    let vip: BTreeSet<IpNet> = [net("192.0.2.10/32")].into();
    assert_eq!(exports, vec![vip.clone(), BTreeSet::new(), vip.clone()]);
    // `all` adds 1008 attribute lines; they are not routes.
    let all = reply_to(&r, "show route export tor all")[0];
    assert_eq!(parse_route_export("x", all).unwrap(), vip);
    // The ToR's merged multipath route: `via` continuation lines are skipped.
    let (r, _) = decode_all(fixture("06"));
    for c in [
        "show route export kernel4",
        "show route export kernel4 all",
        "show route 192.0.2.10/32",
    ] {
        assert_eq!(
            parse_route_export(c, reply_to(&r, c)[0]).unwrap(),
            vip,
            "{c}"
        );
    }
    // Two channels: both tables, separated by an empty continuation line.
    let (r, _) = decode_all(fixture("09"));
    assert_eq!(
        parse_route_export("x", reply_to(&r, "show route export tor")[0]).unwrap(),
        [net("192.0.2.10/32"), net("2001:db8:10::10/128")].into()
    );
    // A count line is not a route: refused, with the line number.
    let Err(ControlError::Output(e)) = parse_route_export(
        "show route export tor count",
        reply_to(&r, "show route export tor count")[0],
    ) else {
        panic!()
    };
    assert_eq!(e.line, 1);
    // A protocol that is down exports nothing.
    assert_eq!(
        parse_route_export("x", reply_to(&r, "show route export down1")[0]).unwrap(),
        BTreeSet::new()
    );
    let rows = parse_protocols("x", reply_to(&r, "show protocols")[0]).unwrap();
    assert_eq!(
        (rows[4].state.as_str(), rows[4].info.as_str()),
        ("start", "Active")
    );
}

#[test]
fn protocols_from_transcripts() {
    let (r, _) = decode_all(fixture("06"));
    let rows = parse_protocols("show protocols", reply_to(&r, "show protocols")[0]).unwrap();
    let names: Vec<_> = rows.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["device1", "kernel4", "lb1", "lb2"]);
    assert_eq!(
        rows[2],
        ProtocolRow {
            name: "lb1".into(),
            proto: "BGP".into(),
            table: "---".into(),
            state: "up".into(),
            since: "05:16:46.109".into(),
            info: "Established".into(),
        }
    );
    assert_eq!(rows[0].info, "");
    // Overlong names shift the columns; the rows still split right.
    let (r, _) = decode_all(fixture("01"));
    let rows = parse_protocols("show protocols", reply_to(&r, "show protocols")[0]).unwrap();
    assert_eq!(rows[1].name, "static_acast");
    assert_eq!(rows[1].table, "master4");
    // `show protocols all` : only the 1002 row, not the 1006 details.
    let rows = parse_protocols("x", reply_to(&r, "show protocols all tor")[0]).unwrap();
    assert_eq!(rows.len(), 1);
    // The BGP session restarted by a hard reconfigure shows a new Since.
    let (r, _) = decode_all(fixture("07"));
    let since: Vec<String> = reply_to(&r, "show protocols")
        .into_iter()
        .map(|reply| parse_protocols("x", reply).unwrap()[2].since.clone())
        .collect();
    assert_eq!(since, ["05:17:05.294", "05:17:07.247"]);
}

#[test]
fn protocols_with_a_date_time_since_and_bad_rows() {
    let reply = Reply {
        code: 0,
        lines: vec![
            Line {
                code: 2002,
                text: "Name Proto Table State Since Info".into(),
            },
            Line {
                code: 1002,
                text: "tor BGP --- up 2026-11-22 05:16:45 Established".into(),
            },
            Line {
                code: 1002,
                text: "lb2 BGP --- start 2026-11-22 Active Socket: Connection refused".into(),
            },
            Line {
                code: 0,
                text: String::new(),
            },
        ],
    };
    let rows = parse_protocols("x", &reply).unwrap();
    assert_eq!(rows[0].since, "2026-11-22 05:16:45");
    assert_eq!(rows[0].info, "Established");
    assert_eq!(rows[1].since, "2026-11-22");
    assert_eq!(rows[1].info, "Active Socket: Connection refused");
    let bad = Reply {
        code: 0,
        lines: vec![
            Line {
                code: 1002,
                text: "tor BGP".into(),
            },
            Line {
                code: 0,
                text: String::new(),
            },
        ],
    };
    assert!(matches!(
        parse_protocols("x", &bad),
        Err(ControlError::Output(OutputError { line: 1, .. }))
    ));
}

#[test]
fn eval_prefix_sets_from_captured_output() {
    let (r, _) = decode_all(fixture("08"));
    let get = |c: &str| parse_eval_set(c, reply_to(&r, c)[0]).unwrap();
    let EvalSet::Complete(d) = get("eval ACAST_PS_ADVERTISE") else {
        panic!()
    };
    assert_eq!(
        d.exact,
        [net("10.189.200.255/32"), net("192.0.2.10/32")].into()
    );
    assert!(d.patterns.is_empty());
    let EvalSet::Complete(d) = get("eval ACAST6_PS_ADVERTISE") else {
        panic!()
    };
    assert_eq!(
        d.exact,
        [net("2001:db8:ffff::1/128"), net("2001:db8:10::10/128")].into()
    );
    let EvalSet::Complete(d) = get("eval EMPTY") else {
        panic!()
    };
    assert_eq!(d, PrefixSetDump::default());
    // Nested exact prefixes and the zero-length prefix.
    let EvalSet::Complete(d) = get("eval NESTED") else {
        panic!()
    };
    assert_eq!(
        d.exact,
        [
            "0.0.0.0/0",
            "192.0.2.0/24",
            "192.0.2.0/25",
            "192.0.2.128/25",
            "192.0.2.0/32"
        ]
        .into_iter()
        .map(net)
        .collect()
    );
    assert!(d.patterns.is_empty(), "{:?}", d.patterns);
    // Ranges show up as patterns, never as exact prefixes.
    let EvalSet::Complete(d) = get("eval RANGES") else {
        panic!()
    };
    assert!(d.exact.contains(&net("10.0.0.0/8")));
    assert!(!d.exact.contains(&net("10.0.0.0/9")));
    assert!(
        d.patterns.contains(&"10.0.0.0/8{32,32}".to_string()),
        "{:?}",
        d.patterns
    );
    assert!(d.patterns.contains(&"198.51.100.0/24{25,25}".to_string()));
    // Too long for one line.
    assert_eq!(get("eval BIG"), EvalSet::TooLong);
    // Undefined variable: a command error, not a set.
    assert!(matches!(
        parse_eval_set("eval NOSUCH", reply_to(&r, "eval NOSUCH")[0]),
        Err(ControlError::Command { code: 9001, .. })
    ));
    // Not a set.
    assert!(matches!(
        parse_eval_set("eval 1+1", reply_to(&r, "eval 1+1")[0]),
        Err(ControlError::Output(_))
    ));
    // Membership.
    assert!(parse_eval_bool(
        "x",
        reply_to(&r, "eval 192.0.2.10/32 ~ ACAST_PS_ADVERTISE")[0]
    )
    .unwrap());
    assert!(!parse_eval_bool(
        "x",
        reply_to(&r, "eval 192.0.2.11/32 ~ ACAST_PS_ADVERTISE")[0]
    )
    .unwrap());
}

#[test]
fn mask_bits_map_to_prefix_lengths() {
    assert_eq!(mask_lengths("0.0.0.1".parse().unwrap()), vec![32]);
    assert_eq!(mask_lengths("0.0.1.0".parse().unwrap()), vec![24]);
    assert_eq!(mask_lengths("128.0.0.0".parse().unwrap()), vec![1]);
    assert_eq!(mask_lengths("::1".parse().unwrap()), vec![128]);
    assert_eq!(mask_lengths("0:1::".parse().unwrap()), vec![32]);
    assert_eq!(
        mask_lengths("0.0.0.255".parse().unwrap()),
        (25..=32).collect::<Vec<u8>>()
    );
}
