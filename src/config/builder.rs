//! [`AgentToml`]: renders agent.toml text; used by the integration tests
//! and the bench, so that one place knows how the file is spelled
//! (docs/testing.md, "agent.toml for tests and the bench").
//!
//! Only the keys a caller sets are written: everything else keeps the
//! default of docs/config.md, exactly as in a hand-written file that leaves
//! the key out. Values are typed (durations, paths, enums) and rendered in
//! the spelling `config::parse` accepts; a key set twice keeps the last value.
//! Rare knobs without a setter go in as raw lines with [`AgentToml::extra`].

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;

use super::{OnStop, OnUnhealthy};

/// A section of agent.toml (`[[check]]` tables are not covered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Node,
    Source,
    Haproxy,
    Health,
    Bird,
    Vip,
    Status,
}

impl Section {
    /// Every section, in the order they are rendered (that of docs/config.md).
    const ALL: [Section; 7] = [
        Section::Node,
        Section::Source,
        Section::Haproxy,
        Section::Health,
        Section::Bird,
        Section::Vip,
        Section::Status,
    ];

    /// The table name in agent.toml.
    pub fn name(self) -> &'static str {
        match self {
            Section::Node => "node",
            Section::Source => "source",
            Section::Haproxy => "haproxy",
            Section::Health => "health",
            Section::Bird => "bird",
            Section::Vip => "vip",
            Section::Status => "status",
        }
    }
}

/// agent.toml under construction: the keys set so far, rendered by
/// [`AgentToml::render`]. [`AgentToml::new`] sets nothing (every default);
/// [`AgentToml::in_dir`] puts every file the agent owns below one directory.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentToml {
    /// (section, key, value as TOML), in the order first set.
    keys: Vec<(Section, &'static str, String)>,
    /// Raw lines appended to a section, in the order given.
    extra: Vec<(Section, String)>,
}

/// A TOML basic string (quoted and escaped).
fn string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn path(p: &Path) -> String {
    string(&p.to_string_lossy())
}

/// A humantime duration string (`"200ms"`, `"1m 30s"`).
fn duration(d: Duration) -> String {
    string(&humantime::format_duration(d).to_string())
}

/// A TOML array of basic strings.
fn strings<S: AsRef<str>>(items: &[S]) -> String {
    let items: Vec<String> = items.iter().map(|s| string(s.as_ref())).collect();
    format!("[{}]", items.join(", "))
}

impl AgentToml {
    /// Nothing set: renders an empty file, every key at its default.
    pub fn new() -> AgentToml {
        AgentToml::default()
    }

    /// Every file the agent owns below `dir`: `state/` (state_dir and the
    /// cache), `templates/`, `server-state`, `data/`, `bird/` (include file
    /// and control socket) and `status.sock`. Creates no directory.
    pub fn in_dir(dir: &Path) -> AgentToml {
        AgentToml::new()
            .state_dir(&dir.join("state"))
            .cache(&dir.join("state/last-good.json"))
            .templates(&dir.join("templates"))
            .haproxy_state_file(&dir.join("server-state"))
            .data_dir(&dir.join("data"))
            .include_file(&dir.join("bird/lb-agent-prefixes.conf"))
            .control_socket(&dir.join("bird/bird.ctl"))
            .status_socket(&dir.join("status.sock"))
    }

    /// Sets `key` of `section` to `value` (already TOML), replacing an
    /// earlier value in place.
    fn set(mut self, section: Section, key: &'static str, value: String) -> AgentToml {
        match self
            .keys
            .iter_mut()
            .find(|(s, k, _)| *s == section && *k == key)
        {
            Some(entry) => entry.2 = value,
            None => self.keys.push((section, key, value)),
        }
        self
    }

    /// Appends raw `line` (one or more `key = value` lines) to `section`,
    /// for knobs without a setter.
    pub fn extra(mut self, section: Section, line: &str) -> AgentToml {
        self.extra.push((section, line.to_owned()));
        self
    }

