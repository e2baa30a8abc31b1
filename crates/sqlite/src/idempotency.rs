//! Idempotency keys on SQLite (`idempotency.db`), expired after the window.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};
use santa_workshop::idempotency::{IdempotencyStore, IdempotentAnswer};
use santa_workshop::kv::StoreError;

use crate::OpenError;
use crate::db::{Db, Durability};

const MIGRATIONS: &[&str] = &["CREATE TABLE idempotency_keys (
        key TEXT PRIMARY KEY,
        fingerprint TEXT NOT NULL,
        id TEXT NOT NULL,
        position INTEGER NOT NULL,
        stored_at_ms INTEGER NOT NULL
    );
    CREATE INDEX idempotency_keys_age ON idempotency_keys (stored_at_ms);"];

/// The embedded idempotency store.
#[derive(Debug, Clone)]
pub struct SqliteIdempotencyStore {
    db: Db,
    window: Duration,
}

impl SqliteIdempotencyStore {
    pub fn open(dir: &Path, window: Duration) -> Result<Self, OpenError> {
        // Keys answer retries of acknowledged commands: kept as durably as the log.
        Ok(Self {
            db: Db::open(&dir.join("idempotency.db"), Durability::Full, MIGRATIONS, 0)?,
            window,
        })
    }

    fn cutoff(&self) -> i64 {
        now_ms() - i64::try_from(self.window.as_millis()).unwrap_or(i64::MAX)
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<IdempotentAnswer> {
    Ok(IdempotentAnswer {
        fingerprint: r.get(0)?,
        id: r.get(1)?,
        position: r.get(2)?,
    })
}

#[async_trait]
impl IdempotencyStore for SqliteIdempotencyStore {
    async fn get(&self, key: &str) -> Result<Option<IdempotentAnswer>, StoreError> {
        let (key, cutoff) = (key.to_owned(), self.cutoff());
        self.db
            .read(move |conn| {
                conn.prepare_cached(
                    "SELECT fingerprint, id, position FROM idempotency_keys WHERE key = ?1 AND stored_at_ms > ?2",
                )?
                .query_row(params![key, cutoff], row)
                .optional()
            })
            .await
    }

    async fn put(
        &self,
        key: &str,
        answer: IdempotentAnswer,
    ) -> Result<IdempotentAnswer, StoreError> {
        let (key, cutoff) = (key.to_owned(), self.cutoff());
        self.db
            .write(move |conn| {
                let tx = conn.transaction().map_err(crate::db::store_error)?;
                // Expired keys make room: a few per write keeps the table at the window's size.
                tx.execute(
                    "DELETE FROM idempotency_keys WHERE key IN
                     (SELECT key FROM idempotency_keys WHERE stored_at_ms <= ?1 ORDER BY stored_at_ms LIMIT 16)",
                    [cutoff],
                )
                .map_err(crate::db::store_error)?;
                tx.execute(
                                        "INSERT INTO idempotency_keys (key, fingerprint, id, position, stored_at_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (key) DO UPDATE SET fingerprint = excluded.fingerprint, id = excluded.id,
                       position = excluded.position, stored_at_ms = excluded.stored_at_ms
                     WHERE idempotency_keys.stored_at_ms <= ?6",
                    params![key, answer.fingerprint, answer.id, answer.position, now_ms(), cutoff],
                )
                .map_err(crate::db::store_error)?;
                let kept = tx
                    .query_row("SELECT fingerprint, id, position FROM idempotency_keys WHERE key = ?1", [&key], row)
                    .map_err(crate::db::store_error)?;
                tx.commit().map_err(crate::db::store_error)?;
                Ok(kept)
            })
            .await
    }
}
