use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use crate::Position;

/// What the writer expects a stream's current version to be (optimistic concurrency).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// No check.
    Any,
    /// The stream must be at exactly this version; `Exactly(0)` means "must not exist".
    Exactly(u64),
}

/// An event about to be appended. `data` is the encoded payload; the log never looks in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub event_id: String,
    pub event_type: String,
    pub schema_version: u32,
    pub data: Vec<u8>,
}

/// An event as the log recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    /// Global, gap-free position in the log.
    pub position: Position,
    pub stream: String,
    /// 1-based version within the stream.
    pub version: u64,
    pub event_id: String,
    pub event_type: String,
    pub schema_version: u32,
    /// When the log made it durable, in milliseconds since the Unix epoch (UTC).
    pub recorded_at_ms: i64,
    pub data: Vec<u8>,
}

/// Why the log refused or failed an operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    #[error("stream `{stream}` is at version {actual}, expected {expected}")]
    Conflict {
        stream: String,
        expected: u64,
        actual: u64,
    },
    /// Too many appends are queued; retry later.
    #[error("the event log is overloaded")]
    Overloaded,
    /// The log cannot make anything durable right now (I/O error, broker down, closing).
    #[error("the event log is unavailable: {0}")]
    Unavailable(String),
    /// The log holds something this code cannot read.
    #[error("corrupt event at {0}")]
    Corrupt(String),
}

/// What a command chose after reading its stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Append these events to the stream, at the version that was read.
    Append(Vec<NewEvent>),
    /// Append nothing (an idempotent repeat, say) and answer with this position.
    Nothing(Position),
}

/// Why a command was refused: the decider's own error, handed back untouched.
pub type Refusal = Box<dyn std::error::Error + Send + Sync>;

/// Chooses a [`Verdict`] from a stream's events and the newest event of each context
/// stream. It may run more than once (after losing a race) and on another thread.
pub type Decider =
    Box<dyn FnMut(&[RecordedEvent], &[Option<RecordedEvent>]) -> Result<Verdict, Refusal> + Send>;

/// Why [`EventLog::decide_and_append`] appended nothing.
#[derive(Debug, thiserror::Error)]
pub enum DecideError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Refused(Refusal),
}

/// How often the default [`EventLog::decide_and_append`] decides again after another
/// writer got to the stream first.
const MAX_ATTEMPTS: usize = 5;

