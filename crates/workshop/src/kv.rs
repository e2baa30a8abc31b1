//! A key-value store in the DynamoDB "single table" style: items keyed by partition key
//! and sort key, plus one global secondary index (`gsi1pk`, `gsi1sk`).

use std::fmt::Debug;

use async_trait::async_trait;
use santa_cqrs::{Position, ProjectionError};

use crate::Envelope;

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

/// How a projection turns one event into item writes.
pub type KvApply = fn(&mut dyn KvWrite, &Envelope) -> Result<(), ProjectionError>;

/// A key-value read store.
#[async_trait]
pub trait KvStore: Send + Sync + Debug + 'static {
    /// The named projection's checkpoint for a log partition (`Position::ZERO` before its
    /// first batch).
    async fn checkpoint(&self, projection: &str, partition: u32) -> Result<Position, StoreError>;

    /// In one transaction, if the checkpoint of (projection, partition) is `expected`:
    /// applies every event above it with `apply` and moves it to the last event.
    /// Otherwise fails with `ProjectionError::Moved` and changes nothing.
    async fn apply(
        &self,
        projection: &'static str,
        partition: u32,
        expected: Position,
        events: Vec<Envelope>,
        apply: KvApply,
    ) -> Result<(), ProjectionError>;

    async fn get(&self, pk: &str, sk: &str) -> Result<Option<Item>, StoreError>;

    /// Every item of a partition whose sort key starts with `sk_prefix`, by sort key.
    async fn query(&self, pk: &str, sk_prefix: &str) -> Result<Vec<Item>, StoreError>;

    /// Up to `limit` items of an index partition with index sort key above `after`, in
    /// index sort-key order.
    async fn query_index(
        &self,
        gsi1pk: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Item>, StoreError>;
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
        partition: u32,
        expected: Position,
        events: Vec<Envelope>,
        apply: KvApply,
    ) -> Result<(), ProjectionError> {
        let mut table = self.table();
        let key = (projection.to_owned(), partition);
        let actual = table.checkpoints.get(&key).copied().unwrap_or_default();
        if actual != expected {
            return Err(ProjectionError::Moved { expected, actual });
        }
        // All or nothing: work on a copy, keep it only if every event applied.
        let mut draft = table.clone();
        for envelope in events.iter().filter(|e| e.position > actual) {
            apply(&mut draft, envelope)?;
            draft.checkpoints.insert(key.clone(), envelope.position);
        }
        *table = draft;
        Ok(())
    }

    async fn get(&self, pk: &str, sk: &str) -> Result<Option<Item>, StoreError> {
        self.table().get(pk, sk)
    }

    async fn query(&self, pk: &str, sk_prefix: &str) -> Result<Vec<Item>, StoreError> {
        Ok(self
            .table()
            .items
            .values()
            .filter(|i| i.pk == pk && i.sk.starts_with(sk_prefix))
            .cloned()
            .collect())
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
