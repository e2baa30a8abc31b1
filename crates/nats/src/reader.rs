//! A projection's reader of one partition: a durable pull consumer, acknowledged after
//! each commit.

use async_nats::jetstream;
use async_nats::jetstream::consumer::pull;
use async_trait::async_trait;
use futures_util::{FutureExt, StreamExt};
use std::collections::VecDeque;

use santa_cqrs::{EventSource, LogError, Position, RecordedEvent};

use crate::message::{from_message, unavailable};

/// One partition, in order, live, acknowledged after each commit.
pub(crate) struct PartitionReader {
    pub(crate) messages: pull::Stream,
    /// The newest stream sequence handed out; redeliveries at or below it are dropped.
    pub(crate) last: u64,
    /// The last message of each batch handed out and not yet acknowledged, oldest first:
    /// a batch read ahead is acknowledged only once it is applied.
    pub(crate) unacked: VecDeque<(u64, jetstream::Message)>,
}

impl std::fmt::Debug for PartitionReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionReader")
            .field("last", &self.last)
            .finish()
    }
}

impl PartitionReader {
    /// Turns a delivery into an event (with its message, to acknowledge), or `None` for a
    /// redelivery of one already handed out.
    fn accept(
        &mut self,
        message: jetstream::Message,
    ) -> Result<Option<(RecordedEvent, jetstream::Message)>, LogError> {
        let event = from_message(&message)?;
        if event.position.get() <= self.last {
            return Ok(None);
        }
        self.last = event.position.get();
        Ok(Some((event, message)))
    }
}

#[async_trait]
impl EventSource for PartitionReader {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<RecordedEvent>, LogError> {
        let mut batch = Vec::new();
        // The newest message of the batch: no await follows the first event accepted, so
        // a read dropped meanwhile loses nothing.
        let mut newest = None;
        while batch.is_empty() {
            match self.messages.next().await {
                Some(Ok(message)) => {
                    if let Some((event, message)) = self.accept(message)? {
                        batch.push(event);
                        newest = Some(message);
                    }
                }
                Some(Err(e)) => return Err(unavailable(e)),
                None => return Err(LogError::Unavailable("the partition consumer ended".into())),
            }
        }
        // Then whatever has already arrived, without waiting.
        while batch.len() < max {
            match self.messages.next().now_or_never() {
                Some(Some(Ok(message))) => {
                    if let Some((event, message)) = self.accept(message)? {
                        batch.push(event);
                        newest = Some(message);
                    }
                }
                Some(Some(Err(e))) => return Err(unavailable(e)),
                Some(None) | None => break,
            }
        }
        if let Some(message) = newest {
            self.unacked.push_back((self.last, message));
        }
        Ok(batch)
    }

    async fn committed(&mut self, upto: Position) -> Result<(), LogError> {
        // With `AckPolicy::All`, acknowledging the newest message applied acknowledges
        // everything before it.
        let mut applied = None;
        while let Some((position, _)) = self.unacked.front()
            && *position <= upto.get()
        {
            applied = self.unacked.pop_front().map(|(_, message)| message);
        }
        match applied {
            Some(message) => message.ack().await.map_err(unavailable),
            None => Ok(()),
        }
    }
}
