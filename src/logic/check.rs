//! The snippet checker: a rendered logic snippet stays inside its section (pure).
//!
//! HAProxy ignores indentation, so a snippet inserted into a `frontend`
//! could open `global` and load Lua, start a `program`, read files or
//! expand the environment. This checker is an **allow-list**: every line of
//! the rendered text must be empty, a comment, or a directive from the list
//! for its section ([`Section`]), and rule keywords (`http-request`,
//! `tcp-request content`, ...) must use an action from their own list. An
//! allow-list fails closed: a keyword HAProxy adds in a later version, or
//! one we did not think of, is refused until someone reads what it does and
//! adds it here (and to `docs/logic.md`).
//!
//! On top of the lists, every word of an allowed line is scanned for what
//! may never appear anywhere: Lua (`lua.*`), `env()`, `jwt_verify()` (reads
//! key files), and file arguments (`-f FILE`, `map*(FILE)`, `set-map(FILE)`,
//! ...) other than the document's own map and ACL files; in `http-*` rules
//! the `file`, `lf-file`, `errorfile` and `errorfiles` arguments (they read
//! files into responses) are refused.
//!
//! Lines are split into words exactly as HAProxy does ([`super::lexer`]), so
//! quoting and escaping tricks (`"glo"bal`, `\x67lobal`) are judged by what
//! HAProxy will see; control characters, `[scope]` lines, `.if`/`.else`
//! blocks and environment expansion are refused outright.

use std::collections::BTreeSet;
use std::fmt;

use super::lexer::{self, Word};

/// The section a snippet is attached to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Frontend,
    Backend,
}

impl Section {
    pub fn as_str(self) -> &'static str {
        match self {
            Section::Frontend => "frontend",
            Section::Backend => "backend",
        }
    }
}

/// The first offending line of a snippet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// 1-based line number in the rendered snippet.
    pub line: usize,
    /// The offending line, as rendered (control characters escaped).
    pub text: String,
    pub reason: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {} {:?}: {}", self.line, self.text, self.reason)
    }
}

/// Longest snippet line accepted (HAProxy grows its line buffer; a long line
/// is no attack in itself, but nothing legitimate needs more).
pub const MAX_LINE: usize = 4096;

/// Every section keyword HAProxy 2.6 knows (`REGISTER_CONFIG_SECTION` and
/// `cfg_register_section` in its sources, including the SPOE and OpenTracing
/// sections that filters register while parsing).
pub const SECTION_KEYWORDS: &[&str] = &[
    "global",
    "defaults",
    "frontend",
    "backend",
    "listen",
    "userlist",
    "peers",
    "mailers",
    "namespace_list",
    "resolvers",
    "program",
    "http-errors",
    "ring",
    "cache",
    "fcgi-app",
    "log-forward",
    "spoe-agent",
    "spoe-group",
    "spoe-message",
    "ot-tracer",
    "ot-group",
    "ot-scope",
];

/// Checks a rendered snippet attached to `section`; no data file may be referenced.
///
/// The public, pure entry point (fuzz targets call this).
pub fn check_snippet(text: &str, section: Section) -> Result<(), Violation> {
    check_snippet_with_files(text, section, &BTreeSet::new())
}

/// Checks a rendered snippet; `files` are the data files (absolute paths of
/// the document's maps and ACLs) it may reference.
pub fn check_snippet_with_files(
    text: &str,
    section: Section,
    files: &BTreeSet<String>,
) -> Result<(), Violation> {
    // Lines as HAProxy's fgets() splits them: on '\n' only.
    for (i, line) in text.split('\n').enumerate() {
        check_line(line, section, files).map_err(|reason| Violation {
            line: i + 1,
            text: printable(line),
            reason,
        })?;
    }
    Ok(())
}

fn printable(line: &str) -> String {
    let mut s: String = line.chars().take(200).collect();
    if s.len() < line.len() {
        s.push_str("...");
    }
    s
}

