//! The removal guard: unlike the rest of validation it compares two
//! documents, so the reconciler runs it against the state currently applied
//! (docs/safety.md).

use std::collections::BTreeSet;

use crate::model::DesiredState;

/// Refuses a document that removes too much at once (docs/safety.md, "A document that removes too much is refused"), unless it is forced.
///
/// Counts VIPs and servers (identified by pool + server name) present in
/// `prev` and absent from `next`; if either share exceeds `max_ratio`, the
/// document is refused with a message saying how much it would remove.
pub fn removal_guard(
    prev: &DesiredState,
    next: &DesiredState,
    max_ratio: f64,
) -> Result<(), String> {
    if next.force || max_ratio >= 1.0 {
        return Ok(());
    }
    let prev_vips: BTreeSet<_> = prev.vips.iter().map(|v| v.address).collect();
    let next_vips: BTreeSet<_> = next.vips.iter().map(|v| v.address).collect();
    let removed_vips = prev_vips.difference(&next_vips).count();
    let servers = |d: &DesiredState| -> BTreeSet<(String, String)> {
        d.pools
            .values()
            .flat_map(|p| {
                p.servers
                    .keys()
                    .map(move |s| (p.name.to_string(), s.to_string()))
            })
            .collect()
    };
    let prev_srv = servers(prev);
    let next_srv = servers(next);
    let removed_srv = prev_srv.difference(&next_srv).count();
    let mut problems = Vec::new();
    if !prev_vips.is_empty() && removed_vips as f64 / prev_vips.len() as f64 > max_ratio {
        problems.push(format!("{removed_vips} of {} VIPs", prev_vips.len()));
    }
    if !prev_srv.is_empty() && removed_srv as f64 / prev_srv.len() as f64 > max_ratio {
        problems.push(format!("{removed_srv} of {} servers", prev_srv.len()));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "revision {} would remove {} at once (max_removal_ratio {max_ratio}); refused, set \"force\": true to apply",
            next.revision,
            problems.join(" and ")
        ))
    }
}