    /// The agent.toml text: one table per section that has a key, in the
    /// order of docs/config.md.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for section in Section::ALL {
            let mut lines: Vec<String> = self
                .keys
                .iter()
                .filter(|(s, _, _)| *s == section)
                .map(|(_, k, v)| format!("{k} = {v}"))
                .collect();
            lines.extend(
                self.extra
                    .iter()
                    .filter(|(s, _)| *s == section)
                    .map(|(_, l)| l.trim_end().to_owned()),
            );
            if lines.is_empty() {
                continue;
            }
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(&format!("[{}]\n", section.name()));
            for l in lines {
                out.push_str(&l);
                out.push('\n');
            }
        }
        out
    }

    /// Writes [`AgentToml::render`] to `file` (its directory must exist).
    pub fn write(&self, file: &Path) -> io::Result<()> {
        std::fs::write(file, self.render())
    }

    // ------------------------------------------------------------ [node]

    /// `node.name`.
    pub fn name(self, name: &str) -> AgentToml {
        self.set(Section::Node, "name", string(name))
    }

    /// `node.group`.
    pub fn group(self, group: &str) -> AgentToml {
        self.set(Section::Node, "group", string(group))
    }

    /// `node.az`.
    pub fn az(self, az: &str) -> AgentToml {
        self.set(Section::Node, "az", string(az))
    }

    /// `node.state_dir`.
    pub fn state_dir(self, dir: &Path) -> AgentToml {
        self.set(Section::Node, "state_dir", path(dir))
    }

    // ---------------------------------------------------------- [source]

    /// `source.url` (`file://`, `http(s)://` or `etcd://`).
    pub fn url(self, url: &str) -> AgentToml {
        self.set(Section::Source, "url", string(url))
    }

    /// `source.poll_interval`.
    pub fn poll_interval(self, d: Duration) -> AgentToml {
        self.set(Section::Source, "poll_interval", duration(d))
    }

    /// `source.long_poll`.
    pub fn long_poll(self, d: Duration) -> AgentToml {
        self.set(Section::Source, "long_poll", duration(d))
    }

    /// `source.cache`.
    pub fn cache(self, file: &Path) -> AgentToml {
        self.set(Section::Source, "cache", path(file))
    }

    // --------------------------------------------------------- [haproxy]

    /// `haproxy.config`: the haproxy.cfg the agent renders.
    pub fn haproxy_config(self, file: &Path) -> AgentToml {
        self.set(Section::Haproxy, "config", path(file))
    }

    /// `haproxy.runtime_socket`.
    pub fn runtime_socket(self, socket: &Path) -> AgentToml {
        self.set(Section::Haproxy, "runtime_socket", path(socket))
    }

    /// `haproxy.master_socket`.
    pub fn master_socket(self, socket: &Path) -> AgentToml {
        self.set(Section::Haproxy, "master_socket", path(socket))
    }

    /// `haproxy.binary`.
    pub fn haproxy_binary(self, file: &Path) -> AgentToml {
        self.set(Section::Haproxy, "binary", path(file))
    }

    /// `haproxy.reload_command` (`&[]`: reload on the master socket).
    pub fn reload_command(self, argv: &[&str]) -> AgentToml {
        self.set(Section::Haproxy, "reload_command", strings(argv))
    }

    /// `haproxy.templates`.
    pub fn templates(self, dir: &Path) -> AgentToml {
        self.set(Section::Haproxy, "templates", path(dir))
    }

    /// `haproxy.min_reload_interval`.
    pub fn min_reload_interval(self, d: Duration) -> AgentToml {
        self.set(Section::Haproxy, "min_reload_interval", duration(d))
    }

    /// `haproxy.state_file`.
    pub fn haproxy_state_file(self, file: &Path) -> AgentToml {
        self.set(Section::Haproxy, "state_file", path(file))
    }

    /// `haproxy.data_dir`.
    pub fn data_dir(self, dir: &Path) -> AgentToml {
        self.set(Section::Haproxy, "data_dir", path(dir))
    }

    /// `haproxy.hard_stop_after`.
    pub fn hard_stop_after(self, d: Duration) -> AgentToml {
        self.set(Section::Haproxy, "hard_stop_after", duration(d))
    }

    /// `haproxy.reload_timeout`.
    pub fn reload_timeout(self, d: Duration) -> AgentToml {
        self.set(Section::Haproxy, "reload_timeout", duration(d))
    }

    /// `haproxy.verify_interval`.
    pub fn verify_interval(self, d: Duration) -> AgentToml {
        self.set(Section::Haproxy, "verify_interval", duration(d))
    }

    // ---------------------------------------------------------- [health]

    /// `health.interval`.
    pub fn health_interval(self, d: Duration) -> AgentToml {
        self.set(Section::Health, "interval", duration(d))
    }

    /// `health.timeout`.
    pub fn health_timeout(self, d: Duration) -> AgentToml {
        self.set(Section::Health, "timeout", duration(d))
    }

    /// `health.rise`.
    pub fn rise(self, n: u32) -> AgentToml {
        self.set(Section::Health, "rise", n.to_string())
    }

    /// `health.fall`.
    pub fn fall(self, n: u32) -> AgentToml {
        self.set(Section::Health, "fall", n.to_string())
    }

    /// `health.fast_interval`.
    pub fn fast_interval(self, d: Duration) -> AgentToml {
        self.set(Section::Health, "fast_interval", duration(d))
    }

    // ------------------------------------------------------------ [bird]

    /// `bird.include_file`.
    pub fn include_file(self, file: &Path) -> AgentToml {
        self.set(Section::Bird, "include_file", path(file))
    }

    /// `bird.control_socket`.
    pub fn control_socket(self, socket: &Path) -> AgentToml {
        self.set(Section::Bird, "control_socket", path(socket))
    }

    /// `bird.export_protocols`.
    pub fn export_protocols(self, protocols: &[&str]) -> AgentToml {
        self.set(Section::Bird, "export_protocols", strings(protocols))
    }

    /// `bird.drain_variable`.
    pub fn drain_variable(self, name: &str) -> AgentToml {
        self.set(Section::Bird, "drain_variable", string(name))
    }

    /// `bird.demote_variable`.
    pub fn demote_variable(self, name: &str) -> AgentToml {
        self.set(Section::Bird, "demote_variable", string(name))
    }

    /// `bird.on_unhealthy`.
    pub fn on_unhealthy(self, what: OnUnhealthy) -> AgentToml {
        let what = match what {
            OnUnhealthy::Withdraw => "withdraw",
            OnUnhealthy::Demote => "demote",
        };
        self.set(Section::Bird, "on_unhealthy", string(what))
    }

    /// `bird.on_stop`.
    pub fn on_stop(self, what: OnStop) -> AgentToml {
        let what = match what {
            OnStop::Withdraw => "withdraw",
            OnStop::Keep => "keep",
        };
        self.set(Section::Bird, "on_stop", string(what))
    }

    // ------------------------------------------------------------- [vip]

    /// `vip.interface`.
    pub fn vip_interface(self, name: &str) -> AgentToml {
        self.set(Section::Vip, "interface", string(name))
    }

    /// `vip.manage`.
    pub fn manage_vips(self, manage: bool) -> AgentToml {
        self.set(Section::Vip, "manage", manage.to_string())
    }

    /// `vip.allowed_prefixes`.
    pub fn allowed_prefixes(self, prefixes: &[IpNet]) -> AgentToml {
        let prefixes: Vec<String> = prefixes.iter().map(ToString::to_string).collect();
        self.set(Section::Vip, "allowed_prefixes", strings(&prefixes))
    }

    // ---------------------------------------------------------- [status]

    /// `status.socket`.
    pub fn status_socket(self, socket: &Path) -> AgentToml {
        self.set(Section::Status, "socket", path(socket))
    }

    /// `status.group`.
    pub fn status_group(self, group: &str) -> AgentToml {
        self.set(Section::Status, "group", string(group))
    }

    /// `status.metrics_listen`.
    pub fn metrics_listen(self, addr: SocketAddr) -> AgentToml {
        self.set(Section::Status, "metrics_listen", string(&addr.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::config::{parse_str, Config, SourceUrl};

    fn parse(t: &AgentToml) -> Config {
        let text = t.render();
        parse_str(&text, "agent.toml").unwrap_or_else(|e| panic!("{e}\n--- rendered:\n{text}"))
    }

    fn defaults() -> Config {
        parse_str("", "agent.toml").unwrap()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn nothing_set_renders_an_empty_file_of_defaults() {
        assert_eq!(AgentToml::new().render(), "");
        assert_eq!(parse(&AgentToml::new()), defaults());
    }

    /// One setter each: the parsed config is the default with exactly that
    /// field changed.
    #[test]
    fn every_setter_round_trips_through_the_parser() {
        type Case = (&'static str, AgentToml, fn(&mut Config));
        let p = |s: &str| PathBuf::from(s);
        let cases: Vec<Case> = vec![
            ("name", AgentToml::new().name("lb-7"), |c| {
                c.node.name = "lb-7".into()
            }),
            ("group", AgentToml::new().group("blue"), |c| {
                c.node.group = "blue".into()
            }),
            ("az", AgentToml::new().az("az2"), |c| {
                c.node.az = Some("az2".into())
            }),
            (
                "state_dir",
                AgentToml::new().state_dir(&p("/srv/lb")),
                |c| {
                    // The cache and the server-state file follow state_dir.
                    c.node.state_dir = "/srv/lb".into();
                    c.source.cache = "/srv/lb/last-good.json".into();
                    c.haproxy.state_file = "/srv/lb/haproxy-server-state".into();
                },
            ),
            (
                "url",
                AgentToml::new().url("file:///srv/desired.json"),
                |c| c.source.url = SourceUrl::File("/srv/desired.json".into()),
            ),
            (
                "poll_interval",
                AgentToml::new().poll_interval(ms(200)),
                |c| c.source.poll_interval = ms(200),
            ),
            ("long_poll", AgentToml::new().long_poll(ms(90_500)), |c| {
                c.source.long_poll = ms(90_500)
            }),
            ("cache", AgentToml::new().cache(&p("/c/cache.json")), |c| {
                c.source.cache = "/c/cache.json".into()
            }),
            (
                "haproxy_config",
                AgentToml::new().haproxy_config(&p("/h/h.cfg")),
                |c| c.haproxy.config = "/h/h.cfg".into(),
            ),
            (
                "runtime_socket",
                AgentToml::new().runtime_socket(&p("/h/a.sock")),
                |c| c.haproxy.runtime_socket = "/h/a.sock".into(),
            ),
            (
                "master_socket",
                AgentToml::new().master_socket(&p("/h/m.sock")),
                |c| c.haproxy.master_socket = "/h/m.sock".into(),
            ),
            (
                "haproxy_binary",
                AgentToml::new().haproxy_binary(&p("/opt/haproxy")),
                |c| c.haproxy.binary = "/opt/haproxy".into(),
            ),
            (
                "reload_command []",
                AgentToml::new().reload_command(&[]),
                |c| c.haproxy.reload_command = vec![],
            ),
            (
                "reload_command",
                AgentToml::new().reload_command(&["kill", "-USR2", "1"]),
                |c| c.haproxy.reload_command = vec!["kill".into(), "-USR2".into(), "1".into()],
            ),
            ("templates", AgentToml::new().templates(&p("/t")), |c| {
                c.haproxy.templates = "/t".into()
            }),
            (
                "min_reload_interval",
                AgentToml::new().min_reload_interval(ms(500)),
                |c| c.haproxy.min_reload_interval = ms(500),
            ),
            (
                "haproxy_state_file",
                AgentToml::new().haproxy_state_file(&p("/s/ss")),
                |c| c.haproxy.state_file = "/s/ss".into(),
            ),
            ("data_dir", AgentToml::new().data_dir(&p("/d")), |c| {
                c.haproxy.data_dir = "/d".into()
            }),
            (
                "hard_stop_after",
                AgentToml::new().hard_stop_after(ms(5_000)),
                |c| c.haproxy.hard_stop_after = ms(5_000),
            ),
            (
                "reload_timeout",
                AgentToml::new().reload_timeout(ms(60_000)),
                |c| c.haproxy.reload_timeout = ms(60_000),
            ),
            (
                "verify_interval",
                AgentToml::new().verify_interval(ms(2_000)),
                |c| c.haproxy.verify_interval = ms(2_000),
            ),
            (
                "health_interval",
                AgentToml::new().health_interval(ms(200)),
                |c| c.health.interval = ms(200),
            ),
            (
                "health_timeout",
                AgentToml::new().health_timeout(ms(150)),
                |c| c.health.timeout = ms(150),
            ),
            ("rise", AgentToml::new().rise(7), |c| c.health.rise = 7),
            ("fall", AgentToml::new().fall(9), |c| c.health.fall = 9),
            (
                "fast_interval",
                AgentToml::new().fast_interval(ms(100)),
                |c| c.health.fast_interval = ms(100),
            ),
            (
                "include_file",
                AgentToml::new().include_file(&p("/b/inc.conf")),
                |c| c.bird.include_file = "/b/inc.conf".into(),
            ),
            (
                "control_socket",
                AgentToml::new().control_socket(&p("/b/b.ctl")),
                |c| c.bird.control_socket = "/b/b.ctl".into(),
            ),
            (
                "export_protocols",
                AgentToml::new().export_protocols(&["tor", "tor_2"]),
                |c| c.bird.export_protocols = vec!["tor".into(), "tor_2".into()],
            ),
            (
                "drain_variable",
                AgentToml::new().drain_variable("LB_DRAIN"),
                |c| c.bird.drain_variable = Some("LB_DRAIN".into()),
            ),
            (
                "demote_variable",
                AgentToml::new().demote_variable("LB_DEMOTE"),
                |c| c.bird.demote_variable = Some("LB_DEMOTE".into()),
            ),
            (
                "on_unhealthy withdraw",
                AgentToml::new().on_unhealthy(OnUnhealthy::Withdraw),
                |_| {},
            ),
            (
                "on_unhealthy demote",
                AgentToml::new()
                    .demote_variable("LB_DEMOTE")
                    .on_unhealthy(OnUnhealthy::Demote),
                |c| {
                    c.bird.demote_variable = Some("LB_DEMOTE".into());
                    c.bird.on_unhealthy = OnUnhealthy::Demote;
                },
            ),
            (
                "on_stop withdraw",
                AgentToml::new().on_stop(OnStop::Withdraw),
                |_| {},
            ),
            (
                "on_stop keep",
                AgentToml::new().on_stop(OnStop::Keep),
                |c| c.bird.on_stop = OnStop::Keep,
            ),
            (
                "vip_interface",
                AgentToml::new().vip_interface("dummy0"),
                |c| c.vip.interface = "dummy0".into(),
            ),
            ("manage_vips", AgentToml::new().manage_vips(false), |c| {
                c.vip.manage = false
            }),
            (
                "allowed_prefixes",
                AgentToml::new().allowed_prefixes(&[
                    "192.0.2.0/24".parse().unwrap(),
                    "2001:db8::/48".parse().unwrap(),
                ]),
                |c| {
                    c.vip.allowed_prefixes = vec![
                        "192.0.2.0/24".parse().unwrap(),
                        "2001:db8::/48".parse().unwrap(),
                    ]
                },
            ),
            (
                "allowed_prefixes []",
                AgentToml::new().allowed_prefixes(&[]),
                |c| c.vip.allowed_prefixes = vec![],
            ),
            (
                "status_socket",
                AgentToml::new().status_socket(&p("/r/s.sock")),
                |c| c.status.socket = "/r/s.sock".into(),
            ),
            ("status_group", AgentToml::new().status_group("root"), |c| {
                c.status.group = "root".into()
            }),
            (
                "metrics_listen",
                AgentToml::new().metrics_listen("[::1]:9477".parse().unwrap()),
                |c| c.status.metrics_listen = Some("[::1]:9477".parse().unwrap()),
            ),
        ];
        for (what, toml, edit) in cases {
            let mut want = defaults();
            edit(&mut want);
            assert_eq!(parse(&toml), want, "{what}:\n{}", toml.render());
        }
    }

    #[test]
    fn in_dir_puts_every_agent_file_below_the_directory() {
        let mut want = defaults();
        want.node.state_dir = "/lab/lb1/state".into();
        want.source.cache = "/lab/lb1/state/last-good.json".into();
        want.haproxy.templates = "/lab/lb1/templates".into();
        want.haproxy.state_file = "/lab/lb1/server-state".into();
        want.haproxy.data_dir = "/lab/lb1/data".into();
        want.bird.include_file = "/lab/lb1/bird/lb-agent-prefixes.conf".into();
        want.bird.control_socket = "/lab/lb1/bird/bird.ctl".into();
        want.status.socket = "/lab/lb1/status.sock".into();
        assert_eq!(parse(&AgentToml::in_dir(Path::new("/lab/lb1"))), want);
    }

    #[test]
    fn a_key_set_twice_keeps_the_last_value_once() {
        let t = AgentToml::new()
            .on_stop(OnStop::Keep)
            .on_stop(OnStop::Withdraw);
        assert_eq!(t.render(), "[bird]\non_stop = \"withdraw\"\n");
        assert_eq!(parse(&t), defaults());
    }

    #[test]
    fn extra_lines_land_in_their_section() {
        let t = AgentToml::new()
            .group("blue")
            .extra(Section::Source, "max_removal_ratio = 1.0")
            .extra(Section::Node, "az = \"az1\"\n");
        assert_eq!(
            t.render(),
            "[node]\ngroup = \"blue\"\naz = \"az1\"\n\n[source]\nmax_removal_ratio = 1.0\n"
        );
        let mut want = defaults();
        want.node.group = "blue".into();
        want.node.az = Some("az1".into());
        want.source.max_removal_ratio = 1.0;
        assert_eq!(parse(&t), want);
    }

    #[test]
    fn paths_and_strings_are_escaped() {
        let t = AgentToml::new().state_dir(Path::new("/srv/a \"quoted\" \\ dir"));
        let c = parse(&t);
        assert_eq!(c.node.state_dir, Path::new("/srv/a \"quoted\" \\ dir"));
    }

    #[test]
    fn write_writes_the_rendered_text() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent.toml");
        let t = AgentToml::in_dir(dir.path()).name("lb1");
        t.write(&file).unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), t.render());
    }
}