/// How the words after an allowed keyword are judged.
#[derive(Clone, Copy)]
enum Spec {
    /// Free arguments (still scanned for forbidden references).
    Any,
    /// The second word must be one of these.
    Sub(&'static [&'static str]),
    /// A rule keyword: the action must be in its list.
    Rule(Rules),
    /// Only `log global` (and `no log`): a log target could be any socket or host.
    LogGlobal,
}

#[derive(Clone, Copy)]
enum Rules {
    HttpRequest,
    HttpResponse,
    HttpAfterResponse,
    /// `tcp-request connection|session|content|inspect-delay`.
    TcpRequest,
    /// `tcp-response content|inspect-delay`.
    TcpResponse,
}

const FRONTEND_OPTIONS: &[&str] = &[
    "accept-invalid-http-request",
    "clitcpka",
    "contstats",
    "disable-h2-upgrade",
    "dontlog-normal",
    "dontlognull",
    "forwardfor",
    "h1-case-adjust-bogus-client",
    "http-buffer-request",
    "http-ignore-probes",
    "http-keep-alive",
    "http-no-delay",
    "http-restrict-req-hdr-names",
    "http-server-close",
    "http-use-proxy-header",
    "httpclose",
    "httplog",
    "httpslog",
    "idle-close-on-response",
    "independent-streams",
    "log-separate-errors",
    "logasap",
    "nolinger",
    "originalto",
    "socket-stats",
    "splice-auto",
    "splice-request",
    "splice-response",
    "tcp-smart-accept",
    "tcpka",
    "tcplog",
];

/// No `external-check` (runs a program), no `transparent` (spoofs sources).
const BACKEND_OPTIONS: &[&str] = &[
    "abortonclose",
    "accept-invalid-http-response",
    "allbackups",
    "checkcache",
    "forwardfor",
    "h1-case-adjust-bogus-server",
    "http-buffer-request",
    "http-keep-alive",
    "http-no-delay",
    "http-pretend-keepalive",
    "http-restrict-req-hdr-names",
    "http-server-close",
    "httpchk",
    "httpclose",
    "independent-streams",
    "ldap-check",
    "log-health-checks",
    "mysql-check",
    "nolinger",
    "originalto",
    "persist",
    "pgsql-check",
    "prefer-last-server",
    "redis-check",
    "redispatch",
    "smtpchk",
    "splice-auto",
    "splice-request",
    "splice-response",
    "srvtcpka",
    "ssl-hello-chk",
    "tcp-check",
    "tcp-smart-connect",
    "tcpka",
    "tcplog",
];

/// Directives allowed in a frontend snippet. Not here on purpose: `bind`
/// (listens outside the document's VIPs, or creates UNIX sockets anywhere),
/// `mode` (the agent's), `stats` (a web admin interface), `filter` (SPOE and
/// OpenTracing load configuration files and plugins), `errorfile`/`errorfiles`
/// (serve any file), `email-alert` (mail to anywhere), `log <target>`.
const FRONTEND: &[(&str, Spec)] = &[
    ("acl", Spec::Any),
    ("backlog", Spec::Any),
    ("capture", Spec::Sub(&["cookie", "request", "response"])),
    ("clitcpka-cnt", Spec::Any),
    ("clitcpka-idle", Spec::Any),
    ("clitcpka-intvl", Spec::Any),
    ("compression", Spec::Sub(&["algo", "type", "offload"])),
    ("declare", Spec::Sub(&["capture"])),
    ("default_backend", Spec::Any),
    ("description", Spec::Any),
    ("error-log-format", Spec::Any),
    ("errorloc", Spec::Any),
    ("errorloc302", Spec::Any),
    ("errorloc303", Spec::Any),
    ("http-after-response", Spec::Rule(Rules::HttpAfterResponse)),
    ("http-error", Spec::Any),
    ("http-request", Spec::Rule(Rules::HttpRequest)),
    ("http-response", Spec::Rule(Rules::HttpResponse)),
    ("log", Spec::LogGlobal),
    ("log-format", Spec::Any),
    ("log-format-sd", Spec::Any),
    ("log-tag", Spec::Any),
    ("maxconn", Spec::Any),
    ("monitor", Spec::Sub(&["fail"])),
    ("monitor-uri", Spec::Any),
    ("option", Spec::Sub(FRONTEND_OPTIONS)),
    ("rate-limit", Spec::Sub(&["sessions"])),
    ("redirect", Spec::Any),
    ("stick-table", Spec::Any),
    ("tcp-request", Spec::Rule(Rules::TcpRequest)),
    (
        "timeout",
        Spec::Sub(&[
            "client",
            "client-fin",
            "http-keep-alive",
            "http-request",
            "tarpit",
        ]),
    ),
    ("unique-id-format", Spec::Any),
    ("unique-id-header", Spec::Any),
    ("use_backend", Spec::Any),
];

