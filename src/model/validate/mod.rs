//! The schema-1 wire document → [`DesiredState`], or every reason why not.
//!
//! This is where untrusted input from the central API becomes trusted model
//! data (docs/api.md, docs/safety.md). The wire structs (`Wire*`, in `wire`)
//! accept anything shape-compatible: unknown fields are ignored for forward
//! compatibility and every field is optional, so that a missing required
//! field is reported with its full JSON path (`pools[3].servers[7].port`)
//! instead of serde's "missing field". Validation then collects *all*
//! problems at once; a document with any problem is rejected as a whole.
//!
//! One file per section, run in the order of `validate` (a section may
//! refer only to sections before it, and the errors come in that order):
//! `vips`, `data` (certificates, maps, ACLs), `logic`, `pools` (with
//! [`revalidate_pool`], the etcd incremental path's), `frontends`; `health`
//! holds the check fields frontends and pools share, `model::az` the
//! availability zones.
//!
//! [`removal_guard`] (in [`crate::model::removal`]) is separate because it compares two
//! documents: it is run by the reconciler against the state currently applied.

mod data;
mod frontends;
mod health;
mod logic;
mod pools;
mod vips;
mod wire;

use std::fmt;

use ipnet::IpNet;
use serde::Deserialize;

use super::hostnet::VipPolicy;
use super::*;
use crate::logic::LogicHost;
pub use crate::model::removal::removal_guard;
pub use pools::revalidate_pool;
use wire::{WireDocument, WireVip};

/// One problem in a document, with the JSON path of the offending value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    /// JSON path like `pools[3].servers[7].port`; empty for the whole document.
    pub path: String,
    pub message: String,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// All problems of a rejected document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors(pub Vec<ValidationError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 20;
        for (i, e) in self.0.iter().take(SHOWN).enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        if self.0.len() > SHOWN {
            write!(f, "; and {} more", self.0.len() - SHOWN)?;
        }
        Ok(())
    }
}

/// What validation needs to know about the host.
#[derive(Debug, Clone)]
pub struct ValidateContext {
    /// The group this host belongs to; a document for another group is refused.
    pub group: String,
}

/// Parses and validates a document body (JSON bytes) on its own, rendering
/// its logic snippets with placeholder host facts ([`LogicHost::unknown`])
/// and checking no VIP against any host.
///
/// The agent validates with [`parse_document_on_host`]; the renderer checks
/// the snippets again with the real host facts. This is for tools and tests
/// that only care about the document's own consistency.
pub fn parse_document(
    body: &[u8],
    ctx: &ValidateContext,
) -> Result<DesiredState, ValidationErrors> {
    parse_with(body, ctx, &LogicHost::unknown(&ctx.group), None)
}

/// Parses and validates a document body, rendering every logic snippet for
/// every frontend it is attached to with this host's facts.
pub fn parse_document_for(
    body: &[u8],
    ctx: &ValidateContext,
    host: &LogicHost,
) -> Result<DesiredState, ValidationErrors> {
    parse_with(body, ctx, host, None)
}

/// Parses and validates a document body for this host: on top of
/// [`parse_document_for`], every VIP must pass `policy` (allow-list, length
/// cap, the host's own addresses and routes; see `model::hostnet`), each
/// problem reported at the VIP's path (`vips[3].address`).
pub fn parse_document_on_host(
    body: &[u8],
    ctx: &ValidateContext,
    host: &LogicHost,
    policy: &VipPolicy,
) -> Result<DesiredState, ValidationErrors> {
    parse_with(body, ctx, host, Some(policy))
}

/// The VIP prefixes a body names, without validating anything else: what
/// the host observation needs to know before validation (it keeps only the
/// host's addresses and routes that could collide with them). Unparsable
/// bodies and entries give an empty or partial list; validation reports them.
pub fn document_vips(body: &[u8]) -> Vec<IpNet> {
    #[derive(Deserialize)]
    struct OnlyVips {
        #[serde(default)]
        vips: Vec<WireVip>,
    }
    serde_json::from_slice::<OnlyVips>(body)
        .map(|d| {
            d.vips
                .iter()
                .filter_map(|v| v.address.as_deref()?.parse::<IpNet>().ok())
                .map(|n| n.trunc())
                .collect()
        })
        .unwrap_or_default()
}