/// A durable, append-only log of events, partitioned into streams.
#[async_trait]
pub trait EventLog: Send + Sync + Debug + 'static {
    /// Appends `events` to `stream` atomically if the stream is at `expected`; returns the
    /// position of the last appended event. Returns only once the events are durable.
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Position, LogError>;

    /// Every event of one stream, in version order.
    async fn read_stream(&self, stream: &str) -> Result<Vec<RecordedEvent>, LogError>;

    /// The newest event of each stream (`None` for an empty one), in the order asked: for
    /// aggregates whose every event is a full snapshot (a toy), that is the whole state.
    /// Commands read their context streams with it. A log may answer from reads it made a
    /// bounded time ago (JetStream: `NatsOptions::context_max_age`), but never with an
    /// event older than one this process appended to the stream before the call.
    async fn read_lasts(&self, streams: &[String]) -> Result<Vec<Option<RecordedEvent>>, LogError> {
        let mut lasts = Vec::with_capacity(streams.len());
        for stream in streams {
            lasts.push(self.read_stream(stream).await?.pop());
        }
        Ok(lasts)
    }

    /// Reads `stream` (and the newest event of each `context` stream), lets `decide`
    /// choose, and appends its events at the version read: the command pattern. Returns
    /// the position of the appended events, or the one the verdict gave. By default it
    /// reads, then appends with the version expected and decides again (up to five times)
    /// when another writer got there first; logs with a single writer override it to
    /// decide inside the write, where no other writer can come in between.
    async fn decide_and_append(
        &self,
        stream: &str,
        context: &[String],
        mut decide: Decider,
    ) -> Result<Position, DecideError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (recorded, context) =
                tokio::try_join!(self.read_stream(stream), self.read_lasts(context))?;
            let version = recorded.last().map_or(0, |e| e.version);
            match decide(&recorded, &context).map_err(DecideError::Refused)? {
                Verdict::Nothing(position) => return Ok(position),
                Verdict::Append(events) => {
                    match self
                        .append(stream, ExpectedVersion::Exactly(version), events)
                        .await
                    {
                        Ok(position) => return Ok(position),
                        Err(LogError::Conflict { .. }) if attempt < MAX_ATTEMPTS => {}
                        Err(error) => return Err(error.into()),
                    }
                }
            }
        }
    }

    /// [`EventLog::decide_and_append`] for a command that most likely starts its stream (a
    /// new letter): the first decision is made on an empty history without reading the
    /// stream, and appended expecting the stream not to exist. When it does exist, or the
    /// decider wants more than nothing to decide on (it refuses, or appends nothing), the
    /// stream is read and decided on as by [`EventLog::decide_and_append`]: a stream that
    /// exists always gets the same answer, and a new one costs one read fewer (on NATS, one
    /// request to the server of four per letter). Logs that decide inside their own write
    /// read the stream there at no cost and override this with `decide_and_append`.
    async fn decide_and_start(
        &self,
        stream: &str,
        context: &[String],
        mut decide: Decider,
    ) -> Result<Position, DecideError> {
        let lasts = self.read_lasts(context).await?;
        if let Ok(Verdict::Append(events)) = decide(&[], &lasts) {
            match self
                .append(stream, ExpectedVersion::Exactly(0), events)
                .await
            {
                Ok(position) => return Ok(position),
                Err(LogError::Conflict { .. }) => {}
                Err(error) => return Err(error.into()),
            }
        }
        self.decide_and_append(stream, context, decide).await
    }

    /// Up to `limit` events after `after`, in position order.
    async fn read_all(&self, after: Position, limit: usize)
    -> Result<Vec<RecordedEvent>, LogError>;

    /// The position of the newest durable event (`Position::ZERO` when empty).
    async fn head(&self) -> Result<Position, LogError>;

    /// How many partitions the log spreads its events over (1 when it keeps one order).
    /// All events of one stream are in one partition, in order; projections keep one
    /// checkpoint per partition, so partitions can be worked on by different processes.
    fn partitions(&self) -> u32 {
        1
    }

    /// The newest position in each partition (`Position::ZERO` for an empty one).
    async fn partition_heads(&self) -> Result<Vec<Position>, LogError> {
        Ok(vec![self.head().await?])
    }

    /// The newest position in one partition.
    async fn partition_head(&self, partition: u32) -> Result<Position, LogError> {
        Ok(self
            .partition_heads()
            .await?
            .get(partition as usize)
            .copied()
            .unwrap_or_default())
    }

    /// The partition that holds the event at `position` (read-your-writes across
    /// processes needs it to know which checkpoint to wait for).
    async fn partition_at(&self, _position: Position) -> Result<u32, LogError> {
        Ok(0)
    }

    /// A reader named `reader` (one per projection) of one partition after `after`, if the
    /// log has its own; `None` means "use [`Subscription`] over `read_all`", which suits
    /// single-partition logs.
    async fn subscribe(
        &self,
        _reader: &str,
        _partition: u32,
        _after: Position,
    ) -> Result<Option<Box<dyn EventSource>>, LogError> {
        Ok(None)
    }

    /// A channel that moves whenever this process appends. Logs written by other
    /// processes may not move it; subscribers therefore also poll.
    fn watch_head(&self) -> watch::Receiver<Position>;
}

/// Reads a log (or one partition of it) in order, waiting for new events when caught up.
#[async_trait]
pub trait EventSource: Send + Debug {
    /// The next events, at most `max`, waiting until there is at least one. Cancel-safe:
    /// dropped before it returns, it hands out nothing, and the next call reads the same
    /// events (the runner drops it when idle, at shutdown, and when a read ahead is not
    /// done by the time the batch before it is applied).
    async fn next_batch(&mut self, max: usize) -> Result<Vec<RecordedEvent>, LogError>;

    /// The reader's owner durably applied everything returned up to `upto` (logs that
    /// track consumers acknowledge it to the broker). Events returned after it, read ahead,
    /// are not applied yet. A log may acknowledge only whole batches: a position inside a
    /// batch acknowledges the batches before it, never more.
    async fn committed(&mut self, _upto: Position) -> Result<(), LogError> {
        Ok(())
    }
}

/// Opens the reader `reader` of `partition` after `after`: the log's own, or a
/// [`Subscription`].
pub async fn subscribe(
    log: &Arc<dyn EventLog>,
    reader: &str,
    partition: u32,
    after: Position,
) -> Result<Box<dyn EventSource>, LogError> {
    Ok(match log.subscribe(reader, partition, after).await? {
        Some(source) => source,
        None => Box::new(Subscription::new(log.clone(), after)),
    })
}

