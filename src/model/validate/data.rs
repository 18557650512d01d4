//! The data sections: `certificates`, `maps` and `acls`, each a list of
//! uniquely named objects whose contents must pass `model::grammar` (they
//! reach data files and the runtime socket).

use std::collections::BTreeMap;

use super::wire::{WireAcl, WireCertificate, WireMap};
use super::Errs;
use crate::model::{grammar, AclDef, Certificate, MapDef, Name};

/// The `certificates` section (`certificates[i]`), by name.
pub(super) fn validate_certificates(
    errs: &mut Errs,
    list: &[WireCertificate],
) -> BTreeMap<Name, Certificate> {
    let mut certificates = BTreeMap::new();
    for (i, c) in list.iter().enumerate() {
        let name = errs.name(&c.name, format!("certificates[{i}].name"));
        let pem = errs.required(&c.pem, format!("certificates[{i}].pem"));
        if let Some(p) = pem {
            if let Err(e) = grammar::check_pem(p) {
                errs.push(format!("certificates[{i}].pem"), e);
            }
        }
        if let (Some(name), Some(pem)) = (name, pem) {
            if certificates.contains_key(&name) {
                errs.push(
                    format!("certificates[{i}].name"),
                    format!("duplicate certificate name {name}"),
                );
            } else {
                certificates.insert(
                    name.clone(),
                    Certificate {
                        name,
                        pem: pem.clone(),
                    },
                );
            }
        }
    }
    certificates
}

/// The `maps` section (`maps[i]`), by name.
pub(super) fn validate_maps(errs: &mut Errs, list: &[WireMap]) -> BTreeMap<Name, MapDef> {
    let mut maps = BTreeMap::new();
    for (i, m) in list.iter().enumerate() {
        let name = errs.name(&m.name, format!("maps[{i}].name"));
        for (k, v) in &m.entries {
            if let Err(e) = grammar::check_key(k, "key") {
                errs.push(format!("maps[{i}].entries"), e);
            } else if let Err(e) = grammar::check_value(v) {
                errs.push(format!("maps[{i}].entries.{k}"), e);
            }
        }
        if let Some(name) = name {
            if maps.contains_key(&name) {
                errs.push(
                    format!("maps[{i}].name"),
                    format!("duplicate map name {name}"),
                );
            } else {
                maps.insert(
                    name.clone(),
                    MapDef {
                        name,
                        entries: m.entries.clone(),
                    },
                );
            }
        }
    }
    maps
}

/// The `acls` section (`acls[i]`), by name; each ACL's patterns sorted and
/// without duplicates.
pub(super) fn validate_acls(errs: &mut Errs, list: &[WireAcl]) -> BTreeMap<Name, AclDef> {
    let mut acls = BTreeMap::new();
    for (i, a) in list.iter().enumerate() {
        let name = errs.name(&a.name, format!("acls[{i}].name"));
        for (j, e) in a.entries.iter().enumerate() {
            if let Err(e) = grammar::check_key(e, "pattern") {
                errs.push(format!("acls[{i}].entries[{j}]"), e);
            }
        }
        if let Some(name) = name {
            if acls.contains_key(&name) {
                errs.push(
                    format!("acls[{i}].name"),
                    format!("duplicate ACL name {name}"),
                );
            } else {
                let mut entries = a.entries.clone();
                entries.sort();
                entries.dedup();
                acls.insert(name.clone(), AclDef { name, entries });
            }
        }
    }
    acls
}
