//! Embedded SQLite adapters for Santa's Workshop: the event log, the key-value read store
//! and the analytics store, each in its own database file under the data directory.
//!
//! All SQLite work happens off the async runtime: appends on the log's dedicated writer
//! thread, everything else in `spawn_blocking`. All SQL is parameterised. This crate must
//! never hold a domain rule or projection logic; it only stores what it is given.

mod analytics;
mod ceiling;
mod db;
mod dead_letters;
mod event_log;
mod generations;
mod idempotency;
mod kv;

pub use analytics::SqliteAnalyticsStore;
pub use ceiling::{analytics_write_ceiling, letters_write_ceiling};
pub use dead_letters::SqliteDeadLetters;
pub use event_log::{SqliteEventLog, SqliteLogOptions};
pub use idempotency::SqliteIdempotencyStore;
pub use kv::SqliteKvStore;

/// Failure to open or migrate a database.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot open {path}: {source}")]
    Sqlite {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the event log writer: {0}")]
    Thread(#[source] std::io::Error),
}
