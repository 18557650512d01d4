//! The table renderer of the human views: aligned columns, optional colour
//! ([`Style`]), control characters escaped.
//! Part of [`crate::cli::client`] (docs/architecture.md).

use std::io::IsTerminal;

/// Whether to colour the human views.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    /// Emit ANSI colour codes.
    pub colour: bool,
}

impl Style {
    /// Colour only on a terminal, and only when `NO_COLOR` is unset or empty.
    pub fn for_stdout() -> Style {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Style {
            colour: !no_color && std::io::stdout().is_terminal(),
        }
    }

    pub(super) fn paint(self, colour: Colour, text: &str) -> String {
        if !self.colour || colour == Colour::None {
            return text.to_string();
        }
        let code = match colour {
            Colour::Green => "32",
            Colour::Yellow => "33",
            Colour::Red => "31",
            Colour::Bold => "1",
            Colour::None => "0",
        };
        format!("\x1b[{code}m{text}\x1b[0m")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Colour {
    None,
    Green,
    Yellow,
    Red,
    Bold,
}

/// A table cell: the text and its colour.
pub(super) type Cell = (String, Colour);

/// Aligns `rows` under `header`; the last column is not padded. Widths are
/// measured on the plain text, so colour codes do not skew the alignment.
pub(super) fn table(header: &[&str], rows: &[Vec<Cell>], style: Style) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, (text, _)) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(text.chars().count());
            }
        }
    }
    let mut out = String::new();
    let header_cells: Vec<Cell> = header
        .iter()
        .map(|h| (h.to_string(), Colour::Bold))
        .collect();
    for row in std::iter::once(&header_cells).chain(rows) {
        let last = row.len().saturating_sub(1);
        let mut line = String::new();
        for (i, (text, colour)) in row.iter().enumerate() {
            line.push_str(&style.paint(*colour, text));
            if i < last {
                let pad = widths
                    .get(i)
                    .copied()
                    .unwrap_or(0)
                    .saturating_sub(text.chars().count())
                    + 2;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Makes agent-supplied text safe for a terminal: control characters
/// (newlines, escape sequences) are shown escaped instead of interpreted.
pub(super) fn sanitize(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}
