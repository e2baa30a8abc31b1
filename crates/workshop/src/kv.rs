//! A key-value store in the DynamoDB "single table" style: items keyed by partition key
//! and sort key, plus one global secondary index (`gsi1pk`, `gsi1sk`).

use std::fmt::Debug;

use async_trait::async_trait;
use santa_cqrs::{Position, Progress, ProjectionError};

use crate::Envelope;
use crate::rebuild::StoreRebuild;

/// One item. `data` is the item's attributes, encoded by the projection that owns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub pk: String,
    pub sk: String,
    /// Index keys; an item without them is not in the index.
    pub gsi1pk: Option<String>,
    pub gsi1sk: Option<String>,
    pub data: String,
}

/// A read store failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("read store unavailable: {0}")]
    Unavailable(String),
    #[error("read store holds an unreadable item: {0}")]
    Corrupt(String),
}

impl From<StoreError> for ProjectionError {
    fn from(error: StoreError) -> Self {
        ProjectionError::Store(error.to_string())
    }
}

/// Reads and writes inside one store transaction. Reads see the transaction's own writes.
pub trait KvWrite {
    fn get(&mut self, pk: &str, sk: &str) -> Result<Option<Item>, StoreError>;
    fn put(&mut self, item: Item) -> Result<(), StoreError>;
    fn delete(&mut self, pk: &str, sk: &str) -> Result<(), StoreError>;
}

/// How a projection turns a batch of events (in log order) into item writes. It sees the
/// whole batch, so that what many events change alike (a toy's demand counters) can be
/// read and written once per batch.
pub type KvApply = fn(&mut dyn KvWrite, &[Envelope]) -> Result<(), ProjectionError>;

/// A key-value read store.
#[async_trait]
pub trait KvStore: Send + Sync + Debug + 'static {
    /// The named projection's checkpoint for a log partition (`Position::ZERO` before its
    /// first batch).
    async fn checkpoint(&self, projection: &str, partition: u32) -> Result<Position, StoreError>;

    /// In one transaction: applies `events` with `apply` and moves the projection's
    /// checkpoint as `progress` says (see [`Progress`]). With `Progress::Advance`, a
    /// checkpoint other than `expected` fails with `ProjectionError::Moved` and changes
    /// nothing, and events at or below it are skipped.
    async fn apply(
        &self,
        projection: &'static str,
        progress: Progress,
        events: Vec<Envelope>,
        apply: KvApply,
    ) -> Result<(), ProjectionError>;

    async fn get(&self, pk: &str, sk: &str) -> Result<Option<Item>, StoreError>;

    /// Up to `limit` items of an index partition with index sort key above `after`, in
    /// index sort-key order.
    async fn query_index(
        &self,
        gsi1pk: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Item>, StoreError>;

    /// Fresh, empty tables to rebuild into, switched to atomically when done.
    async fn rebuild(&self) -> Result<Box<dyn StoreRebuild<dyn KvStore>>, ProjectionError> {
        Err(crate::rebuild::unsupported("key-value store"))
    }
}

/// An in-memory [`KvStore`]: the reference implementation, for tests.
#[derive(Debug, Default)]
pub struct MemoryKvStore {
    state: std::sync::Mutex<MemoryTable>,
}

#[derive(Debug, Default, Clone)]
struct MemoryTable {
    items: std::collections::BTreeMap<(String, String), Item>,
    checkpoints: std::collections::HashMap<(String, u32), Position>,
}

impl KvWrite for MemoryTable {
    fn get(&mut self, pk: &str, sk: &str) -> Result<Option<Item>, StoreError> {
        Ok(self.items.get(&(pk.to_owned(), sk.to_owned())).cloned())
    }

    fn put(&mut self, item: Item) -> Result<(), StoreError> {
        self.items.insert((item.pk.clone(), item.sk.clone()), item);
        Ok(())
    }

    fn delete(&mut self, pk: &str, sk: &str) -> Result<(), StoreError> {
        self.items.remove(&(pk.to_owned(), sk.to_owned()));
        Ok(())
    }
}

impl MemoryKvStore {
    fn table(&self) -> std::sync::MutexGuard<'_, MemoryTable> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every item, in key order: for tests that compare whole tables.
    pub fn items(&self) -> Vec<Item> {
        self.table().items.values().cloned().collect()
    }
}

#[async_trait]
impl KvStore for MemoryKvStore {
    async fn checkpoint(&self, projection: &str, partition: u32) -> Result<Position, StoreError> {
        let key = (projection.to_owned(), partition);
        Ok(self
            .table()
            .checkpoints
            .get(&key)
            .copied()
            .unwrap_or_default())
    }