/// Directives allowed in a backend snippet (pools' logic, docs/logic.md). Not
/// here: `server`/`server-template`/`default-server` (the agent's, and they
/// read certificate files), `balance`/`hash-type`/`mode` (the agent's),
/// `external-check`, `option external-check`, `source`/`transparent`
/// (spoof client addresses), `stats`, `filter`, `errorfile(s)`.
const BACKEND: &[(&str, Spec)] = &[
    ("acl", Spec::Any),
    ("compression", Spec::Sub(&["algo", "type", "offload"])),
    ("cookie", Spec::Any),
    ("description", Spec::Any),
    ("errorloc", Spec::Any),
    ("errorloc302", Spec::Any),
    ("errorloc303", Spec::Any),
    ("force-persist", Spec::Any),
    ("http-after-response", Spec::Rule(Rules::HttpAfterResponse)),
    (
        "http-check",
        Spec::Sub(&[
            "comment",
            "connect",
            "disable-on-404",
            "expect",
            "send",
            "send-state",
            "set-var",
            "unset-var",
        ]),
    ),
    ("http-error", Spec::Any),
    ("http-request", Spec::Rule(Rules::HttpRequest)),
    ("http-response", Spec::Rule(Rules::HttpResponse)),
    ("http-reuse", Spec::Any),
    ("http-send-name-header", Spec::Any),
    ("ignore-persist", Spec::Any),
    ("log", Spec::LogGlobal),
    ("log-tag", Spec::Any),
    ("max-keep-alive-queue", Spec::Any),
    ("option", Spec::Sub(BACKEND_OPTIONS)),
    ("persist", Spec::Sub(&["rdp-cookie"])),
    ("redirect", Spec::Any),
    ("retries", Spec::Any),
    ("retry-on", Spec::Any),
    (
        "stick",
        Spec::Sub(&["match", "on", "store-request", "store-response"]),
    ),
    ("stick-table", Spec::Any),
    (
        "tcp-check",
        Spec::Sub(&[
            "comment",
            "connect",
            "expect",
            "send",
            "send-binary",
            "send-binary-lf",
            "send-lf",
            "set-var",
            "unset-var",
        ]),
    ),
    ("tcp-request", Spec::Rule(Rules::TcpRequest)),
    ("tcp-response", Spec::Rule(Rules::TcpResponse)),
    (
        "timeout",
        Spec::Sub(&[
            "check",
            "connect",
            "http-keep-alive",
            "http-request",
            "queue",
            "server",
            "server-fin",
            "tarpit",
            "tunnel",
        ]),
    ),
    ("use-server", Spec::Any),
];

/// Stick-counter and variable actions shared by most rule sets.
const COUNTERS: &[&str] = &[
    "sc-add-gpc",
    "sc-inc-gpc",
    "sc-inc-gpc0",
    "sc-inc-gpc1",
    "sc-set-gpt",
    "sc-set-gpt0",
    "set-var",
    "set-var-fmt",
    "track-sc0",
    "track-sc1",
    "track-sc2",
    "unset-var",
];

