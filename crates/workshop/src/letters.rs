//! The *letters* projection: per-letter and per-toy views in one key-value table.
//!
//! | item                | pk            | sk              | gsi1pk       | gsi1sk          |
//! |---------------------|---------------|-----------------|--------------|-----------------|
//! | letter summary      | `LETTER#<id>` | `#META`         | `LETTERS`    | `<id>`          |
//! | letter line (index) | `LETTER#<id>` | `LINE#<toy>`    | `TOY#<toy>`  | `LETTER#<id>`   |
//! | toy and its demand  | `TOY#<id>`    | `#META`         | `TOYS`       | `<id>`          |
//!
//! "Which letters ask for toy X" is one query on the index partition `TOY#X`; the toy
//! item carries the demand counters, kept exact across cancellations because every event
//! is applied exactly once with the checkpoint.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use santa_cqrs::{Position, Prepared, Progress, Projection, ProjectionError, RecordedEvent};
use santa_domain::{Event, LetterCancelled, LetterSubmitted, ToyUpserted};
use serde::{Deserialize, Serialize};

use crate::kv::{Item, KvStore, KvWrite, StoreError};
use crate::{Envelope, Millis, codec};

/// The projection's name, which keys its checkpoint.
pub const NAME: &str = "letters";

/// A letter as Santa reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LetterView {
    pub id: String,
    pub child: String,
    pub address: String,
    pub country: Option<String>,
    pub status: LetterStatus,
    pub lines: Vec<LineView>,
    pub total_cents: i64,
    pub submitted_at_ms: Millis,
    pub cancelled_at_ms: Option<Millis>,
    /// The log position of the event that last changed this letter.
    pub position: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LetterStatus {
    Submitted,
    Cancelled,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineView {
    pub toy_id: String,
    pub quantity: u32,
    pub unit_price_cents: i64,
}

/// A toy with the demand for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToyView {
    pub id: String,
    pub name: String,
    pub description: String,
    pub price_cents: i64,
    /// Total quantity asked for by letters that are not cancelled.
    pub requested_quantity: u64,
    /// Number of letters, not cancelled, that ask for the toy.
    pub letter_count: u64,
}

/// One letter asking for a given toy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToyLetter {
    pub letter_id: String,
    pub child: String,
    pub quantity: u32,
}

/// A page of results and the cursor for the next page, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
}

/// Feeds the key-value store.
#[derive(Debug, Clone)]
pub struct LettersProjection {
    store: Arc<dyn KvStore>,
}

impl LettersProjection {
    pub fn new(store: Arc<dyn KvStore>) -> Self {
        Self { store }
    }
}

#[async_trait]
impl Projection for LettersProjection {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn checkpoint(&self, partition: u32) -> Result<Position, ProjectionError> {
        Ok(self.store.checkpoint(NAME, partition).await?)
    }

    /// Decodes the events (the items are read and written inside the store's transaction).
    fn prepare(&self, events: &[RecordedEvent]) -> Result<Prepared, ProjectionError> {
        Ok(Prepared::new(events.len(), decode_batch(events)?))
    }

    async fn apply_prepared(
        &self,
        progress: Progress,
        batch: Prepared,
    ) -> Result<(), ProjectionError> {
        self.store
            .apply(NAME, progress, batch.take()?, apply_events)
            .await
    }

    async fn rebuild(&self) -> Result<Box<dyn santa_cqrs::Rebuild>, ProjectionError> {
        let store = self.store.rebuild().await?;
        let projection = Arc::new(LettersProjection::new(store.fresh()));
        Ok(Box::new(crate::rebuild::ProjectionRebuild {
            store,
            projection,
        }))
    }
}

/// Decodes a batch for a projection; an undecodable event stops the batch.
pub(crate) fn decode_batch(batch: &[RecordedEvent]) -> Result<Vec<Envelope>, ProjectionError> {
    batch
        .iter()
        .map(|r| {
            codec::decode(r).map_err(|e| ProjectionError::Event {
                position: e.position,
                reason: e.to_string(),
            })
        })
        .collect()
}

