//! The `vips` section: prefixes without host bits, none duplicate or
//! overlapping another, each passing the host's VIP policy when there is one
//! (`model::hostnet`).

use std::collections::BTreeSet;

use ipnet::IpNet;

use super::wire::WireVip;
use super::Errs;
use crate::model::hostnet::VipPolicy;
use crate::model::Vip;

/// The document's VIPs (`vips[i].address`), sorted; a bad one is left out
/// and its problem pushed to `errs`.
pub(super) fn validate_vips(
    errs: &mut Errs,
    list: &[WireVip],
    policy: Option<&VipPolicy>,
) -> Vec<Vip> {
    let document_vips: BTreeSet<IpNet> = list
        .iter()
        .filter_map(|v| v.address.as_deref()?.parse::<IpNet>().ok())
        .collect();
    let mut vips: Vec<Vip> = Vec::new();
    for (i, v) in list.iter().enumerate() {
        let path = format!("vips[{i}].address");
        let Some(a) = errs.required(&v.address, path.clone()) else {
            continue;
        };
        match a.parse::<IpNet>() {
            Ok(net) if net.trunc() != net => errs.push(
                path,
                format!("{a} has host bits set (did you mean {}?)", net.trunc()),
            ),
            Ok(net) => {
                for problem in policy
                    .map(|p| p.check(net, &document_vips))
                    .unwrap_or_default()
                {
                    errs.push(path.clone(), problem);
                }
                if vips.iter().any(|x| x.address == net) {
                    errs.push(path, format!("duplicate VIP {net}"));
                } else if let Some(o) = vips
                    .iter()
                    .find(|x| x.address.contains(&net) || net.contains(&x.address))
                {
                    errs.push(path, format!("VIP {net} overlaps VIP {}", o.address));
                } else {
                    vips.push(Vip { address: net });
                }
            }
            Err(_) => errs.push(
                path,
                format!("invalid prefix {a:?}, expected e.g. \"192.0.2.10/32\""),
            ),
        }
    }
    vips.sort();
    vips
}
