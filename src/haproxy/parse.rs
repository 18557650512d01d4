//! Parsers for HAProxy's runtime and master CLI output (pure).
//!
//! They are fed captured real outputs in unit tests (`fixtures/haproxy/`),
//! and every error names the line and echoes the input, because a parser
//! that guesses would let the agent act on a misread state.

use std::fmt;

use crate::model::observed::{
    ObservedBackend, ObservedServer, ObservedServers, ProcRow, ProcStatus,
};

/// A line HAProxy printed that we could not understand.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ParseError {
    pub what: &'static str,
    /// 1-based line number in the reply.
    pub line: usize,
    pub input: String,
    pub reason: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} line {}: {}: {:?}",
            self.what, self.line, self.reason, self.input
        )
    }
}

/// Parses `show servers state` (format version 1, HAProxy 2.6: 25 columns).
pub fn servers_state(text: &str) -> Result<ObservedServers, ParseError> {
    let err = |line: usize, input: &str, reason: String| ParseError {
        what: "show servers state",
        line,
        input: input.to_string(),
        reason,
    };
    let mut out = ObservedServers::default();
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    match lines.next() {
        Some((_, "1")) => {}
        Some((n, l)) => return Err(err(n + 1, l, "expected format version 1".into())),
        None => return Err(err(0, "", "empty reply".into())),
    }
    for (n, line) in lines {
        if line.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = line.split(' ').collect();
        if f.len() < 19 {
            return Err(err(
                n + 1,
                line,
                format!("expected at least 19 columns, got {}", f.len()),
            ));
        }
        // HAProxy separates columns by one space and never leaves one
        // empty: an empty backend or server name would be a name no
        // document can hold (found by fuzzing: a doubled space).
        for (i, name) in [(1, "be_name"), (3, "srv_name")] {
            if f[i].is_empty() {
                return Err(err(n + 1, line, format!("column {name} is empty")));
            }
        }
        let num = |i: usize, name: &str| -> Result<u64, ParseError> {
            f[i].parse::<u64>()
                .map_err(|_| err(n + 1, line, format!("column {name} is not a number")))
        };
        let be_id = num(0, "be_id")? as u32;
        let server = ObservedServer {
            id: num(2, "srv_id")? as u32,
            name: f[3].to_string(),
            addr: f[4]
                .parse()
                .map_err(|_| err(n + 1, line, "column srv_addr is not an IP address".into()))?,
            op_state: num(5, "srv_op_state")? as u8,
            admin_state: num(6, "srv_admin_state")? as u8,
            uweight: num(7, "srv_uweight")? as u16,
            iweight: num(8, "srv_iweight")? as u16,
            port: num(18, "srv_port")? as u16,
        };
        let be = out
            .backends
            .entry(f[1].to_string())
            .or_insert_with(|| ObservedBackend {
                id: be_id,
                servers: Vec::new(),
            });
        be.servers.push(server);
    }
    for be in out.backends.values_mut() {
        be.servers.sort_by_key(|s| s.id);
    }
    Ok(out)
}