fn parse_with(
    body: &[u8],
    ctx: &ValidateContext,
    host: &LogicHost,
    policy: Option<&VipPolicy>,
) -> Result<DesiredState, ValidationErrors> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    let wire: WireDocument = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." || path == "?" {
            String::new()
        } else {
            path
        };
        ValidationErrors(vec![ValidationError {
            path,
            message: e.into_inner().to_string(),
        }])
    })?;
    let mut d = validate(wire, ctx, host, policy)?;
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        d.warnings = super::unknown::unknown_fields(&v);
    }
    Ok(d)
}

/// Validates a parsed wire document, section by section: the order fixes
/// what a section may refer to (only sections before it) and the order of
/// the errors.
fn validate(
    w: WireDocument,
    ctx: &ValidateContext,
    host: &LogicHost,
    policy: Option<&VipPolicy>,
) -> Result<DesiredState, ValidationErrors> {
    let mut errs = Errs(Vec::new());
    let (revision, group) = validate_header(&mut errs, &w, ctx);
    let vips = vips::validate_vips(&mut errs, &w.vips, policy);
    // Certificates, logic, maps, ACLs first: frontends refer to them.
    let certificates = data::validate_certificates(&mut errs, &w.certificates);
    let logic = logic::validate_logic(&mut errs, &w.logic);
    let maps = data::validate_maps(&mut errs, &w.maps);
    let acls = data::validate_acls(&mut errs, &w.acls);
    let availability_zones = w
        .availability_zones
        .as_ref()
        .map(|a| super::az::validate_section(a, &mut errs.0));
    let pools = pools::validate_pools(&mut errs, &w.pools, availability_zones.as_ref(), &logic);
    let frontends = frontends::validate_frontends(
        &mut errs,
        &w.frontends,
        &vips,
        &certificates,
        &pools,
        &logic,
    );
    if !errs.0.is_empty() {
        return Err(ValidationErrors(errs.0));
    }
    let d = DesiredState {
        revision,
        group,
        force: w.force,
        vips,
        frontends,
        pools,
        logic,
        maps,
        acls,
        certificates,
        availability_zones,
        warnings: Vec::new(),
    };
    logic::check_logic(&d, &w, host)?;
    Ok(d)
}

/// The document's header: `schema` 1, a `revision` of 0 or more, and this
/// host's `group`; the revision and group as read (0 and empty when absent).
fn validate_header(errs: &mut Errs, w: &WireDocument, ctx: &ValidateContext) -> (u64, String) {
    match w.schema {
        Some(1) => {}
        Some(n) => errs.push(
            "schema",
            format!("unsupported schema {n}, this agent understands schema 1"),
        ),
        None => errs.push("schema", "missing required field"),
    }
    let revision = match w.revision {
        Some(r) if r >= 0 => r as u64,
        Some(r) => {
            errs.push("revision", format!("revision {r} is negative"));
            0
        }
        None => {
            errs.push("revision", "missing required field");
            0
        }
    };
    let group = match &w.group {
        Some(g) if *g == ctx.group => g.clone(),
        Some(g) => {
            errs.push(
                "group",
                format!(
                    "document is for group {g:?}, this host is in group {:?}",
                    ctx.group
                ),
            );
            g.clone()
        }
        None => {
            errs.push("group", "missing required field");
            String::new()
        }
    };
    (revision, group)
}

/// The problems found so far, and the checks every section uses on a field.
struct Errs(Vec<ValidationError>);

impl Errs {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ValidationError {
            path: path.into(),
            message: message.into(),
        });
    }

    fn required<'a, T>(&mut self, v: &'a Option<T>, path: String) -> Option<&'a T> {
        if v.is_none() {
            self.push(path, "missing required field");
        }
        v.as_ref()
    }

    fn name(&mut self, v: &Option<String>, path: String) -> Option<Name> {
        let s = self.required(v, path.clone())?;
        match Name::try_new(s) {
            Ok(n) => Some(n),
            Err(e) => {
                self.push(path, format!("invalid name {s:?}: {e}"));
                None
            }
        }
    }

    fn mode(&mut self, v: &Option<String>, path: String) -> Option<Mode> {
        match self.required(v, path.clone())?.as_str() {
            "http" => Some(Mode::Http),
            "tcp" => Some(Mode::Tcp),
            other => {
                self.push(
                    path,
                    format!("unknown mode {other:?}, expected \"http\" or \"tcp\""),
                );
                None
            }
        }
    }
}

/// Formats an error with its sources (tera hides the useful part in the chain).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests;
