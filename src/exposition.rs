//! The two exposition formats of `/metrics` and the choice between them.
//!
//! [`crate::metrics`] encodes OpenMetrics 1.0 (what prometheus-client
//! writes). Many scrapers only read the older Prometheus text format 0.0.4
//! (Telegraf, older agents, scripts): to them `# TYPE lb_agent_build info`,
//! `# UNIT` and `# EOF` are errors. So `/metrics` serves the text format
//! unless the scraper's `Accept` header prefers OpenMetrics, as Prometheus's
//! own does ([`negotiate`]), and [`to_text`] turns one into the other.
//!
//! The conversion, for the families this agent writes (no exemplars, no
//! created timestamps, no state sets):
//!
//! | OpenMetrics | text 0.0.4 |
//! |---|---|
//! | `# TYPE x counter`, samples `x_total` | `# TYPE x_total counter` (HELP likewise) |
//! | `# TYPE x info`, sample `x_info{..} 1` | `# TYPE x_info gauge` (HELP likewise) |
//! | `# TYPE x unknown` | `# TYPE x untyped` |
//! | `# UNIT x seconds` | dropped (the name already ends in `_seconds`) |
//! | `# EOF` | dropped |
//! | gauge, histogram, samples | unchanged |

/// `Content-Type` of the Prometheus text format.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `Content-Type` of OpenMetrics.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The format a scrape gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4: the default.
    Text,
    /// OpenMetrics 1.0, when the `Accept` header prefers it.
    OpenMetrics,
}

impl Format {
    /// The `Content-Type` to answer with.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => TEXT_CONTENT_TYPE,
            Format::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
        }
    }
}

/// Picks the format from an `Accept` header (RFC 9110 media ranges with
/// q-values): OpenMetrics only when `application/openmetrics-text` has a
/// higher q than the best range that covers `text/plain` (`text/plain`,
/// `text/*`, `*/*`). No header, a header naming neither, or a tie: text.
pub fn negotiate(accept: Option<&str>) -> Format {
    let Some(accept) = accept else {
        return Format::Text;
    };
    let (mut om, mut text) = (0.0f32, 0.0f32);
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q=").or(p.trim().strip_prefix("Q=")))
            .filter_map(|v| v.trim().parse::<f32>().ok())
            .next()
            .unwrap_or(1.0)
            .clamp(0.0, 1.0);
        match media.as_str() {
            "application/openmetrics-text" => om = om.max(q),
            "text/plain" | "text/*" | "*/*" => text = text.max(q),
            _ => {}
        }
    }
    if om > text {
        Format::OpenMetrics
    } else {
        Format::Text
    }
}

/// Rewrites an OpenMetrics exposition as Prometheus text format 0.0.4
/// (table above). Lines it does not know are kept as they are.
pub fn to_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            let (name, kind) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "info" => (format!("{name}_info"), "gauge"),
                "unknown" => (name.to_string(), "untyped"),
                k => (name.to_string(), k),
            };
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    // HELP lines come before their TYPE line: rename them in a second pass,
    // from the TYPE lines just written.
    rename_help(&out)
}

/// Gives each `# HELP x` the name its `# TYPE` line has (`x_total`, `x_info`).
fn rename_help(text: &str) -> String {
    let typed: std::collections::HashMap<&str, &str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|r| r.split_once(' ').map(|(n, _)| n))
        .filter_map(|n| {
            n.strip_suffix("_total")
                .or_else(|| n.strip_suffix("_info"))
                .map(|base| (base, n))
        })
        .collect();
    let mut out = String::with_capacity(text.len() + 256);
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            if let Some(renamed) = typed.get(name) {
                out.push_str(&format!("# HELP {renamed} {help}\n"));
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_table() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        let cases: &[(Option<&str>, Format)] = &[
            (None, Format::Text),
            (Some(""), Format::Text),
            (Some("*/*"), Format::Text),
            (Some("text/plain"), Format::Text),
            (Some("application/json"), Format::Text),
            (Some(prometheus), Format::OpenMetrics),
            (Some("application/openmetrics-text"), Format::OpenMetrics),
            (
                Some("Application/OpenMetrics-Text; q=0.9, */*;q=0.1"),
                Format::OpenMetrics,
            ),
            (
                Some("application/openmetrics-text;q=0.5, text/plain"),
                Format::Text,
            ),
            (Some("application/openmetrics-text;q=0, */*"), Format::Text),
            (
                Some("text/plain;q=0.5, application/openmetrics-text;q=0.5"),
                Format::Text,
            ),
        ];
        for (accept, want) in cases {
            assert_eq!(negotiate(*accept), *want, "Accept: {accept:?}");
        }
    }

    #[test]
    fn openmetrics_becomes_text_format() {
        let om = "# HELP lb_agent_build Agent version.\n\
                  # TYPE lb_agent_build info\n\
                  lb_agent_build_info{version=\"0.1.0\"} 1\n\
                  # HELP lb_agent_polls Polls.\n\
                  # TYPE lb_agent_polls counter\n\
                  lb_agent_polls_total{result=\"ok\"} 3\n\
                  # HELP lb_agent_apply_duration_seconds Apply.\n\
                  # TYPE lb_agent_apply_duration_seconds histogram\n\
                  # UNIT lb_agent_apply_duration_seconds seconds\n\
                  lb_agent_apply_duration_seconds_bucket{le=\"+Inf\"} 1\n\
                  lb_agent_apply_duration_seconds_sum 0.5\n\
                  lb_agent_apply_duration_seconds_count 1\n\
                  # HELP lb_agent_x X.\n\
                  # TYPE lb_agent_x unknown\n\
                  lb_agent_x 2\n\
                  # EOF\n";
        let want = "# HELP lb_agent_build_info Agent version.\n\
                    # TYPE lb_agent_build_info gauge\n\
                    lb_agent_build_info{version=\"0.1.0\"} 1\n\
                    # HELP lb_agent_polls_total Polls.\n\
                    # TYPE lb_agent_polls_total counter\n\
                    lb_agent_polls_total{result=\"ok\"} 3\n\
                    # HELP lb_agent_apply_duration_seconds Apply.\n\
                    # TYPE lb_agent_apply_duration_seconds histogram\n\
                    lb_agent_apply_duration_seconds_bucket{le=\"+Inf\"} 1\n\
                    lb_agent_apply_duration_seconds_sum 0.5\n\
                    lb_agent_apply_duration_seconds_count 1\n\
                    # HELP lb_agent_x X.\n\
                    # TYPE lb_agent_x untyped\n\
                    lb_agent_x 2\n";
        assert_eq!(to_text(om), want);
    }
}