    async fn apply(
        &self,
        projection: &'static str,
        progress: Progress,
        mut events: Vec<Envelope>,
        apply: KvApply,
    ) -> Result<(), ProjectionError> {
        let mut table = self.table();
        // All or nothing: work on a copy, keep it only if every event applied.
        let mut draft = table.clone();
        let after = match progress {
            Progress::Advance {
                partition,
                expected,
                upto,
            } => {
                let key = (projection.to_owned(), partition);
                let actual = draft.checkpoints.get(&key).copied().unwrap_or_default();
                if actual != expected {
                    return Err(ProjectionError::Moved { expected, actual });
                }
                draft.checkpoints.insert(key, upto.max(actual));
                actual
            }
            Progress::Redrive => Position::ZERO,
        };
        events.retain(|e| e.position > after);
        apply(&mut draft, &events)?;
        *table = draft;
        Ok(())
    }

    async fn get(&self, pk: &str, sk: &str) -> Result<Option<Item>, StoreError> {
        self.table().get(pk, sk)
    }

    async fn query_index(
        &self,
        gsi1pk: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Item>, StoreError> {
        let mut hits: Vec<Item> = self
            .table()
            .items
            .values()
            .filter(|i| i.gsi1pk.as_deref() == Some(gsi1pk) && i.gsi1sk.as_deref() > after)
            .cloned()
            .collect();
        hits.sort_by(|a, b| a.gsi1sk.cmp(&b.gsi1sk));
        hits.truncate(limit);
        Ok(hits)
    }
}

/// Item keys: (pk, sk).
pub type Key = (String, String);

/// Runs a batch's `apply` for a store whose reads are remote: passes over the batch in
/// memory, collecting the keys it reads but does not know, fetches them all in one call,
/// and passes again, until a pass reads only known keys. That pass's writes are the
/// batch's effect: `(key, Some(item))` to put, `(key, None)` to delete.
///
/// Reads see earlier writes of the same pass, so events later in the batch see the effect
/// of earlier ones, exactly as in a store transaction.
pub async fn stage_batch<F, Fut>(
    events: &[Envelope],
    apply: KvApply,
    mut fetch: F,
) -> Result<Vec<(Key, Option<Item>)>, ProjectionError>
where
    F: FnMut(Vec<Key>) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<Item>, StoreError>>,
{
    /// Reads go through at most this many fetches (the letters projection needs two: a
    /// cancelled letter, then its toys).
    const MAX_ROUNDS: usize = 8;
    let mut known: std::collections::HashMap<Key, Option<Item>> = std::collections::HashMap::new();
    for _ in 0..MAX_ROUNDS {
        let mut pass = StagedPass {
            known: &known,
            writes: Default::default(),
            misses: Default::default(),
        };
        apply(&mut pass, events)?;
        if pass.misses.is_empty() {
            return Ok(pass.writes.into_iter().collect());
        }
        let wanted: Vec<Key> = pass.misses.into_iter().collect();
        let found = fetch(wanted.clone()).await?;
        known.extend(wanted.into_iter().map(|key| (key, None)));
        known.extend(
            found
                .into_iter()
                .map(|item| ((item.pk.clone(), item.sk.clone()), Some(item))),
        );
    }
    Err(ProjectionError::Store(format!(
        "a batch kept reading unknown items after {MAX_ROUNDS} fetches"
    )))
}

struct StagedPass<'a> {
    known: &'a std::collections::HashMap<Key, Option<Item>>,
    writes: std::collections::HashMap<Key, Option<Item>>,
    misses: std::collections::HashSet<Key>,
}

impl KvWrite for StagedPass<'_> {
    fn get(&mut self, pk: &str, sk: &str) -> Result<Option<Item>, StoreError> {
        let key = (pk.to_owned(), sk.to_owned());
        if let Some(written) = self.writes.get(&key) {
            return Ok(written.clone());
        }
        match self.known.get(&key) {
            Some(item) => Ok(item.clone()),
            None => {
                self.misses.insert(key);
                Ok(None)
            }
        }
    }

    fn put(&mut self, item: Item) -> Result<(), StoreError> {
        self.writes
            .insert((item.pk.clone(), item.sk.clone()), Some(item));
        Ok(())
    }

    fn delete(&mut self, pk: &str, sk: &str) -> Result<(), StoreError> {
        self.writes.insert((pk.to_owned(), sk.to_owned()), None);
        Ok(())
    }
}
