//! What HAProxy 2.6 accepts for data values: one definition for validation
//! and for the runtime client.
//!
//! A map entry, an ACL pattern or a certificate travels two ways: into a
//! file HAProxy reads at load (`pat_ref_read_from_file_smp`, OpenSSL), and
//! over the runtime socket (`add map`, `set map`, payloads). The two parse
//! differently, and a value one of them mangles makes the agent and HAProxy
//! disagree forever (a convergence loop), while a value the socket refuses
//! (a `;`, which splits commands; a line longer than HAProxy's 16 KiB
//! buffer, which makes it close the session) used to block every later
//! runtime change on the host. So validation accepts exactly what both
//! paths carry unchanged, and the runtime client refuses, per command,
//! anything outside it:
//!
//! | value | rule | why |
//! |---|---|---|
//! | map key, ACL pattern | 1–1024 bytes of printable ASCII without space, `"`, `'`, `\`, `#`, `;` | a space ends a key in files and payloads; `#` starts a comment at the start of a file line (and `#0x…` names an entry by reference on the socket); `\` is unescaped and `;` splits commands on the socket |
//! | map value | 1–4096 bytes, no control characters, no `\` or `;`, no leading or trailing space | files trim surrounding blanks; the socket unescapes `\` and splits on `;`; inner spaces are sent escaped (`\ `) |
//! | certificate PEM | at most 1 MiB of ASCII text with a `-----BEGIN` line | the socket's payload (15 KiB) is only used when it fits; larger ones are applied by a reload |
//!
//! The lengths keep every command line (`set map FILE KEY VALUE`, values
//! escaped) and every map file line well inside HAProxy's 16 KiB buffer.

/// HAProxy's `tune.bufsize` (Debian 12's build: 16384). A runtime command line
/// longer than this makes HAProxy close the session; a map file line longer
/// than this is split into two entries.
pub const BUFSIZE: usize = 16 * 1024;

/// Largest payload (`<<`) sent on the runtime socket: 2.6 silently drops
/// payloads over `tune.bufsize`, so stay under it with headroom.
pub const MAX_PAYLOAD: usize = 15 * 1024;

/// Longest runtime command line the client sends.
pub const MAX_COMMAND_LINE: usize = BUFSIZE - 1024;

/// Longest map key or ACL pattern.
pub const MAX_KEY: usize = 1024;

/// Longest map value.
pub const MAX_VALUE: usize = 4096;

/// Largest certificate bundle.
pub const MAX_PEM: usize = 1024 * 1024;

/// A map key or ACL pattern (`what` names it in the message).
pub fn check_key(s: &str, what: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err(format!("empty {what}"));
    }
    if s.len() > MAX_KEY {
        return Err(format!(
            "{what} is {} bytes, the limit is {MAX_KEY}",
            s.len()
        ));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !c.is_ascii_graphic() || matches!(c, '"' | '\'' | '\\' | '#' | ';'))
    {
        return Err(format!(
            "invalid {what} {}: {} (printable ASCII without spaces, quotes, '\\', '#' or ';')",
            shorten(s),
            describe(c)
        ));
    }
    Ok(())
}

/// A map value.
pub fn check_value(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("empty value".into());
    }
    if s.len() > MAX_VALUE {
        return Err(format!(
            "value is {} bytes, the limit is {MAX_VALUE}",
            s.len()
        ));
    }
    if let Some(c) = s
        .chars()
        .find(|c| c.is_control() || matches!(c, '\\' | ';'))
    {
        return Err(format!(
            "invalid value {}: {} (no control characters, '\\' or ';')",
            shorten(s),
            describe(c)
        ));
    }
    if s.starts_with(' ') || s.ends_with(' ') {
        return Err(format!(
            "invalid value {}: leading or trailing space (HAProxy trims it from map files)",
            shorten(s)
        ));
    }
    Ok(())
}

/// A certificate bundle.
pub fn check_pem(s: &str) -> Result<(), String> {
    if s.len() > MAX_PEM {
        return Err(format!(
            "PEM bundle is {} bytes, the limit is {MAX_PEM}",
            s.len()
        ));
    }
    if !s.contains("-----BEGIN ") {
        return Err("not a PEM bundle (no -----BEGIN line)".into());
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_graphic() || matches!(c, ' ' | '\n' | '\r' | '\t')))
    {
        return Err(format!("PEM bundle contains {}", describe(c)));
    }
    Ok(())
}

/// A map value as a runtime-socket argument: inner spaces escaped (`\ `),
/// which HAProxy's CLI tokenizer turns back into spaces.
pub fn cli_value(s: &str) -> String {
    s.replace(' ', "\\ ")
}

fn describe(c: char) -> String {
    if c == ' ' {
        "space".into()
    } else if c.is_control() || !c.is_ascii() {
        format!("character U+{:04X}", c as u32)
    } else {
        format!("'{c}'")
    }
}

fn shorten(s: &str) -> String {
    let short: String = s.chars().take(40).collect();
    if short.len() < s.len() {
        format!("{short:?}...")
    } else {
        format!("{short:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values() {
        assert!(check_key("a.example.com", "key").is_ok());
        assert!(check_key("10.0.0.0/8", "pattern").is_ok());
        for bad in [
            "",
            "a b",
            "a;b",
            "#x",
            "a\"b",
            "a\\b",
            "ä",
            &"k".repeat(MAX_KEY + 1),
        ] {
            assert!(check_key(bad, "key").is_err(), "{bad:?}");
        }
        assert!(check_value("www").is_ok());
        assert!(check_value("text/html charset=utf-8 #1").is_ok());
        assert!(check_value("héllo").is_ok());
        for bad in [
            "",
            "a;b",
            "a\\b",
            "a\tb",
            "a\nb",
            " a",
            "a ",
            &"v".repeat(MAX_VALUE + 1),
        ] {
            assert!(check_value(bad).is_err(), "{bad:?}");
        }
        assert!(check_value(&"v".repeat(MAX_VALUE)).is_ok());
    }

    #[test]
    fn every_accepted_entry_fits_haproxy_buffers() {
        let key = "k".repeat(MAX_KEY);
        let value = "a ".repeat(MAX_VALUE / 2 - 1) + "a";
        assert!(check_value(&value).is_ok());
        let path = "/".repeat(1024);
        let line = format!("set map {path} {key} {}", cli_value(&value));
        assert!(line.len() < MAX_COMMAND_LINE, "{}", line.len());
        assert!(format!("{key} {value}\n").len() < BUFSIZE - 1);
    }

    #[test]
    fn pem_bundles() {
        assert!(
            check_pem("-----BEGIN CERTIFICATE-----\r\nAAAA\n-----END CERTIFICATE-----\n").is_ok()
        );
        assert!(check_pem("nothing").is_err());
        assert!(check_pem("-----BEGIN X-----\u{0}").is_err());
        assert!(check_pem(&format!("-----BEGIN X-----{}", "A".repeat(MAX_PEM))).is_err());
    }

    #[test]
    fn values_are_escaped_for_the_socket() {
        assert_eq!(cli_value("a b  c"), "a\\ b\\ \\ c");
        assert_eq!(cli_value("www"), "www");
    }
}
