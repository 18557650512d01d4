//! The reload-relevant structure of a desired state, and why two differ.
//!
//! Everything the runtime socket cannot change (docs/api.md, "What is applied how": frontends, binds,
//! pools' mode/balance/check, logic, the set of maps/ACLs/certificates,
//! templates and global settings) is summarised per object as a digest. The
//! structure of the running config is remembered after each confirmed reload
//! and embedded in the rendered file's header, so an agent restart knows what
//! HAProxy runs without reloading it.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::logic::LogicHost;
use crate::model::{DesiredState, Pool, Routing, Stickiness};

use super::reason::{Change, ReloadReason};

/// Per-object digests of everything that needs a reload to change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Structure {
    pub frontends: BTreeMap<String, String>,
    pub pools: BTreeMap<String, String>,
    pub logic: BTreeMap<String, String>,
    pub maps: BTreeSet<String>,
    pub acls: BTreeSet<String>,
    pub certificates: BTreeSet<String>,
    /// Digest of the templates and the agent settings rendered into global/defaults.
    pub global: String,
    /// Digest of each attached snippet's *rendered* lines, by `frontend NAME`
    /// / `pool NAME`: whatever a template reads from its context (zones,
    /// evacuation, other pools, node facts), a change of its output is a
    /// reload. Empty (and left out of the digest) without attached logic.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub snippets: BTreeMap<String, String>,
}

/// What of a pool needs a reload: mode, balance, check, its logic list and
/// typed options (timeouts, retries, redispatch, http-reuse, slowstart, the
/// backup servers' names); for routing and
/// stickiness their kind and (routed pools) the group's zone list, since a
/// zone is a backend. Never servers, weights, states, evacuation or client
/// subnets: those go through the runtime socket. A pool without routing or
/// stickiness digests as before they existed (no reload on upgrade).
fn pool_digest(d: &DesiredState, p: &Pool) -> String {
    if !p.logic.is_empty() || !p.options.is_default() {
        let zones = d.availability_zones.as_ref().map(|a| &a.zones);
        return digest(&(
            &p.mode,
            &p.balance,
            &p.check,
            p.routing,
            p.stickiness,
            (p.routing == Routing::Az).then_some(zones),
            &p.logic,
            &p.options,
        ));
    }
    if p.routing == Routing::None && p.stickiness == Stickiness::None {
        return digest(&(&p.mode, &p.balance, &p.check));
    }
    let zones = match p.routing {
        Routing::Az => d.availability_zones.as_ref().map(|a| &a.zones),
        Routing::None => None,
    };
    digest(&(
        &p.mode,
        &p.balance,
        &p.check,
        p.routing,
        p.stickiness,
        zones,
    ))
}

/// Digests of every attached snippet's rendered lines. A document whose
/// logic does not render is refused by validation before it gets here; if
/// one still fails, the error text is digested (a change is still seen).
fn snippet_digests(d: &DesiredState, host: &LogicHost) -> BTreeMap<String, String> {
    let has_logic = d.frontends.values().any(|f| !f.logic.is_empty())
        || d.pools.values().any(|p| !p.logic.is_empty());
    if !has_logic {
        return BTreeMap::new();
    }
    let lines = |v: &Vec<crate::logic::CheckedSnippet>| {
        digest(&v.iter().map(|c| (c.name(), c.lines())).collect::<Vec<_>>())
    };
    match crate::logic::render_logic(d, host) {
        Ok(r) => r
            .frontends
            .iter()
            .map(|(n, v)| (format!("frontend {n}"), lines(v)))
            .chain(r.pools.iter().map(|(n, v)| (format!("pool {n}"), lines(v))))
            .collect(),
        Err(errs) => {
            let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
            BTreeMap::from([("error".to_string(), digest(&text))])
        }
    }
}

fn digest<T: Serialize>(v: &T) -> String {
    let bytes = serde_json::to_vec(v).unwrap_or_default();
    hex::encode(&Sha256::digest(&bytes)[..8])
}

