//! The *analytics* projection: toys, letters and letter lines as relational rows, and the
//! reports analysts run over them. The mapping from events to rows lives here; each SQL
//! backend implements [`AnalyticsStore`] in its own dialect.

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use santa_cqrs::{Position, Prepared, Progress, Projection, ProjectionError, RecordedEvent};
use santa_domain::Event;

use crate::kv::StoreError;
use crate::letters::decode_batch;
use crate::rebuild::StoreRebuild;
use crate::{Envelope, Millis};

/// The projection's name, which keys its checkpoint.
pub const NAME: &str = "analytics";

/// A row-level change derived from one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnalyticsChange {
    UpsertToy {
        id: String,
        name: String,
        price_cents: i64,
    },
    InsertLetter(LetterRow),
    CancelLetter {
        id: String,
        at_ms: Millis,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LetterRow {
    pub id: String,
    pub child: String,
    pub country: Option<String>,
    pub total_cents: i64,
    pub submitted_at_ms: Millis,
    pub lines: Vec<LineRow>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineRow {
    pub toy_id: String,
    pub quantity: u32,
    pub unit_price_cents: i64,
}

/// One row of the toy demand ranking (letters that are not cancelled).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToyDemand {
    pub toy_id: String,
    pub name: String,
    pub quantity: i64,
    pub letters: i64,
    pub value_cents: i64,
}

/// Totals for one group (a country, a UTC day) over letters that are not cancelled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Totals {
    pub key: String,
    pub letters: i64,
    pub quantity: i64,
    pub total_cents: i64,
}

/// A relational analytics store.
#[async_trait]
pub trait AnalyticsStore: Send + Sync + Debug + 'static {
    async fn checkpoint(&self, partition: u32) -> Result<Position, StoreError>;

    /// In one transaction: applies the changes and moves the checkpoint as `progress`
    /// says (see `KvStore::apply` for the rules).
    async fn apply(
        &self,
        progress: Progress,
        changes: Vec<(Position, AnalyticsChange)>,
    ) -> Result<(), ProjectionError>;

    /// Toys by quantity requested, most wanted first.
    async fn toy_demand(&self, limit: usize) -> Result<Vec<ToyDemand>, StoreError>;

    /// Totals by country (`None` country reported as `"unknown"`), largest first.
    async fn totals_by_country(&self) -> Result<Vec<Totals>, StoreError>;

    /// Totals by UTC day of submission (`YYYY-MM-DD`), oldest first.
    async fn totals_by_day(&self) -> Result<Vec<Totals>, StoreError>;

    /// Fresh, empty tables to rebuild into, switched to atomically when done.
    async fn rebuild(&self) -> Result<Box<dyn StoreRebuild<dyn AnalyticsStore>>, ProjectionError> {
        Err(crate::rebuild::unsupported("analytics store"))
    }
}

/// The row change an event leads to.
pub fn change_for(envelope: &Envelope) -> AnalyticsChange {
    match &envelope.event {
        Event::ToyUpserted(e) => AnalyticsChange::UpsertToy {
            id: e.toy_id.to_string(),
            name: e.name.to_string(),
            price_cents: e.price_cents.get(),
        },
        Event::LetterSubmitted(e) => AnalyticsChange::InsertLetter(LetterRow {
            id: e.letter_id.to_string(),
            child: e.child.to_string(),
            country: e.country.as_ref().map(ToString::to_string),
            total_cents: e.total_cents.get(),
            submitted_at_ms: envelope.recorded_at_ms,
            lines: e
                .lines
                .iter()
                .map(|l| LineRow {
                    toy_id: l.toy_id.to_string(),
                    quantity: l.quantity.get(),
                    unit_price_cents: l.unit_price_cents.get(),
                })
                .collect(),
        }),
        Event::LetterCancelled(e) => AnalyticsChange::CancelLetter {
            id: e.letter_id.to_string(),
            at_ms: envelope.recorded_at_ms,
        },
    }
}

/// Feeds an [`AnalyticsStore`].
#[derive(Debug, Clone)]
pub struct AnalyticsProjection {
    store: Arc<dyn AnalyticsStore>,
}

impl AnalyticsProjection {
    pub fn new(store: Arc<dyn AnalyticsStore>) -> Self {
        Self { store }
    }
}

#[async_trait]
impl Projection for AnalyticsProjection {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn checkpoint(&self, partition: u32) -> Result<Position, ProjectionError> {
        Ok(self.store.checkpoint(partition).await?)
    }

    /// Decodes the events and turns them into row changes.
    fn prepare(&self, events: &[RecordedEvent]) -> Result<Prepared, ProjectionError> {
        let changes: Vec<(Position, AnalyticsChange)> = decode_batch(events)?
            .iter()
            .map(|e| (e.position, change_for(e)))
            .collect();
        Ok(Prepared::new(events.len(), changes))
    }

    async fn apply_prepared(
        &self,
        progress: Progress,
        batch: Prepared,
    ) -> Result<(), ProjectionError> {
        self.store.apply(progress, batch.take()?).await
    }

    async fn rebuild(&self) -> Result<Box<dyn santa_cqrs::Rebuild>, ProjectionError> {
        let store = self.store.rebuild().await?;
        let projection = Arc::new(AnalyticsProjection::new(store.fresh()));
        Ok(Box::new(crate::rebuild::ProjectionRebuild {
            store,
            projection,
        }))
    }
}
