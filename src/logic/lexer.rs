//! Splits one haproxy.cfg line into words exactly as HAProxy 2.6 does.
//!
//! A port of `parse_line()` (`src/tools.c`, called by `readcfgfile()` with
//! environment, double and single quotes, backslash escapes and `#`
//! comments enabled). The snippet checker judges the *decoded* words, the
//! way HAProxy will see them, so that `"glo"bal` or `\x67lobal` is
//! recognised as the section keyword `global`. Anything HAProxy would
//! expand or reject (an environment variable inside double quotes, an
//! unmatched quote, a bad `\x` escape, more than 64 words) is an error here,
//! so no candidate reaches `haproxy -c` with a meaning the checker did not
//! see.

use std::fmt;

/// HAProxy's `MAX_LINE_ARGS`: a line with more words is a fatal error.
pub const MAX_WORDS: usize = 64;

/// One word of a line, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Word {
    /// The bytes HAProxy gets (escapes decoded, quotes removed).
    pub text: Vec<u8>,
    /// True when the word was written without quotes or backslashes.
    pub plain: bool,
}

impl Word {
    /// The decoded word as text (invalid UTF-8 replaced).
    pub fn as_str(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.text)
    }
}

/// Why a line cannot be split the way HAProxy would.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LexError {
    /// A quote that is never closed (HAProxy: "unmatched quote").
    UnmatchedQuote,
    /// `\x` not followed by two hex digits.
    BadHexEscape,
    /// `$NAME` or `${NAME}` inside double quotes: HAProxy would substitute
    /// its own environment, which a document must never read.
    EnvExpansion,
    /// More than [`MAX_WORDS`] words.
    TooManyWords,
}

impl fmt::Display for LexError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LexError::UnmatchedQuote => "unmatched quote",
            LexError::BadHexEscape => "truncated or invalid \\x escape",
            LexError::EnvExpansion => {
                "environment variable expansion (\"$NAME\" or \"${NAME}\" inside double quotes) is not allowed"
            }
            LexError::TooManyWords => "more than 64 words on one line",
        })
    }
}

/// Splits `line` (without its newline) into decoded words; empty for a blank
/// or comment-only line.
pub fn words(line: &str) -> Result<Vec<Word>, LexError> {
    let b = line.as_bytes();
    let mut out: Vec<Word> = Vec::new();
    let mut cur: Vec<u8> = Vec::new();
    let mut plain = true;
    let mut in_word = false;
    let (mut squote, mut dquote) = (false, false);
    let mut i = 0;
    // readcfgfile() skips leading spaces before calling parse_line().
    while i < b.len() && is_space(b[i]) {
        i += 1;
    }
    while i < b.len() {
        let c = b[i];
        match c {
            0 | b'\n' | b'\r' => break,
            b'#' if !squote && !dquote => break,
            b'"' if !squote => {
                dquote = !dquote;
                plain = false;
                in_word = true;
                i += 1;
            }
            b'\'' if !dquote => {
                squote = !squote;
                plain = false;
                in_word = true;
                i += 1;
            }
            b'\\' if !squote => {
                plain = false;
                in_word = true;
                let next = b.get(i + 1).copied();
                let (byte, used) = match next {
                    Some(b' ') | Some(b'\\') => (next.unwrap_or(b'\\'), 2),
                    Some(b't') => (b'\t', 2),
                    Some(b'n') => (b'\n', 2),
                    Some(b'r') => (b'\r', 2),
                    Some(b'#') | Some(b'\'') | Some(b'"') => (next.unwrap_or(b'\\'), 2),
                    Some(b'$') if dquote => (b'$', 2),
                    Some(b'x') => {
                        let h = |k: usize| b.get(i + k).and_then(|x| (*x as char).to_digit(16));
                        match (h(2), h(3)) {
                            (Some(a), Some(d)) => ((a * 16 + d) as u8, 4),
                            _ => return Err(LexError::BadHexEscape),
                        }
                    }
                    // Any other combination is not an escape: the backslash stays.
                    _ => (b'\\', 1),
                };
                cur.push(byte);
                i += used;
            }
            _ if is_space(c) && !squote && !dquote => {
                while i < b.len() && is_space(b[i]) {
                    i += 1;
                }
                out.push(Word {
                    text: std::mem::take(&mut cur),
                    plain,
                });
                plain = true;
                in_word = false;
                if out.len() >= MAX_WORDS {
                    return Err(LexError::TooManyWords);
                }
            }
            b'$' if dquote => return Err(LexError::EnvExpansion),
            _ => {
                cur.push(c);
                in_word = true;
                i += 1;
            }
        }
    }
    if squote || dquote {
        return Err(LexError::UnmatchedQuote);
    }
    if in_word || !cur.is_empty() {
        out.push(Word { text: cur, plain });
    }
    // A trailing separator leaves an empty last word in HAProxy too; it
    // carries no meaning.
    while out.last().is_some_and(|w| w.text.is_empty() && w.plain) {
        out.pop();
    }
    if out.len() > MAX_WORDS {
        return Err(LexError::TooManyWords);
    }
    Ok(out)
}

