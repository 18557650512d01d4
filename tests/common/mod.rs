//! The integration-test harness: real HAProxy, BIRD, etcd, network
//! namespaces, the `lb-agent` binary and a scripted fake API
//! (docs/testing.md).
//!
//! Every test crate includes it whole with `mod common;` and names what it
//! uses (`use common::{haproxy, netns};`). Skips go through [`skip`], the
//! one skip policy: loud, counted, and fatal under `LB_AGENT_NO_SKIP=1`.

#![allow(clippy::disallowed_methods)]
// waits bounded in real time (docs/testing.md)

// Each test crate uses a different part of the harness, so in any one
// crate most of it is unused; allowing dead code here, once, keeps the
// warning meaningful everywhere else.
#![allow(dead_code)]

pub mod agent;
pub mod backend;
pub mod bird;
pub mod driver;
pub mod etcd;
pub mod fake_api;
pub mod haproxy;
pub mod lab;
pub mod netns;
pub mod route;
pub mod skip;