/// Pattern-file edits; their `(FILE)` must be one of the document's files.
const PATTERN_EDITS: &[&str] = &["add-acl", "del-acl", "del-map", "set-map"];

/// Not here on purpose: `lua.*`, `use-service` (Lua services, the
/// Prometheus exporter), `send-spoe-group`, `cache-use`/`cache-store` (need
/// sections), `do-resolve`, `set-mark`/`set-tos`/`set-nice`/`set-dst*`.
const HTTP_REQUEST: &[&str] = &[
    "add-header",
    "allow",
    "auth",
    "capture",
    "del-header",
    "deny",
    "disable-l7-retry",
    "early-hint",
    "normalize-uri",
    "redirect",
    "reject",
    "replace-header",
    "replace-path",
    "replace-pathq",
    "replace-uri",
    "replace-value",
    "return",
    "set-header",
    "set-log-level",
    "set-method",
    "set-path",
    "set-pathq",
    "set-priority-class",
    "set-priority-offset",
    "set-query",
    "set-src",
    "set-src-port",
    "set-timeout",
    "set-uri",
    "silent-drop",
    "strict-mode",
    "tarpit",
    "wait-for-body",
    "wait-for-handshake",
];

const HTTP_RESPONSE: &[&str] = &[
    "add-header",
    "allow",
    "capture",
    "del-header",
    "deny",
    "redirect",
    "replace-header",
    "replace-value",
    "return",
    "set-header",
    "set-log-level",
    "set-status",
    "silent-drop",
    "strict-mode",
    "wait-for-body",
];

const HTTP_AFTER_RESPONSE: &[&str] = &[
    "add-header",
    "allow",
    "capture",
    "del-header",
    "replace-header",
    "replace-value",
    "set-header",
    "set-status",
    "strict-mode",
];

const TCP_CONNECTION: &[&str] = &[
    "accept",
    "capture",
    "expect-netscaler-cip",
    "expect-proxy",
    "reject",
    "set-src",
    "set-src-port",
    "silent-drop",
];

const TCP_SESSION: &[&str] = &["accept", "reject", "silent-drop"];

const TCP_CONTENT: &[&str] = &[
    "accept",
    "capture",
    "reject",
    "set-log-level",
    "set-priority-class",
    "set-priority-offset",
    "set-src",
    "set-src-port",
    "silent-drop",
    "switch-mode",
];

const TCP_RESPONSE_CONTENT: &[&str] = &["accept", "close", "reject", "silent-drop"];

/// Arguments of `http-*` rules that read a file into a response.
const FILE_ARGUMENTS: &[&str] = &["errorfile", "errorfiles", "file", "lf-file"];

