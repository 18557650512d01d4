//! The fields a frontend's `health` and a pool's `check` share: the check
//! type, the HTTP path and host, the expected statuses. Values that reach
//! haproxy.cfg unquoted are held to a safe token.

use super::Errs;
use crate::model::HealthKind;

/// Characters allowed in values that reach haproxy.cfg unquoted (paths, hosts, map keys).
fn is_safe_token(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '"' | '\'' | '\\' | '#'))
}

/// A check `type` at `path`: `tcp`, `http` or `tls` (never a command: docs/safety.md).
pub(super) fn check_health_kind(
    errs: &mut Errs,
    v: &Option<String>,
    path: String,
) -> Option<HealthKind> {
    match v.as_deref()? {
        "tcp" => Some(HealthKind::Tcp),
        "http" => Some(HealthKind::Http),
        "tls" => Some(HealthKind::Tls),
        other => {
            errs.push(
                path,
                format!("unknown check type {other:?}, expected \"tcp\", \"http\" or \"tls\""),
            );
            None
        }
    }
}

/// An HTTP check path at `path`: starts with `/`, a safe token.
pub(super) fn check_path(errs: &mut Errs, v: &Option<String>, path: String) -> Option<String> {
    let p = v.as_ref()?;
    if !p.starts_with('/') || !is_safe_token(p) {
        errs.push(
            path,
            format!("invalid path {p:?}: must start with '/' and contain no spaces, quotes or '#'"),
        );
        return None;
    }
    Some(p.clone())
}

/// An HTTP check `Host` at `path`: a host name or address, at most 253 characters.
pub(super) fn check_host(errs: &mut Errs, v: &Option<String>, path: String) -> Option<String> {
    let h = v.as_ref()?;
    let ok = !h.is_empty()
        && h.len() <= 253
        && h.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '[' | ']'));
    if !ok {
        errs.push(path, format!("invalid host {h:?}"));
        return None;
    }
    Some(h.clone())
}

/// Expected HTTP statuses at `path[i]`, each 100-599; the bad ones left out.
pub(super) fn check_statuses(errs: &mut Errs, v: &[i64], path: &str) -> Vec<u16> {
    let mut out = Vec::new();
    for (i, s) in v.iter().enumerate() {
        if (100..=599).contains(s) {
            out.push(*s as u16);
        } else {
            errs.push(
                format!("{path}[{i}]"),
                format!("HTTP status {s} out of range 100-599"),
            );
        }
    }
    out
}
