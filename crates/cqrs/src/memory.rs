//! An in-memory event log: the reference implementation of [`EventLog`] for tests.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use tokio::sync::watch;

use crate::{EventLog, ExpectedVersion, LogError, NewEvent, Position, RecordedEvent};

/// Keeps every event in a vector; nothing survives the process.
#[derive(Debug)]
pub struct MemoryEventLog {
    events: Mutex<Vec<RecordedEvent>>,
    head: watch::Sender<Position>,
}

impl Default for MemoryEventLog {
    fn default() -> Self {
        Self {
            events: Mutex::new(Vec::new()),
            head: watch::channel(Position::ZERO).0,
        }
    }
}

impl MemoryEventLog {
    fn events(&self) -> std::sync::MutexGuard<'_, Vec<RecordedEvent>> {
        self.events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl EventLog for MemoryEventLog {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        new: Vec<NewEvent>,
    ) -> Result<Position, LogError> {
        let mut events = self.events();
        if let Some(last) = new.last()
            && let Some(known) = events.iter().find(|e| e.event_id == last.event_id)
        {
            return Ok(known.position);
        }
        let actual = events
            .iter()
            .filter(|e| e.stream == stream)
            .map(|e| e.version)
            .max()
            .unwrap_or(0);
        if let ExpectedVersion::Exactly(expected) = expected
            && expected != actual
        {
            return Err(LogError::Conflict {
                stream: stream.to_owned(),
                expected,
                actual,
            });
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        for (i, event) in new.into_iter().enumerate() {
            let position = Position::new(events.len() as u64 + 1);
            events.push(RecordedEvent {
                position,
                stream: stream.to_owned(),
                version: actual + 1 + i as u64,
                event_id: event.event_id,
                event_type: event.event_type,
                schema_version: event.schema_version,
                recorded_at_ms: now,
                data: event.data,
            });
        }
        let head = Position::new(events.len() as u64);
        self.head.send_replace(head);
        Ok(head)
    }

    async fn read_stream(&self, stream: &str) -> Result<Vec<RecordedEvent>, LogError> {
        Ok(self
            .events()
            .iter()
            .filter(|e| e.stream == stream)
            .cloned()
            .collect())
    }

    async fn read_all(
        &self,
        after: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, LogError> {
        let start = usize::try_from(after.get()).unwrap_or(usize::MAX);
        Ok(self
            .events()
            .iter()
            .skip(start)
            .take(limit)
            .cloned()
            .collect())
    }

    async fn head(&self) -> Result<Position, LogError> {
        Ok(Position::new(self.events().len() as u64))
    }

    fn watch_head(&self) -> watch::Receiver<Position> {
        self.head.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::MemoryEventLog;
    use crate::contract;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_default_decide_and_append_appends_at_the_version_read() {
        contract::deciders_append_at_the_version_they_read(Arc::new(MemoryEventLog::default()))
            .await;
    }
}
