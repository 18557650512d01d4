//! The `server-state-file` written right before a reload (pure filtering).
//!
//! HAProxy 2.6 restores a server's port from the state file even when the
//! new config changed it, and matches lines by backend + server name only.
//! A slot that hosted server X at runtime is a free slot again in the new
//! config; restoring its line would put X's address behind an unnamed slot.
//! So the dump of `show servers state` is filtered: a line is kept only when
//! the new config has a server of that name in that backend at the same
//! address and port. Everything else starts from the config, which always
//! holds the full desired state.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::config::SlotPolicy;
use crate::model::DesiredState;
use crate::plan::pool_layout;

/// (backend, server) → (address, port) of every server line in the new config.
pub type Layout = HashMap<(String, String), (IpAddr, u16)>;

/// The server lines the config rendered for `d` will contain.
pub fn layout_of(d: &DesiredState, policy: SlotPolicy) -> Layout {
    let mut m = HashMap::new();
    for b in crate::plan::az::backends(d) {
        let p = b.pool.as_ref();
        for l in pool_layout(p, policy) {
            m.insert((p.name.to_string(), l.name), (l.addr, l.port));
        }
    }
    m
}

/// Keeps the header and the server lines that still describe the same server.
/// Returns the filtered text and how many server lines were dropped.
pub fn filter(dump: &str, layout: &Layout) -> (String, usize) {
    let mut out = String::with_capacity(dump.len());
    let mut dropped = 0;
    for (i, line) in dump.lines().enumerate() {
        if i == 0 || line.starts_with('#') || line.trim().is_empty() {
            if !line.trim().is_empty() {
                out.push_str(line);
                out.push('\n');
            }
            continue;
        }
        let f: Vec<&str> = line.split(' ').collect();
        let keep = f.len() >= 19
            && match (f[4].parse::<IpAddr>(), f[18].parse::<u16>()) {
                (Ok(addr), Ok(port)) => {
                    layout.get(&(f[1].to_string(), f[3].to_string())) == Some(&(addr, port))
                }
                _ => false,
            };
        if keep {
            out.push_str(line);
            out.push('\n');
        } else {
            dropped += 1;
        }
    }
    (out, dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_same_server_same_endpoint() {
        let dump = "1\n# be_id be_name srv_id srv_name srv_addr ...\n\
3 be 1 web1 127.0.0.1 2 0 100 100 1 15 3 4 6 0 0 0 - 18081 - 0 0 - - 0\n\
3 be 2 web2 127.0.0.1 2 0 100 100 1 15 3 4 6 0 0 0 - 18082 - 0 0 - - 0\n\
3 be 3 _slot1 10.0.0.9 2 4 50 1 2 15 3 4 6 0 0 0 - 80 - 0 0 - - 0\n\
4 gone 1 x 127.0.0.1 2 0 1 1 1 15 3 4 6 0 0 0 - 1 - 0 0 - - 0\n";
        let mut layout = Layout::new();
        layout.insert(
            ("be".into(), "web1".into()),
            ("127.0.0.1".parse().unwrap(), 18081),
        );
        // web2's port changed in the new config: its line must go (HAProxy would keep the old port).
        layout.insert(
            ("be".into(), "web2".into()),
            ("127.0.0.1".parse().unwrap(), 19000),
        );
        // _slot1 is a free slot again in the new config.
        layout.insert(
            ("be".into(), "_slot1".into()),
            ("127.0.0.1".parse().unwrap(), 1),
        );
        let (text, dropped) = filter(dump, &layout);
        assert_eq!(dropped, 3);
        assert_eq!(
            text,
            "1\n# be_id be_name srv_id srv_name srv_addr ...\n3 be 1 web1 127.0.0.1 2 0 100 100 1 15 3 4 6 0 0 0 - 18081 - 0 0 - - 0\n"
        );
    }
}
