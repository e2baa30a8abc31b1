//! Dead letters on SQLite (`dead-letters.db`).

use std::path::Path;

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};
use santa_cqrs::{DeadLetter, DeadLetters, Position, ProjectionError};

use crate::OpenError;
use crate::db::{Db, Durability};

const MIGRATIONS: &[&str] = &["CREATE TABLE dead_letters (
        projection TEXT NOT NULL,
        position INTEGER NOT NULL,
        partition INTEGER NOT NULL,
        stream TEXT NOT NULL,
        event_type TEXT NOT NULL,
        error TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        parked_at_ms INTEGER NOT NULL,
        behind INTEGER,
        PRIMARY KEY (projection, position)
    );
    CREATE INDEX dead_letters_stream ON dead_letters (projection, stream, position);"];

/// The embedded dead-letter store.
#[derive(Debug, Clone)]
pub struct SqliteDeadLetters {
    db: Db,
}

impl SqliteDeadLetters {
    pub fn open(dir: &Path) -> Result<Self, OpenError> {
        Ok(Self {
            db: Db::open(
                &dir.join("dead-letters.db"),
                Durability::Full,
                MIGRATIONS,
                0,
            )?,
        })
    }
}

fn failed(error: impl std::fmt::Display) -> ProjectionError {
    ProjectionError::Store(error.to_string())
}

const SELECT: &str = "SELECT projection, position, partition, stream, event_type, error, attempts, parked_at_ms, behind FROM dead_letters";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeadLetter> {
    Ok(DeadLetter {
        projection: r.get(0)?,
        position: Position::new(r.get(1)?),
        partition: r.get(2)?,
        stream: r.get(3)?,
        event_type: r.get(4)?,
        error: r.get(5)?,
        attempts: r.get(6)?,
        parked_at_ms: r.get(7)?,
        behind: r.get::<_, Option<u64>>(8)?.map(Position::new),
    })
}

#[async_trait]
impl DeadLetters for SqliteDeadLetters {
    async fn park(&self, l: DeadLetter) -> Result<(), ProjectionError> {
        self.db
            .write(move |conn| {
                conn.prepare_cached(
                    "INSERT INTO dead_letters (projection, position, partition, stream, event_type, error, attempts,
                                               parked_at_ms, behind)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                     ON CONFLICT (projection, position) DO UPDATE SET error = excluded.error,
                       attempts = excluded.attempts, parked_at_ms = excluded.parked_at_ms, behind = excluded.behind",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        l.projection,
                        l.position.get(),
                        l.partition,
                        l.stream,
                        l.event_type,
                        l.error,
                        l.attempts,
                        l.parked_at_ms,
                        l.behind.map(Position::get)
                    ])
                })
                .map(drop)
                .map_err(failed)
            })
            .await
    }

    async fn list(&self, projection: Option<&str>) -> Result<Vec<DeadLetter>, ProjectionError> {
        let projection = projection.map(str::to_owned);
        self.db
            .read(move |conn| {
                let mut stmt = conn.prepare_cached(&format!(
                    "{SELECT} WHERE ?1 IS NULL OR projection = ?1 ORDER BY position, projection"
                ))?;
                stmt.query_map([projection], row)?.collect()
            })
            .await
            .map_err(failed)
    }

    async fn blocking(
        &self,
        projection: &str,
        stream: &str,
    ) -> Result<Option<Position>, ProjectionError> {
        let (projection, stream) = (projection.to_owned(), stream.to_owned());
        self.db
            .read(move |conn| {
                conn.prepare_cached(
                    "SELECT MIN(position) FROM dead_letters WHERE projection = ?1 AND stream = ?2",
                )?
                .query_row([projection, stream], |r| r.get::<_, Option<u64>>(0))
                .optional()
                .map(|p| p.flatten().map(Position::new))
            })
            .await
            .map_err(failed)
    }

    async fn remove(&self, projection: &str, position: Position) -> Result<(), ProjectionError> {
        let projection = projection.to_owned();
        self.db
            .write(move |conn| {
                conn.prepare_cached(
                    "DELETE FROM dead_letters WHERE projection = ?1 AND position = ?2",
                )
                .and_then(|mut s| s.execute(params![projection, position.get()]))
                .map(drop)
                .map_err(failed)
            })
            .await
    }
}
