//! The CQRS kernel: what an event log and a projection are, and how projections are run.
//!
//! Backend-neutral by construction: it knows no storage engine, no wire format and no
//! domain. Adapters (SQLite, JetStream, PostgreSQL, …) implement [`EventLog`]; read
//! models implement [`Projection`]; [`ProjectionRunner`] moves events from one to the other
//! with a checkpoint per projection. It must never assume more of a log than the trait
//! promises.

pub mod contract;
mod dead_letters;
mod lease;
mod log;
pub mod memory;
mod position;
mod projection;
mod rebuild;
mod runner;

pub use dead_letters::{DeadLetter, DeadLetters, MemoryDeadLetters, Redriven, redrive};
pub use lease::{Lease, Leases, LocalLeases};
pub use log::{
    DecideError, Decider, EventLog, EventSource, ExpectedVersion, LogError, NewEvent,
    RecordedEvent, Refusal, Subscription, Verdict, subscribe,
};
pub use position::{InvalidPosition, Position};
pub use projection::{
    Prepared, Progress, Projection, ProjectionError, ProjectionHandle, ProjectionState,
    ProjectionStatus, RetryPolicy,
};
pub use rebuild::{Rebuild, RebuildState, RebuildStatus, Rebuilder};
pub use runner::ProjectionRunner;
