//! The behaviour every [`EventLog`] must show, as reusable checks. Each adapter's tests
//! run all of them against a fresh, empty log of their engine.
#![allow(
    clippy::unwrap_used,
    reason = "contract checks are test support: a panic is how they report a broken contract"
)]

use std::sync::Arc;
use std::time::Duration;

use crate::{EventLog, ExpectedVersion, LogError, NewEvent, Position};

/// One event with a unique id and the given body.
pub fn event(body: &str) -> NewEvent {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    NewEvent {
        event_id: format!("contract-{nanos}-{n}"),
        event_type: "ContractEvent".into(),
        schema_version: 1,
        data: body.as_bytes().to_vec(),
    }
}

/// Appends honour the expected version and number streams from 1.
pub async fn appends_check_the_expected_version(log: Arc<dyn EventLog>) {
    let first = log
        .append("s-1", ExpectedVersion::Exactly(0), vec![event("a")])
        .await
        .unwrap();
    let second = log
        .append(
            "s-1",
            ExpectedVersion::Exactly(1),
            vec![event("b"), event("c")],
        )
        .await
        .unwrap();
    assert!(second > first, "positions grow: {first} then {second}");
    let stale = log
        .append("s-1", ExpectedVersion::Exactly(1), vec![event("d")])
        .await;
    assert!(
        matches!(
            stale,
            Err(LogError::Conflict {
                expected: 1,
                actual: 3,
                ..
            })
        ),
        "got {stale:?}"
    );
    let again = log
        .append("s-1", ExpectedVersion::Exactly(0), vec![event("e")])
        .await;
    assert!(
        matches!(again, Err(LogError::Conflict { .. })),
        "a stream exists only once: {again:?}"
    );
    let stream = log.read_stream("s-1").await.unwrap();
    let versions: Vec<_> = stream.iter().map(|e| e.version).collect();
    assert_eq!(versions, [1, 2, 3]);
    let bodies: Vec<_> = stream.iter().map(|e| e.data.as_slice()).collect();
    assert_eq!(bodies, [b"a", b"b", b"c"]);
    assert!(log.read_stream("s-unknown").await.unwrap().is_empty());
    let lasts = log
        .read_lasts(&["s-1".to_owned(), "s-unknown".to_owned()])
        .await
        .unwrap();
    assert_eq!(
        lasts[0].as_ref().map(|e| (e.version, e.data.as_slice())),
        Some((3, b"c".as_slice()))
    );
    assert_eq!(lasts[1], None);
}

/// Appending the same event (same id) again is a repeat: the original position, no write.
pub async fn repeated_event_ids_are_not_written_twice(log: Arc<dyn EventLog>) {
    let once = event("once");
    let first = log
        .append("dup", ExpectedVersion::Exactly(0), vec![once.clone()])
        .await
        .unwrap();
    let again = log
        .append("dup", ExpectedVersion::Exactly(0), vec![once])
        .await
        .unwrap();
    assert_eq!(first, again);
    assert_eq!(log.read_stream("dup").await.unwrap().len(), 1);
    assert_eq!(log.head().await.unwrap(), first);
}

/// Concurrent appends to many streams get distinct, gap-free positions, and exactly one
/// of several racing writers to the same stream wins.
pub async fn concurrent_appends_are_gap_free_and_race_safely(log: Arc<dyn EventLog>) {
    let start = log.head().await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let log = log.clone();
        tasks.spawn(async move {
            log.append(
                &format!("c-{}", i % 50),
                ExpectedVersion::Any,
                vec![event("x")],
            )
            .await
        });
    }
    for _ in 0..8 {
        let log = log.clone();
        tasks.spawn(async move {
            log.append("race", ExpectedVersion::Exactly(0), vec![event("r")])
                .await
        });
    }
    let mut positions = Vec::new();
    let mut conflicts = 0;
    while let Some(result) = tasks.join_next().await {
        match result.unwrap() {
            Ok(position) => positions.push(position.get()),
            Err(LogError::Conflict { .. }) => conflicts += 1,
            Err(other) => panic!("unexpected append error: {other}"),
        }
    }
    assert_eq!(conflicts, 7, "one racer wins, seven conflict");
    positions.sort_unstable();
    let expected: Vec<u64> = (start.get() + 1..=start.get() + 201).collect();
    assert_eq!(positions, expected, "positions are distinct and gap-free");
    let all = log.read_all(start, 1000).await.unwrap();
    assert_eq!(all.len(), 201);
    assert!(
        all.windows(2)
            .all(|w| w[1].position.get() == w[0].position.get() + 1)
    );
}

