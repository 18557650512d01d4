//! agent.toml (`config::parse_str`).
//!
//! Input: the file's text.
//! Properties, beyond never panicking:
//! - a rejected file has at least one error, each with a message, and a line
//!   within the file (0: the whole file);
//! - an accepted file yields a BIRD include layout (`IncludeLayout::from_config`)
//!   without error: the agent must not start with a configuration that
//!   `read_announced` or the publisher would then refuse;
//! - parsing is deterministic (same input, same result).
#![no_main]

use lb_agent::bird::include::IncludeLayout;
use lb_agent::config::parse_str;
use lb_agent::logic::LogicHost;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_str(text, "agent.toml") {
        Err(errors) => {
            assert!(!errors.0.is_empty(), "rejected without an error");
            let lines = text.lines().count() + 1;
            for e in &errors.0 {
                assert!(!e.message.is_empty());
                assert!(e.line <= lines, "error line {} past the end: {e}", e.line);
            }
        }
        Ok(cfg) => {
            if let Err(e) = IncludeLayout::from_config(&cfg.bird) {
                panic!("accepted config has an invalid include layout: {e}");
            }
            let _ = LogicHost::from_config(&cfg);
            assert_eq!(parse_str(text, "agent.toml").ok().as_ref(), Some(&cfg));
        }
    }
});
