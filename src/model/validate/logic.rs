//! The `logic` section and its uses: each snippet compiles with the
//! engine the renderer uses (`logic::Engine`), references to it from
//! frontends and pools resolve, and, once the whole document is known, every
//! snippet renders within its bounds for everything it is attached to.

use std::collections::BTreeMap;

use super::wire::{WireDocument, WireLogic};
use super::{Errs, ValidationError, ValidationErrors};
use crate::logic::LogicHost;
use crate::model::{DesiredState, Logic, Name};

/// The `logic` section (`logic[i]`), by name; each template compiled (its
/// rendering is [`check_logic`]'s, after the whole document).
pub(super) fn validate_logic(errs: &mut Errs, list: &[WireLogic]) -> BTreeMap<Name, Logic> {
    let mut logic = BTreeMap::new();
    let engine = crate::logic::Engine::default();
    for (i, l) in list.iter().enumerate() {
        let name = errs.name(&l.name, format!("logic[{i}].name"));
        let template = errs.required(&l.template, format!("logic[{i}].template"));
        if let Some(t) = template {
            // The same engine and bounds the renderer uses; rendering per
            // frontend is checked once the whole document is known.
            if let Err(e) = engine.compile(t) {
                errs.push(format!("logic[{i}].template"), e.to_string());
            }
        }
        if let (Some(name), Some(template)) = (name, template) {
            if logic.contains_key(&name) {
                errs.push(
                    format!("logic[{i}].name"),
                    format!("duplicate logic name {name}"),
                );
            } else {
                logic.insert(
                    name.clone(),
                    Logic {
                        name,
                        template: template.clone(),
                    },
                );
            }
        }
    }
    logic
}

/// The logic objects named by `refs` (`BASE.logic[j]`), each known.
pub(super) fn logic_refs(
    errs: &mut Errs,
    refs: &[String],
    logic: &BTreeMap<Name, Logic>,
    base: &str,
) -> Vec<Name> {
    let mut out = Vec::new();
    for (j, l) in refs.iter().enumerate() {
        match Name::try_new(l) {
            Ok(n) if logic.contains_key(&n) => out.push(n),
            Ok(_) => errs.push(format!("{base}.logic[{j}]"), format!("unknown logic {l:?}")),
            Err(e) => errs.push(
                format!("{base}.logic[{j}]"),
                format!("invalid name {l:?}: {e}"),
            ),
        }
    }
    out
}

/// Renders every snippet for every frontend and pool it is attached to, as
/// the renderer will, and refuses the document if one exceeds its bounds or
/// leaves its section (`logic::check`). The error names the JSON path (a
/// frontend's: `logic[i].template` and the frontend; a pool's:
/// `pools[i].logic[j]` and the logic object).
pub(super) fn check_logic(
    d: &DesiredState,
    w: &WireDocument,
    host: &LogicHost,
) -> Result<(), ValidationErrors> {
    let Err(problems) = crate::logic::render_logic(d, host) else {
        return Ok(());
    };
    let index = |names: Vec<Option<&String>>, n: &Name| {
        names
            .iter()
            .position(|x| x.map(String::as_str) == Some(n.as_str()))
            .unwrap_or(0)
    };
    let logic_names: Vec<Option<&String>> = w.logic.iter().map(|l| l.name.as_ref()).collect();
    let fe_names: Vec<Option<&String>> = w.frontends.iter().map(|f| f.name.as_ref()).collect();
    let pool_names: Vec<Option<&String>> = w.pools.iter().map(|p| p.name.as_ref()).collect();
    let errors = problems
        .into_iter()
        .map(|p| {
            use crate::logic::Target;
            // A frontend's snippet: the logic's template (as before pools
            // had logic); a pool's: the reference (`pools[3].logic[0]`).
            let reference = |base: String, refs: Option<&Vec<String>>| {
                let j = refs
                    .and_then(|r| r.iter().position(|x| x.as_str() == p.logic.as_str()))
                    .unwrap_or(0);
                format!("{base}.logic[{j}]")
            };
            let (path, mut message) = match &p.target {
                Some(Target::Frontend(f)) => (
                    format!("logic[{}].template", index(logic_names.clone(), &p.logic)),
                    format!(
                        "rendered for frontends[{}] ({f}): ",
                        index(fe_names.clone(), f)
                    ),
                ),
                Some(Target::Pool(n)) => {
                    let i = index(pool_names.clone(), n);
                    (
                        reference(format!("pools[{i}]"), w.pools.get(i).map(|x| &x.logic)),
                        format!(
                            "logic {} (logic[{}].template) rendered for pool {n}: ",
                            p.logic,
                            index(logic_names.clone(), &p.logic)
                        ),
                    )
                }
                None => (
                    format!("logic[{}].template", index(logic_names.clone(), &p.logic)),
                    String::new(),
                ),
            };
            match &p.problem {
                crate::logic::Problem::Template(e) => message.push_str(&e.to_string()),
                crate::logic::Problem::Violation(v) => message.push_str(&v.to_string()),
            }
            ValidationError { path, message }
        })
        .collect();
    Err(ValidationErrors(errors))
}
