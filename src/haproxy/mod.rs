//! Everything that talks to or writes for the local HAProxy.
//!
//! - `parse`: pure parsers of runtime/master CLI output.
//! - `render`: desired state → haproxy.cfg + map/ACL/certificate files (pure, tera).

pub mod parse;
pub mod render;
