use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use tokio::sync::watch;

use crate::{EventLog, LogError, Position, RecordedEvent, Subscription};

/// A read model fed from the log. Implementations store each batch together with their
/// checkpoint in one transaction and skip events at or below it, so a redelivered batch
/// has no second effect.
#[async_trait]
pub trait Projection: Send + Sync + 'static {
    /// A stable name: it keys the checkpoint and appears in status and metrics.
    fn name(&self) -> &'static str;

    /// The position of the last event this projection has applied, read from its store.
    async fn checkpoint(&self) -> Result<Position, ProjectionError>;

    /// Applies `batch` (in position order) and moves the checkpoint to its last event,
    /// atomically. Events at or below the stored checkpoint are skipped.
    async fn apply(&self, batch: &[RecordedEvent]) -> Result<(), ProjectionError>;
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

/// A projection's progress, published after every batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectionStatus {
    pub position: Position,
    pub state: ProjectionState,
    pub last_error: Option<String>,
    /// When the last applied event was recorded in the log (ms since the epoch), used to
    /// express lag in time.
    pub last_event_at_ms: Option<i64>,
    /// Failed attempts at the current batch.
    pub attempts: u32,
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

/// A read-only view of one projection's progress, for queries and operations.
#[derive(Debug, Clone)]
pub struct ProjectionHandle {
    name: &'static str,
    status: watch::Receiver<ProjectionStatus>,
}

impl ProjectionHandle {
    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn status(&self) -> ProjectionStatus {
        self.status.borrow().clone()
    }

    /// Waits until the projection has applied `position`, for at most `timeout`; returns
    /// whether it got there.
    pub async fn wait_for(&self, position: Position, timeout: Duration) -> bool {
        let mut rx = self.status.clone();
        matches!(
            tokio::time::timeout(timeout, rx.wait_for(|s| s.position >= position)).await,
            Ok(Ok(_))
        )
    }
}

/// Feeds one projection from the log: catch up from its checkpoint, then follow live.
pub struct ProjectionRunner {
    log: Arc<dyn EventLog>,
    projection: Arc<dyn Projection>,
    status: watch::Sender<ProjectionStatus>,
    batch_size: usize,
    retry: RetryPolicy,
}

impl std::fmt::Debug for ProjectionRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProjectionRunner")
            .field("projection", &self.projection.name())
            .finish()
    }
}

impl ProjectionRunner {
    pub fn new(log: Arc<dyn EventLog>, projection: Arc<dyn Projection>) -> Self {
        let (status, _) = watch::channel(ProjectionStatus {
            position: Position::ZERO,
            state: ProjectionState::Starting,
            last_error: None,
            last_event_at_ms: None,
            attempts: 0,
        });
        Self {
            log,
            projection,
            status,
            batch_size: 500,
            retry: RetryPolicy::default(),
        }
    }

    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    pub fn handle(&self) -> ProjectionHandle {
        ProjectionHandle {
            name: self.projection.name(),
            status: self.status.subscribe(),
        }
    }

