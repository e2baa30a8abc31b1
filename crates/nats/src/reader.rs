//! A projection's reader of one partition: a durable pull consumer, acknowledged after
//! each commit.

use async_nats::jetstream;
use async_nats::jetstream::consumer::pull;
use async_trait::async_trait;
use futures_util::{FutureExt, StreamExt};
use santa_cqrs::{EventSource, LogError, RecordedEvent};

use crate::message::{from_message, unavailable};

/// One partition, in order, live, acknowledged after each commit.
pub(crate) struct PartitionReader {
    pub(crate) messages: pull::Stream,
    /// The newest stream sequence handed out; redeliveries at or below it are dropped.
    pub(crate) last: u64,
    /// The newest message handed out and not yet acknowledged.
    pub(crate) unacked: Option<jetstream::Message>,
}

impl std::fmt::Debug for PartitionReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionReader")
            .field("last", &self.last)
            .finish()
    }
}

impl PartitionReader {
    /// Turns a delivery into an event, or `None` for a redelivery of one already handed out.
    fn accept(&mut self, message: jetstream::Message) -> Result<Option<RecordedEvent>, LogError> {
        let event = from_message(&message)?;
        if event.position.get() <= self.last {
            return Ok(None);
        }
        self.last = event.position.get();
        self.unacked = Some(message);
        Ok(Some(event))
    }
}

#[async_trait]
impl EventSource for PartitionReader {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<RecordedEvent>, LogError> {
        let mut batch = Vec::new();
        while batch.is_empty() {
            match self.messages.next().await {
                Some(Ok(message)) => batch.extend(self.accept(message)?),
                Some(Err(e)) => return Err(unavailable(e)),
                None => return Err(LogError::Unavailable("the partition consumer ended".into())),
            }
        }
        // Then whatever has already arrived, without waiting.
        while batch.len() < max {
            match self.messages.next().now_or_never() {
                Some(Some(Ok(message))) => batch.extend(self.accept(message)?),
                Some(Some(Err(e))) => return Err(unavailable(e)),
                Some(None) | None => break,
            }
        }
        Ok(batch)
    }

    async fn committed(&mut self) -> Result<(), LogError> {
        // With `AckPolicy::All`, acknowledging the newest acknowledges everything before it.
        match self.unacked.take() {
            Some(message) => message.ack().await.map_err(unavailable),
            None => Ok(()),
        }
    }
}
