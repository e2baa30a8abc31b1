//! The analytics store on SQLite (`analytics.db`): relational tables and report queries.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use rusqlite::{CachedStatement, Connection, params};
use santa_cqrs::{Position, Progress, ProjectionError};
use santa_workshop::analytics::{
    AnalyticsChange, AnalyticsStore, LetterRow, NAME, Totals, ToyDemand,
};
use santa_workshop::kv::StoreError;
use santa_workshop::rebuild::StoreRebuild;

use crate::db::store_error;
use crate::generations::Generations;
use crate::kv::{CHECKPOINTS_BY_PARTITION, begin_batch, end_batch, read_checkpoint};
use crate::{OpenError, ReadStoreOptions};

pub(crate) const MIGRATIONS: &[&str] = &[
    "CREATE TABLE toys (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        price_cents INTEGER NOT NULL
    );
    CREATE TABLE letters (
        id TEXT PRIMARY KEY,
        child TEXT NOT NULL,
        country TEXT,
        total_cents INTEGER NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('submitted', 'cancelled')),
        submitted_at_ms INTEGER NOT NULL,
        submitted_day TEXT NOT NULL,
        cancelled_at_ms INTEGER
    );
    CREATE TABLE letter_lines (
        letter_id TEXT NOT NULL REFERENCES letters (id),
        toy_id TEXT NOT NULL,
        quantity INTEGER NOT NULL,
        unit_price_cents INTEGER NOT NULL,
        PRIMARY KEY (letter_id, toy_id)
    ) WITHOUT ROWID;
    CREATE INDEX letter_lines_toy ON letter_lines (toy_id);
    CREATE TABLE checkpoints (projection TEXT PRIMARY KEY, position INTEGER NOT NULL);",
    CHECKPOINTS_BY_PARTITION,
    // Letters keyed by their id alone, one b-tree instead of the rows and an index on the
    // id: writing 300,000 letters' rows, four rounds of three in turn, 94,400 → 106,800
    // letters/s (medians).
    "CREATE TABLE letters_v3 (
        id TEXT PRIMARY KEY,
        child TEXT NOT NULL,
        country TEXT,
        total_cents INTEGER NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('submitted', 'cancelled')),
        submitted_at_ms INTEGER NOT NULL,
        submitted_day TEXT NOT NULL,
        cancelled_at_ms INTEGER
    ) WITHOUT ROWID;
    INSERT INTO letters_v3 (id, child, country, total_cents, status, submitted_at_ms,
                            submitted_day, cancelled_at_ms)
        SELECT id, child, country, total_cents, status, submitted_at_ms, submitted_day,
               cancelled_at_ms
        FROM letters;
    DROP TABLE letters;
    ALTER TABLE letters_v3 RENAME TO letters;",
    // No report looks lines up by toy: the demand ranking reads them all, as fast without
    // the index (1.0 s either way over 600,000 lines), which every line's write kept up
    // and every rebuild built (0.45 s of a 3.5 s analytics rebuild of 300,000 letters).
    "DROP INDEX IF EXISTS letter_lines_toy;",
];

/// The embedded analytics store.
#[derive(Debug, Clone)]
pub struct SqliteAnalyticsStore {
    db: Generations,
}

impl SqliteAnalyticsStore {
    /// Opens `analytics.db` under `dir` with the default [`ReadStoreOptions`].
    pub fn open(dir: &Path) -> Result<Self, OpenError> {
        Self::open_with(dir, ReadStoreOptions::default())
    }

    pub fn open_with(dir: &Path, options: ReadStoreOptions) -> Result<Self, OpenError> {
        Ok(Self {
            db: Generations::open(dir, "analytics", MIGRATIONS, options)?,
        })
    }
}

fn apply_change(
    conn: &Connection,
    inserts: &mut LetterInserts<'_>,
    change: &AnalyticsChange,
) -> rusqlite::Result<()> {
    match change {
        AnalyticsChange::UpsertToy {
            id,
            name,
            price_cents,
        } => {
            conn.prepare_cached(
                "INSERT INTO toys (id, name, price_cents) VALUES (?1, ?2, ?3)
                 ON CONFLICT (id) DO UPDATE SET name = excluded.name, price_cents = excluded.price_cents",
            )?
            .execute(params![id, name, price_cents])?;
        }
        AnalyticsChange::InsertLetter(letter) => inserts.insert(letter)?,
        AnalyticsChange::CancelLetter { id, at_ms } => {
            conn.prepare_cached(
                "UPDATE letters SET status = 'cancelled', cancelled_at_ms = ?2 WHERE id = ?1 AND status = 'submitted'",
            )?
            .execute(params![id, at_ms])?;
        }
    }
    Ok(())
}

