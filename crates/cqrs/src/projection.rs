use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use tokio::sync::watch;

use crate::{EventLog, Leases, LocalLeases, LogError, Position, RecordedEvent, subscribe};

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

    /// Applies `batch` (events of `partition` after `expected`, in order) if the stored
    /// checkpoint is `expected`; otherwise fails with [`ProjectionError::Moved`].
    async fn apply(
        &self,
        partition: u32,
        expected: Position,
        batch: &[RecordedEvent],
    ) -> Result<(), ProjectionError>;
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

/// Feeds one projection from the log: for every partition this process holds a lease on,
/// catch up from the stored checkpoint, then follow live.
pub struct ProjectionRunner {
    log: Arc<dyn EventLog>,
    projection: Arc<dyn Projection>,
    leases: Arc<dyn Leases>,
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

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// How often an idle worker looks at its lease and its share of the work.
const RECHECK: Duration = Duration::from_secs(1);

/// How long a worker without a lease waits before asking again.
const LEASE_POLL: Duration = Duration::from_millis(500);

impl ProjectionRunner {
    pub fn new(log: Arc<dyn EventLog>, projection: Arc<dyn Projection>) -> Self {
        let (status, _) = watch::channel(ProjectionStatus {
            partitions: vec![None; log.partitions() as usize],
            state: ProjectionState::Starting,
            last_error: None,
            last_event_at_ms: None,
            attempts: 0,
            progressed_at_ms: now_ms(),
        });
        Self {
            log,
            projection,
            leases: Arc::new(LocalLeases),
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

    /// Shares partitions with other processes through `leases`.
    pub fn with_leases(mut self, leases: Arc<dyn Leases>) -> Self {
        self.leases = leases;
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
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let this = Arc::new(self);
        let mut workers = tokio::task::JoinSet::new();
        for partition in 0..this.log.partitions() {
            let (this, mut stop) = (this.clone(), stop_rx.clone());
            workers.spawn(async move {
                let stopped = async move {
                    let _ = stop.wait_for(|s| *s).await;
                };
                this.work_on(partition, stopped).await;
            });
        }
        this.status.send_modify(|s| {
            if s.state == ProjectionState::Starting && this.log.partitions() > 1 {
                s.state = ProjectionState::Running;
            }
        });
        shutdown.await;
        let _ = stop_tx.send(true);
        while workers.join_next().await.is_some() {}
        this.status
            .send_modify(|s| s.state = ProjectionState::Stopped);
        tracing::info!(position = %this.status.borrow().position(), "projection stopped");
    }

    /// One partition: wait for its lease, then follow it while the lease holds.
    async fn work_on(&self, partition: u32, shutdown: impl Future<Output = ()> + Send) {
        tokio::pin!(shutdown);
        loop {
            let lease = match self.lease(partition).await {
                Ok(lease) => lease,
                Err(error) => {
                    self.report_failure(&error);
                    None
                }
            };
            if let Some(lease) = lease {
                tracing::debug!(partition, "lease acquired");
                if self
                    .follow(partition, lease.as_ref(), &mut shutdown)
                    .await
                    .is_break()
                {
                    break;
                }
                self.status
                    .send_modify(|s| s.partitions[partition as usize] = None);
                continue;
            }
            tokio::select! {
                () = tokio::time::sleep(LEASE_POLL) => {}
                () = &mut shutdown => break,
            }
        }
    }

    /// A lease on `partition`, unless this process already holds its fair share.
    async fn lease(
        &self,
        partition: u32,
    ) -> Result<Option<Box<dyn crate::Lease>>, ProjectionError> {
        let name = self.projection.name();
        let held = self.status.borrow().partitions.iter().flatten().count() as u32;
        if held >= self.leases.fair_share(name, self.log.partitions()).await? {
            return Ok(None);
        }
        self.leases.try_acquire(name, partition).await
    }

    /// Applies `partition` from its checkpoint on; `Break` when shutdown came, `Continue`
    /// when the lease was lost or given up and should be sought again.
    async fn follow<S>(
        &self,
        partition: u32,
        lease: &dyn crate::Lease,
        shutdown: &mut S,
    ) -> std::ops::ControlFlow<()>
    where
        S: Future<Output = ()> + Unpin,
    {
        use std::ops::ControlFlow::{Break, Continue};
        let name = self.projection.name();
        'resume: loop {
            let Some(mut checkpoint) = self
                .retrying(|| self.projection.checkpoint(partition), shutdown)
                .await
            else {
                return Break(());
            };
            self.status.send_modify(|s| {
                s.partitions[partition as usize] = Some(checkpoint);
                s.state = ProjectionState::Running;
            });
            tracing::info!(partition, position = %checkpoint, "projection following the log");
            let mut source = match subscribe(&self.log, name, partition, checkpoint).await {
                Ok(source) => source,
                Err(error) => {
                    self.report_failure(&error.into());
                    if self.pause(shutdown).await.is_break() {
                        return Break(());
                    }
                    continue 'resume;
                }
            };
            loop {
                if !lease.is_held() {
                    tracing::warn!(partition, "lease lost; stopping work on the partition");
                    return Continue(());
                }
                let share = self
                    .leases
                    .fair_share(name, self.log.partitions())
                    .await
                    .unwrap_or(u32::MAX);
                let held = self.status.borrow().partitions.iter().flatten().count() as u32;
                let highest = self
                    .status
                    .borrow()
                    .partitions
                    .iter()
                    .rposition(Option::is_some);
                if held > share && highest == Some(partition as usize) {
                    tracing::info!(
                        partition,
                        held,
                        share,
                        "giving the partition up to share the work"
                    );
                    return Continue(());
                }
                // Wake up now and then even when idle, to notice a lost lease or a new
                // process to share the work with.
                let batch = tokio::select! {
                    batch = tokio::time::timeout(RECHECK, source.next_batch(self.batch_size)) => match batch {
                        Ok(batch) => batch,
                        Err(_idle) => {
                            // Idle while the partition has events past the checkpoint: the
                            // reader lost its way (a broker restart, say); open a new one.
                            if self.log.partition_head(partition).await.is_ok_and(|head| head > checkpoint) {
                                tracing::info!(partition, "reader idle behind the log; reopening it");
                                continue 'resume;
                            }
                            continue;
                        }
                    },
                    () = &mut *shutdown => return Break(()),
                };
                let batch = match batch {
                    Ok(batch) => batch,
                    Err(error) => {
                        self.report_failure(&error.into());
                        if self.pause(shutdown).await.is_break() {
                            return Break(());
                        }
                        continue 'resume;
                    }
                };
                let Some(last) = batch.last() else { continue };
                let (position, recorded_at) = (last.position, last.recorded_at_ms);
                // An attempt in progress is finished even when shutdown is requested
                // meanwhile; only the wait before a retry gives way to it.
                match self.projection.apply(partition, checkpoint, &batch).await {
                    Ok(()) => {
                        checkpoint = position;
                        if let Err(error) = source.committed().await {
                            // The store holds the progress; the broker only hears of it.
                            tracing::debug!(partition, %error, "could not acknowledge to the log");
                        }
                        self.status.send_modify(|s| {
                            s.partitions[partition as usize] = Some(position);
                            s.progressed_at_ms = now_ms();
                            s.last_event_at_ms = s.last_event_at_ms.max(Some(recorded_at));
                            s.state = ProjectionState::Running;
                            s.attempts = 0;
                        });
                    }
                    Err(ProjectionError::Moved { actual, .. }) => {
                        tracing::info!(partition, %actual, "another worker moved the checkpoint; resuming from it");
                        continue 'resume;
                    }
                    Err(error) => {
                        self.report_failure(&error);
                        if self.pause(shutdown).await.is_break() {
                            return Break(());
                        }
                        continue 'resume;
                    }
                }
            }
        }
    }

    /// Waits out the backoff for the current attempt; `Break` when shutdown came first.
    async fn pause<S: Future<Output = ()> + Unpin>(
        &self,
        shutdown: &mut S,
    ) -> std::ops::ControlFlow<()> {
        let delay = self.retry.delay(self.status.borrow().attempts);
        tokio::select! {
            () = tokio::time::sleep(delay) => std::ops::ControlFlow::Continue(()),
            () = &mut *shutdown => std::ops::ControlFlow::Break(()),
        }
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
                    if self.pause(shutdown).await.is_break() {
                        return None;
                    }
                }
            }
        }
    }

    fn report_failure(&self, error: &ProjectionError) {
        tracing::warn!(%error, "projection failed; retrying");
        self.status.send_modify(|s| {
            s.state = ProjectionState::Retrying;
            s.last_error = Some(error.to_string());
            s.attempts = s.attempts.saturating_add(1);
        });
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
    #[derive(Debug)]
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

        async fn checkpoint(&self, _: u32) -> Result<Position, ProjectionError> {
            Ok(self
                .applied
                .lock()
                .unwrap()
                .last()
                .copied()
                .unwrap_or_default())
        }

        async fn apply(
            &self,
            _: u32,
            expected: Position,
            batch: &[RecordedEvent],
        ) -> Result<(), ProjectionError> {
            self.gate.acquire().await.unwrap().forget();
            let actual = self
                .applied
                .lock()
                .unwrap()
                .last()
                .copied()
                .unwrap_or_default();
            if actual != expected {
                return Err(ProjectionError::Moved { expected, actual });
            }
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

    #[test]
    fn a_projection_is_stalled_only_when_behind_without_progress() {
        let status = ProjectionStatus {
            partitions: vec![Some(Position::new(5))],
            state: ProjectionState::Retrying,
            last_error: Some("store is down".into()),
            last_event_at_ms: None,
            attempts: 9,
            progressed_at_ms: 1_000,
        };
        let after = Duration::from_secs(30);
        assert!(status.stalled(true, 1_000 + 30_001, after));
        assert!(
            !status.stalled(true, 1_000 + 29_000, after),
            "not for long enough"
        );
        assert!(
            !status.stalled(false, 1_000 + 90_000, after),
            "caught up is never stalled"
        );
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
            !handle
                .wait_for(0, position, Duration::from_millis(50))
                .await,
            "the batch is held back"
        );
        projection.gate.add_permits(1);
        assert!(handle.wait_for(0, position, Duration::from_secs(5)).await);
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
                .wait_for(0, Position::new(2), Duration::from_secs(5))
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
