//! Everything that talks to or writes for the local HAProxy.
//!
//! - `parse`: pure parsers of runtime/master CLI output.

pub mod parse;