fn check_line(line: &str, section: Section, files: &BTreeSet<String>) -> Result<(), String> {
    if line.len() > MAX_LINE {
        return Err(format!("line longer than {MAX_LINE} bytes"));
    }
    if let Some(c) = line.chars().find(|c| c.is_control() && *c != '\t') {
        return Err(format!(
            "control character U+{:04X} (a snippet line is plain text)",
            c as u32
        ));
    }
    if line.trim_start().starts_with('[') {
        return Err("a line starting with '[' opens a configuration scope".into());
    }
    let words = lexer::words(line).map_err(|e| e.to_string())?;
    if words.is_empty() {
        return Ok(());
    }
    if words.iter().any(|w| w.text.contains(&0)) {
        return Err("an escape sequence produces a NUL byte".into());
    }
    let (modifier, rest) = match words[0].as_str().as_ref() {
        m @ ("no" | "default") => (Some(m.to_string()), &words[1..]),
        _ => (None, &words[..]),
    };
    let Some(first) = rest.first() else {
        return Err("a keyword modifier without a keyword".into());
    };
    let kw = first.as_str().into_owned();
    if kw.starts_with('.') {
        return Err(format!(
            "{kw:?}: conditional blocks and diagnostic directives (.if, .else, .notice, ...) are not allowed in a snippet"
        ));
    }
    if SECTION_KEYWORDS.contains(&kw.as_str()) {
        return Err(format!(
            "{kw:?} opens a new configuration section; a snippet stays inside the {} it is attached to",
            section.as_str()
        ));
    }
    let table = match section {
        Section::Frontend => FRONTEND,
        Section::Backend => BACKEND,
    };
    let Some((_, spec)) = table.iter().find(|(k, _)| *k == kw) else {
        return Err(format!(
            "{kw:?} is not a directive allowed in a {} snippet (see docs/logic.md for the list)",
            section.as_str()
        ));
    };
    if !first.plain {
        return Err(format!(
            "the keyword {kw:?} must be written without quotes or escapes"
        ));
    }
    if let Some(m) = &modifier {
        if !matches!(spec, Spec::Sub(_) if kw == "option") && kw != "log" {
            return Err(format!("{m:?} only applies to option and log"));
        }
    }
    check_spec(&kw, *spec, &rest[1..], section, modifier.is_some())?;
    scan_references(&words, files)?;
    if kw.starts_with("http-") {
        if let Some(w) = rest
            .iter()
            .find(|w| FILE_ARGUMENTS.contains(&w.as_str().as_ref()))
        {
            return Err(format!(
                "{:?} reads a file into a response; use string or lf-string",
                w.as_str()
            ));
        }
    }
    Ok(())
}

/// Judges the words after the keyword against its [`Spec`].
fn check_spec(
    kw: &str,
    spec: Spec,
    args: &[Word],
    section: Section,
    negated: bool,
) -> Result<(), String> {
    let arg = |i: usize| args.get(i).map(|w| w.as_str().into_owned());
    match spec {
        Spec::Any => Ok(()),
        Spec::Sub(allowed) => {
            let sub = arg(0).unwrap_or_default();
            if !allowed.contains(&sub.as_str()) {
                return Err(format!(
                    "\"{kw} {sub}\" is not allowed in a {} snippet (see docs/logic.md)",
                    section.as_str()
                ));
            }
            plain_word(&args[0])
        }
        Spec::LogGlobal => match (negated, arg(0).as_deref()) {
            (true, None) | (false, Some("global")) if args.len() <= 1 => Ok(()),
            _ => Err("only \"log global\" and \"no log\" are allowed: a log target could be any socket or host".into()),
        },
        Spec::Rule(r) => {
            let (actions, at): (&[&str], usize) = match r {
                Rules::HttpRequest => (HTTP_REQUEST, 0),
                Rules::HttpResponse => (HTTP_RESPONSE, 0),
                Rules::HttpAfterResponse => (HTTP_AFTER_RESPONSE, 0),
                Rules::TcpRequest | Rules::TcpResponse => {
                    let which = arg(0).unwrap_or_default();
                    let list: &[&str] = match (r, which.as_str()) {
                        (_, "inspect-delay") => return plain_word(&args[0]),
                        (Rules::TcpRequest, "connection") if section == Section::Frontend => {
                            TCP_CONNECTION
                        }
                        (Rules::TcpRequest, "session") if section == Section::Frontend => {
                            TCP_SESSION
                        }
                        (Rules::TcpRequest, "content") => TCP_CONTENT,
                        (Rules::TcpResponse, "content") => TCP_RESPONSE_CONTENT,
                        _ => {
                            return Err(format!(
                                "\"{kw} {which}\" is not allowed in a {} snippet",
                                section.as_str()
                            ))
                        }
                    };
                    plain_word(&args[0])?;
                    (list, 1)
                }
            };
            let Some(w) = args.get(at) else {
                return Err(format!("{kw} without an action"));
            };
            let action = w.as_str().into_owned();
            // `set-var(txn.x)`, `track-sc0`, `set-map(FILE)`: the name is before '('.
            let name = action.split('(').next().unwrap_or_default();
            let ok = actions.contains(&name)
                || COUNTERS.contains(&name)
                || PATTERN_EDITS.contains(&name);
            if !ok {
                let what = if name.to_ascii_lowercase().starts_with("lua.") {
                    "Lua is not available to snippets".to_string()
                } else {
                    format!("{name:?} is not an allowed {kw} action (see docs/logic.md)")
                };
                return Err(what);
            }
            plain_word(w)
        }
    }
}