/// Applies a batch of events to the table. Safe to call for events whose effect is
/// already present: each branch checks the item it would change. The demand the batch's
/// letters add to or take from each toy is summed first and written once per toy: a
/// popular toy's item is decoded and encoded once per batch, not once per letter.
pub fn apply_events(tx: &mut dyn KvWrite, events: &[Envelope]) -> Result<(), ProjectionError> {
    let mut demand = Demand::new();
    for envelope in events {
        match &envelope.event {
            Event::ToyUpserted(e) => upsert_toy(tx, e)?,
            Event::LetterSubmitted(e) => submit_letter(tx, e, envelope, &mut demand)?,
            Event::LetterCancelled(e) => cancel_letter(tx, e, envelope, &mut demand)?,
        }
    }
    for (toy_id, (quantity, letters)) in demand {
        adjust_demand(tx, &toy_id, quantity, letters)?;
    }
    Ok(())
}

/// Per toy, the change in requested quantity and in letters asking for it.
type Demand = BTreeMap<String, (i64, i64)>;

fn add_demand(demand: &mut Demand, toy_id: &str, quantity: i64, letters: i64) {
    let entry = demand.entry(toy_id.to_owned()).or_default();
    entry.0 += quantity;
    entry.1 += letters;
}

fn upsert_toy(tx: &mut dyn KvWrite, e: &ToyUpserted) -> Result<(), StoreError> {
    let id = e.toy_id.as_str();
    let mut toy = load_toy(tx, id)?;
    toy.name = e.name.to_string();
    toy.description = e.description.to_string();
    toy.price_cents = e.price_cents.get();
    tx.put(toy_item(&toy)?)
}

fn submit_letter(
    tx: &mut dyn KvWrite,
    e: &LetterSubmitted,
    envelope: &Envelope,
    demand: &mut Demand,
) -> Result<(), StoreError> {
    let id = e.letter_id.as_str();
    if tx.get(&letter_pk(id), META)?.is_some() {
        return Ok(());
    }
    let letter = LetterView {
        id: id.to_owned(),
        child: e.child.to_string(),
        address: e.address.to_string(),
        country: e.country.as_ref().map(ToString::to_string),
        status: LetterStatus::Submitted,
        lines: e
            .lines
            .iter()
            .map(|l| LineView {
                toy_id: l.toy_id.to_string(),
                quantity: l.quantity.get(),
                unit_price_cents: l.unit_price_cents.get(),
            })
            .collect(),
        total_cents: e.total_cents.get(),
        submitted_at_ms: envelope.recorded_at_ms,
        cancelled_at_ms: None,
        position: envelope.position.get(),
    };
    for line in &letter.lines {
        let entry = ToyLetter {
            letter_id: letter.id.clone(),
            child: letter.child.clone(),
            quantity: line.quantity,
        };
        tx.put(Item {
            pk: letter_pk(id),
            sk: format!("LINE#{}", line.toy_id),
            gsi1pk: Some(toy_pk(&line.toy_id)),
            gsi1sk: Some(format!("LETTER#{id}")),
            data: to_json(&entry)?,
        })?;
        add_demand(demand, &line.toy_id, i64::from(line.quantity), 1);
    }
    tx.put(letter_item(&letter)?)
}

fn cancel_letter(
    tx: &mut dyn KvWrite,
    e: &LetterCancelled,
    envelope: &Envelope,
    demand: &mut Demand,
) -> Result<(), StoreError> {
    let id = e.letter_id.as_str();
    let Some(item) = tx.get(&letter_pk(id), META)? else {
        return Ok(());
    };
    let mut letter: LetterView = from_json(&item)?;
    if letter.status == LetterStatus::Cancelled {
        return Ok(());
    }
    letter.status = LetterStatus::Cancelled;
    letter.cancelled_at_ms = Some(envelope.recorded_at_ms);
    letter.position = envelope.position.get();
    for line in &letter.lines {
        tx.delete(&letter_pk(id), &format!("LINE#{}", line.toy_id))?;
        add_demand(demand, &line.toy_id, -i64::from(line.quantity), -1);
    }
    tx.put(letter_item(&letter)?)
}

fn adjust_demand(
    tx: &mut dyn KvWrite,
    toy_id: &str,
    quantity: i64,
    letters: i64,
) -> Result<(), StoreError> {
    let mut toy = load_toy(tx, toy_id)?;
    toy.requested_quantity = toy.requested_quantity.saturating_add_signed(quantity);
    toy.letter_count = toy.letter_count.saturating_add_signed(letters);
    tx.put(toy_item(&toy)?)
}

