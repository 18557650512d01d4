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
/// (table above), in one pass: a family's `# HELP` line comes right before
/// its `# TYPE` line, so it is held until the TYPE line gives the family's
/// text-format name. Lines it does not know are kept as they are.
pub fn to_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // The HELP line waiting for its TYPE: (family name, help text).
    let mut help: Option<(&str, &str)> = None;
    let flush = |out: &mut String, help: &mut Option<(&str, &str)>, name: Option<&str>| {
        if let Some((h, text)) = help.take() {
            out.push_str(&format!("# HELP {} {text}\n", name.unwrap_or(h)));
        }
    };
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            flush(&mut out, &mut help, None);
            help = Some(rest.split_once(' ').unwrap_or((rest, "")));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            let (renamed, kind) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "info" => (format!("{name}_info"), "gauge"),
                "unknown" => (name.to_string(), "untyped"),
                k => (name.to_string(), k),
            };
            let same_family = help.is_some_and(|(h, _)| h == name);
            flush(&mut out, &mut help, same_family.then_some(renamed.as_str()));
            out.push_str(&format!("# TYPE {renamed} {kind}\n"));
            continue;
        }
        flush(&mut out, &mut help, None);
        out.push_str(line);
        out.push('\n');
    }
    flush(&mut out, &mut help, None);
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
