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
    /// The named projection's checkpoint (`Position::ZERO` before its first batch).
    async fn checkpoint(&self, projection: &str) -> Result<Position, StoreError>;

    /// In one transaction: applies, with `apply`, every event above the projection's
    /// checkpoint, then moves the checkpoint to the last event.
    async fn apply(
        &self,
        projection: &'static str,
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
    checkpoints: std::collections::HashMap<String, Position>,
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
    async fn checkpoint(&self, projection: &str) -> Result<Position, StoreError> {
        Ok(self
            .table()
            .checkpoints
            .get(projection)
            .copied()
            .unwrap_or_default())
    }

    async fn apply(
        &self,
        projection: &'static str,
        events: Vec<Envelope>,
        apply: KvApply,
    ) -> Result<(), ProjectionError> {
        let mut table = self.table();
        // All or nothing: work on a copy, keep it only if every event applied.
        let mut draft = table.clone();
        let checkpoint = draft
            .checkpoints
            .get(projection)
            .copied()
            .unwrap_or_default();
        for envelope in events.iter().filter(|e| e.position > checkpoint) {
            apply(&mut draft, envelope)?;
            draft
                .checkpoints
                .insert(projection.to_owned(), envelope.position);
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
