//! Dead letters: events a projection could not apply, set aside after the configured
//! attempts so that the projection goes on with other letters. Later events of the same
//! stream wait behind a parked one, so no letter's view is built out of order; a
//! successful re-drive releases them.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;

use crate::{EventLog, Position, Progress, Projection, ProjectionError};

/// An event set aside by a projection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub projection: String,
    pub partition: u32,
    pub position: Position,
    pub stream: String,
    pub event_type: String,
    /// Why it was set aside: its own error, or the parked event it waits behind.
    pub error: String,
    pub attempts: u32,
    /// When it was set aside (ms since the epoch).
    pub parked_at_ms: i64,
    /// Set when the event did not fail itself but waits behind this earlier parked event.
    pub behind: Option<Position>,
}

/// Where dead letters are kept.
#[async_trait]
pub trait DeadLetters: Send + Sync + Debug + 'static {
    /// Sets an event aside, or replaces its record.
    async fn park(&self, letter: DeadLetter) -> Result<(), ProjectionError>;

    /// Parked events of one projection (or all), by position.
    async fn list(&self, projection: Option<&str>) -> Result<Vec<DeadLetter>, ProjectionError>;

    /// The first parked event of `stream` in `projection`, if any: later events wait behind it.
    async fn blocking(
        &self,
        projection: &str,
        stream: &str,
    ) -> Result<Option<Position>, ProjectionError>;

    async fn remove(&self, projection: &str, position: Position) -> Result<(), ProjectionError>;
}

/// What a re-drive did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Redriven {
    /// Events applied and released.
    pub applied: usize,
    /// Events still parked (their cause is not fixed, or they wait behind one that is not).
    pub parked: usize,
}

/// Re-drives parked events of `projection`: all of them, or the one at `only` and those
/// waiting behind it. Each stream's events are applied in order, at least once (the
/// projections are idempotent per event); a failure stops that stream and records why.
pub async fn redrive(
    log: &Arc<dyn EventLog>,
    projection: &dyn Projection,
    dead: &dyn DeadLetters,
    only: Option<Position>,
) -> Result<Redriven, ProjectionError> {
    let mut letters = dead.list(Some(projection.name())).await?;
    if let Some(position) = only {
        let stream = letters
            .iter()
            .find(|l| l.position == position)
            .map(|l| l.stream.clone());
        letters.retain(|l| Some(&l.stream) == stream.as_ref() && l.position >= position);
    }
    let mut streams: BTreeMap<String, Vec<DeadLetter>> = BTreeMap::new();
    for letter in letters {
        streams
            .entry(letter.stream.clone())
            .or_default()
            .push(letter);
    }
    let mut outcome = Redriven::default();
    for (stream, parked) in streams {
        let events = log.read_stream(&stream).await?;
        let mut stuck = false;
        for mut letter in parked {
            let event = events.iter().find(|e| e.position == letter.position);
            let result = match (stuck, event) {
                (true, _) => Err(None),
                (false, None) => Err(Some(format!(
                    "event {} is no longer in the log",
                    letter.position
                ))),
                (false, Some(event)) => projection
                    .apply_batch(Progress::Redrive, std::slice::from_ref(event))
                    .await
                    .map_err(|e| Some(e.to_string())),
            };
            match result {
                Ok(()) => {
                    dead.remove(&letter.projection, letter.position).await?;
                    outcome.applied += 1;
                }
                Err(reason) => {
                    if let Some(reason) = reason {
                        letter.error = reason;
                        letter.attempts += 1;
                        letter.behind = None;
                        dead.park(letter).await?;
                    }
                    stuck = true;
                    outcome.parked += 1;
                }
            }
        }
    }
    Ok(outcome)
}

/// Dead letters in memory: for tests.
#[derive(Debug, Default)]
pub struct MemoryDeadLetters {
    letters: Mutex<BTreeMap<(String, Position), DeadLetter>>,
}

impl MemoryDeadLetters {
    fn letters(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, Position), DeadLetter>> {
        self.letters.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl DeadLetters for MemoryDeadLetters {
    async fn park(&self, letter: DeadLetter) -> Result<(), ProjectionError> {
        self.letters()
            .insert((letter.projection.clone(), letter.position), letter);
        Ok(())
    }

    async fn list(&self, projection: Option<&str>) -> Result<Vec<DeadLetter>, ProjectionError> {
        let mut all: Vec<_> = self
            .letters()
            .values()
            .filter(|l| projection.is_none_or(|p| l.projection == p))
            .cloned()
            .collect();
        all.sort_by_key(|l| l.position);
        Ok(all)
    }

    async fn blocking(
        &self,
        projection: &str,
        stream: &str,
    ) -> Result<Option<Position>, ProjectionError> {
        Ok(self
            .letters()
            .values()
            .filter(|l| l.projection == projection && l.stream == stream)
            .map(|l| l.position)
            .min())
    }

    async fn remove(&self, projection: &str, position: Position) -> Result<(), ProjectionError> {
        self.letters().remove(&(projection.to_owned(), position));
        Ok(())
    }
}