/// Parses the master CLI's `show proc` (HAProxy 2.6 layout).
///
/// ```text
/// #<PID>          <type>          <reloads>       <uptime>        <version>
/// 5971            master          2 [failed: 1]   0d00h00m10s     2.6.12-1+deb12u4
/// # workers
/// 6087            worker          0               0d00h00m01s     2.6.12-1+deb12u4
/// # old workers
/// # programs
/// ```
/// Anything after `# programs` (2.6 appends startup messages there) is ignored.
pub fn show_proc(text: &str) -> Result<ProcStatus, ParseError> {
    let err = |line: usize, input: &str, reason: &str| ParseError {
        what: "show proc",
        line,
        input: input.to_string(),
        reason: reason.to_string(),
    };
    #[derive(PartialEq)]
    enum Section {
        Master,
        Workers,
        Old,
        Other,
    }
    let mut section = Section::Master;
    let mut master: Option<(u32, u64, u64)> = None;
    let mut workers = Vec::new();
    let mut old_workers = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with("#<PID>") {
            continue;
        }
        match t {
            "# workers" => {
                section = Section::Workers;
                continue;
            }
            "# old workers" => {
                section = Section::Old;
                continue;
            }
            _ if t.starts_with('#') => {
                section = Section::Other;
                continue;
            }
            _ => {}
        }
        if section == Section::Other {
            continue;
        }
        let cols: Vec<&str> = t.split_whitespace().collect();
        if cols.len() < 3 {
            return Err(err(n + 1, line, "too few columns"));
        }
        let pid: u32 = cols[0]
            .parse()
            .map_err(|_| err(n + 1, line, "PID is not a number"))?;
        let reloads: u64 = cols[2]
            .parse()
            .map_err(|_| err(n + 1, line, "reload count is not a number"))?;
        match section {
            Section::Master => {
                if cols[1] != "master" {
                    return Err(err(n + 1, line, "expected the master row first"));
                }
                let failed = match t.find("[failed: ") {
                    Some(i) => t[i + 9..]
                        .split(']')
                        .next()
                        .and_then(|v| v.trim().parse().ok())
                        .ok_or_else(|| err(n + 1, line, "bad [failed: N]"))?,
                    None => 0,
                };
                master = Some((pid, reloads, failed));
            }
            Section::Workers => workers.push(ProcRow { pid, reloads }),
            Section::Old => old_workers.push(ProcRow { pid, reloads }),
            Section::Other => {}
        }
    }
    let (master_pid, master_reloads, failed) =
        master.ok_or_else(|| err(0, text, "no master row"))?;
    Ok(ProcStatus {
        master_pid,
        master_reloads,
        failed,
        workers,
        old_workers,
    })
}

/// Files listed by `show map` / `show acl` (the ones HAProxy loaded from a file).
///
/// ```text
/// # id (file) description
/// 4 (/tmp/hx/h.map) pattern loaded from file '/tmp/hx/h.map' used by map at file 'm.cfg' line 11. ...
/// 1 () acl 'src' file 'm.cfg' line 10. ...
/// ```
pub fn loaded_files(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let open = l.find(" (")?;
            let close = l[open..].find(") ")? + open;
            let f = &l[open + 2..close];
            (!f.is_empty()).then(|| f.to_string())
        })
        .collect()
}

/// Entries of `show map FILE`: `0x55d1c8864250 key value` per line.
pub fn map_entries(text: &str) -> Result<Vec<(String, String)>, ParseError> {
    let mut out = Vec::new();
    for (n, l) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let mut it = l.splitn(3, ' ');
        match (it.next(), it.next(), it.next()) {
            (Some(ptr), Some(k), Some(v)) if ptr.starts_with("0x") => {
                out.push((k.to_string(), v.to_string()))
            }
            _ => {
                return Err(ParseError {
                    what: "show map",
                    line: n + 1,
                    input: l.to_string(),
                    reason: "expected '0x<ref> key value'".into(),
                })
            }
        }
    }
    Ok(out)
}

/// Patterns of `show acl FILE`: `0x55d1c8864250 pattern` per line.
pub fn acl_entries(text: &str) -> Result<Vec<String>, ParseError> {
    let mut out = Vec::new();
    for (n, l) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        match l.split_once(' ') {
            Some((ptr, pat)) if ptr.starts_with("0x") => out.push(pat.to_string()),
            _ => {
                return Err(ParseError {
                    what: "show acl",
                    line: n + 1,
                    input: l.to_string(),
                    reason: "expected '0x<ref> pattern'".into(),
                })
            }
        }
    }
    Ok(out)
}

/// File names listed by `show ssl cert` (`# filename` header, one path per line).
pub fn cert_files(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.trim().trim_start_matches('*').to_string())
        .collect()
}