/// Catch-up-then-live reading of the whole log from a position. While it catches up (each
/// batch as large as asked for), it reads the next batch while its reader applies the one
/// it returned: rebuilds of a 300,000-letter SQLite log, three each in turn, went from
/// 69,800 to 80,200 events/s (analytics) and from 34,700 to 36,800 (letters).
#[derive(Debug)]
pub struct Subscription {
    log: Arc<dyn EventLog>,
    after: Position,
    head: watch::Receiver<Position>,
    poll: Duration,
    ahead: Option<ReadAhead>,
}

/// The batch of up to `max` events after the last one returned, being read.
#[derive(Debug)]
struct ReadAhead {
    max: usize,
    read: tokio::task::JoinHandle<Result<Vec<RecordedEvent>, LogError>>,
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.read.abort();
    }
}

impl Subscription {
    pub fn new(log: Arc<dyn EventLog>, after: Position) -> Self {
        let head = log.watch_head();
        Self {
            log,
            after,
            head,
            poll: Duration::from_millis(250),
            ahead: None,
        }
    }

    /// The batch after the last one returned: the one read ahead if it was of this size,
    /// or read now.
    async fn read(&mut self, max: usize) -> Result<Vec<RecordedEvent>, LogError> {
        match self.ahead.take() {
            Some(mut ahead) if ahead.max == max => (&mut ahead.read)
                .await
                .map_err(|e| LogError::Unavailable(format!("reading ahead failed: {e}")))?,
            _ => self.log.read_all(self.after, max).await,
        }
    }
}

#[async_trait]
impl EventSource for Subscription {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<RecordedEvent>, LogError> {
        loop {
            let batch = self.read(max).await?;
            if let Some(last) = batch.last() {
                self.after = last.position;
                if batch.len() >= max {
                    // Catching up: more events are most likely there already.
                    let (log, after) = (self.log.clone(), self.after);
                    self.ahead = Some(ReadAhead {
                        max,
                        read: tokio::spawn(async move { log.read_all(after, max).await }),
                    });
                }
                return Ok(batch);
            }
            let after = self.after;
            // Woken by an append in this process, or by the poll for other writers.
            if let Ok(Err(_closed)) =
                tokio::time::timeout(self.poll, self.head.wait_for(|head| *head > after)).await
            {
                return Err(LogError::Unavailable("the event log was closed".into()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryEventLog;

    async fn append(log: &dyn EventLog, n: usize) {
        for _ in 0..n {
            let event = NewEvent {
                event_id: uuid_like(),
                event_type: "noted".into(),
                schema_version: 1,
                data: b"{}".to_vec(),
            };
            log.append("s", ExpectedVersion::Any, vec![event])
                .await
                .unwrap();
        }
    }

    fn uuid_like() -> String {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        format!("event-{}", NEXT.fetch_add(1, Ordering::Relaxed))
    }

    fn positions(batch: &[RecordedEvent]) -> Vec<u64> {
        batch.iter().map(|e| e.position.get()).collect()
    }

    /// Full batches are followed by a read ahead; whatever it finds (the rest of the log,
    /// or nothing yet), every event comes once and in order, and a read ahead of another
    /// size is not used.
    #[tokio::test]
    async fn a_subscription_reading_ahead_returns_every_event_once_in_order() {
        let log: Arc<dyn EventLog> = Arc::new(MemoryEventLog::default());
        append(&*log, 8).await;
        let mut sub = Subscription::new(log.clone(), Position::new(1));
        assert_eq!(positions(&sub.next_batch(3).await.unwrap()), [2, 3, 4]);
        assert_eq!(positions(&sub.next_batch(3).await.unwrap()), [5, 6, 7]);
        // The read ahead was of three events; one asked for alone is read anew.
        assert_eq!(positions(&sub.next_batch(1).await.unwrap()), [8]);
        // The read ahead after a full batch found nothing: the next append still comes.
        let waiting = tokio::spawn(async move {
            let batch = sub.next_batch(1).await.unwrap();
            (sub, batch)
        });
        append(&*log, 2).await;
        let (mut sub, batch) = waiting.await.unwrap();
        assert_eq!(positions(&batch), [9]);
        assert_eq!(positions(&sub.next_batch(5).await.unwrap()), [10]);
    }
}