/// The toy item, or a blank one for a toy seen first on a letter.
fn load_toy(tx: &mut dyn KvWrite, id: &str) -> Result<ToyView, StoreError> {
    match tx.get(&toy_pk(id), META)? {
        Some(item) => from_json(&item),
        None => Ok(ToyView {
            id: id.to_owned(),
            name: id.to_owned(),
            description: String::new(),
            price_cents: 0,
            requested_quantity: 0,
            letter_count: 0,
        }),
    }
}

/// Queries over the table; they never touch the log.
#[derive(Debug, Clone)]
pub struct LettersQueries {
    store: Arc<dyn KvStore>,
}

impl LettersQueries {
    pub fn new(store: Arc<dyn KvStore>) -> Self {
        Self { store }
    }

    pub async fn checkpoint(&self, partition: u32) -> Result<Position, StoreError> {
        self.store.checkpoint(NAME, partition).await
    }

    pub async fn letter(&self, id: &str) -> Result<Option<LetterView>, StoreError> {
        self.store
            .get(&letter_pk(id), META)
            .await?
            .map(|item| from_json(&item))
            .transpose()
    }

    /// Letters in id order, `limit` at a time, starting after the cursor `after`.
    pub async fn letters(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<LetterView>, StoreError> {
        let items = self.store.query_index(LETTERS, after, limit + 1).await?;
        page(items, limit, |l: &LetterView| l.id.clone())
    }

    pub async fn toy(&self, id: &str) -> Result<Option<ToyView>, StoreError> {
        self.store
            .get(&toy_pk(id), META)
            .await?
            .map(|item| from_json(&item))
            .transpose()
    }

    pub async fn toys(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<ToyView>, StoreError> {
        let items = self.store.query_index(TOYS, after, limit + 1).await?;
        page(items, limit, |t: &ToyView| t.id.clone())
    }

    /// The letters asking for a toy (one index query), or `None` if the toy is unknown.
    /// The toy and its letters are read side by side: on a blocking store each read is a
    /// hop to another thread, and the two need not wait for each other.
    pub async fn toy_letters(
        &self,
        id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Option<(ToyView, Page<ToyLetter>)>, StoreError> {
        let after = after.map(|a| format!("LETTER#{a}"));
        let pk = toy_pk(id);
        let (toy, items) = tokio::try_join!(
            self.toy(id),
            self.store.query_index(&pk, after.as_deref(), limit + 1)
        )?;
        let Some(toy) = toy else {
            return Ok(None);
        };
        Ok(Some((
            toy,
            page(items, limit, |l: &ToyLetter| l.letter_id.clone())?,
        )))
    }
}

const META: &str = "#META";
const LETTERS: &str = "LETTERS";
const TOYS: &str = "TOYS";

fn letter_pk(id: &str) -> String {
    format!("LETTER#{id}")
}

fn toy_pk(id: &str) -> String {
    format!("TOY#{id}")
}

fn letter_item(letter: &LetterView) -> Result<Item, StoreError> {
    Ok(Item {
        pk: letter_pk(&letter.id),
        sk: META.to_owned(),
        gsi1pk: Some(LETTERS.to_owned()),
        gsi1sk: Some(letter.id.clone()),
        data: to_json(letter)?,
    })
}

fn toy_item(toy: &ToyView) -> Result<Item, StoreError> {
    Ok(Item {
        pk: toy_pk(&toy.id),
        sk: META.to_owned(),
        gsi1pk: Some(TOYS.to_owned()),
        gsi1sk: Some(toy.id.clone()),
        data: to_json(toy)?,
    })
}

fn page<T: serde::de::DeserializeOwned>(
    items: Vec<Item>,
    limit: usize,
    cursor: impl Fn(&T) -> String,
) -> Result<Page<T>, StoreError> {
    let mut items = items.iter().map(from_json).collect::<Result<Vec<T>, _>>()?;
    let next = if items.len() > limit {
        items.truncate(limit);
        items.last().map(cursor)
    } else {
        None
    };
    Ok(Page { items, next })
}

fn to_json<T: Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn from_json<T: serde::de::DeserializeOwned>(item: &Item) -> Result<T, StoreError> {
    serde_json::from_str(&item.data)
        .map_err(|e| StoreError::Corrupt(format!("{}/{}: {e}", item.pk, item.sk)))
}

#[cfg(test)]
mod tests;
