//! BIRD's control-socket protocol, spoken natively (no `birdc` process).
//!
//! Why native: a `birdc` process costs about 3–4 ms per call, a command on an
//! open socket about 0.3 ms, and the withdrawal budget (docs/performance.md, "The targets": failed
//! service → prefix gone from the ToR within `fall × interval + 200 ms`) is
//! spent mostly elsewhere. Why careful: BIRD's reply to `configure` is the
//! only place a broken include shows up (`8002`), and BIRD keeps announcing
//! the old set in that case, so the reply must be read exactly.
//!
//! The protocol (BIRD 2.0.12, `fixtures/bird/`): on connect
//! BIRD greets with `0001 BIRD 2.0.12 ready.`; the client sends one command
//! per line; every reply line is `DDDD-text` (more follows), ` text` (a
//! continuation of the previous code) or `DDDD text` (the last line of the
//! reply). After `echo all`, log lines arrive as `+text` at any moment, even
//! between a command and its reply; they are collected, logged, and never
//! taken for a reply.
//!
//! Layers: [`Decoder`] is the pure framing state machine; the `parse_*`
//! functions are pure parsers of typed replies, unit-tested over captured
//! transcripts; [`BirdControl`] is the async client: one persistent
//! connection, reconnected on error, every read bounded by a timeout.

mod client;
mod framing;
mod parse;

pub use client::*;
pub use framing::*;
pub use parse::*;

#[cfg(test)]
mod tests;
