//! BIRD's control-socket protocol: the `Decoder` line framing and the typed
//! reply parsers (`bird::control`).
//!
//! Input: what BIRD sends, split into lines; every complete reply goes
//! through every parser.
//! Properties, beyond never panicking:
//! - a reply is non-empty, its code is its last line's, `is_error` iff the
//!   code is 8000 or more, and an error code always maps to an error;
//! - framing round trip: a reply printed back (`DDDD-text` then `DDDD text`)
//!   decodes to the same reply;
//! - `parse_configure` succeeds only with 0003/0004/0005, `parse_eval_bool`
//!   only with 0023;
//! - `parse_route_export` and `parse_eval_set` round trip: the prefixes they
//!   found, printed back as BIRD prints them, parse to the same set;
//! - `parse_protocols`: one row per `1002` line, names are single words;
//! - `ConfigRejection::parse` keeps the text and finds a line only with a file.
#![no_main]

use ipnet::IpNet;
use lb_agent::bird::control::{
    parse_configure, parse_eval_bool, parse_eval_set, parse_protocols, parse_route_export,
    reply_error, ConfigRejection, Decoder, EvalSet, Frame, Line, Reply,
};
use libfuzzer_sys::fuzz_target;

fn print(reply: &Reply) -> Vec<String> {
    let n = reply.lines.len();
    reply
        .lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let sep = if i + 1 == n { ' ' } else { '-' };
            format!("{:04}{sep}{}\r\n", l.code, l.text)
        })
        .collect()
}

fn decode_all(lines: &[String]) -> Vec<Reply> {
    let mut d = Decoder::new();
    lines
        .iter()
        .filter_map(|l| match d.push(l) {
            Ok(Some(Frame::Reply(r))) => Some(r),
            Ok(_) => None,
            Err(e) => panic!("printed reply does not decode: {e}"),
        })
        .collect()
}

fn reply_of(code: u16, texts: &[String], last: &str) -> Reply {
    let mut lines: Vec<Line> = texts
        .iter()
        .map(|t| Line {
            code,
            text: t.clone(),
        })
        .collect();
    lines.push(Line {
        code: 0,
        text: last.into(),
    });
    Reply { code: 0, lines }
}

fn check(reply: &Reply) {
    let last = reply.lines.last().expect("a reply has a line");
    assert_eq!(reply.code, last.code);
    assert_eq!(reply.is_error(), reply.code >= 8000);
    assert_eq!(reply_error(reply).is_some(), reply.code >= 8000);
    assert_eq!(decode_all(&print(reply)), vec![reply.clone()]);

    if parse_configure("configure", reply).is_ok() {
        assert!(matches!(reply.code, 3..=5));
    }
    if parse_eval_bool("eval", reply).is_ok() {
        assert_eq!(reply.code, 23);
    }
    if let Ok(nets) = parse_route_export("show route export tor", reply) {
        let texts: Vec<String> = nets
            .iter()
            .map(|n| format!("{n} unicast [x] * (100)"))
            .collect();
        let again = parse_route_export("show route export tor", &reply_of(1007, &texts, ""));
        assert_eq!(again.ok().as_ref(), Some(&nets));
    }
    if let Ok(EvalSet::Complete(dump)) = parse_eval_set("eval S", reply) {
        let items: Vec<String> = dump.exact.iter().map(IpNet::to_string).collect();
        let printed = Reply {
            code: 23,
            lines: vec![Line {
                code: 23,
                text: format!("[{}]", items.join(", ")),
            }],
        };
        match parse_eval_set("eval S", &printed) {
            Ok(EvalSet::Complete(again)) => assert_eq!(again.exact, dump.exact),
            other => panic!(
                "printed set {:?} does not parse: {other:?}",
                printed.message()
            ),
        }
    }
    if let Ok(rows) = parse_protocols("show protocols", reply) {
        assert_eq!(rows.len(), reply.texts(1002).count());
        for r in &rows {
            assert!(!r.name.is_empty() && !r.name.contains(char::is_whitespace));
        }
    }
    let rejection = ConfigRejection::parse(reply.message());
    assert_eq!(rejection.text, reply.message());
    if rejection.line.is_some() {
        let file = rejection
            .file
            .as_deref()
            .expect("a located error names a file");
        assert!(reply.message().starts_with(file));
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut decoder = Decoder::new();
    for raw in text.split_inclusive('\n') {
        match decoder.push(raw) {
            Ok(Some(Frame::Reply(reply))) => {
                assert!(!decoder.in_reply());
                check(&reply);
            }
            Ok(Some(Frame::Async(_))) | Ok(None) | Err(_) => {}
        }
    }
});