impl Structure {
    /// The structure of `d`; `global` digests templates and render settings.
    /// Snippets are rendered with placeholder host facts
    /// ([`LogicHost::unknown`]); the renderer uses [`Structure::of_host`].
    pub fn of(d: &DesiredState, global: &str) -> Structure {
        Structure::of_host(d, global, &LogicHost::unknown(&d.group))
    }

    /// The structure of `d` with snippets rendered for `host`.
    pub fn of_host(d: &DesiredState, global: &str, host: &LogicHost) -> Structure {
        Structure {
            snippets: snippet_digests(d, host),
            frontends: d
                .frontends
                .values()
                .map(|f| {
                    // The VIP health check is the agent's business, not HAProxy's.
                    let mut f = f.clone();
                    f.health = None;
                    (f.name.to_string(), digest(&f))
                })
                .collect(),
            pools: d
                .pools
                .values()
                .map(|p| (p.name.to_string(), pool_digest(d, p)))
                .collect(),
            logic: d
                .logic
                .values()
                .map(|l| (l.name.to_string(), digest(&l.template)))
                .collect(),
            maps: super::az::all_maps(d)
                .iter()
                .map(|m| m.name.to_string())
                .collect(),
            acls: d.acls.keys().map(|k| k.to_string()).collect(),
            certificates: d.certificates.keys().map(|k| k.to_string()).collect(),
            global: global.to_string(),
        }
    }

    /// One digest of the whole structure (written into the rendered file's header).
    pub fn digest(&self) -> String {
        digest(self)
    }

    pub fn has_pool(&self, name: &str) -> bool {
        self.pools.contains_key(name)
    }

    /// Why `next` needs a reload over `self` (empty: none).
    pub fn diff(&self, next: &Structure) -> Vec<ReloadReason> {
        let mut out = Vec::new();
        diff_map(&mut out, "frontend", &self.frontends, &next.frontends);
        diff_map(&mut out, "pool", &self.pools, &next.pools);
        diff_map(&mut out, "logic", &self.logic, &next.logic);
        diff_map(&mut out, "snippet of", &self.snippets, &next.snippets);
        diff_set(&mut out, "map", &self.maps, &next.maps);
        diff_set(&mut out, "acl", &self.acls, &next.acls);
        diff_set(
            &mut out,
            "certificate",
            &self.certificates,
            &next.certificates,
        );
        if self.global != next.global {
            out.push(ReloadReason::Global);
        }
        out
    }
}

fn diff_map(
    out: &mut Vec<ReloadReason>,
    what: &'static str,
    a: &BTreeMap<String, String>,
    b: &BTreeMap<String, String>,
) {
    // The common case (nothing changed) in one ordered walk, no lookups.
    if a.len() == b.len() && a.iter().eq(b.iter()) {
        return;
    }
    for (k, v) in b {
        match a.get(k) {
            None => out.push(change(what, k, Change::Added)),
            Some(old) if old != v => out.push(change(what, k, Change::Changed)),
            _ => {}
        }
    }
    for k in a.keys().filter(|k| !b.contains_key(*k)) {
        out.push(change(what, k, Change::Removed));
    }
}

fn change(object: &'static str, name: &str, change: Change) -> ReloadReason {
    ReloadReason::Structure {
        object,
        name: name.to_string(),
        change,
    }
}

