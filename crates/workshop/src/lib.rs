//! The workshop's application layer, written once and run on every backend.
//!
//! - [`commands`]: load a stream, let the domain decide, append with the expected version.
//! - [`letters`]: the key-value "single table" projection and its queries.
//! - [`analytics`]: the relational projection and its reports.
//!
//! Storage is reached only through the traits here ([`kv::KvStore`],
//! [`analytics::AnalyticsStore`]) and the kernel's `EventLog`; this crate must never name
//! an engine, a SQL dialect or a wire format.

pub mod analytics;
pub mod baseline;
pub mod codec;
pub mod commands;
pub mod contract;
pub mod idempotency;
pub mod kv;
pub mod letters;
pub mod rebuild;
pub mod seed;

pub use codec::Envelope;
pub use commands::{Accepted, CommandError, CommandService};

/// Milliseconds since the Unix epoch, UTC.
pub type Millis = i64;
