//! The event log on NATS JetStream. The only crate that knows async-nats.
//!
//! - One JetStream stream (file storage) holds every event. An event of the workshop
//!   stream `S` is published on `<prefix>.<partition>.<S>`, where the partition is a hash
//!   of `S`, so all events of one letter or toy are in one partition, in order.
//! - Per-stream optimistic concurrency is JetStream's `Nats-Expected-Last-Subject-Sequence`;
//!   a repeated event is dropped by `Nats-Msg-Id` de-duplication and answered with its
//!   original sequence. A command is acknowledged only after JetStream acknowledged the
//!   publish. While JetStream's answers are pending, publishes gather into groups, for
//!   at most a linger ([`NatsOptions::publish_linger`]).
//! - The global position is the JetStream stream sequence.
//! - Projections read one partition each through an ordered consumer starting after the
//!   checkpoint their read store holds; the read store, not the broker, is the durable
//!   record of progress.

mod idempotency;
mod log;
mod message;
mod publisher;
mod reader;

pub use idempotency::NatsIdempotencyStore;
pub use log::{DEFAULT_CONTEXT_MAX_AGE, NatsError, NatsEventLog, NatsOptions};
pub use publisher::DEFAULT_PUBLISH_LINGER;