fn plain_word(w: &Word) -> Result<(), String> {
    if w.plain {
        Ok(())
    } else {
        Err(format!(
            "{:?} must be written without quotes or escapes",
            w.as_str()
        ))
    }
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-')
}

/// Refuses Lua, `env()`, `jwt_verify()` and file arguments other than the
/// document's own data files, wherever they appear in a line.
fn scan_references(words: &[Word], files: &BTreeSet<String>) -> Result<(), String> {
    let file_ok = |f: &[u8]| files.contains(String::from_utf8_lossy(f).as_ref());
    for (i, w) in words.iter().enumerate() {
        if w.text == b"-f" {
            let next = words.get(i + 1).map(|n| n.text.as_slice()).unwrap_or(b"");
            if !file_ok(next) {
                return Err(file_refused(next));
            }
        }
        let t = &w.text;
        let mut s = 0;
        while s < t.len() {
            if !is_ident(t[s]) {
                s += 1;
                continue;
            }
            let mut e = s;
            while e < t.len() && is_ident(t[e]) {
                e += 1;
            }
            let name = String::from_utf8_lossy(&t[s..e]).to_ascii_lowercase();
            if name.starts_with("lua.") {
                return Err("Lua is not available to snippets".into());
            }
            if t.get(e) == Some(&b'(') {
                match name.as_str() {
                    "env" => {
                        return Err("env() exposes HAProxy's environment and is not allowed".into())
                    }
                    "jwt_verify" => {
                        return Err("jwt_verify() reads key files and is not allowed".into())
                    }
                    n if n == "map" || n.starts_with("map_") || PATTERN_EDITS.contains(&n) => {
                        let arg_end = t[e + 1..]
                            .iter()
                            .position(|c| matches!(c, b',' | b')'))
                            .map_or(t.len(), |k| e + 1 + k);
                        let file = &t[e + 1..arg_end];
                        if !file_ok(file) {
                            return Err(file_refused(file));
                        }
                    }
                    _ => {}
                }
            }
            s = e;
        }
    }
    Ok(())
}

