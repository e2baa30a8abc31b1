//! Events in, rows out.

use std::sync::Arc;

use santa_cqrs::memory::MemoryEventLog;
use santa_cqrs::{EventLog, Position, Projection};
use santa_domain::{CancelLetter, LetterId};

use super::*;
use crate::CommandService;
use crate::kv::MemoryKvStore;

struct Fixture {
    log: Arc<MemoryEventLog>,
    commands: CommandService,
    store: Arc<MemoryKvStore>,
    projection: LettersProjection,
    queries: LettersQueries,
}

fn fixture() -> Fixture {
    let log = Arc::new(MemoryEventLog::default());
    let store = Arc::new(MemoryKvStore::default());
    Fixture {
        commands: CommandService::new(log.clone()),
        projection: LettersProjection::new(store.clone()),
        queries: LettersQueries::new(store.clone()),
        log,
        store,
    }
}

impl Fixture {
    /// Feeds every event after `after` to the projection as one batch.
    async fn project(&self, after: Position) {
        let batch = self.log.read_all(after, 10_000).await.unwrap();
        self.projection.apply(0, after, &batch).await.unwrap();
    }
}

/// The demo data with Alan's letter cancelled, all projected as one batch.
async fn seeded_with_alans_letter_cancelled() -> Fixture {
    let f = fixture();
    crate::seed::seed(&f.commands).await.unwrap();
    f.commands
        .cancel_letter(CancelLetter {
            id: LetterId::parse("demo-alan").unwrap(),
        })
        .await
        .unwrap();
    f.project(Position::ZERO).await;
    f
}

#[tokio::test]
async fn submitted_letters_become_a_letter_item_index_lines_and_toy_demand() {
    let f = fixture();
    crate::seed::seed(&f.commands).await.unwrap();
    f.project(Position::ZERO).await;

    let ada = f
        .queries
        .letter("demo-ada")
        .await
        .unwrap()
        .expect("letter projected");
    assert_eq!(ada.status, LetterStatus::Submitted);
    assert_eq!(ada.total_cents, 12900 + 2 * 1299);
    assert_eq!(ada.lines.len(), 2);

    let (cube, letters) = f
        .queries
        .toy_letters("rubiks-cube", None, 10)
        .await
        .unwrap()
        .expect("toy projected");
    assert_eq!((cube.requested_quantity, cube.letter_count), (3, 2));
    let ids: Vec<_> = letters.items.iter().map(|l| l.letter_id.as_str()).collect();
    assert_eq!(ids, ["demo-ada", "demo-alan"]);
    assert_eq!(
        letters
            .items
            .iter()
            .map(|l| u64::from(l.quantity))
            .sum::<u64>(),
        cube.requested_quantity
    );
}

#[tokio::test]
async fn a_cancelled_letter_leaves_the_index_and_the_demand_counters() {
    let f = fixture();
    crate::seed::seed(&f.commands).await.unwrap();
    f.project(Position::ZERO).await;
    let before = f.log.head().await.unwrap();
    f.commands
        .cancel_letter(CancelLetter {
            id: LetterId::parse("demo-ada").unwrap(),
        })
        .await
        .unwrap();
    f.project(before).await;

    let ada = f.queries.letter("demo-ada").await.unwrap().unwrap();
    assert_eq!(ada.status, LetterStatus::Cancelled);
    assert!(ada.cancelled_at_ms.is_some());
    let (cube, letters) = f
        .queries
        .toy_letters("rubiks-cube", None, 10)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((cube.requested_quantity, cube.letter_count), (1, 1));
    assert_eq!(letters.items.len(), 1);
    let telescope = f.queries.toy("telescope").await.unwrap().unwrap();
    assert_eq!(
        (telescope.requested_quantity, telescope.letter_count),
        (1, 1)
    );
}

#[tokio::test]
async fn replaying_the_same_batch_twice_changes_nothing() {
    let f = seeded_with_alans_letter_cancelled().await;
    let once = f.store.items();
    let head = f.log.head().await.unwrap();
    let batch = f.log.read_all(Position::ZERO, 10_000).await.unwrap();
    // A worker with a stale view is refused; a redelivery at the current checkpoint is a no-op.
    let stale = f.projection.apply(0, Position::ZERO, &batch).await;
    assert!(
        matches!(stale, Err(santa_cqrs::ProjectionError::Moved { actual, .. }) if actual == head),
        "{stale:?}"
    );
    f.projection.apply(0, head, &batch).await.unwrap();
    assert_eq!(f.store.items(), once);
    assert_eq!(
        f.projection.checkpoint(0).await.unwrap(),
        f.log.head().await.unwrap()
    );
}

#[tokio::test]
async fn letters_are_listed_a_page_at_a_time() {
    let f = fixture();
    crate::seed::seed(&f.commands).await.unwrap();
    f.project(Position::ZERO).await;
    let first = f.queries.letters(None, 3).await.unwrap();
    assert_eq!(first.items.len(), 3);
    let second = f.queries.letters(first.next.as_deref(), 3).await.unwrap();
    assert_eq!(second.items.len(), 2);
    assert_eq!(second.next, None);
    let mut all: Vec<_> = first
        .items
        .iter()
        .chain(&second.items)
        .map(|l| l.id.clone())
        .collect();
    all.dedup();
    assert_eq!(all.len(), 5);
}

#[tokio::test]
async fn the_reference_store_keeps_the_checkpoint_contract() {
    let store = Arc::new(MemoryKvStore::default());
    crate::contract::checkpoints_are_compare_and_set_per_partition(Arc::new(
        LettersProjection::new(store),
    ))
    .await;
}

#[tokio::test]
async fn a_batch_leaves_the_same_table_as_its_events_one_at_a_time() {
    // Demand is summed per toy over a batch: toys named and asked for, a letter submitted
    // and cancelled within one batch, must come out as if each event had been applied alone.
    let f = seeded_with_alans_letter_cancelled().await;

    let single = Arc::new(MemoryKvStore::default());
    let projection = LettersProjection::new(single.clone());
    let events = f.log.read_all(Position::ZERO, 10_000).await.unwrap();
    let mut checkpoint = Position::ZERO;
    for event in &events {
        projection
            .apply(0, checkpoint, std::slice::from_ref(event))
            .await
            .unwrap();
        checkpoint = event.position;
    }
    assert!(events.len() > 10, "{} events", events.len());
    assert_eq!(single.items(), f.store.items());
    let cube = f.queries.toy("rubiks-cube").await.unwrap().unwrap();
    assert_eq!((cube.requested_quantity, cube.letter_count), (2, 1));
}