/// The `SHA1 FingerPrint:` of `show ssl cert FILE`.
pub fn cert_fingerprint(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("SHA1 FingerPrint: "))
        .map(|s| s.trim().to_string())
}

/// The `Pid:` line of `show info`: the worker that answered the runtime socket.
pub fn info_pid(text: &str) -> Result<u32, ParseError> {
    let found = text.lines().enumerate().find_map(|(i, l)| {
        l.strip_prefix("Pid:")
            .map(|v| (i + 1, l, v.trim().parse::<u32>()))
    });
    match found {
        Some((_, _, Ok(pid))) if pid > 0 => Ok(pid),
        Some((line, input, _)) => Err(ParseError {
            what: "show info",
            line,
            input: input.to_string(),
            reason: "Pid is not a process id".into(),
        }),
        None => Err(ParseError {
            what: "show info",
            line: 1,
            input: text.lines().next().unwrap_or_default().to_string(),
            reason: "no Pid line".into(),
        }),
    }
}

/// Frontends that accept connections, from `show stat -1 1 -1` (CSV: `pxname`
/// is column 1, `svname` is `FRONTEND`, `status` is column 18). A frontend
/// whose status is `STOP` (disabled) is left out: it serves nothing.
pub fn stat_frontends(text: &str) -> Result<std::collections::BTreeSet<String>, ParseError> {
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, h)) if h.starts_with("# pxname,svname,") => {}
        other => {
            return Err(ParseError {
                what: "show stat",
                line: 1,
                input: other.map(|(_, l)| l.to_string()).unwrap_or_default(),
                reason: "missing the CSV header".into(),
            })
        }
    }
    let mut out = std::collections::BTreeSet::new();
    for (i, l) in lines {
        if l.trim().is_empty() {
            continue;
        }
        let cols: Vec<&str> = l.split(',').collect();
        if cols.len() < 18 {
            return Err(ParseError {
                what: "show stat",
                line: i + 1,
                input: l.to_string(),
                reason: format!("{} columns, expected at least 18", cols.len()),
            });
        }
        if cols[1] == "FRONTEND" && cols[17] != "STOP" && !cols[0].is_empty() {
            out.insert(cols[0].to_string());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATE: &str = include_str!("../../fixtures/haproxy/show-servers-state.txt");
    const PROC_OK: &str = include_str!("../../fixtures/haproxy/show-proc-ok.txt");
    const PROC_FAILED: &str = include_str!("../../fixtures/haproxy/show-proc-failed.txt");
    const INFO: &str = include_str!("../../fixtures/haproxy/show-info.txt");
    const STAT: &str = include_str!("../../fixtures/haproxy/show-stat-frontends.txt");

    /// Regression (fuzz target `haproxy_replies`): a doubled space made an
    /// empty server name that was accepted.
    #[test]
    fn an_empty_name_column_is_refused() {
        let text = "1\n# be_id be_name srv_id srv_name srv_addr\n\
                    3 be 3  127.0.0.1 2 4 50 1 2 15 3 4 63 _free1 127.0.0.1 2 4 50 1 2 \n";
        let e = servers_state(text).unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        assert!(e.reason.contains("srv_name is empty"), "{e}");
        let text = "1\n3  3 s1 127.0.0.1 2 4 50 1 2 15 3 4 63 _free1 127.0.0.1 2 4 50 1 2\n";
        assert!(servers_state(text)
            .unwrap_err()
            .reason
            .contains("be_name is empty"));
    }

    #[test]
    fn parses_show_info_pid() {
        assert_eq!(info_pid(INFO).unwrap(), 13356);
        assert!(info_pid("Unknown command.").is_err());
        let e = info_pid("Name: HAProxy\nPid: x\n").unwrap_err();
        assert_eq!(e.line, 2, "{e}");
        assert!(info_pid("Pid: 0\n").is_err());
    }

    #[test]
    fn parses_running_frontends() {
        let f = stat_frontends(STAT).unwrap();
        assert_eq!(f.into_iter().collect::<Vec<_>>(), vec!["tcp_one", "www"]);
        // A disabled frontend serves nothing; a backend row is not a frontend.
        let header = STAT.lines().next().unwrap();
        let stopped = format!("{header}\nfe,FRONTEND,,,0,0,1,0,0,0,0,0,0,,,,,STOP,\nbe,BACKEND,,,0,0,1,0,0,0,0,0,0,,,,,UP,\n");
        assert!(stat_frontends(&stopped).unwrap().is_empty());
        assert!(stat_frontends("Unknown command.").is_err());
        let short = format!("{header}\nfe,FRONTEND,1\n");
        assert_eq!(stat_frontends(&short).unwrap_err().line, 2);
    }

    #[test]
    fn parses_servers_state() {
        let s = servers_state(STATE).unwrap();
        let be = &s.backends["be"];
        assert_eq!(be.servers.len(), 4);
        let slot = &be.servers[2];
        assert_eq!(slot.name, "_free1");
        assert_eq!(slot.port, 18083);
        assert_eq!(slot.admin_state, 4, "CMAINT stays after runtime ready");
        assert!(!slot.in_maint());
        assert!(be.servers[3].in_maint());
        assert_eq!(be.servers[0].uweight, 100);
    }

    #[test]
    fn rejects_garbage_with_line() {
        let e = servers_state(
            "1\n# be_id\n3 be 1 web1 notanip 2 0 1 1 1 15 3 4 6 0 0 0 - 80 - 0 0 - - 0\n",
        )
        .unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.to_string().contains("srv_addr"), "{e}");
        assert!(servers_state("Unknown command.\n").is_err());
    }

    #[test]
    fn parses_map_and_acl_output() {
        let list = "# id (file) description\n4 (/tmp/hx/h.map) pattern loaded from file '/tmp/hx/h.map' used by map at file 'm.cfg' line 11. curr_ver=0 next_ver=0 entry_cnt=2\n1 () acl 'src' file 'm.cfg' line 10. curr_ver=0 next_ver=0 entry_cnt=0\n";
        assert_eq!(loaded_files(list), vec!["/tmp/hx/h.map"]);
        let m = map_entries("0x560c8c864250 a.example.com be\n0x560c8c8642e0 b.example.com be x\n")
            .unwrap();
        assert_eq!(
            m,
            vec![
                ("a.example.com".into(), "be".into()),
                ("b.example.com".into(), "be x".into())
            ]
        );
        assert!(map_entries("Unknown map identifier. Please use #<id> or <file>.").is_err());
        assert_eq!(
            acl_entries("0x560c8c8531a0 203.0.113.0/24\n").unwrap(),
            vec!["203.0.113.0/24"]
        );
        let cert = "Filename: /tmp/hx/c1.pem\nStatus: Used\nSHA1 FingerPrint: 50CF17AB6D88FEDF2E8ED09478996997556C01C6\nSubject: /CN=x\n";
        assert_eq!(
            cert_fingerprint(cert).as_deref(),
            Some("50CF17AB6D88FEDF2E8ED09478996997556C01C6")
        );
        assert_eq!(
            cert_files("# filename\n/tmp/hx/c1.pem\n"),
            vec!["/tmp/hx/c1.pem"]
        );
    }

    #[test]
    fn parses_show_proc() {
        let p = show_proc(PROC_OK).unwrap();
        assert_eq!((p.master_pid, p.master_reloads, p.failed), (5971, 2, 0));
        assert_eq!(p.current_worker(), Some(6087));
        let f = show_proc(PROC_FAILED).unwrap();
        assert_eq!((f.master_reloads, f.failed), (1, 1));
        assert_eq!(f.current_worker(), Some(6223));
        assert_eq!(f.old_workers.len(), 1);
    }
}
