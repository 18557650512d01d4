//! The document template engine with its bounds, through the same path
//! validation and the renderer use (`logic::render_frontend_logic`).
//!
//! Input: the source of one logic template, put in place of a logic object
//! of `fixtures/api/valid/full.json` that frontends use.
//! Properties:
//! - render terminates (libFuzzer's `-timeout` turns a hang into a crash)
//!   and never panics or aborts (stack, memory: the fuzz run's RSS limit);
//! - errors name only the replaced logic object (the others are fine);
//! - every snippet it returns is within `output_bytes` and its lines pass the
//!   checker again with the document's data files.
#![no_main]

use std::sync::OnceLock;

use lb_agent::logic::{check_snippet_with_files, data_files, render_frontend_logic};
use lb_agent::logic::{LogicHost, Section, LIMITS};
use lb_agent::model::validate::{parse_document, ValidateContext};
use lb_agent::model::{DesiredState, Name};
use libfuzzer_sys::fuzz_target;

const FULL: &[u8] = include_bytes!("../../fixtures/api/valid/full.json");

fn base() -> &'static (DesiredState, Name) {
    static B: OnceLock<(DesiredState, Name)> = OnceLock::new();
    B.get_or_init(|| {
        let ctx = ValidateContext {
            group: "blue".into(),
        };
        let d = parse_document(FULL, &ctx).expect("full.json validates");
        let used = d
            .frontends
            .values()
            .flat_map(|f| f.logic.first())
            .next()
            .expect("full.json attaches logic")
            .clone();
        (d, used)
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    let (base, name) = base();
    let mut d = base.clone();
    d.logic
        .get_mut(name)
        .expect("attached logic exists")
        .template = source.to_string();
    let host = LogicHost {
        node_name: "lb1".into(),
        node_group: "blue".into(),
        node_az: Some("az1".into()),
        data_dir: "/etc/haproxy/lb-agent".into(),
    };
    match render_frontend_logic(&d, &host) {
        Err(errors) => {
            assert!(!errors.is_empty());
            for e in &errors {
                assert_eq!(&e.logic, name, "an untouched logic object failed: {e}");
            }
        }
        Ok(per_frontend) => {
            let files = data_files(&d, &host.data_dir);
            for snippets in per_frontend.values() {
                for s in snippets {
                    let text = s.lines().join("\n");
                    assert!(text.len() <= LIMITS.output_bytes);
                    if let Err(v) = check_snippet_with_files(&text, Section::Frontend, &files) {
                        panic!("checked snippet {} refused when re-checked: {v}", s.name());
                    }
                }
            }
        }
    }
});
