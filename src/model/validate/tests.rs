//! Unit tests of `model::validate`: whole documents, their errors, the removal guard.

use super::*;

fn ctx() -> ValidateContext {
    ValidateContext {
        group: "blue".into(),
    }
}

fn doc(extra: serde_json::Value) -> Vec<u8> {
    let mut base = serde_json::json!({
        "schema": 1, "revision": 7, "group": "blue",
        "vips": [{"address": "192.0.2.10/32"}],
        "frontends": [{"name": "www", "bind": ["192.0.2.10:80"], "mode": "http", "default_pool": "web"}],
        "pools": [{"name": "web", "mode": "http", "servers": [
            {"name": "a", "address": "10.1.0.1", "port": 8080, "weight": 100}
        ]}]
    });
    if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    serde_json::to_vec(&base).unwrap()
}

fn errors(body: &[u8]) -> Vec<String> {
    parse_document(body, &ctx())
        .unwrap_err()
        .0
        .iter()
        .map(|e| e.to_string())
        .collect()
}

#[test]
fn valid_minimal() {
    let d = parse_document(&doc(serde_json::json!({})), &ctx()).unwrap();
    assert_eq!(d.revision, 7);
    assert_eq!(d.pools["web"].servers["a"].weight, 100);
    assert_eq!(d.services_of(&d.vips[0]).count(), 1);
}

#[test]
fn services_by_vip_matches_services_of_for_every_vip() {
    let body = doc(serde_json::json!({
        "vips": [
            {"address": "192.0.2.10/32"},
            {"address": "198.51.100.0/24"},
            {"address": "2001:db8::10/128"},
            {"address": "192.0.2.99/32"}
        ],
        "frontends": [
            {"name": "www", "bind": ["192.0.2.10:80", "198.51.100.7:80", "198.51.100.8:80"], "mode": "http", "default_pool": "web"},
            {"name": "api", "bind": ["198.51.100.9:443"], "mode": "http", "default_pool": "web"},
            {"name": "v6", "bind": ["[2001:db8::10]:80"], "mode": "http", "default_pool": "web"},
            {"name": "alt", "bind": ["192.0.2.10:8080"], "mode": "http", "default_pool": "web"}
        ]
    }));
    let d = parse_document(&body, &ctx()).unwrap();
    let by_vip = d.services_by_vip();
    assert_eq!(by_vip.len(), d.vips.len());
    for v in &d.vips {
        let want: Vec<&str> = d.services_of(v).map(|f| f.name.as_str()).collect();
        let got: Vec<&str> = by_vip[&v.address].iter().map(|f| f.name.as_str()).collect();
        assert_eq!(got, want, "services of {}", v.address);
    }
    let names = |vip: &str| -> Vec<&str> {
        by_vip[&vip.parse().unwrap()]
            .iter()
            .map(|f| f.name.as_str())
            .collect()
    };
    assert_eq!(names("192.0.2.10/32"), ["alt", "www"]);
    // Two binds of www inside the /24 count once.
    assert_eq!(names("198.51.100.0/24"), ["api", "www"]);
    assert_eq!(names("2001:db8::10/128"), ["v6"]);
    assert!(names("192.0.2.99/32").is_empty());
}

#[test]
fn missing_port_names_the_path() {
    let body = doc(
        serde_json::json!({"pools": [{"name": "web", "mode": "http", "servers": [
        {"name": "a", "address": "10.1.0.1", "port": 1}, {"name": "b", "address": "10.1.0.2"}]}]}),
    );
    assert_eq!(
        errors(&body),
        vec!["pools[0].servers[1].port: missing required field"]
    );
}

#[test]
fn wrong_type_names_the_path() {
    let body = doc(
        serde_json::json!({"pools": [{"name": "web", "mode": "http", "servers": [
        {"name": "a", "address": "10.1.0.1", "port": "80"}]}]}),
    );
    let e = errors(&body);
    assert_eq!(e.len(), 1);
    assert!(
        e[0].starts_with("pools[0].servers[0].port: invalid type"),
        "{e:?}"
    );
}

#[test]
fn reports_all_errors_at_once() {
    let body = doc(serde_json::json!({
        "frontends": [{"name": "bad name", "bind": ["198.51.100.1:80", "192.0.2.10:0"], "mode": "http", "default_pool": "nope"}],
        "pools": [{"name": "web", "mode": "http", "servers": [
            {"name": "a;b", "address": "10.1.0.1", "port": 70000, "weight": 300}]}]
    }));
    let e = errors(&body);
    for want in [
        "frontends[0].name: invalid name \"bad name\"",
        "frontends[0].bind[0]: bind address 198.51.100.1 is outside every VIP",
        "frontends[0].bind[1]: port 0 out of range",
        "frontends[0].default_pool: unknown pool \"nope\"",
        "pools[0].servers[0].name: invalid name \"a;b\"",
        "pools[0].servers[0].port: port 70000 out of range",
        "pools[0].servers[0].weight: weight 300 out of range",
    ] {
        assert!(
            e.iter().any(|x| x.starts_with(want)),
            "missing {want:?} in {e:#?}"
        );
    }
}

#[test]
fn garbage_is_rejected() {
    let e = parse_document(b"<html>503</html>", &ctx()).unwrap_err();
    assert_eq!(e.0.len(), 1);
    assert!(e.0[0].message.contains("expected value"), "{e}");
}

#[test]
fn wrong_group_is_rejected() {
    let body = doc(serde_json::json!({"group": "green"}));
    assert_eq!(
        errors(&body),
        vec!["group: document is for group \"green\", this host is in group \"blue\""]
    );
}

#[test]
fn removal_guard_refuses_emptying() {
    let prev = parse_document(&doc(serde_json::json!({})), &ctx()).unwrap();
    let mut next = DesiredState::empty("blue");
    next.revision = 8;
    let e = removal_guard(&prev, &next, 0.5).unwrap_err();
    assert!(
        e.contains("1 of 1 VIPs") && e.contains("1 of 1 servers"),
        "{e}"
    );
    next.force = true;
    assert!(removal_guard(&prev, &next, 0.5).is_ok());
    next.force = false;
    assert!(removal_guard(&prev, &next, 1.0).is_ok());
    // Removing nothing is always fine, also from an empty state.
    assert!(removal_guard(&prev, &prev, 0.0).is_ok());
    assert!(removal_guard(&DesiredState::empty("blue"), &prev, 0.0).is_ok());
}
