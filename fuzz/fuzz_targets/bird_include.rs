//! The BIRD include parser (`bird::include::parse`, what `read_announced`
//! uses at startup) and the renderer it must agree with.
//!
//! Input: an include file's bytes (read as `read_announced` reads them,
//! invalid UTF-8 replaced).
//! Properties, beyond never panicking:
//! - round trip: a file that parses, printed back define by define, parses
//!   to the same definitions;
//! - every prefix it accepts is exact (no host bits) and each set has one
//!   family, as BIRD demands;
//! - what it announces under a layout with drain and demote sets, once
//!   `normalize`d, renders (`include::render`, which proves its own output
//!   parses back) and reads back as the same announcements.
#![no_main]

use std::sync::OnceLock;

use ipnet::IpNet;
use lb_agent::bird::include::{self, Family, IncludeFile, IncludeLayout};
use libfuzzer_sys::fuzz_target;

fn layout() -> &'static IncludeLayout {
    static L: OnceLock<IncludeLayout> = OnceLock::new();
    L.get_or_init(|| {
        let net = |s: &str| s.parse::<IpNet>().expect("dummy");
        IncludeLayout::new(
            "ACAST_PS_ADVERTISE",
            "ACAST6_PS_ADVERTISE",
            net("10.189.200.255/32"),
            net("2001:db8:ffff::1/128"),
            Some("ACAST_PS_DRAIN"),
            Some("ACAST_PS_DEMOTE"),
        )
        .expect("layout")
    })
}

fn print(file: &IncludeFile) -> String {
    let mut out = String::new();
    for d in &file.defines {
        let items: Vec<String> = d.prefixes.iter().map(IpNet::to_string).collect();
        out.push_str(&format!("define {} = [ {} ];\n", d.name, items.join(", ")));
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(file) = include::parse(&text) else {
        return;
    };
    for d in &file.defines {
        assert!(
            d.prefixes.iter().all(|n| n.trunc() == *n),
            "host bits in {}",
            d.name
        );
        if let Some(first) = d.prefixes.first() {
            assert!(d
                .prefixes
                .iter()
                .all(|n| Family::of(n) == Family::of(first)));
        }
    }
    let printed = print(&file);
    let again = include::parse(&printed)
        .unwrap_or_else(|e| panic!("printed include does not parse: {e}\n{printed}"));
    let strip = |f: &IncludeFile| -> Vec<(String, Vec<IpNet>)> {
        f.defines
            .iter()
            .map(|d| (d.name.clone(), d.prefixes.clone()))
            .collect()
    };
    assert_eq!(strip(&again), strip(&file));

    let Ok(announced) = file.announcements(layout()) else {
        return;
    };
    let (clean, _problems) = include::normalize(layout(), &announced.announcements);
    let rendered = include::render(layout(), &clean)
        .unwrap_or_else(|e| panic!("normalized announcements do not render: {e}"));
    let back = include::parse(&rendered)
        .and_then(|f| f.announcements(layout()))
        .expect("rendered include reads back");
    assert_eq!(back.announcements, clean);
    assert!(back.missing.is_empty() && back.unknown.is_empty());
});
