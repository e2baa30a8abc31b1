//! The behaviour every projection store must show, as reusable checks: each storage
//! adapter's tests run them against its real engine. A panic is how they report a
//! broken contract.
#![allow(
    clippy::unwrap_used,
    reason = "contract checks are test support: a panic is the failure report"
)]

use std::sync::Arc;

use santa_cqrs::memory::MemoryEventLog;
use santa_cqrs::{EventLog, Position, Projection, ProjectionError, RecordedEvent};
use santa_domain::{CancelLetter, LetterId};

use crate::CommandService;

/// The demo catalogue and letters plus one cancellation, as recorded by a log.
pub async fn demo_events() -> Vec<RecordedEvent> {
    let log = Arc::new(MemoryEventLog::default());
    let commands = CommandService::new(log.clone());
    crate::seed::seed(&commands).await.unwrap();
    commands
        .cancel_letter(CancelLetter {
            id: LetterId::parse("demo-linus").unwrap(),
        })
        .await
        .unwrap();
    log.read_all(Position::ZERO, 10_000).await.unwrap()
}

/// Checkpoints: per partition, moved only by a batch that starts where the store is
/// (compare-and-set), and a redelivered batch has no second effect.
pub async fn checkpoints_are_compare_and_set_per_partition(projection: Arc<dyn Projection>) {
    let batch = demo_events().await;
    let last = batch.last().unwrap().position;
    let (first, rest) = batch.split_at(batch.len() / 2);
    assert_eq!(
        projection.checkpoint(1).await.unwrap(),
        Position::ZERO,
        "a new store starts at zero"
    );
    projection.apply(1, Position::ZERO, first).await.unwrap();
    let middle = first.last().unwrap().position;
    assert_eq!(projection.checkpoint(1).await.unwrap(), middle);
    let stale = projection.apply(1, Position::ZERO, rest).await;
    assert!(
        matches!(stale, Err(ProjectionError::Moved { expected, actual }) if expected == Position::ZERO && actual == middle),
        "a worker with a stale checkpoint is refused: {stale:?}"
    );
    projection.apply(1, middle, rest).await.unwrap();
    assert_eq!(projection.checkpoint(1).await.unwrap(), last);
    // A redelivery of everything at the current checkpoint changes nothing.
    projection.apply(1, last, &batch).await.unwrap();
    assert_eq!(projection.checkpoint(1).await.unwrap(), last);
    assert_eq!(
        projection.checkpoint(2).await.unwrap(),
        Position::ZERO,
        "partitions are independent"
    );
}