/// Deciders see the stream as it is when they append: racing deciders that each append
/// one event while the stream holds fewer than ten never make it longer than ten, and
/// versions stay gap-free; a refusal or a `Nothing` verdict writes nothing.
pub async fn deciders_append_at_the_version_they_read(log: Arc<dyn EventLog>) {
    use crate::{DecideError, Verdict};
    let below_ten = || -> crate::Decider {
        Box::new(|recorded, _| {
            Ok(match recorded.last() {
                Some(last) if recorded.len() >= 10 => Verdict::Nothing(last.position),
                _ => Verdict::Append(vec![event("d")]),
            })
        })
    };
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..30 {
        let (log, decide) = (log.clone(), below_ten());
        tasks.spawn(async move { log.decide_and_append("decided", &[], decide).await });
    }
    let mut answered = 0;
    while let Some(result) = tasks.join_next().await {
        match result.unwrap() {
            Ok(_) => answered += 1,
            // Lost the race more often than a log that checks versions retries: allowed.
            Err(DecideError::Log(LogError::Conflict { .. })) => {}
            Err(other) => panic!("unexpected decide error: {other}"),
        }
    }
    assert!(answered >= 1, "some decider got an answer");
    // Whoever lost every race: the stream fills up to ten, and no further.
    for _ in 0..11 {
        log.decide_and_append("decided", &[], below_ten())
            .await
            .unwrap();
    }
    let stream = log.read_stream("decided").await.unwrap();
    let versions: Vec<u64> = stream.iter().map(|e| e.version).collect();
    assert_eq!(
        versions,
        (1..=10).collect::<Vec<_>>(),
        "ten events, gap-free"
    );

    let head = log.head().await.unwrap();
    let refused = log
        .decide_and_append(
            "decided",
            &[],
            Box::new(|_, _| Err("no letters after Christmas".into())),
        )
        .await;
    assert!(
        matches!(&refused, Err(DecideError::Refused(why)) if why.to_string() == "no letters after Christmas"),
        "got {refused:?}"
    );
    // The context streams' newest events are what the decider sees.
    log.append(
        "context-a",
        ExpectedVersion::Exactly(0),
        vec![event("a1"), event("a2")],
    )
    .await
    .unwrap();
    let sees = |want: [Option<&'static [u8]>; 2]| -> crate::Decider {
        Box::new(move |_, context| {
            let newest: Vec<Option<Vec<u8>>> = context
                .iter()
                .map(|e| e.as_ref().map(|e| e.data.clone()))
                .collect();
            let want: Vec<Option<Vec<u8>>> = want.iter().map(|w| w.map(<[u8]>::to_vec)).collect();
            if newest == want {
                Ok(Verdict::Append(vec![event("saw it")]))
            } else {
                Err(format!("saw {newest:?}, not {want:?}").into())
            }
        })
    };
    let context = ["context-a".to_owned(), "context-none".to_owned()];
    let seen = log
        .decide_and_append("decided-with-context", &context, sees([Some(b"a2"), None]))
        .await;
    assert!(seen.is_ok(), "got {seen:?}");
    assert_eq!(log.read_stream("decided").await.unwrap().len(), 10);
    assert_eq!(log.head().await.unwrap().get(), head.get() + 3);
    // ... and stay so once those streams move, by an append or by a decision on them.
    log.append("context-a", ExpectedVersion::Exactly(2), vec![event("a3")])
        .await
        .unwrap();
    log.decide_and_append(
        "context-none",
        &[],
        Box::new(|_, _| Ok(Verdict::Append(vec![event("n1")]))),
    )
    .await
    .unwrap();
    let seen = log
        .decide_and_append(
            "decided-with-context",
            &context,
            sees([Some(b"a3"), Some(b"n1")]),
        )
        .await;
    assert!(seen.is_ok(), "got {seen:?}");

    // A command expected to start its stream decides on the real history once it exists.
    let start_once = || -> crate::Decider {
        Box::new(|recorded, _| {
            Ok(match recorded.last() {
                Some(last) => Verdict::Nothing(last.position),
                None => Verdict::Append(vec![event("started")]),
            })
        })
    };
    let first = log
        .decide_and_start("started", &[], start_once())
        .await
        .unwrap();
    let again = log
        .decide_and_start("started", &[], start_once())
        .await
        .unwrap();
    assert_eq!(
        again, first,
        "the repeat is answered from the stream as read"
    );
    // A decider that refuses an empty history is asked again with the real one.
    let needs_history = log
        .decide_and_start(
            "started",
            &[],
            Box::new(|recorded, _| match recorded.last() {
                Some(last) => Ok(Verdict::Nothing(last.position)),
                None => Err("decided on an empty history".into()),
            }),
        )
        .await;
    assert_eq!(needs_history.unwrap(), first);
    // Racing starters: one appends, the others get its answer.
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let (log, decide) = (log.clone(), start_once());
        tasks.spawn(async move { log.decide_and_start("raced", &[], decide).await });
    }
    let mut answers = Vec::new();
    while let Some(result) = tasks.join_next().await {
        answers.push(result.unwrap().unwrap());
    }
    answers.dedup();
    assert_eq!(
        answers.len(),
        1,
        "every starter got the one append's position"
    );
    assert_eq!(log.read_stream("started").await.unwrap().len(), 1);
    assert_eq!(log.read_stream("raced").await.unwrap().len(), 1);
    assert_eq!(log.head().await.unwrap().get(), head.get() + 8);
}

