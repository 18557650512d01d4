//! Settings that are valid but weaken the host: warned about at every start
//! of `lb-agent run` and printed by `lb-agent check-config`.
//!
//! They are warnings, not errors, because each can be right on some host
//! (a metrics port on every address behind a firewall), and refusing to
//! start would take a running fleet down on upgrade. `docs/security.md`,
//! "What an unprivileged local user can do", says why each matters.

use std::os::unix::fs::PermissionsExt;

use super::Config;

/// Every warning for `cfg`, reading the token file's mode from disk.
pub fn warnings(cfg: &Config) -> Vec<String> {
    let token_mode = cfg
        .source
        .token_file
        .as_ref()
        .and_then(|p| std::fs::metadata(p).ok())
        .map(|m| m.permissions().mode());
    warnings_for(cfg, token_mode)
}

/// [`warnings`] with the token file's mode given (pure).
pub fn warnings_for(cfg: &Config, token_mode: Option<u32>) -> Vec<String> {
    let mut out = Vec::new();
    if let (Some(path), Some(mode)) = (&cfg.source.token_file, token_mode) {
        if mode & 0o077 != 0 {
            out.push(format!(
                "source.token_file {} has mode {:04o}: other users can read the API token; chmod 0600 it",
                path.display(),
                mode & 0o7777
            ));
        }
    }
    if cfg.status.mode & 0o007 != 0 {
        out.push(format!(
            "status.mode {:04o} lets every local user connect to the status socket (read the status, and \
             use its connection slots); use 0660 and the status group",
            cfg.status.mode
        ));
    }
    if let Some(addr) = cfg.status.metrics_listen {
        if addr.ip().is_unspecified() {
            out.push(format!(
                "status.metrics_listen {addr} listens on every address of the host: metrics are readable \
                 from the network; bind it to 127.0.0.1 or a management address"
            ));
        }
    }
    if cfg.vip.allows_everything() {
        out.push(
            "vip.allowed_prefixes lets the API ask for any VIP prefix (the default); set it to this \
             group's anycast ranges"
                .to_string(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> Config {
        super::super::parse_str(text, "agent.toml").unwrap()
    }

    #[test]
    fn each_loose_setting_is_named_once() {
        let safe = cfg(
            "[source]\ntoken_file = \"/etc/lb-agent/token\"\n[vip]\nallowed_prefixes = [\"192.0.2.0/24\"]\n\
             [status]\nmetrics_listen = \"127.0.0.1:9477\"\n",
        );
        assert!(warnings_for(&safe, Some(0o100600)).is_empty());

        let w = warnings_for(&safe, Some(0o100644));
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("source.token_file /etc/lb-agent/token has mode 0644"),
            "{w:?}"
        );

        let loose = cfg(
            "[vip]\nallowed_prefixes = [\"0.0.0.0/0\"]\n[status]\nmode = \"0777\"\nmetrics_listen = \"[::]:9477\"\n",
        );
        let w = warnings_for(&loose, None);
        assert_eq!(w.len(), 3, "{w:#?}");
        assert!(w[0].starts_with("status.mode 0777"), "{w:?}");
        assert!(
            w[1].starts_with("status.metrics_listen [::]:9477 listens on every address"),
            "{w:?}"
        );
        assert!(
            w[2].starts_with("vip.allowed_prefixes lets the API ask for any VIP"),
            "{w:?}"
        );
        let w = warnings_for(&cfg("[status]\nmetrics_listen = \"0.0.0.0:9477\"\n"), None);
        assert!(
            w.iter()
                .any(|x| x.starts_with("status.metrics_listen 0.0.0.0:9477")),
            "{w:?}"
        );
    }
}
