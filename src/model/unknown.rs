//! Fields of a document the agent does not know (pure).
//!
//! The wire structs ignore unknown fields so that a newer API can add
//! top-level sections without breaking older agents. Inside an object the
//! agent does know, an unknown field is much more likely a mistake (a typo,
//! or `pools[].timeout` for `timeouts`): it is reported as a
//! warning with its JSON path, on the status socket and in the log, and the
//! document is still applied (refusing it would break forward
//! compatibility). Top-level fields are not reported.

use serde_json::Value;

/// Known fields per object kind.
const FRONTEND: &[&str] = &[
    "name",
    "bind",
    "mode",
    "tls",
    "default_pool",
    "logic",
    "maxconn",
    "health",
];
const POOL: &[&str] = &[
    "name",
    "mode",
    "balance",
    "check",
    "servers",
    "routing",
    "stickiness",
    "logic",
    "timeouts",
    "retries",
    "redispatch",
    "http_reuse",
    "slowstart",
];
pub(crate) const SERVER: &[&str] = &["name", "address", "port", "weight", "state", "az", "backup"];
const TIMEOUTS: &[&str] = &["connect", "server", "queue"];
const CHECK: &[&str] = &["type", "path", "host", "interval", "rise", "fall"];
const HEALTH: &[&str] = &["type", "path", "host", "expect_status"];

/// Hints for the mistakes seen in practice.
fn hint(path: &str, field: &str) -> &'static str {
    match (path.starts_with("pools["), field) {
        (true, "timeout") => " (did you mean \"timeouts\"?)",
        (true, "http-reuse") => " (did you mean \"http_reuse\"?)",
        (true, "cookie") => " (cookie persistence is \"stickiness\": \"cookie\")",
        _ => "",
    }
}

fn check_object(v: &Value, path: &str, known: &[&str], out: &mut Vec<String>) {
    let Some(map) = v.as_object() else { return };
    for k in map.keys().filter(|k| !known.contains(&k.as_str())) {
        out.push(format!(
            "{path}.{k}: unknown field, ignored{}",
            hint(path, k)
        ));
    }
}

fn each<'a>(v: &'a Value, key: &str) -> impl Iterator<Item = (usize, &'a Value)> {
    v.get(key)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
}

/// Every unknown field inside the objects of a document, as
/// `path.field: unknown field, ignored`; in document order.
pub fn unknown_fields(doc: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for (i, v) in each(doc, "vips") {
        check_object(v, &format!("vips[{i}]"), &["address"], &mut out);
    }
    for (i, f) in each(doc, "frontends") {
        let base = format!("frontends[{i}]");
        check_object(f, &base, FRONTEND, &mut out);
        if let Some(t) = f.get("tls") {
            check_object(t, &format!("{base}.tls"), &["certificates"], &mut out);
        }
        if let Some(h) = f.get("health") {
            check_object(h, &format!("{base}.health"), HEALTH, &mut out);
        }
    }
    for (i, p) in each(doc, "pools") {
        let base = format!("pools[{i}]");
        check_object(p, &base, POOL, &mut out);
        if let Some(c) = p.get("check") {
            check_object(c, &format!("{base}.check"), CHECK, &mut out);
        }
        if let Some(t) = p.get("timeouts") {
            check_object(t, &format!("{base}.timeouts"), TIMEOUTS, &mut out);
        }
        for (j, s) in each(p, "servers") {
            check_object(s, &format!("{base}.servers[{j}]"), SERVER, &mut out);
        }
    }
    for (key, known) in [
        ("logic", &["name", "template"][..]),
        ("maps", &["name", "entries"][..]),
        ("acls", &["name", "entries"][..]),
        ("certificates", &["name", "pem"][..]),
    ] {
        for (i, o) in each(doc, key) {
            check_object(o, &format!("{key}[{i}]"), known, &mut out);
        }
    }
    if let Some(a) = doc.get("availability_zones") {
        check_object(
            a,
            "availability_zones",
            &["zones", "evacuated", "client_subnets"],
            &mut out,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_unknown_fields_are_reported_top_level_ones_are_not() {
        let doc = serde_json::json!({
            "schema": 1, "some_future_field": {"x": 1},
            "frontends": [{"name": "f", "bind": [], "mode": "http", "tls": {"certificates": [], "ciphers": "x"}}],
            "pools": [{"name": "p", "mode": "http", "logic": ["x"], "retries": 3, "timeout": "1s",
                       "timeouts": {"connect": "1s", "client": "2s"},
                       "check": {"type": "tcp", "intervall": "2s"},
                       "servers": [{"name": "s", "address": "10.0.0.1", "port": 80, "zone": "az1"}]}],
            "availability_zones": {"zones": ["a"], "evacuate": ["a"]}
        });
        assert_eq!(
            unknown_fields(&doc),
            [
                "frontends[0].tls.ciphers: unknown field, ignored",
                "pools[0].timeout: unknown field, ignored (did you mean \"timeouts\"?)",
                "pools[0].check.intervall: unknown field, ignored",
                "pools[0].timeouts.client: unknown field, ignored",
                "pools[0].servers[0].zone: unknown field, ignored",
                "availability_zones.evacuate: unknown field, ignored",
            ]
        );
    }

    #[test]
    fn the_full_fixture_has_none() {
        let doc: Value =
            serde_json::from_str(include_str!("../../fixtures/api/valid/full.json")).unwrap();
        assert!(
            unknown_fields(&doc).is_empty(),
            "{:?}",
            unknown_fields(&doc)
        );
        let doc: Value =
            serde_json::from_str(include_str!("../../fixtures/api/valid/az.json")).unwrap();
        assert!(
            unknown_fields(&doc).is_empty(),
            "{:?}",
            unknown_fields(&doc)
        );
        let doc: Value =
            serde_json::from_str(include_str!("../../fixtures/api/valid/pool-logic.json")).unwrap();
        assert!(
            unknown_fields(&doc).is_empty(),
            "{:?}",
            unknown_fields(&doc)
        );
    }
}