    /// Runs until `shutdown` resolves. A batch in progress is finished, never abandoned
    /// half-way; failures are retried with backoff and reported in the status.
    #[tracing::instrument(name = "projection", skip_all, fields(projection = self.projection.name()))]
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) {
        tokio::pin!(shutdown);
        let Some(start) = self
            .retrying(|| self.projection.checkpoint(), &mut shutdown)
            .await
        else {
            return self.stopped();
        };
        self.status.send_modify(|s| {
            s.position = start;
            s.state = ProjectionState::Running;
        });
        tracing::info!(position = %start, "projection started");
        let mut subscription = Subscription::new(self.log.clone(), start);
        loop {
            let batch = tokio::select! {
                batch = subscription.next_batch(self.batch_size) => batch,
                () = &mut shutdown => break,
            };
            let batch = match batch {
                Ok(batch) => batch,
                Err(error) => {
                    self.report_failure(&error.into());
                    tokio::select! {
                        () = tokio::time::sleep(self.retry.delay(self.status.borrow().attempts)) => continue,
                        () = &mut shutdown => break,
                    }
                }
            };
            let Some(last) = batch.last() else { continue };
            let (position, recorded_at) = (last.position, last.recorded_at_ms);
            // An attempt in progress is finished even when shutdown is requested meanwhile;
            // only the wait before a retry gives way to it.
            if self
                .retrying(|| self.projection.apply(&batch), &mut shutdown)
                .await
                .is_none()
            {
                break;
            }
            self.status.send_modify(|s| {
                s.position = position;
                s.last_event_at_ms = Some(recorded_at);
                s.state = ProjectionState::Running;
                s.attempts = 0;
            });
        }
        self.stopped();
    }

    /// Repeats `op` until it succeeds, reporting each failure; `None` when shutdown came
    /// first.
    async fn retrying<T, F, Fut, S>(&self, op: F, shutdown: &mut S) -> Option<T>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, ProjectionError>>,
        S: Future<Output = ()> + Unpin,
    {
        loop {
            match op().await {
                Ok(value) => return Some(value),
                Err(error) => {
                    self.report_failure(&error);
                    let delay = self.retry.delay(self.status.borrow().attempts);
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = &mut *shutdown => return None,
                    }
                }
            }
        }
    }

    fn report_failure(&self, error: &ProjectionError) {
        tracing::warn!(%error, "projection batch failed; retrying");
        self.status.send_modify(|s| {
            s.state = ProjectionState::Retrying;
            s.last_error = Some(error.to_string());
            s.attempts = s.attempts.saturating_add(1);
        });
    }

    fn stopped(&self) {
        self.status
            .send_modify(|s| s.state = ProjectionState::Stopped);
        tracing::info!(position = %self.status.borrow().position, "projection stopped");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, Ordering};

    use tokio::sync::Semaphore;

    use super::*;
    use crate::memory::MemoryEventLog;
    use crate::{ExpectedVersion, contract};

    /// Applies only when the test lets it, and fails the first `failures` attempts.
    struct Gated {
        gate: Semaphore,
        failures: AtomicU32,
        applied: Mutex<Vec<Position>>,
    }

    #[async_trait]
    impl Projection for Gated {
        fn name(&self) -> &'static str {
            "gated"
        }

        async fn checkpoint(&self) -> Result<Position, ProjectionError> {
            Ok(self
                .applied
                .lock()
                .unwrap()
                .last()
                .copied()
                .unwrap_or_default())
        }

        async fn apply(&self, batch: &[RecordedEvent]) -> Result<(), ProjectionError> {
            self.gate.acquire().await.unwrap().forget();
            if self.failures.load(Ordering::SeqCst) > 0 {
                self.failures.fetch_sub(1, Ordering::SeqCst);
                return Err(ProjectionError::Store("store is down".into()));
            }
            self.applied
                .lock()
                .unwrap()
                .extend(batch.iter().map(|e| e.position));
            Ok(())
        }
    }

    fn fast_retries() -> RetryPolicy {
        RetryPolicy {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(5),
        }
    }

    #[tokio::test]
    async fn a_query_waiting_for_a_position_is_told_when_the_projection_is_behind() {
        let log = Arc::new(MemoryEventLog::default());
        let position = log
            .append("s", ExpectedVersion::Any, vec![contract::event("e")])
            .await
            .unwrap();
        let projection = Arc::new(Gated {
            gate: Semaphore::new(0),
            failures: AtomicU32::new(0),
            applied: Mutex::default(),
        });
        let runner = ProjectionRunner::new(log.clone(), projection.clone());
        let handle = runner.handle();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(runner.run(async {
            let _ = stopped.await;
        }));

        assert!(
            !handle.wait_for(position, Duration::from_millis(50)).await,
            "the batch is held back"
        );
        projection.gate.add_permits(1);
        assert!(handle.wait_for(position, Duration::from_secs(5)).await);
        assert_eq!(*projection.applied.lock().unwrap(), [position]);
        let _ = stop.send(());
        task.await.unwrap();
        assert_eq!(handle.status().state, ProjectionState::Stopped);
    }

    #[tokio::test]
    async fn a_failing_batch_is_retried_and_reported_until_it_applies() {
        let log = Arc::new(MemoryEventLog::default());
        log.append(
            "s",
            ExpectedVersion::Any,
            vec![contract::event("a"), contract::event("b")],
        )
        .await
        .unwrap();
        let projection = Arc::new(Gated {
            gate: Semaphore::new(0),
            failures: AtomicU32::new(3),
            applied: Mutex::default(),
        });
        let runner =
            ProjectionRunner::new(log.clone(), projection.clone()).with_retry(fast_retries());
        let handle = runner.handle();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(runner.run(async {
            let _ = stopped.await;
        }));

        projection.gate.add_permits(1);
        let mut status = handle.status.clone();
        status
            .wait_for(|s| s.state == ProjectionState::Retrying)
            .await
            .unwrap();
        assert_eq!(
            handle.status().last_error.as_deref(),
            Some("read store unavailable: store is down")
        );
        projection.gate.add_permits(3);
        assert!(
            handle
                .wait_for(Position::new(2), Duration::from_secs(5))
                .await
        );
        assert_eq!(
            *projection.applied.lock().unwrap(),
            [Position::new(1), Position::new(2)],
            "applied once, in order"
        );
        assert_eq!(handle.status().state, ProjectionState::Running);
        let _ = stop.send(());
        task.await.unwrap();
    }
}
