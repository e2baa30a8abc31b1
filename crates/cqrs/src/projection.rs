use std::any::Any;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use tokio::sync::watch;

use crate::{LogError, Position, RecordedEvent};

/// A read model fed from the log, with one checkpoint per log partition.
///
/// `apply` is a compare-and-set on the checkpoint: it commits the batch and moves the
/// checkpoint to the batch's last event only if the checkpoint still is `expected`, in one
/// transaction. So a redelivered batch has no second effect, and a worker whose view is
/// stale (another process moved the partition on) is refused instead of applying events
/// out of order.
#[async_trait]
pub trait Projection: Send + Sync + std::fmt::Debug + 'static {
    /// A stable name: it keys the checkpoints and appears in status and metrics.
    fn name(&self) -> &'static str;

    /// The position of the last event applied from `partition`, read from the store.
    async fn checkpoint(&self, partition: u32) -> Result<Position, ProjectionError>;

    /// The part of a batch's work that needs no store (decoding the events, turning them
    /// into the store's changes), done apart from the write: while the store applies one
    /// batch, the runner prepares the next one it has read, on another core. By default
    /// the events themselves, as a `Vec<RecordedEvent>`. Errors are reported when the
    /// batch's turn comes, as the write's would be.
    fn prepare(&self, events: &[RecordedEvent]) -> Result<Prepared, ProjectionError> {
        Ok(Prepared::new(events.len(), events.to_vec()))
    }

    /// Applies a batch made by this projection's [`Projection::prepare`] and moves the
    /// checkpoint as `progress` says, in one transaction. With [`Progress::Advance`], a
    /// stored checkpoint other than `expected` fails with [`ProjectionError::Moved`] and
    /// changes nothing; events at or below it are skipped.
    async fn apply_prepared(
        &self,
        progress: Progress,
        batch: Prepared,
    ) -> Result<(), ProjectionError>;

    /// Prepares `events` and applies them (see [`Projection::apply_prepared`]).
    async fn apply_batch(
        &self,
        progress: Progress,
        events: &[RecordedEvent],
    ) -> Result<(), ProjectionError> {
        let batch = self.prepare(events)?;
        self.apply_prepared(progress, batch).await
    }

    /// Applies `batch` (events of `partition` after `expected`, in order) and moves the
    /// checkpoint to its last event, if the stored checkpoint is `expected`.
    async fn apply(
        &self,
        partition: u32,
        expected: Position,
        batch: &[RecordedEvent],
    ) -> Result<(), ProjectionError> {
        let Some(last) = batch.last() else {
            return Ok(());
        };
        self.apply_batch(
            Progress::Advance {
                partition,
                expected,
                upto: last.position,
            },
            batch,
        )
        .await
    }

    /// Starts a rebuild: fresh, empty tables beside the live ones (see
    /// [`crate::Rebuilder`]). Fails with [`ProjectionError::Busy`] while another rebuild of
    /// this projection is under way.
    async fn rebuild(&self) -> Result<Box<dyn crate::Rebuild>, ProjectionError> {
        Err(ProjectionError::Store(format!(
            "the {} projection's store cannot be rebuilt",
            self.name()
        )))
    }
}

/// A batch made ready for a projection's store by [`Projection::prepare`]: whatever that
/// projection's [`Projection::apply_prepared`] takes.
pub struct Prepared {
    events: usize,
    work: Box<dyn Any + Send>,
}

impl Prepared {
    /// `work` prepared from a batch of `events` events.
    pub fn new<T: Send + 'static>(events: usize, work: T) -> Self {
        Self {
            events,
            work: Box::new(work),
        }
    }

    /// How many events the batch held.
    pub fn events(&self) -> usize {
        self.events
    }

    /// The work, as the projection that prepared it made it.
    pub fn take<T: 'static>(self) -> Result<T, ProjectionError> {
        self.work.downcast().map(|work| *work).map_err(|_| {
            ProjectionError::Store("a batch prepared by another projection was applied".into())
        })
    }
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