fn file_refused(f: &[u8]) -> String {
    format!(
        "file {:?}: a snippet may only reference the document's own map and ACL files ({{{{ maps.NAME }}}}, {{{{ acls.NAME }}}})",
        String::from_utf8_lossy(f)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> BTreeSet<String> {
        ["/d/maps/hosts.map", "/d/acls/deny.acl"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    fn fe(text: &str) -> Result<(), Violation> {
        check_snippet_with_files(text, Section::Frontend, &files())
    }

    #[test]
    fn real_operator_snippets_pass() {
        for ok in [
            "http-request del-header X-Internal-www",
            "http-request set-header X-LB-AZ az1\nhttp-request set-header X-Pool www",
            "use_backend %[req.hdr(host),lower,map(/d/maps/hosts.map,www)]",
            "http-request deny if { src -f /d/acls/deny.acl }",
            "http-response set-header X-LB lb1",
            "http-request return status 200 content-type text/plain string \"ok\"",
            "acl is_api path_beg /api\nuse_backend api if is_api",
            "http-request redirect scheme https code 301 unless { ssl_fc }",
            "tcp-request inspect-delay 5s\ntcp-request content accept if { req_ssl_hello_type 1 }",
            "tcp-request connection reject if { src -f /d/acls/deny.acl }",
            "stick-table type ip size 100k expire 30s store http_req_rate(10s)\nhttp-request track-sc0 src\nhttp-request deny deny_status 429 if { sc_http_req_rate(0) gt 100 }",
            "http-request set-var(txn.host) req.hdr(host)",
            "option forwardfor\nno option httpclose\ntimeout client 30s",
            "capture request header Host len 64",
            "http-request replace-path ^/old/(.*) /new/\\1",
            "http-after-response set-header Strict-Transport-Security \"max-age=31536000\"",
            "log global",
            "no log",
            "  # a comment\n\n  http-request del-header X-A  # trailing comment",
            "http-request set-map(/d/maps/hosts.map) %[req.hdr(host)] %[src]",
            "http-error status 503 content-type text/plain string \"try later\"",
            "redirect location https://example.com code 302 if { path / }",
            "compression algo gzip\ncompression type text/html text/plain",
        ] {
            assert_eq!(fe(ok), Ok(()), "{ok:?}");
        }
    }

    fn reason(text: &str) -> String {
        match fe(text) {
            Ok(()) => panic!("{text:?} was accepted"),
            Err(v) => v.to_string(),
        }
    }

    #[test]
    fn every_section_keyword_is_refused_however_written() {
        for kw in SECTION_KEYWORDS {
            let r = reason(&format!("http-request del-header X\n  {kw} x"));
            assert!(r.starts_with("line 2 "), "{r}");
            assert!(r.contains("opens a new configuration section"), "{r}");
        }
        for tricky in [
            "\"glo\"bal",
            "'global'",
            "\\x67lobal",
            "gl\\obal",
            "no global",
            "default program x",
        ] {
            let r = reason(tricky);
            assert!(
                r.contains("opens a new configuration section")
                    || r.contains("not a directive allowed"),
                "{tricky:?}: {r}"
            );
        }
    }

    #[test]
    fn code_programs_files_and_environment_are_refused() {
        for (bad, want) in [
            ("lua-load /tmp/x.lua", "not a directive allowed"),
            ("http-request lua.hello", "Lua is not available"),
            (
                "http-request use-service lua.svc",
                "not an allowed http-request action",
            ),
            (
                "tcp-request content use-service prometheus-exporter",
                "not an allowed",
            ),
            (
                "http-request set-header X %[lua.fetch]",
                "Lua is not available",
            ),
            (
                "http-request set-header X \"${TOKEN}\"",
                "environment variable expansion",
            ),
            (
                "http-request set-header X \"$HOME\"",
                "environment variable expansion",
            ),
            ("http-response set-header X %[env(TOKEN)]", "env() exposes"),
            ("external-check command /bin/sh", "not a directive allowed"),
            ("option external-check", "not allowed"),
            ("setenv X 1", "not a directive allowed"),
            ("presetenv X 1", "not a directive allowed"),
            ("insecure-fork-wanted", "not a directive allowed"),
            ("stats enable", "not a directive allowed"),
            ("stats socket /tmp/s level admin", "not a directive allowed"),
            ("log 10.0.0.1:514 local0", "only \"log global\""),
            ("log /dev/log local0", "only \"log global\""),
            ("errorfile 503 /etc/shadow", "not a directive allowed"),
            (
                "http-request return status 200 file /etc/shadow",
                "reads a file",
            ),
            ("http-request deny errorfile /etc/shadow", "reads a file"),
            ("http-request return lf-file /etc/shadow", "reads a file"),
            ("http-error status 500 errorfiles x", "reads a file"),
            (
                "filter spoe config /tmp/spoe.conf",
                "not a directive allowed",
            ),
            (
                "filter opentracing config /tmp/ot.cfg",
                "not a directive allowed",
            ),
            ("bind 0.0.0.0:22", "not a directive allowed"),
            ("bind /run/x.sock", "not a directive allowed"),
            ("acl x src -f /etc/passwd", "may only reference"),
            ("acl x src -f '/d/acls/deny.acl'x", "may only reference"),
            (
                "use_backend %[req.hdr(host),map(/etc/shadow)]",
                "may only reference",
            ),
            (
                "use_backend %[req.hdr(host),map_str(/etc/shadow,x)]",
                "may only reference",
            ),
            (
                "use_backend %[req.hdr(host),MAP('/etc/shadow')]",
                "may only reference",
            ),
            (
                "http-request set-map(/etc/shadow) a b",
                "may only reference",
            ),
            (
                "http-request set-var(txn.x) jwt_verify(RS256,/etc/key.pem)",
                "jwt_verify",
            ),
            (".if defined(X)", "conditional blocks"),
            (".notice hi", "conditional blocks"),
            ("[scope]", "opens a configuration scope"),
            ("http-request del-header X\rglobal", "control character"),
            ("http-request del-header X\u{0}", "control character"),
            ("http-request del-header \\x00X", "NUL"),
            ("http-request \"lua.x\"", "Lua is not available"),
            ("http-request \"del-header\" X", "without quotes"),
            ("\"http-request\" del-header X", "without quotes"),
            ("option \"httplog\"", "without quotes"),
            (
                "no http-request del-header X",
                "only applies to option and log",
            ),
            ("http-request send-spoe-group a b", "not an allowed"),
            (
                "http-request set-header X \"unterminated",
                "unmatched quote",
            ),
            ("mode tcp", "not a directive allowed"),
            ("email-alert to x@example.com", "not a directive allowed"),
            ("program x", "opens a new configuration section"),
        ] {
            let r = reason(bad);
            assert!(r.contains(want), "{bad:?}: {r}");
        }
        let long = format!("http-request del-header X{}", "a".repeat(MAX_LINE));
        assert!(reason(&long).contains("longer than"));
    }

    #[test]
    fn data_files_need_to_be_declared() {
        let text = "http-request deny if { src -f /d/acls/deny.acl }";
        assert!(check_snippet(text, Section::Frontend).is_err());
        assert!(fe(text).is_ok());
    }

    proptest::proptest! {
        /// Whatever the text, the checker answers (no panic), and what it
        /// accepts never has a line HAProxy would read as a section keyword.
        #[test]
        fn accepted_text_never_opens_a_section(parts in proptest::collection::vec(
            proptest::sample::select(vec![
                "global", "program", "frontend", "http-request", "del-header", "set-header",
                "acl", "use_backend", "option", "httplog", "no", " ", "  ", "\t", "\n", "#",
                "\"", "'", "\\", "\\x67", "\\x00", "lobal", "$", "${X}", "{", "}", "lua.",
                "env(", "-f", "/d/maps/hosts.map", "map(", ")", ",", "x", ".if", "[", "\r",
            ]),
            0..24,
        )) {
            let text: String = parts.concat();
            if fe(&text).is_ok() {
                for line in text.split('\n') {
                    let words = lexer::words(line).unwrap();
                    let first = words.iter().map(|w| w.as_str().into_owned())
                        .find(|w| w != "no" && w != "default");
                    if let Some(first) = first {
                        proptest::prop_assert!(
                            !SECTION_KEYWORDS.contains(&first.as_str()),
                            "{text:?} accepted with section keyword {first:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn backend_section_has_its_own_list() {
        let be = |t: &str| check_snippet(t, Section::Backend);
        assert!(be("option httpchk\nhttp-check send meth GET uri /health").is_ok());
        assert!(be("tcp-response content accept").is_ok());
        assert!(be("timeout server 30s\nretries 3").is_ok());
        assert!(be("server s 10.0.0.1:80 crt /etc/x.pem").is_err());
        assert!(be("option external-check").is_err());
        assert!(be("use_backend x").is_err());
        assert!(be("tcp-request connection reject").is_err());
    }
}
