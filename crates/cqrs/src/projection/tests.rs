//! The runner against the in-memory log and a projection the tests hold back or fail.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::sync::Semaphore;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::*;
use crate::memory::MemoryEventLog;
use crate::{DeadLetters, EventLog, ProjectionRunner};
use crate::{ExpectedVersion, contract};

/// Applies only when the test lets it, and fails the first `failures` attempts.
#[derive(Debug)]
struct Gated {
    gate: Semaphore,
    failures: AtomicU32,
    applied: Mutex<Vec<Position>>,
}

/// A runner working in the background until [`Running::stop`].
struct Running {
    handle: ProjectionHandle,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

fn start(runner: ProjectionRunner) -> Running {
    let handle = runner.handle();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(runner.run(async {
        let _ = stopped.await;
    }));
    Running { handle, stop, task }
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap();
    }
}

/// The newest position a test projection applied.
fn last_applied(applied: &Mutex<Vec<Position>>) -> Position {
    applied.lock().unwrap().last().copied().unwrap_or_default()
}

#[async_trait]
impl Projection for Gated {
    fn name(&self) -> &'static str {
        "gated"
    }

    async fn checkpoint(&self, _: u32) -> Result<Position, ProjectionError> {
        Ok(last_applied(&self.applied))
    }

    async fn apply_prepared(
        &self,
        progress: Progress,
        batch: Prepared,
    ) -> Result<(), ProjectionError> {
        let batch: Vec<RecordedEvent> = batch.take()?;
        let Progress::Advance { expected, .. } = progress else {
            unreachable!("no re-drives here")
        };
        self.gate.acquire().await.unwrap().forget();
        let actual = last_applied(&self.applied);
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
    let running = start(runner);
    let handle = running.handle.clone();

    assert!(
        !handle
            .wait_for(0, position, Duration::from_millis(50))
            .await,
        "the batch is held back"
    );
    projection.gate.add_permits(1);
    assert!(handle.wait_for(0, position, Duration::from_secs(5)).await);
    assert_eq!(*projection.applied.lock().unwrap(), [position]);
    running.stop().await;
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
    let runner = ProjectionRunner::new(log.clone(), projection.clone()).with_retry(fast_retries());
    let running = start(runner);
    let handle = running.handle.clone();

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
    running.stop().await;
}

/// Applies events by recording them; events of a `poisoned` stream fail until cured.
#[derive(Debug, Default)]
struct Poisoned {
    poisoned: Mutex<Option<String>>,
    applied: Mutex<Vec<Position>>,
    checkpoint: Mutex<Position>,
}

#[async_trait]
impl Projection for Poisoned {
    fn name(&self) -> &'static str {
        "poisoned"
    }

    async fn checkpoint(&self, _: u32) -> Result<Position, ProjectionError> {
        Ok(*self.checkpoint.lock().unwrap())
    }

    async fn apply_prepared(
        &self,
        progress: Progress,
        batch: Prepared,
    ) -> Result<(), ProjectionError> {
        let events: Vec<RecordedEvent> = batch.take()?;
        let poisoned = self.poisoned.lock().unwrap().clone();
        if let Some(bad) = events.iter().find(|e| Some(&e.stream) == poisoned.as_ref()) {
            return Err(ProjectionError::Event {
                position: bad.position,
                reason: "cannot apply".into(),
            });
        }
        if let Progress::Advance { expected, upto, .. } = progress {
            let mut checkpoint = self.checkpoint.lock().unwrap();
            if *checkpoint != expected {
                return Err(ProjectionError::Moved {
                    expected,
                    actual: *checkpoint,
                });
            }
            *checkpoint = upto;
        }
        self.applied
            .lock()
            .unwrap()
            .extend(events.iter().map(|e| e.position));
        Ok(())
    }
}

#[tokio::test]
async fn a_poison_event_is_parked_its_stream_waits_and_a_redrive_releases_both() {
    // In one batch, and in batches small enough that each is read (and prepared) while the
    // one before it is applied.
    for batch_size in [500, 1, 2] {
        poison_is_parked_and_released(batch_size).await;
    }
}