/// A subscription replays history from any position, then delivers new events live.
pub async fn subscriptions_catch_up_then_follow_live(log: Arc<dyn EventLog>) {
    let start = log.head().await.unwrap();
    for i in 0..5 {
        log.append(
            &format!("sub-{i}"),
            ExpectedVersion::Exactly(0),
            vec![event("old")],
        )
        .await
        .unwrap();
    }
    let mut sub = crate::subscribe(&log, "contract", 0, start).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 5 {
        seen.extend(sub.next_batch(2).await.unwrap());
    }
    assert_eq!(
        seen.len(),
        5,
        "catch-up respects the batch size and skips nothing"
    );
    let writer = log.clone();
    let live = tokio::spawn(async move {
        writer
            .append("sub-live", ExpectedVersion::Exactly(0), vec![event("new")])
            .await
            .unwrap()
    });
    let next = tokio::time::timeout(Duration::from_secs(5), sub.next_batch(10))
        .await
        .expect("live event arrives");
    let next = next.unwrap();
    let position = live.await.unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(
        (next[0].position, next[0].data.as_slice()),
        (position, b"new".as_slice())
    );
    let from_middle = log
        .read_all(Position::new(start.get() + 3), 100)
        .await
        .unwrap();
    assert_eq!(from_middle.len(), 3);
}

/// The URL of an external service a test needs, from the environment variable `var`.
/// Without it the test says loudly that it is skipped; under `CI=true` it fails instead.
pub fn service_url(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("CI").is_ok_and(|ci| ci == "true") => {
            panic!(
                "{var} is not set: CI must run this test against the real service (.ci/run sets it)"
            )
        }
        _ => {
            eprintln!(
                "SKIPPED: {var} is not set, so this test did not run against the real service"
            );
            None
        }
    }
}

/// Dead letters are kept per projection, replaced on a second park, and report the first
/// parked event of a stream.
pub async fn dead_letters_are_kept_per_projection(dead: Arc<dyn crate::DeadLetters>) {
    let letter =
        |projection: &str, position: u64, stream: &str, behind: Option<u64>| crate::DeadLetter {
            projection: projection.into(),
            partition: 3,
            position: Position::new(position),
            stream: stream.into(),
            event_type: "LetterSubmitted".into(),
            error: "cannot apply".into(),
            attempts: 5,
            parked_at_ms: 1_700_000_000_000,
            behind: behind.map(Position::new),
        };
    dead.park(letter("letters", 12, "letter-b", None))
        .await
        .unwrap();
    dead.park(letter("letters", 15, "letter-b", Some(12)))
        .await
        .unwrap();
    dead.park(letter("analytics", 12, "letter-b", None))
        .await
        .unwrap();
    let mut again = letter("letters", 12, "letter-b", None);
    again.attempts = 6;
    dead.park(again.clone()).await.unwrap();
    let letters = dead.list(Some("letters")).await.unwrap();
    assert_eq!(
        letters,
        [again, letter("letters", 15, "letter-b", Some(12))]
    );
    assert_eq!(dead.list(None).await.unwrap().len(), 3);
    assert_eq!(
        dead.blocking("letters", "letter-b").await.unwrap(),
        Some(Position::new(12))
    );
    assert_eq!(dead.blocking("letters", "letter-z").await.unwrap(), None);
    dead.remove("letters", Position::new(12)).await.unwrap();
    assert_eq!(
        dead.blocking("letters", "letter-b").await.unwrap(),
        Some(Position::new(15))
    );
    assert_eq!(
        dead.list(Some("analytics")).await.unwrap().len(),
        1,
        "projections are independent"
    );
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::memory::MemoryEventLog;

    #[tokio::test]
    async fn the_memory_log_keeps_the_contract() {
        super::appends_check_the_expected_version(Arc::new(MemoryEventLog::default())).await;
        super::repeated_event_ids_are_not_written_twice(Arc::new(MemoryEventLog::default())).await;
        super::concurrent_appends_are_gap_free_and_race_safely(Arc::new(MemoryEventLog::default()))
            .await;
        super::subscriptions_catch_up_then_follow_live(Arc::new(MemoryEventLog::default())).await;
        super::dead_letters_are_kept_per_projection(Arc::new(crate::MemoryDeadLetters::default()))
            .await;
    }
}
