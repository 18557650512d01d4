//! PURE: map entries, ACL patterns and certificate contents → runtime commands.
//!
//! Only files HAProxy has loaded are observed and planned for; everything
//! else is served by rewriting the file. Small changes go entry by entry;
//! large ones replace the whole file atomically in one transaction
//! (`prepare`/`add @V` in payload chunks/`commit`), so traffic never sees a
//! half-updated map.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use sha1::{Digest, Sha1};

use crate::model::files::{acl_path, cert_path, map_path};
use crate::model::observed::ObservedData;
use crate::model::{AclDef, Certificate, DesiredState, MapDef};

use super::{Command, Plan};

/// More entry changes than this in one file → one atomic replacement instead.
pub const ENTRY_CHANGES_BEFORE_REPLACE: usize = 32;

/// SHA-1 fingerprint (uppercase hex) of the first certificate in a PEM bundle,
/// as HAProxy's `show ssl cert` prints it.
pub fn pem_fingerprint(pem: &str) -> Option<String> {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()?
        .ok()?;
    Some(hex::encode_upper(Sha1::digest(der.as_ref())))
}

/// Appends the commands converging maps, ACLs and certificates to `p`.
pub fn plan_data(d: &DesiredState, data_dir: &Path, obs: &ObservedData, p: &mut Plan) {
    for m in super::az::all_maps(d) {
        plan_map(&m, data_dir, obs, p);
    }
    for a in d.acls.values() {
        plan_acl(a, data_dir, obs, p);
    }
    for c in d.certificates.values() {
        plan_cert(c, data_dir, obs, p);
    }
}

/// One map: entry by entry, or one atomic replacement past
/// [`ENTRY_CHANGES_BEFORE_REPLACE`] changes.
fn plan_map(m: &MapDef, data_dir: &Path, obs: &ObservedData, p: &mut Plan) {
    let file = data_dir
        .join(map_path(m.name.as_str()))
        .display()
        .to_string();
    let Some(have) = obs.maps.get(&file) else {
        return;
    };
    let mut count: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (k, v) in have {
        count.entry(k.as_str()).or_default().push(v.as_str());
    }
    let mut cmds = Vec::new();
    for (k, v) in &m.entries {
        match count.get(k.as_str()) {
            None => cmds.push(Command::AddMap {
                file: file.clone(),
                key: k.clone(),
                value: v.clone(),
            }),
            Some(vals) if vals.len() > 1 => {
                cmds.push(Command::DelMap {
                    file: file.clone(),
                    key: k.clone(),
                });
                cmds.push(Command::AddMap {
                    file: file.clone(),
                    key: k.clone(),
                    value: v.clone(),
                });
            }
            Some(vals) if vals[0] != v => cmds.push(Command::SetMap {
                file: file.clone(),
                key: k.clone(),
                value: v.clone(),
            }),
            Some(_) => {}
        }
    }
    for k in count.keys().filter(|k| !m.entries.contains_key(**k)) {
        cmds.push(Command::DelMap {
            file: file.clone(),
            key: k.to_string(),
        });
    }
    if cmds.len() > ENTRY_CHANGES_BEFORE_REPLACE {
        p.commands.push(Command::ReplaceMap {
            file,
            entries: m
                .entries
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        });
    } else {
        p.commands.extend(cmds);
    }
}

/// One ACL: pattern by pattern, or one atomic replacement past
/// [`ENTRY_CHANGES_BEFORE_REPLACE`] changes or when HAProxy holds duplicates.
fn plan_acl(a: &AclDef, data_dir: &Path, obs: &ObservedData, p: &mut Plan) {
    let file = data_dir
        .join(acl_path(a.name.as_str()))
        .display()
        .to_string();
    let Some(have) = obs.acls.get(&file) else {
        return;
    };
    let have_set: BTreeSet<&str> = have.iter().map(String::as_str).collect();
    let want: BTreeSet<&str> = a.entries.iter().map(String::as_str).collect();
    let mut cmds: Vec<Command> = want
        .difference(&have_set)
        .map(|x| Command::AddAcl {
            file: file.clone(),
            pattern: x.to_string(),
        })
        .collect();
    cmds.extend(have_set.difference(&want).map(|x| Command::DelAcl {
        file: file.clone(),
        pattern: x.to_string(),
    }));
    let duplicates = have.len() != have_set.len();
    if cmds.len() > ENTRY_CHANGES_BEFORE_REPLACE || duplicates {
        p.commands.push(Command::ReplaceAcl {
            file,
            patterns: a.entries.clone(),
        });
    } else {
        p.commands.extend(cmds);
    }
}