fn diff_set(
    out: &mut Vec<ReloadReason>,
    what: &'static str,
    a: &BTreeSet<String>,
    b: &BTreeSet<String>,
) {
    for k in b.difference(a) {
        out.push(change(what, k, Change::Added));
    }
    for k in a.difference(b) {
        out.push(change(what, k, Change::Removed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::validate::{parse_document, ValidateContext};
    use serde_json::{json, Value};

    const POOL_LOGIC: &str = include_str!("../../fixtures/api/valid/pool-logic.json");

    fn parse(v: &Value) -> DesiredState {
        parse_document(
            &serde_json::to_vec(v).unwrap(),
            &ValidateContext {
                group: "blue".into(),
            },
        )
        .unwrap()
    }

    /// (what changes, the reload reasons it gives): pool options, backup
    /// flags and logic are a reload; weights, states, servers and evacuation
    /// are not, unless a snippet renders what changed.
    #[test]
    fn what_of_pool_options_and_logic_needs_a_reload() {
        type Edit = fn(&mut Value);
        let cases: &[(&str, Edit, &[&str])] = &[
            ("nothing", |_| {}, &[]),
            (
                "a weight",
                |v| v["pools"][0]["servers"][0]["weight"] = json!(7),
                &[],
            ),
            (
                "a state",
                |v| v["pools"][0]["servers"][1]["state"] = json!("drain"),
                &[],
            ),
            (
                "a server added",
                |v| {
                    v["pools"][0]["servers"].as_array_mut().unwrap().push(
                        json!({"name": "web2c", "address": "10.12.0.3", "port": 8080, "az": "az2"}),
                    )
                },
                &[],
            ),
            (
                "az1 evacuated (no snippet reads it)",
                |v| v["availability_zones"]["evacuated"] = json!(["az1"]),
                &[],
            ),
            (
                "a backup flag",
                |v| v["pools"][0]["servers"][0]["backup"] = json!(true),
                &["pool www changed"],
            ),
            (
                "a timeout",
                |v| v["pools"][1]["timeouts"]["server"] = json!("20m"),
                &["pool db changed"],
            ),
            (
                "http_reuse",
                |v| v["pools"][0]["http_reuse"] = json!("never"),
                &["pool www changed"],
            ),
            (
                "slowstart",
                |v| v["pools"][0]["slowstart"] = json!("20s"),
                &["pool www changed"],
            ),
            (
                "retries",
                |v| v["pools"][1]["retries"] = json!(3),
                &["pool db changed"],
            ),
            (
                "redispatch",
                |v| v["pools"][0]["redispatch"] = json!(false),
                &["pool www changed"],
            ),
            (
                "a pool's logic list",
                |v| v["pools"][1]["logic"] = json!([]),
                &["pool db changed", "snippet of pool db removed"],
            ),
            (
                "a template",
                |v| v["logic"][0]["template"] = json!("description changed"),
                &[
                    "logic pool_tag changed",
                    "snippet of pool db changed",
                    "snippet of pool www changed",
                ],
            ),
            (
                "another pool's mode, read by a snippet",
                |v| {
                    v["logic"][0]["template"] = json!("description {{ pools.db.balance }}");
                    v["pools"][1]["balance"] = json!("roundrobin");
                },
                &[
                    "pool db changed",
                    "logic pool_tag changed",
                    "snippet of pool db changed",
                    "snippet of pool www changed",
                ],
            ),
        ];
        for (what, edit, want) in cases {
            let base: Value = serde_json::from_str(POOL_LOGIC).unwrap();
            let mut next = base.clone();
            edit(&mut next);
            let got: Vec<String> = Structure::of(&parse(&base), "g")
                .diff(&Structure::of(&parse(&next), "g"))
                .iter()
                .map(|r| r.to_string())
                .collect();
            assert_eq!(got, *want, "{what}");
        }
    }

    /// The bug of issue 10: a snippet rendering something the runtime
    /// changes (here the evacuated zones) must make that change a reload,
    /// or HAProxy keeps running the old snippet.
    #[test]
    fn a_snippet_reading_evacuation_makes_evacuation_a_reload() {
        let mut base: Value = serde_json::from_str(POOL_LOGIC).unwrap();
        base["logic"][1]["template"] =
            json!("http-response set-header X-Evacuated \"{{ az.evacuated | join(',') }}\"");
        let mut next = base.clone();
        next["availability_zones"]["evacuated"] = json!(["az2"]);
        let got: Vec<String> = Structure::of(&parse(&base), "g")
            .diff(&Structure::of(&parse(&next), "g"))
            .iter()
            .map(|r| r.to_string())
            .collect();
        assert_eq!(got, ["snippet of pool www changed"]);
    }

    #[test]
    fn a_document_without_logic_or_options_digests_as_before() {
        let d =
            parse(&serde_json::from_str(include_str!("../../fixtures/api/valid/az.json")).unwrap());
        let s = Structure::of(&d, "g");
        assert!(s.snippets.is_empty());
        // The serialized form has no `snippets` key, so the digest is the
        // one an older agent embedded.
        assert!(!serde_json::to_string(&s).unwrap().contains("snippets"));
    }
}