/// A letter's row and its lines' rows, with statements taken from the connection's cache
/// once per batch rather than once per row.
pub(crate) struct LetterInserts<'c> {
    letter: CachedStatement<'c>,
    line: CachedStatement<'c>,
}

impl<'c> LetterInserts<'c> {
    pub(crate) fn new(conn: &'c Connection) -> rusqlite::Result<Self> {
        Ok(Self {
            letter: conn.prepare_cached(
                "INSERT INTO letters (id, child, country, total_cents, status, submitted_at_ms, submitted_day)
                 VALUES (?1, ?2, ?3, ?4, 'submitted', ?5, date(?5 / 1000, 'unixepoch'))
                 ON CONFLICT (id) DO NOTHING",
            )?,
            line: conn.prepare_cached(
                "INSERT INTO letter_lines (letter_id, toy_id, quantity, unit_price_cents) VALUES (?1, ?2, ?3, ?4)",
            )?,
        })
    }

    /// Inserts the letter and its lines, unless the letter is there already.
    pub(crate) fn insert(&mut self, letter: &LetterRow) -> rusqlite::Result<()> {
        let inserted = self.letter.execute(params![
            letter.id,
            letter.child,
            letter.country,
            letter.total_cents,
            letter.submitted_at_ms
        ])?;
        if inserted == 0 {
            return Ok(());
        }
        for l in &letter.lines {
            self.line
                .execute(params![letter.id, l.toy_id, l.quantity, l.unit_price_cents])?;
        }
        Ok(())
    }
}

fn totals(conn: &Connection, sql: &str) -> rusqlite::Result<Vec<Totals>> {
    conn.prepare_cached(sql)?
        .query_map([], |r| {
            Ok(Totals {
                key: r.get(0)?,
                letters: r.get(1)?,
                quantity: r.get(2)?,
                total_cents: r.get(3)?,
            })
        })?
        .collect()
}

#[async_trait]
impl AnalyticsStore for SqliteAnalyticsStore {
    async fn checkpoint(&self, partition: u32) -> Result<Position, StoreError> {
        self.db
            .db()
            .read(move |conn| read_checkpoint(conn, NAME, partition))
            .await
    }

    async fn apply(
        &self,
        progress: Progress,
        changes: Vec<(Position, AnalyticsChange)>,
    ) -> Result<(), ProjectionError> {
        self.db
            .write(move |conn| -> Result<(), ProjectionError> {
                let (tx, after) = begin_batch(conn, NAME, progress)?;
                {
                    let mut inserts = LetterInserts::new(&tx).map_err(store_error)?;
                    for (position, change) in changes.iter().filter(|(p, _)| *p > after) {
                        apply_change(&tx, &mut inserts, change).map_err(|e| {
                            ProjectionError::Event {
                                position: *position,
                                reason: e.to_string(),
                            }
                        })?;
                    }
                }
                end_batch(tx, NAME, progress)
            })
            .await
    }

