//! The API document parser and validator, then the renderer.
//!
//! Input: a document body (JSON bytes, as the API would send it).
//! Properties:
//! - `parse_document_for` answers (a `DesiredState` or errors), never panics;
//! - every error of a rejected document has a message;
//! - a document that validates renders (`Renderer::render`) without error
//!   when the renderer has the same host facts validation used: validation
//!   is what decides, the renderer must not refuse what it accepted;
//! - the rendered config holds exactly the snippets the document attaches
//!   to frontends and pools (`Rendered::checked_snippets`), and no data file escapes `data_dir`.
#![no_main]

use std::path::{Component, Path};
use std::sync::OnceLock;
use std::time::Duration;

use lb_agent::haproxy::render::{RenderSettings, Renderer};
use lb_agent::logic::LogicHost;
use lb_agent::model::validate::{parse_document_for, ValidateContext};
use libfuzzer_sys::fuzz_target;

const GROUP: &str = "blue";

fn renderer() -> &'static Renderer {
    static R: OnceLock<Renderer> = OnceLock::new();
    R.get_or_init(|| {
        let host = LogicHost::unknown(GROUP);
        let settings = RenderSettings {
            runtime_socket: "/run/haproxy/admin.sock".into(),
            state_file: "/var/lib/lb-agent/haproxy-server-state".into(),
            hard_stop_after: Duration::from_secs(30),
            data_dir: host.data_dir.clone(),
            slot_policy_pow2: true,
            node_name: host.node_name.clone(),
            node_group: host.node_group.clone(),
            node_az: host.node_az.clone(),
            global: Default::default(),
        };
        Renderer::new(None, settings).expect("built-in templates load")
    })
}

fuzz_target!(|data: &[u8]| {
    let host = LogicHost::unknown(GROUP);
    let ctx = ValidateContext {
        group: GROUP.into(),
    };
    let d = match parse_document_for(data, &ctx, &host) {
        Ok(d) => d,
        Err(errors) => {
            assert!(!errors.0.is_empty(), "rejected without an error");
            assert!(errors.0.iter().all(|e| !e.message.is_empty()));
            return;
        }
    };
    assert_eq!(d.group, GROUP);
    let rendered = renderer()
        .render(&d, &host.data_dir)
        .unwrap_or_else(|e| panic!("validated document does not render: {e}"));
    // A frontend's snippets once; a pool's in each of its backends (one, or
    // the spill backend and one per zone when it routes by AZ).
    let attached: usize = d.frontends.values().map(|f| f.logic.len()).sum::<usize>()
        + lb_agent::plan::az::backends(&d)
            .iter()
            .map(|b| b.base.logic.len())
            .sum::<usize>();
    assert_eq!(rendered.checked_snippets(), attached);
    for rel in rendered.files.keys() {
        assert!(
            rel.components().all(|c| matches!(c, Component::Normal(_))),
            "data file {rel:?} escapes data_dir"
        );
        assert!(Path::new(&host.data_dir)
            .join(rel)
            .starts_with(&host.data_dir));
    }
});
