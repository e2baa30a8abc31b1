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
use crate::analytics::{AnalyticsProjection, AnalyticsStore};
use crate::kv::{KvStore, MemoryKvStore};
use crate::letters::{LettersProjection, LettersQueries};

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

/// Submits a one-line letter for a teddy bear (the demo toy) through `commands`.
pub async fn submit_teddy_letter(commands: &CommandService, id: &str) -> crate::Accepted {
    use santa_domain::{Address, ChildName, Country, Quantity, SubmitLetter, ToyId};
    let cmd = SubmitLetter::new(
        LetterId::parse(id).unwrap(),
        ChildName::parse("Ada").unwrap(),
        Address::parse("1 Snow Lane").unwrap(),
        Some(Country::parse("NO").unwrap()),
        vec![(
            ToyId::parse("teddy-bear").unwrap(),
            Quantity::parse(1).unwrap(),
        )],
    )
    .unwrap();
    commands.submit_letter(cmd).await.unwrap()
}

/// Rebuilds: both projections are replayed from `log` into fresh tables while the live
/// ones keep working and letters keep arriving, then switched to; what the live tables
/// held beyond the log is gone, nothing of the log is missing, and the live projections
/// go on from the rebuilt checkpoints. A second rebuild of a projection is refused while
/// one is under way.
pub async fn rebuilds_replay_the_log_and_switch(
    log: Arc<dyn EventLog>,
    kv: Arc<dyn KvStore>,
    analytics: Arc<dyn AnalyticsStore>,
) {
    use santa_cqrs::{Progress, ProjectionRunner, RebuildState, Rebuilder};
    use std::time::Duration;

    let commands = CommandService::new(log.clone());
    crate::seed::seed(&commands).await.unwrap();
    let live: [Arc<dyn Projection>; 2] = [
        Arc::new(LettersProjection::new(kv.clone())),
        Arc::new(AnalyticsProjection::new(analytics.clone())),
    ];
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut runners = Vec::new();
    let mut handles = Vec::new();
    for projection in &live {
        let runner = ProjectionRunner::new(log.clone(), projection.clone());
        handles.push(runner.handle());
        let mut stopped = stopped.clone();
        runners.push(tokio::spawn(runner.run(async move {
            let _ = stopped.wait_for(|s| *s).await;
        })));
    }
    let caught_up = |position: Position| {
        let handles = handles.clone();
        let log = log.clone();
        async move {
            for handle in &handles {
                for partition in 0..log.partitions() {
                    let head = log.partition_head(partition).await.unwrap().min(position);
                    assert!(
                        handle
                            .wait_for(partition, head, Duration::from_secs(20))
                            .await,
                        "{} did not reach {head} in partition {partition}",
                        handle.name()
                    );
                }
            }
        }
    };
    caught_up(log.head().await.unwrap()).await;

    // What the live tables hold beyond the log (a bug's leftovers): a rebuild drops it.
    let junk_item = |tx: &mut dyn crate::kv::KvWrite, _: &[crate::Envelope]| {
        tx.put(crate::kv::Item {
            pk: "LETTER#junk".into(),
            sk: "#META".into(),
            gsi1pk: None,
            gsi1sk: None,
            data: "{}".into(),
        })?;
        Ok(())
    };
    let any = log.read_all(Position::ZERO, 1).await.unwrap();
    kv.apply(
        crate::letters::NAME,
        Progress::Redrive,
        crate::letters::decode_batch(&any).unwrap(),
        junk_item,
    )
    .await
    .unwrap();
    analytics
        .apply(
            Progress::Redrive,
            vec![(
                any[0].position,
                crate::analytics::AnalyticsChange::InsertLetter(crate::analytics::LetterRow {
                    id: "junk".into(),
                    child: "Nobody".into(),
                    country: Some("ZZ".into()),
                    total_cents: 1,
                    submitted_at_ms: 0,
                    lines: vec![crate::analytics::LineRow {
                        toy_id: "teddy-bear".into(),
                        quantity: 1,
                        unit_price_cents: 1,
                    }],
                }),
            )],
        )
        .await
        .unwrap();
    assert!(kv.get("LETTER#junk", "#META").await.unwrap().is_some());

    // Rebuild both while letters keep arriving.
    let writer = {
        let commands = commands.clone();
        tokio::spawn(async move {
            for i in 0..40 {
                submit_teddy_letter(&commands, &format!("during-{i}")).await;
            }
        })
    };
    for projection in &live {
        let rebuild = Rebuilder::start(log.clone(), projection.clone(), None)
            .await
            .unwrap();
        let again = Rebuilder::start(log.clone(), projection.clone(), None).await;
        assert!(
            matches!(again, Err(ProjectionError::Busy(_))),
            "a second rebuild of {} is refused: {again:?}",
            projection.name()
        );
        let status = rebuild.run(std::future::pending()).await.unwrap();
        assert_eq!(status.state, RebuildState::Done);
        assert!(status.replayed >= status.target.get().min(20), "{status:?}");
    }
    writer.await.unwrap();
    let after = submit_teddy_letter(&commands, "after-rebuild").await;
    caught_up(after.position).await;

    // The rebuilt tables hold the log, all of it, and nothing else.
    assert!(kv.get("LETTER#junk", "#META").await.unwrap().is_none());
    let countries = analytics.totals_by_country().await.unwrap();
    assert!(countries.iter().all(|t| t.key != "ZZ"), "{countries:?}");
    let norway = countries.iter().find(|t| t.key == "NO").unwrap();
    assert_eq!(norway.letters, 41, "{countries:?}");
    let reference = Arc::new(MemoryKvStore::default());
    let everything = log.read_all(Position::ZERO, 100_000).await.unwrap();
    LettersProjection::new(reference.clone())
        .apply(0, Position::ZERO, &everything)
        .await
        .unwrap();
    let (rebuilt, expected) = (
        LettersQueries::new(kv.clone()),
        LettersQueries::new(reference),
    );
    for toy in ["teddy-bear", "telescope", "rubiks-cube"] {
        assert_eq!(
            rebuilt.toy(toy).await.unwrap(),
            expected.toy(toy).await.unwrap()
        );
    }
    assert_eq!(
        rebuilt.letters(None, 100).await.unwrap(),
        expected.letters(None, 100).await.unwrap()
    );
    let _ = stop.send(true);
    for runner in runners {
        runner.await.unwrap();
    }
}
