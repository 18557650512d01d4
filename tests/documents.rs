//! Every fixture document: the valid ones parse, the invalid ones are rejected
//! with exactly the expected messages (docs/safety.md's classes each have one).
//!
//! Documents are validated the way the agent does, with the VIP policy of
//! the built-in `[vip]` and `[bird]` defaults (no host view: the host's own
//! networks are covered by `tests/vip_policy.rs` in a namespace).

use std::fs;
use std::path::Path;

use lb_agent::model::hostnet::VipPolicy;
use lb_agent::model::validate::ValidationErrors;
use lb_agent::model::validate::{parse_document_on_host, ValidateContext};
use lb_agent::model::DesiredState;

fn ctx() -> ValidateContext {
    ValidateContext {
        group: "blue".into(),
    }
}

fn parse_document(body: &[u8], ctx: &ValidateContext) -> Result<DesiredState, ValidationErrors> {
    let cfg = lb_agent::config::parse_str("", "agent.toml").unwrap();
    parse_document_on_host(
        body,
        ctx,
        &lb_agent::logic::LogicHost::unknown(&ctx.group),
        &VipPolicy::from_config(&cfg.vip, &cfg.bird),
    )
}

#[test]
fn valid_fixtures_parse() {
    let mut n = 0;
    for e in fs::read_dir("fixtures/api/valid").unwrap() {
        let p = e.unwrap().path();
        let body = fs::read(&p).unwrap();
        if let Err(e) = parse_document(&body, &ctx()) {
            panic!("{}: {e}", p.display());
        }
        n += 1;
    }
    assert!(n >= 3);
}

#[test]
fn invalid_fixtures_are_rejected_with_the_expected_messages() {
    let dir = Path::new("fixtures/api/invalid");
    let mut n = 0;
    let mut names: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    for p in names
        .iter()
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
    {
        let body = fs::read(p).unwrap();
        let expect = fs::read_to_string(p.with_extension("expect")).unwrap();
        let expect: Vec<&str> = expect.lines().filter(|l| !l.is_empty()).collect();
        let errors: Vec<String> = match parse_document(&body, &ctx()) {
            Ok(_) => panic!("{} was accepted", p.display()),
            Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
        };
        for want in &expect {
            assert!(
                errors.iter().any(|e| e.starts_with(want)),
                "{}: expected {want:?} in {errors:#?}",
                p.display()
            );
        }
        for got in &errors {
            assert!(
                expect.iter().any(|w| got.starts_with(w)),
                "{}: unexpected error {got:?}",
                p.display()
            );
        }
        n += 1;
    }
    assert!(n >= 15, "only {n} invalid fixtures");
}