    async fn toy_demand(&self, limit: usize) -> Result<Vec<ToyDemand>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.db
            .db()
            .read(move |conn| {
                conn.prepare_cached(
                    "SELECT ll.toy_id, COALESCE(t.name, ll.toy_id), SUM(ll.quantity), COUNT(*),
                            SUM(ll.quantity * ll.unit_price_cents)
                     FROM letter_lines ll
                     JOIN letters l ON l.id = ll.letter_id AND l.status = 'submitted'
                     LEFT JOIN toys t ON t.id = ll.toy_id
                     GROUP BY ll.toy_id ORDER BY 3 DESC, 1 LIMIT ?1",
                )?
                .query_map([limit], |r| {
                    Ok(ToyDemand {
                        toy_id: r.get(0)?,
                        name: r.get(1)?,
                        quantity: r.get(2)?,
                        letters: r.get(3)?,
                        value_cents: r.get(4)?,
                    })
                })?
                .collect()
            })
            .await
    }

    async fn totals_by_country(&self) -> Result<Vec<Totals>, StoreError> {
        self.db.db()
            .read(|conn| {
                totals(
                    conn,
                    "SELECT COALESCE(l.country, 'unknown') AS k, COUNT(DISTINCT l.id), SUM(ll.quantity),
                            SUM(ll.quantity * ll.unit_price_cents)
                     FROM letters l JOIN letter_lines ll ON ll.letter_id = l.id
                     WHERE l.status = 'submitted' GROUP BY k ORDER BY 4 DESC, 1",
                )
            })
            .await
    }

    async fn totals_by_day(&self) -> Result<Vec<Totals>, StoreError> {
        self.db
            .db()
            .read(|conn| {
                totals(
                    conn,
                    "SELECT l.submitted_day, COUNT(DISTINCT l.id), SUM(ll.quantity),
                            SUM(ll.quantity * ll.unit_price_cents)
                     FROM letters l JOIN letter_lines ll ON ll.letter_id = l.id
                     WHERE l.status = 'submitted' GROUP BY l.submitted_day ORDER BY 1",
                )
            })
            .await
    }

    async fn rebuild(&self) -> Result<Box<dyn StoreRebuild<dyn AnalyticsStore>>, ProjectionError> {
        self.db
            .rebuild(|db| Arc::new(SqliteAnalyticsStore { db }) as Arc<dyn AnalyticsStore>)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An `analytics.db` at the schema of the first `version` migrations, holding `rows`.
    fn file_at(dir: &Path, version: usize, rows: &str) {
        let conn = Connection::open(dir.join("analytics.db")).unwrap();
        conn.execute_batch("PRAGMA foreign_keys = OFF").unwrap();
        for migration in &MIGRATIONS[..version] {
            conn.execute_batch(migration).unwrap();
        }
        conn.execute_batch(&format!("PRAGMA user_version = {version}; {rows}"))
            .unwrap();
    }

    const ROWS: &str = "INSERT INTO toys VALUES ('kite', 'Kite', 1250);
        INSERT INTO letters VALUES ('a', 'Ada', 'FI', 2500, 'submitted', 0, '1970-01-01', NULL);
        INSERT INTO letters VALUES ('b', 'Bo', NULL, 1250, 'cancelled', 0, '1970-01-01', 5);
        INSERT INTO letter_lines VALUES ('a', 'kite', 2, 1250);
        INSERT INTO letter_lines VALUES ('b', 'kite', 1, 1250);";

    #[tokio::test]
    async fn letters_written_before_the_letters_table_lost_its_rowid_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        file_at(dir.path(), 2, ROWS);
        let store = SqliteAnalyticsStore::open(dir.path()).unwrap();
        let demand = store.toy_demand(10).await.unwrap();
        assert_eq!(
            (demand.len(), demand[0].quantity, demand[0].letters),
            (1, 2, 1)
        );
        let by_country = store.totals_by_country().await.unwrap();
        assert_eq!(by_country[0].key, "FI");
        let (schema, orphan) = store
            .db
            .db()
            .read(|conn| {
                let schema: String = conn.query_row(
                    "SELECT sql FROM sqlite_master WHERE name = 'letters'",
                    [],
                    |r| r.get(0),
                )?;
                // Keys are enforced again after the migration.
                let orphan = conn
                    .execute(
                        "INSERT INTO letter_lines VALUES ('nobody', 'kite', 1, 1)",
                        [],
                    )
                    .map_err(|e| e.to_string());
                Ok((schema, orphan))
            })
            .await
            .unwrap();
        assert!(schema.contains("WITHOUT ROWID"), "{schema}");
        assert!(
            orphan.as_ref().is_err_and(|e| e.contains("FOREIGN KEY")),
            "{orphan:?}"
        );
    }

    #[test]
    fn a_migration_that_would_leave_lines_without_their_letter_fails() {
        let dir = tempfile::tempdir().unwrap();
        file_at(
            dir.path(),
            2,
            "INSERT INTO letter_lines VALUES ('nobody', 'kite', 1, 1250);",
        );
        let error = SqliteAnalyticsStore::open(dir.path()).unwrap_err();
        assert!(error.to_string().contains("break foreign keys"), "{error}");
    }
}
