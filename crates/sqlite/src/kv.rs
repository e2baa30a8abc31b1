//! The key-value read store on SQLite: one `items` table keyed by (pk, sk) with a partial
//! index standing in for the global secondary index, and the projections' checkpoints.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use rusqlite::{
    CachedStatement, Connection, OptionalExtension, Statement, TransactionBehavior, params,
};
use santa_cqrs::{Position, Progress, ProjectionError};
use santa_workshop::Envelope;
use santa_workshop::kv::{Item, KvApply, KvStore, KvWrite, StoreError};
use santa_workshop::rebuild::StoreRebuild;

use crate::db::store_error;
use crate::generations::Generations;
use crate::{OpenError, ReadStoreOptions};

pub(crate) const MIGRATIONS: &[&str] = &[
    "CREATE TABLE items (
        pk TEXT NOT NULL,
        sk TEXT NOT NULL,
        gsi1pk TEXT,
        gsi1sk TEXT,
        data TEXT NOT NULL,
        PRIMARY KEY (pk, sk)
    ) WITHOUT ROWID;
    CREATE INDEX items_gsi1 ON items (gsi1pk, gsi1sk) WHERE gsi1pk IS NOT NULL;
    CREATE TABLE checkpoints (projection TEXT PRIMARY KEY, position INTEGER NOT NULL);",
    CHECKPOINTS_BY_PARTITION,
];

/// Migration: one checkpoint per (projection, log partition).
pub(crate) const CHECKPOINTS_BY_PARTITION: &str = "CREATE TABLE checkpoints_v2 (
        projection TEXT NOT NULL,
        partition INTEGER NOT NULL,
        position INTEGER NOT NULL,
        PRIMARY KEY (projection, partition)
    ) WITHOUT ROWID;
    INSERT INTO checkpoints_v2 (projection, partition, position) SELECT projection, 0, position FROM checkpoints;
    DROP TABLE checkpoints;
    ALTER TABLE checkpoints_v2 RENAME TO checkpoints;";

/// The embedded key-value store (`read.db`).
#[derive(Debug, Clone)]
pub struct SqliteKvStore {
    db: Generations,
}

impl SqliteKvStore {
    /// Opens `read.db` under `dir` with the default [`ReadStoreOptions`].
    pub fn open(dir: &Path) -> Result<Self, OpenError> {
        Self::open_with(dir, ReadStoreOptions::default())
    }

    pub fn open_with(dir: &Path, options: ReadStoreOptions) -> Result<Self, OpenError> {
        Ok(Self {
            db: Generations::open(dir, "read", MIGRATIONS, options)?,
        })
    }
}

/// Writes an item, replacing the one under its key.
pub(crate) const UPSERT: &str =
    "INSERT INTO items (pk, sk, gsi1pk, gsi1sk, data) VALUES (?1, ?2, ?3, ?4, ?5)
     ON CONFLICT (pk, sk) DO UPDATE SET gsi1pk = excluded.gsi1pk, gsi1sk = excluded.gsi1sk,
     data = excluded.data";

/// A query of items, with the columns [`row_to_item`] reads, as a constant: the statement
/// cache is looked up by the text, which is then not formatted on every read.
macro_rules! select_items {
    ($rest:literal) => {
        concat!("SELECT pk, sk, gsi1pk, gsi1sk, data FROM items ", $rest)
    };
}

/// One item by its key.
const GET: &str = select_items!("WHERE pk = ?1 AND sk = ?2");

/// A page of an index partition.
const QUERY_INDEX: &str =
    select_items!("WHERE gsi1pk = ?1 AND gsi1sk > ?2 ORDER BY gsi1sk LIMIT ?3");

fn row_to_item(row: &rusqlite::Row<'_>) -> rusqlite::Result<Item> {
    Ok(Item {
        pk: row.get(0)?,
        sk: row.get(1)?,
        gsi1pk: row.get(2)?,
        gsi1sk: row.get(3)?,
        data: row.get(4)?,
    })
}

pub(crate) fn read_checkpoint(
    conn: &Connection,
    projection: &str,
    partition: u32,
) -> rusqlite::Result<Position> {
    let position: Option<u64> = conn
        .prepare_cached(
            "SELECT position FROM checkpoints WHERE projection = ?1 AND partition = ?2",
        )?
        .query_row(params![projection, partition], |r| r.get(0))
        .optional()?;
    Ok(Position::new(position.unwrap_or(0)))
}

pub(crate) fn write_checkpoint(
    conn: &Connection,
    projection: &str,
    partition: u32,
    position: Position,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO checkpoints (projection, partition, position) VALUES (?1, ?2, ?3)
         ON CONFLICT (projection, partition) DO UPDATE SET position = excluded.position",
    )?
    .execute(params![projection, partition, position.get()])?;
    Ok(())
}

/// Opens the write transaction of a batch. For an advance, checks the checkpoint is still
/// `expected` and returns it: events at or below it are skipped.
pub(crate) fn begin_batch<'c>(
    conn: &'c mut Connection,
    projection: &str,
    progress: Progress,
) -> Result<(rusqlite::Transaction<'c>, Position), ProjectionError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(store_error)?;
    let Progress::Advance {
        partition,
        expected,
        ..
    } = progress
    else {
        return Ok((tx, Position::ZERO));
    };
    let actual = read_checkpoint(&tx, projection, partition).map_err(store_error)?;
    if actual != expected {
        return Err(ProjectionError::Moved { expected, actual });
    }
    Ok((tx, actual))
}