/// One certificate: `set ssl cert` when its fingerprint differs, a reload
/// when it is over the runtime payload limit.
fn plan_cert(c: &Certificate, data_dir: &Path, obs: &ObservedData, p: &mut Plan) {
    let file = data_dir
        .join(cert_path(c.name.as_str()))
        .display()
        .to_string();
    let Some(have) = obs.certs.get(&file) else {
        return;
    };
    if pem_fingerprint(&c.pem).as_deref() != Some(have.as_str()) {
        if c.pem.len() > crate::model::grammar::MAX_PAYLOAD {
            p.reload.push(super::ReloadReason::CertificateTooLarge {
                name: c.name.to_string(),
            });
        } else {
            p.commands.push(Command::SetCert {
                file,
                pem: c.pem.clone(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Name;

    fn state(entries: &[(&str, &str)], acl: &[&str]) -> DesiredState {
        let mut d = DesiredState::empty("blue");
        let n = Name::try_new("m").unwrap();
        d.maps.insert(
            n.clone(),
            MapDef {
                name: n,
                entries: entries
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            },
        );
        let a = Name::try_new("a").unwrap();
        d.acls.insert(
            a.clone(),
            AclDef {
                name: a,
                entries: acl.iter().map(|s| s.to_string()).collect(),
            },
        );
        d
    }

    fn lines(p: &Plan) -> Vec<String> {
        p.commands.iter().map(|c| c.to_line()).collect()
    }

    #[test]
    fn entry_level_diffs() {
        let d = state(
            &[
                ("a.example", "www"),
                ("b.example", "api"),
                ("new.example", "www"),
            ],
            &["10.0.0.0/8", "192.0.2.1"],
        );
        let mut obs = ObservedData::default();
        obs.maps.insert(
            "/d/maps/m.map".into(),
            vec![
                ("a.example".into(), "www".into()),
                ("b.example".into(), "old".into()),
                ("gone.example".into(), "x".into()),
            ],
        );
        obs.acls.insert(
            "/d/acls/a.acl".into(),
            vec!["10.0.0.0/8".into(), "203.0.113.0/24".into()],
        );
        let mut p = Plan::default();
        plan_data(&d, Path::new("/d"), &obs, &mut p);
        assert_eq!(
            lines(&p),
            vec![
                "set map /d/maps/m.map b.example api",
                "add map /d/maps/m.map new.example www",
                "del map /d/maps/m.map gone.example",
                "add acl /d/acls/a.acl 192.0.2.1",
                "del acl /d/acls/a.acl 203.0.113.0/24",
            ]
        );
        // Converged: nothing to do.
        let mut obs2 = ObservedData::default();
        obs2.maps.insert(
            "/d/maps/m.map".into(),
            d.maps["m"]
                .entries
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        );
        obs2.acls
            .insert("/d/acls/a.acl".into(), d.acls["a"].entries.clone());
        let mut p = Plan::default();
        plan_data(&d, Path::new("/d"), &obs2, &mut p);
        assert!(p.is_converged(), "{p:?}");
    }

    #[test]
    fn large_changes_replace_atomically_and_unloaded_files_are_skipped() {
        let entries: Vec<(String, String)> = (0..100)
            .map(|i| (format!("h{i}.example"), "www".to_string()))
            .collect();
        let refs: Vec<(&str, &str)> = entries
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let d = state(&refs, &[]);
        let mut obs = ObservedData::default();
        obs.maps.insert("/d/maps/m.map".into(), vec![]);
        let mut p = Plan::default();
        plan_data(&d, Path::new("/d"), &obs, &mut p);
        assert_eq!(lines(&p), vec!["replace map /d/maps/m.map (100 entries)"]);
        let mut p = Plan::default();
        plan_data(&d, Path::new("/d"), &ObservedData::default(), &mut p);
        assert!(
            p.commands.is_empty(),
            "a map HAProxy did not load is only written to disk"
        );
    }

    #[test]
    fn certificate_fingerprint_matches_openssl() {
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string("fixtures/api/valid/full.json").unwrap())
                .unwrap();
        let pem = doc["certificates"][0]["pem"].as_str().unwrap();
        let fp = pem_fingerprint(pem).unwrap();
        assert_eq!(fp.len(), 40);
        assert!(fp
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_lowercase()));
        assert_eq!(pem_fingerprint("not a pem"), None);
    }
}
