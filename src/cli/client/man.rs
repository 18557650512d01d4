//! The man page, one self-contained lb-agent(8) ([`man_page`]), written one
//! roff section after another.
//! Part of [`crate::cli::client`] (docs/architecture.md).

use clap::CommandFactory;
use clap_mangen::roff::{bold, italic, roman, Inline, Roff};

use crate::cli::Cli;

use super::commands::DEFAULT_SOCKET;

/// The man page, one self-contained lb-agent(8): clap's title, name,
/// synopsis and description, then every visible subcommand with its
/// options (clap_mangen alone would point at per-subcommand pages that are
/// not shipped), exit status, environment and files.
pub fn man_page() -> std::io::Result<String> {
    let mut cmd = Cli::command();
    cmd.build();
    let man = clap_mangen::Man::new(cmd.clone())
        .section("8")
        .manual("System Administration");
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;

    let mut r = Roff::new();
    commands(&mut r, &cmd);
    exit_status(&mut r);
    environment(&mut r);
    files(&mut r);
    see_also(&mut r);
    r.to_writer(&mut out)?;
    man.render_version_section(&mut out)?;
    let page = String::from_utf8(out).map_err(std::io::Error::other)?;
    // Each piece above starts with roff's apostrophe preamble; keep one.
    let preamble = Roff::new().render();
    Ok(format!("{preamble}{}", page.replace(&preamble, "")))
}

/// One tagged paragraph: `term`, then `text` indented under it.
fn item(r: &mut Roff, term: Vec<Inline>, text: &str) {
    r.control("TP", std::iter::empty::<&str>());
    r.text(term);
    r.text([roman(text)]);
}

/// COMMANDS: how the commands reach the agent, then every visible
/// subcommand of `cmd` with its options.
fn commands(r: &mut Roff, cmd: &clap::Command) {
    r.control("SH", ["COMMANDS"]);
    r.text([roman(
        "status, vips, drain, undrain and reconcile talk HTTP/1.1 to the running agent over its UNIX status socket. \
         Mutations need root, the agent's user, or membership of the socket's group (status.group).",
    )]);
    for sub in cmd
        .get_subcommands()
        .filter(|c| !c.is_hide_set() && c.get_name() != "help")
    {
        command(r, sub);
    }
}

/// One subcommand: `lb-agent NAME [--option VALUE] ...` and its about
/// line, then its options indented, one paragraph each.
fn command(r: &mut Roff, sub: &clap::Command) {
    let args: Vec<&clap::Arg> = sub
        .get_arguments()
        .filter(|a| !a.is_hide_set() && !matches!(a.get_id().as_str(), "help" | "version"))
        .collect();
    let mut term = vec![bold(format!("lb-agent {}", sub.get_name()))];
    for a in &args {
        term.push(roman(" "));
        if a.is_required_set() {
            term.extend(usage(a));
        } else {
            term.push(roman("["));
            term.extend(usage(a));
            term.push(roman("]"));
        }
    }
    item(
        r,
        term,
        &sub.get_about().map(|a| a.to_string()).unwrap_or_default(),
    );
    if args.is_empty() {
        return;
    }
    r.control("RS", std::iter::empty::<&str>());
    for a in &args {
        item(r, usage(a), &option_help(a));
    }
    r.control("RE", std::iter::empty::<&str>());
}

/// `--long VALUE` (or `VALUE` for a positional) as roff inlines.
fn usage(a: &clap::Arg) -> Vec<Inline> {
    let value = a.get_action().takes_values().then(|| {
        a.get_value_names()
            .and_then(|v| v.first())
            .map_or_else(|| a.get_id().to_string().to_uppercase(), |v| v.to_string())
    });
    match (a.get_long(), value) {
        (Some(l), Some(v)) => vec![bold(format!("--{l}")), roman(" "), italic(v)],
        (Some(l), None) => vec![bold(format!("--{l}"))],
        (None, v) => vec![italic(
            v.unwrap_or_else(|| a.get_id().to_string().to_uppercase()),
        )],
    }
}

/// An option's help as a sentence, then its default, environment variable
/// and possible values.
fn option_help(a: &clap::Arg) -> String {
    let mut help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
    if !help.is_empty() && !help.ends_with('.') {
        help.push('.');
    }
    let defaults: Vec<String> = a
        .get_default_values()
        .iter()
        .map(|v| v.to_string_lossy().into_owned())
        .collect();
    if a.get_action().takes_values() && !defaults.is_empty() {
        help.push_str(&format!(" Default: {}.", defaults.join(", ")));
    }
    if let Some(env) = a.get_env() {
        help.push_str(&format!(" Environment: {}.", env.to_string_lossy()));
    }
    let values: Vec<String> = a
        .get_possible_values()
        .iter()
        .filter(|v| !v.is_hide_set())
        .map(|v| v.get_name().to_string())
        .collect();
    if a.get_action().takes_values() && !values.is_empty() {
        help.push_str(&format!(" One of: {}.", values.join(", ")));
    }
    help
}

/// EXIT STATUS: the codes of docs/status.md, "CLI".
fn exit_status(r: &mut Roff) {
    r.control("SH", ["EXIT STATUS"]);
    item(r, vec![bold("0")], "Success.");
    item(r, vec![bold("1")], "Runtime error: the agent answered an error or refused the request, or the socket is not accessible.");
    item(r, vec![bold("2")], "Usage or configuration error.");
    item(
        r,
        vec![bold("3")],
        "The agent is unreachable: no socket, connection refused, or no answer in time.",
    );
}

/// ENVIRONMENT: the variables the CLI reads.
fn environment(r: &mut Roff) {
    r.control("SH", ["ENVIRONMENT"]);
    item(r, vec![bold("LB_AGENT_SOCKET")], "Default for --socket.");
    item(r, vec![bold("LB_AGENT_CONFIG")], "Default for --config.");
    item(r, vec![bold("NO_COLOR")], "When set and not empty, the human views are not coloured (they never are when stdout is not a terminal).");
}

/// FILES: agent.toml and the status socket.
fn files(r: &mut Roff) {
    r.control("SH", ["FILES"]);
    item(
        r,
        vec![italic(crate::config::DEFAULT_PATH)],
        "Agent configuration.",
    );
    item(r, vec![italic(DEFAULT_SOCKET)], "Status socket: GET /v1/status, /v1/vips, /metrics; POST /v1/drain, /v1/undrain, /v1/reconcile.");
}

/// SEE ALSO: haproxy(1), bird(8), birdc(8).
fn see_also(r: &mut Roff) {
    r.control("SH", ["SEE ALSO"]);
    r.text([
        bold("haproxy"),
        roman("(1), "),
        bold("bird"),
        roman("(8), "),
        bold("birdc"),
        roman("(8)"),
    ]);
}