/// Moves the checkpoint (for an advance) and commits the batch.
pub(crate) fn end_batch(
    tx: rusqlite::Transaction<'_>,
    projection: &str,
    progress: Progress,
) -> Result<(), ProjectionError> {
    if let Progress::Advance {
        partition,
        expected,
        upto,
    } = progress
        && upto > expected
    {
        write_checkpoint(&tx, projection, partition, upto).map_err(store_error)?;
    }
    Ok(tx.commit().map_err(store_error)?)
}

/// [`KvWrite`] over an open transaction, with a write-back cache: an item read or written
/// many times in one batch (a popular toy's counters) costs one read and one write.
struct Tx<'a> {
    conn: &'a Connection,
    /// Reads an item: taken from the connection's cache once per batch, not once per read.
    get: CachedStatement<'a>,
    /// Every item touched in this batch: its current value (`None`: absent or deleted) and
    /// whether it must be written back. In key order, so the write-back walks the table's
    /// b-tree once from left to right (in hash order, a rebuild's 15,000 items per batch
    /// landed all over the newest pages and split them again and again).
    items: BTreeMap<(String, String), (Option<Item>, bool)>,
}

impl<'a> Tx<'a> {
    fn new(conn: &'a Connection) -> rusqlite::Result<Self> {
        Ok(Self {
            conn,
            get: conn.prepare_cached(GET)?,
            items: BTreeMap::new(),
        })
    }

    /// Writes every changed item back.
    fn flush(self) -> rusqlite::Result<()> {
        let mut upsert = self.conn.prepare_cached(UPSERT)?;
        let mut delete = self
            .conn
            .prepare_cached("DELETE FROM items WHERE pk = ?1 AND sk = ?2")?;
        for ((pk, sk), (item, dirty)) in self.items {
            match (item, dirty) {
                (_, false) => {}
                (Some(i), true) => {
                    upsert.execute(params![i.pk, i.sk, i.gsi1pk, i.gsi1sk, i.data])?;
                }
                (None, true) => {
                    delete.execute([pk, sk])?;
                }
            }
        }
        Ok(())
    }
}

impl KvWrite for Tx<'_> {
    fn get(&mut self, pk: &str, sk: &str) -> Result<Option<Item>, StoreError> {
        let key = (pk.to_owned(), sk.to_owned());
        if let Some((item, _)) = self.items.get(&key) {
            return Ok(item.clone());
        }
        let item = get_with(&mut self.get, pk, sk).map_err(store_error)?;
        self.items.insert(key, (item.clone(), false));
        Ok(item)
    }

    fn put(&mut self, item: Item) -> Result<(), StoreError> {
        self.items
            .insert((item.pk.clone(), item.sk.clone()), (Some(item), true));
        Ok(())
    }

    fn delete(&mut self, pk: &str, sk: &str) -> Result<(), StoreError> {
        self.items
            .insert((pk.to_owned(), sk.to_owned()), (None, true));
        Ok(())
    }
}

pub(crate) fn get(conn: &Connection, pk: &str, sk: &str) -> rusqlite::Result<Option<Item>> {
    let mut statement = conn.prepare_cached(GET)?;
    get_with(&mut statement, pk, sk)
}

fn get_with(get: &mut Statement<'_>, pk: &str, sk: &str) -> rusqlite::Result<Option<Item>> {
    get.query_row([pk, sk], row_to_item).optional()
}

#[async_trait]
impl KvStore for SqliteKvStore {
    async fn checkpoint(&self, projection: &str, partition: u32) -> Result<Position, StoreError> {
        let projection = projection.to_owned();
        self.db
            .db()
            .read(move |conn| read_checkpoint(conn, &projection, partition))
            .await
    }

    async fn apply(
        &self,
        projection: &'static str,
        progress: Progress,
        mut events: Vec<Envelope>,
        apply: KvApply,
    ) -> Result<(), ProjectionError> {
        self.db
            .write(move |conn| -> Result<(), ProjectionError> {
                let (tx, after) = begin_batch(conn, projection, progress)?;
                let mut items = Tx::new(&tx).map_err(store_error)?;
                events.retain(|e| e.position > after);
                apply(&mut items, &events)?;
                items.flush().map_err(store_error)?;
                end_batch(tx, projection, progress)
            })
            .await
    }

    async fn get(&self, pk: &str, sk: &str) -> Result<Option<Item>, StoreError> {
        let (pk, sk) = (pk.to_owned(), sk.to_owned());
        self.db.db().read(move |conn| get(conn, &pk, &sk)).await
    }

    async fn query_index(
        &self,
        gsi1pk: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Item>, StoreError> {
        let (gsi1pk, after) = (gsi1pk.to_owned(), after.unwrap_or("").to_owned());
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.db
            .db()
            .read(move |conn| {
                let mut stmt = conn.prepare_cached(QUERY_INDEX)?;
                stmt.query_map(params![gsi1pk, after, limit], row_to_item)?
                    .collect()
            })
            .await
    }

    async fn rebuild(&self) -> Result<Box<dyn StoreRebuild<dyn KvStore>>, ProjectionError> {
        self.db
            .rebuild(|db| Arc::new(SqliteKvStore { db }) as Arc<dyn KvStore>)
            .await
    }
}