async fn poison_is_parked_and_released(batch_size: usize) {
    let log = Arc::new(MemoryEventLog::default());
    for (stream, body) in [
        ("a", "1"),
        ("b", "poison"),
        ("a", "2"),
        ("b", "after"),
        ("c", "3"),
    ] {
        log.append(stream, ExpectedVersion::Any, vec![contract::event(body)])
            .await
            .unwrap();
    }
    let projection = Arc::new(Poisoned {
        poisoned: Mutex::new(Some("b".into())),
        ..Poisoned::default()
    });
    let dead = Arc::new(crate::MemoryDeadLetters::default());
    let runner = ProjectionRunner::new(log.clone(), projection.clone())
        .with_retry(fast_retries())
        .with_batch_size(batch_size)
        .with_dead_letters(dead.clone(), 3);
    let running = start(runner);
    let handle = running.handle.clone();

    // The projection goes on past the poison: every other stream is applied.
    assert!(
        handle
            .wait_for(0, Position::new(5), Duration::from_secs(10))
            .await
    );
    assert_eq!(
        *projection.applied.lock().unwrap(),
        [Position::new(1), Position::new(3), Position::new(5)]
    );
    let parked = dead.list(Some("poisoned")).await.unwrap();
    let summary: Vec<_> = parked
        .iter()
        .map(|l| (l.position.get(), l.attempts, l.behind.map(Position::get)))
        .collect();
    assert_eq!(
        summary,
        [(2, 3, None), (4, 0, Some(2))],
        "the poison after 3 attempts, then the event behind it"
    );
    assert!(parked[0].error.contains("cannot apply"));

    // A re-drive before the cause is fixed changes nothing but the attempt count.
    let dyn_log: Arc<dyn EventLog> = log.clone();
    let again = crate::redrive(&dyn_log, projection.as_ref(), dead.as_ref(), None)
        .await
        .unwrap();
    assert_eq!((again.applied, again.parked), (0, 2));
    assert_eq!(dead.list(None).await.unwrap()[0].attempts, 4);

    // Fixed: one re-drive releases the poison and what waited behind it, in order.
    *projection.poisoned.lock().unwrap() = None;
    let released = crate::redrive(
        &dyn_log,
        projection.as_ref(),
        dead.as_ref(),
        Some(Position::new(2)),
    )
    .await
    .unwrap();
    assert_eq!((released.applied, released.parked), (2, 0));
    assert!(dead.list(None).await.unwrap().is_empty());
    assert_eq!(
        projection.applied.lock().unwrap()[3..],
        [Position::new(2), Position::new(4)]
    );

    // New events of the released stream are applied again, not parked.
    let next = log
        .append("b", ExpectedVersion::Any, vec![contract::event("later")])
        .await
        .unwrap();
    assert!(handle.wait_for(0, next, Duration::from_secs(10)).await);
    assert_eq!(projection.applied.lock().unwrap().last(), Some(&next));
    assert!(dead.list(None).await.unwrap().is_empty());
    running.stop().await;
}

/// Records what the runner asks of it. Applying a batch waits (up to a limit) until the
/// batch after it has been prepared, which only a runner that prepares ahead does.
#[derive(Debug)]
struct Pipelined {
    /// The newest position prepared so far.
    prepared: tokio::sync::watch::Sender<Position>,
    /// The end of the log: the batch ending there has no next one to wait for.
    end: Position,
    applied: Mutex<Vec<Position>>,
    /// Batches whose next one was prepared while they were being applied.
    overlapped: AtomicU32,
}

#[async_trait]
impl Projection for Pipelined {
    fn name(&self) -> &'static str {
        "pipelined"
    }

    async fn checkpoint(&self, _: u32) -> Result<Position, ProjectionError> {
        Ok(last_applied(&self.applied))
    }

    fn prepare(&self, events: &[RecordedEvent]) -> Result<Prepared, ProjectionError> {
        let positions: Vec<Position> = events.iter().map(|e| e.position).collect();
        if let Some(&last) = positions.last() {
            self.prepared.send_modify(|p| *p = (*p).max(last));
        }
        Ok(Prepared::new(positions.len(), positions))
    }

    async fn apply_prepared(
        &self,
        progress: Progress,
        batch: Prepared,
    ) -> Result<(), ProjectionError> {
        let positions: Vec<Position> = batch.take()?;
        let last = *positions.last().unwrap();
        if last < self.end {
            let mut prepared = self.prepared.subscribe();
            let next = prepared.wait_for(|p| *p > last);
            if tokio::time::timeout(Duration::from_secs(5), next)
                .await
                .is_ok()
            {
                self.overlapped.fetch_add(1, Ordering::SeqCst);
            }
        }
        let Progress::Advance { expected, .. } = progress else {
            unreachable!("no re-drives here")
        };
        let actual = last_applied(&self.applied);
        if actual != expected {
            return Err(ProjectionError::Moved { expected, actual });
        }
        self.applied.lock().unwrap().extend(positions);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catching_up_the_next_batch_is_prepared_while_one_is_applied() {
    let log = Arc::new(MemoryEventLog::default());
    for n in 0..6 {
        log.append(
            "s",
            ExpectedVersion::Any,
            vec![contract::event(&n.to_string())],
        )
        .await
        .unwrap();
    }
    let projection = Arc::new(Pipelined {
        prepared: tokio::sync::watch::Sender::new(Position::ZERO),
        end: Position::new(6),
        applied: Mutex::default(),
        overlapped: AtomicU32::new(0),
    });
    let runner = ProjectionRunner::new(log.clone(), projection.clone()).with_batch_size(2);
    let running = start(runner);
    let handle = running.handle.clone();

    // The last batch is full too: the read after it finds nothing, and must not hold its
    // progress back.
    assert!(
        handle
            .wait_for(0, Position::new(6), Duration::from_secs(20))
            .await
    );
    assert_eq!(
        *projection.applied.lock().unwrap(),
        (1..=6).map(Position::new).collect::<Vec<_>>(),
        "every event once, in order"
    );
    assert_eq!(
        projection.overlapped.load(Ordering::SeqCst),
        2,
        "batches 1-2 and 3-4 were applied while the next one was prepared"
    );
    // The read dropped when the last batch was applied loses nothing.
    let next = log
        .append("s", ExpectedVersion::Any, vec![contract::event("7")])
        .await
        .unwrap();
    assert!(handle.wait_for(0, next, Duration::from_secs(10)).await);
    assert_eq!(projection.applied.lock().unwrap().last(), Some(&next));
    running.stop().await;
}
