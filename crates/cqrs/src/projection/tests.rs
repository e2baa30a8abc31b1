//! The runner against the in-memory log and a projection the tests hold back or fail.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::sync::Semaphore;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::*;
use crate::memory::MemoryEventLog;
use crate::{EventLog, ProjectionRunner};
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

    async fn apply_batch(
        &self,
        progress: Progress,
        batch: &[RecordedEvent],
    ) -> Result<(), ProjectionError> {
        let Progress::Advance { expected, .. } = progress else {
            unreachable!("no re-drives here")
        };
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
    let runner = ProjectionRunner::new(log.clone(), projection.clone()).with_retry(fast_retries());
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