/// C's `isspace()` in the C locale.
fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(line: &str) -> Vec<String> {
        words(line)
            .unwrap()
            .iter()
            .map(|w| w.as_str().into_owned())
            .collect()
    }

    #[test]
    fn splits_and_decodes_like_haproxy() {
        for (line, want) in [
            (
                "  http-request del-header X-A  ",
                vec!["http-request", "del-header", "X-A"],
            ),
            ("\"glo\"bal", vec!["global"]),
            ("\\x67lobal", vec!["global"]),
            ("a 'b c' \"d e\"", vec!["a", "b c", "d e"]),
            ("a\\ b c", vec!["a b", "c"]),
            ("x # a comment", vec!["x"]),
            ("x#y", vec!["x"]),
            ("'#' \"#\" \\#", vec!["#", "#", "#"]),
            ("# only a comment", vec![]),
            ("", vec![]),
            (
                "replace-path ^/a/(.*) /\\1",
                vec!["replace-path", "^/a/(.*)", "/\\1"],
            ),
            ("'$HOME' \\$x", vec!["$HOME", "\\$x"]),
            ("\"\\$HOME\"", vec!["$HOME"]),
            ("a\"\"b", vec!["ab"]),
            ("\"\"", vec![""]),
        ] {
            assert_eq!(texts(line), want, "{line:?}");
        }
        assert!(words("\"g\"lobal").unwrap()[0].plain.eq(&false));
        assert!(words("global").unwrap()[0].plain);
    }

    #[test]
    fn refuses_what_haproxy_would_expand_or_reject() {
        for (line, want) in [
            ("set-header X \"$HOME\"", LexError::EnvExpansion),
            ("set-header X \"${TOKEN}\"", LexError::EnvExpansion),
            ("set-header X \"a${.FILE}\"", LexError::EnvExpansion),
            ("a \"b", LexError::UnmatchedQuote),
            ("a 'b", LexError::UnmatchedQuote),
            ("a \\x6", LexError::BadHexEscape),
            ("a \\xzz", LexError::BadHexEscape),
        ] {
            assert_eq!(words(line), Err(want), "{line:?}");
        }
        let many = vec!["w"; 65].join(" ");
        assert_eq!(words(&many), Err(LexError::TooManyWords));
        assert_eq!(words(&vec!["w"; 64].join(" ")).unwrap().len(), 64);
    }

    #[test]
    fn stops_at_control_characters_like_haproxy() {
        // HAProxy ends the line at \r or NUL; the checker refuses such lines
        // before lexing, this only pins the behaviour being mirrored.
        assert_eq!(texts("a\rglobal"), vec!["a"]);
    }
}
