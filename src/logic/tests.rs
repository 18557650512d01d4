//! Pool logic and the context templates see (table tests over documents).

use super::*;
use crate::model::validate::{parse_document, parse_document_for, ValidateContext};

fn ctx() -> ValidateContext {
    ValidateContext {
        group: "blue".into(),
    }
}

fn host(az: Option<&str>) -> LogicHost {
    LogicHost {
        node_name: "lb1".into(),
        node_group: "blue".into(),
        node_az: az.map(str::to_string),
        data_dir: "/etc/haproxy/lb-agent".into(),
    }
}

const POOL_LOGIC: &str = include_str!("../../fixtures/api/valid/pool-logic.json");

fn lines(r: &RenderedLogic, pool: &str) -> Vec<String> {
    r.pools[pool]
        .iter()
        .flat_map(|c| c.lines().to_vec())
        .collect()
}

#[test]
fn pool_snippets_render_with_the_pool_the_node_and_the_zones() {
    let d = parse_document_for(POOL_LOGIC.as_bytes(), &ctx(), &host(Some("az1"))).unwrap();
    let r = render_logic(&d, &host(Some("az1"))).unwrap();
    assert!(r.frontends.is_empty());
    assert_eq!(
        lines(&r, "www"),
        [
            "description pool www (http, routing az) on lb1, 2 pools in the group",
            "http-response set-header X-Pool www",
            "http-response set-header X-Zones az1,az2",
            "http-response set-header X-Node-Az az1",
        ]
    );
    // A tcp pool: the http-only lines are left out by the template itself.
    assert_eq!(
        lines(&r, "db"),
        ["description pool db (tcp, routing none) on lb1, 2 pools in the group"]
    );
    // Placeholder host facts (validation without a host).
    let r = render_logic(&d, &LogicHost::unknown("blue")).unwrap();
    assert_eq!(
        lines(&r, "www")[0],
        "description pool www (http, routing az) on any node, 2 pools in the group"
    );
}

#[test]
fn a_template_sees_other_pools_and_evacuation_but_no_servers() {
    let mut d = parse_document(POOL_LOGIC.as_bytes(), &ctx()).unwrap();
    let cases = [
        (
            "{{ pools.db.mode }} {{ pools.db.balance }}",
            "tcp leastconn",
        ),
        (
            "{{ pools.www.stickiness }} {{ pools.www.logic | join(',') }}",
            "source pool_tag,az_header",
        ),
        ("{{ az.evacuated | length }}", "0"),
        (
            "{{ pool.servers is defined }} {{ pools.db.servers is defined }}",
            "False False",
        ),
        ("{{ frontend is none }}", "True"),
    ];
    for (tmpl, want) in cases {
        d.logic.get_mut("pool_tag").unwrap().template = format!("description {tmpl}");
        let r = render_logic(&d, &host(None)).unwrap();
        assert_eq!(lines(&r, "db")[0], format!("description {want}"), "{tmpl}");
    }
    d.availability_zones
        .as_mut()
        .unwrap()
        .evacuated
        .insert(crate::model::Name::try_new("az2").unwrap());
    d.logic.get_mut("pool_tag").unwrap().template =
        "description {{ az.evacuated | join(',') }}".into();
    let r = render_logic(&d, &host(None)).unwrap();
    assert_eq!(lines(&r, "db")[0], "description az2");
}

#[test]
fn a_frontend_snippet_sees_the_zones_and_all_pools_too() {
    let mut v: serde_json::Value = serde_json::from_str(POOL_LOGIC).unwrap();
    v["frontends"][0]["logic"] = serde_json::json!(["fe"]);
    v["logic"].as_array_mut().unwrap().push(serde_json::json!({
        "name": "fe",
        "template": "http-request set-header X-Az {{ node.az }}-{{ az.zones | length }}-{{ pools | length }}-{{ pool.name }}"
    }));
    let d = parse_document(&serde_json::to_vec(&v).unwrap(), &ctx()).unwrap();
    let r = render_logic(&d, &host(Some("az2"))).unwrap();
    assert_eq!(
        r.frontends["www_http"][0].lines(),
        ["http-request set-header X-Az az2-2-2-www"]
    );
}

/// Hostile pool snippets: each refused at validation, the path naming the
/// pool's reference to the logic object, the message naming the rule.
#[test]
fn hostile_pool_snippets_are_refused_with_the_path_named() {
    let cases = [
        (
            include_str!("../../fixtures/hostile/pool-logic-external-check.json"),
            "pools[0].logic[1]",
            "logic evil_check (logic[1].template) rendered for pool web: line 1 \"option external-check\"",
        ),
        (
            include_str!("../../fixtures/hostile/pool-logic-lua-action.json"),
            "pools[0].logic[1]",
            "logic evil_lua (logic[1].template) rendered for pool web: line 1",
        ),
        (
            include_str!("../../fixtures/hostile/pool-logic-foreign-server.json"),
            "pools[0].logic[1]",
            "logic evil_server (logic[1].template) rendered for pool web: line 1 \"server extra 203.0.113.9:80\"",
        ),
    ];
    for (doc, path, message) in cases {
        let errs = parse_document(doc.as_bytes(), &ctx()).unwrap_err();
        assert_eq!(errs.0.len(), 1, "{errs}");
        assert_eq!(errs.0[0].path, path, "{errs}");
        assert!(errs.0[0].message.starts_with(message), "{errs}");
    }
}

/// A directive fine in a frontend but not in a backend is refused in a
/// pool's snippet, and the reverse.
#[test]
fn a_pool_snippet_is_checked_as_a_backend_section() {
    let mut v: serde_json::Value = serde_json::from_str(POOL_LOGIC).unwrap();
    let table = [
        ("use_backend db", false),
        ("tcp-request connection reject", false),
        ("option external-check", false),
        ("http-request set-header X-A b", true),
        ("timeout tunnel 1h", true),
        ("http-request return status 200 file /etc/shadow", false),
    ];
    for (line, ok) in table {
        v["logic"][0]["template"] = serde_json::json!(line);
        let r = parse_document(&serde_json::to_vec(&v).unwrap(), &ctx());
        match (r, ok) {
            (Ok(_), true) => {}
            (Err(e), false) => assert!(
                e.0.iter()
                    .all(|e| e.path == "pools[0].logic[0]" || e.path == "pools[1].logic[0]"),
                "{line}: {e}"
            ),
            (r, _) => panic!("{line}: expected ok={ok}, got {:?}", r.map(|_| ())),
        }
    }
}

#[test]
fn unknown_logic_in_a_pool_names_the_path() {
    let mut v: serde_json::Value = serde_json::from_str(POOL_LOGIC).unwrap();
    v["pools"][1]["logic"] = serde_json::json!(["pool_tag", "nope"]);
    let errs = parse_document(&serde_json::to_vec(&v).unwrap(), &ctx()).unwrap_err();
    assert_eq!(
        errs.to_string(),
        "pools[1].logic[1]: unknown logic \"nope\""
    );
}
