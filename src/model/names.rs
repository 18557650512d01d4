//! The injection boundary: object names that reach haproxy.cfg and the runtime socket.

use std::fmt;

use serde::Serialize;

/// A validated object name: `^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$`.
///
/// Names are written verbatim into haproxy.cfg, file names and runtime-socket
/// commands, so anything else (spaces, `;`, `#`, quotes, newlines) is refused
/// here, at construction, and nowhere else needs to escape them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Name(String);

/// Why a string is not a valid [`Name`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("name is empty")]
    Empty,
    #[error("name is longer than 63 characters")]
    TooLong,
    #[error("name must start with a letter or digit, not {0:?}")]
    BadStart(char),
    #[error("name contains {0:?}; allowed are letters, digits, '_', '.', '-'")]
    BadChar(char),
}

impl Name {
    /// Validates `s` against the name rule.
    pub fn try_new(s: &str) -> Result<Name, NameError> {
        let mut chars = s.chars();
        let first = chars.next().ok_or(NameError::Empty)?;
        if !first.is_ascii_alphanumeric() {
            return Err(NameError::BadStart(first));
        }
        if let Some(c) =
            chars.find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
        {
            return Err(NameError::BadChar(c));
        }
        if s.len() > 63 {
            return Err(NameError::TooLong);
        }
        Ok(Name(s.to_string()))
    }

    /// A name the agent derives itself (per-AZ backends `pool:az`, its own
    /// map `_az_clients`): built from validated names plus `:` or a leading
    /// `_`, which no document name can contain, so they never collide with
    /// the document's objects and stay safe in haproxy.cfg and on the socket.
    pub(crate) fn derived(s: String) -> Name {
        debug_assert!(s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | ':')));
        Name(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for Name {
    fn borrow(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_rule() {
        for ok in ["a", "A9", "www_https", "web-az1.001", &"x".repeat(63)] {
            assert!(Name::try_new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_injection() {
        for bad in [
            "",
            "_x",
            "-x",
            ".x",
            "a b",
            "a;b",
            "a#b",
            "a\"b",
            "a'b",
            "a\nb",
            "a/b",
            "ä",
            &"x".repeat(64),
        ] {
            assert!(Name::try_new(bad).is_err(), "{bad:?}");
        }
    }
}