/// How a batch moves a projection's checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Compare-and-set: the checkpoint of `partition` must be `expected`; it becomes `upto`
    /// (which may lie past the last applied event, when events were parked).
    Advance {
        partition: u32,
        expected: Position,
        upto: Position,
    },
    /// A re-drive of parked events: the checkpoint stays; the events' own idempotence
    /// keeps a repeated re-drive harmless.
    Redrive,
}

/// Why a projection could not apply a batch.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProjectionError {
    /// The read store is unreachable or failed; retrying may help.
    #[error("read store unavailable: {0}")]
    Store(String),
    /// An event could not be decoded or applied; retrying will not help by itself.
    #[error("cannot apply event at {position}: {reason}")]
    Event { position: Position, reason: String },
    /// The checkpoint is no longer where this worker thought: another worker moved it.
    #[error("checkpoint moved to {actual} (expected {expected}); another worker got there first")]
    Moved {
        expected: Position,
        actual: Position,
    },
    /// The read model is being rebuilt already (in this process or another).
    #[error("{0}")]
    Busy(String),
    #[error(transparent)]
    Log(#[from] LogError),
}

/// What a projection is doing right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProjectionState {
    Starting,
    Running,
    Retrying,
    Stopped,
}

impl ProjectionState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Retrying => "retrying",
            Self::Stopped => "stopped",
        }
    }
}

/// A projection's progress in this process, published after every batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectionStatus {
    /// Checkpoint per partition, as far as this process knows (`None`: not worked on here).
    pub partitions: Vec<Option<Position>>,
    pub state: ProjectionState,
    pub last_error: Option<String>,
    /// When the newest applied event was recorded in the log (ms since the epoch), used to
    /// express lag in time.
    pub last_event_at_ms: Option<i64>,
    /// Failed attempts since the last success.
    pub attempts: u32,
    /// When the projection last applied a batch or started following (ms since the
    /// epoch): a projection behind the log that has not progressed for a while is stalled.
    pub progressed_at_ms: i64,
}

impl ProjectionStatus {
    /// Whether the projection should be reported as stalled: behind the log, and nothing
    /// applied for `after`.
    pub fn stalled(&self, behind: bool, now_ms: i64, after: Duration) -> bool {
        behind
            && now_ms - self.progressed_at_ms > i64::try_from(after.as_millis()).unwrap_or(i64::MAX)
    }

    /// The lowest checkpoint over the partitions this process works on.
    pub fn position(&self) -> Position {
        self.partitions
            .iter()
            .flatten()
            .min()
            .copied()
            .unwrap_or_default()
    }
}

/// Backoff between attempts at a failing batch.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// The delay before attempt `attempt + 1`: exponential, capped, with jitter so that
    /// many workers do not retry in step.
    pub fn delay(&self, attempt: u32) -> Duration {
        let base = self
            .initial
            .saturating_mul(1 << attempt.min(16))
            .min(self.max);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        // Up to +50 %, from the clock's low bits: enough to spread retries.
        base + base.mul_f64(f64::from(nanos % 1000) / 2000.0)
    }
}

/// A read-only view of one projection's progress in this process.
#[derive(Debug, Clone)]
pub struct ProjectionHandle {
    pub(crate) name: &'static str,
    pub(crate) status: watch::Receiver<ProjectionStatus>,
}

impl ProjectionHandle {
    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn status(&self) -> ProjectionStatus {
        self.status.borrow().clone()
    }

    /// Whether this process works on `partition` (and so can answer `wait_for` for it).
    pub fn serves(&self, partition: u32) -> bool {
        self.status
            .borrow()
            .partitions
            .get(partition as usize)
            .is_some_and(Option::is_some)
    }

    /// Waits until `partition` has applied `position`, for at most `timeout`; returns
    /// whether it got there.
    pub async fn wait_for(&self, partition: u32, position: Position, timeout: Duration) -> bool {
        let mut rx = self.status.clone();
        let reached = |s: &ProjectionStatus| {
            s.partitions.get(partition as usize).copied().flatten() >= Some(position)
        };
        matches!(
            tokio::time::timeout(timeout, rx.wait_for(reached)).await,
            Ok(Ok(_))
        )
    }
}

#[cfg(test)]
mod tests;
