//! Embedded SQLite adapters for Santa's Workshop: the event log, the key-value read store
//! and the analytics store, each in its own database file under the data directory.
//!
//! All SQLite work happens off the async runtime: appends on the log's dedicated writer
//! thread, each read store's writes on a thread of its own at a lower CPU priority
//! ([`ReadStoreOptions`]), everything else in `spawn_blocking`. All SQL is parameterised.
//! This crate must never hold a domain rule or projection logic; it only stores what it is
//! given.

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

/// How the embedded read stores (`read.db`, `analytics.db`) run their writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadStoreOptions {
    /// How much lower than the process's the CPU priority of a store's writes is: a nice
    /// value added to the process's, up to 19. The projections write beside the command
    /// path on the same cores; when both want a core, the command path, which clients wait
    /// on, gets it, and the projections catch up in larger batches once it is free. Above
    /// 0, each store writes on a thread of its own (a raised nice value cannot be lowered
    /// again without privileges, so these writes cannot borrow the blocking pool's
    /// threads); 0 writes in the blocking pool at the process's priority. The log, the
    /// idempotency keys and the dead letters, which clients or the projections wait on,
    /// always write at the process's priority.
    pub writer_nice: u8,
}

/// The default [`ReadStoreOptions::writer_nice`].
pub const DEFAULT_READ_STORE_NICE: u8 = 10;

impl Default for ReadStoreOptions {
    fn default() -> Self {
        Self {
            writer_nice: DEFAULT_READ_STORE_NICE,
        }
    }
}

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
