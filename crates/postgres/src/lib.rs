//! PostgreSQL adapters for Santa's Workshop: the key-value read store (`santa_kv` schema),
//! the analytics store (`santa_analytics` schema), and advisory-lock leases with which
//! projector processes share the log's partitions.
//!
//! Schemas are created by versioned migrations at start-up, under an advisory lock so
//! that processes starting together do not race. All SQL is parameterised. This crate
//! must never hold a domain rule or projection logic; it only stores what it is given.

mod analytics;
mod db;
mod dead_letters;
mod group;
mod kv;
mod leases;
mod rebuild;

pub use analytics::PgAnalyticsStore;
pub use db::{OpenError, Pg, drop_database, fresh_database};
pub use dead_letters::PgDeadLetters;
pub use kv::PgKvStore;
pub use leases::PgLeases;
