//! The JetStream log against a real NATS server (`SANTA_TEST_NATS`, e.g.
//! `nats://127.0.0.1:4222`; `.ci/run` sets it). Each test uses its own stream.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use santa_cqrs::{EventLog, ExpectedVersion, Position, contract};
use santa_nats::{NatsError, NatsEventLog, NatsIdempotencyStore, NatsOptions};
use santa_workshop::idempotency::{IdempotencyStore, IdempotentAnswer};

fn options(name: &str, partitions: u32) -> NatsOptions {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let unique = format!("{name}_{}_{nanos}", std::process::id());
    NatsOptions {
        stream: format!("TEST_{unique}"),
        prefix: format!("test_{unique}"),
        partitions,
        ..NatsOptions::default()
    }
}

async fn log(name: &str, partitions: u32) -> Option<(Arc<NatsEventLog>, NatsOptions)> {
    let url = contract::service_url("SANTA_TEST_NATS")?;
    let options = options(name, partitions);
    Some((
        Arc::new(NatsEventLog::connect(&url, options.clone()).await.unwrap()),
        options,
    ))
}

/// Deletes the test's stream from the server; the test must have let go of every other
/// handle on the log, or the stream would be left behind.
async fn clean_up(log: Arc<NatsEventLog>) {
    let log = Arc::try_unwrap(log).expect("clean-up needs the last handle on the log");
    log.delete().await.unwrap();
}

#[tokio::test]
async fn the_jetstream_log_checks_expected_versions() {
    let Some((log, _)) = log("versions", 1).await else {
        return;
    };
    contract::appends_check_the_expected_version(log.clone()).await;
    clean_up(log).await;
}

#[tokio::test]
async fn the_jetstream_log_does_not_write_a_repeated_event_twice() {
    let Some((log, _)) = log("dedupe", 1).await else {
        return;
    };
    contract::repeated_event_ids_are_not_written_twice(log.clone()).await;
    clean_up(log).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jetstream_log_is_gap_free_under_concurrent_appends() {
    let Some((log, _)) = log("concurrent", 1).await else {
        return;
    };
    contract::concurrent_appends_are_gap_free_and_race_safely(log.clone()).await;
    clean_up(log).await;
}

/// The same contract with every publish sent at once, as `--publish-linger 0s` does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jetstream_log_without_a_publish_linger_is_gap_free_under_concurrent_appends() {
    let Some(url) = contract::service_url("SANTA_TEST_NATS") else {
        return;
    };
    let options = NatsOptions {
        publish_linger: Duration::ZERO,
        ..options("unlingered", 1)
    };
    let log = Arc::new(NatsEventLog::connect(&url, options).await.unwrap());
    contract::concurrent_appends_are_gap_free_and_race_safely(log.clone()).await;
    clean_up(log).await;
}

/// With JetStream keeping up, publishes wait for no linger, however long: a lone one, and
/// a burst of them, which gather only while the answer to the first is pending. Each
/// lands at its own position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_wait_for_no_linger_while_jetstream_keeps_up() {
    let Some(url) = contract::service_url("SANTA_TEST_NATS") else {
        return;
    };
    let linger = Duration::from_secs(3);
    let options = NatsOptions {
        publish_linger: linger,
        ..options("linger", 1)
    };
    let log = Arc::new(NatsEventLog::connect(&url, options).await.unwrap());
    let started = Instant::now();
    let lone = log
        .append(
            "lone",
            ExpectedVersion::Exactly(0),
            vec![contract::event("a")],
        )
        .await
        .unwrap();
    let burst = (0..20).map(|i| {
        let log = log.clone();
        async move {
            log.append(
                &format!("burst-{i}"),
                ExpectedVersion::Exactly(0),
                vec![contract::event("b")],
            )
            .await
            .unwrap()
            .get()
        }
    });
    let mut positions = futures_util::future::join_all(burst).await;
    let took = started.elapsed();
    assert!(
        took < linger / 2,
        "21 publishes took {took:?}: they waited for the linger"
    );
    positions.sort_unstable();
    let expected: Vec<u64> = (lone.get() + 1..=lone.get() + 20).collect();
    assert_eq!(positions, expected, "each at its own position, none lost");
    clean_up(log).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jetstream_log_decides_at_the_version_it_appends() {
    let Some((log, _)) = log("decide", 1).await else {
        return;
    };
    contract::deciders_append_at_the_version_they_read(log.clone()).await;
    clean_up(log).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jetstream_log_serves_catch_up_then_live_subscriptions() {
    let Some((log, _)) = log("subscribe", 1).await else {
        return;
    };
    contract::subscriptions_catch_up_then_follow_live(log.clone()).await;
    clean_up(log).await;
}

#[tokio::test]
async fn a_partition_holds_whole_streams_and_only_them() {
    let Some((log, _)) = log("partitions", 4).await else {
        return;
    };
    let mut positions = Vec::new();
    for i in 0..20 {
        let stream = format!("letter-p{i}");
        let first = log
            .append(
                &stream,
                ExpectedVersion::Exactly(0),
                vec![contract::event("a")],
            )
            .await
            .unwrap();
        let second = log
            .append(
                &stream,
                ExpectedVersion::Exactly(1),
                vec![contract::event("b")],
            )
            .await
            .unwrap();
        let partition = log.partition_at(first).await.unwrap();
        assert_eq!(
            log.partition_at(second).await.unwrap(),
            partition,
            "one stream, one partition"
        );
        positions.push((stream, partition));
    }
    let dyn_log: Arc<dyn EventLog> = log.clone();
    let mut seen = 0;
    for partition in 0..4 {
        let expected = positions.iter().filter(|(_, p)| *p == partition).count() * 2;
        let mut source = santa_cqrs::subscribe(&dyn_log, "test", partition, Position::ZERO)
            .await
            .unwrap();
        let mut events = Vec::new();
        while events.len() < expected {
            events.extend(source.next_batch(100).await.unwrap());
        }
        assert_eq!(events.len(), expected);
        assert!(
            events.windows(2).all(|w| w[0].position < w[1].position),
            "in log order"
        );
        for e in &events {
            assert!(
                positions
                    .iter()
                    .any(|(s, p)| *s == e.stream && *p == partition)
            );
        }
        seen += events.len();
    }
    assert_eq!(seen, 40);
    // The last other handle on the log goes first, or clean-up cannot take it back.
    drop(dyn_log);
    clean_up(log).await;
}

#[tokio::test]
async fn a_stream_created_with_other_partitions_is_refused() {
    let Some((log, options)) = log("conflict", 4).await else {
        return;
    };
    let url = contract::service_url("SANTA_TEST_NATS").unwrap();
    let other = NatsOptions {
        partitions: 8,
        ..options
    };
    let error = NatsEventLog::connect(&url, other).await.unwrap_err();
    assert!(matches!(error, NatsError::Conflict { .. }), "{error}");
    assert!(error.to_string().contains("partitions"), "{error}");
    clean_up(log).await;
}

#[tokio::test]
async fn an_unreachable_server_is_a_clear_error() {
    let Some(_) = contract::service_url("SANTA_TEST_NATS") else {
        return;
    };
    // Port 1 on loopback: nothing listens there.
    let error = NatsEventLog::connect("nats://127.0.0.1:1", options("down", 1))
        .await
        .unwrap_err();
    assert!(matches!(error, NatsError::Connect { .. }), "{error}");
}

#[tokio::test]
async fn a_server_without_jetstream_is_named_as_such() {
    let Some(_) = contract::service_url("SANTA_TEST_NATS") else {
        return;
    };
    // A plain NATS server of our own, without -js, on a free loopback port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let binary = if std::path::Path::new("/usr/sbin/nats-server").exists() {
        "/usr/sbin/nats-server"
    } else {
        "nats-server"
    };
    let mut server = std::process::Command::new(binary)
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("nats-server is installed beside the NATS service");
    let url = format!("nats://127.0.0.1:{port}");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let outcome = loop {
        match NatsEventLog::connect(&url, options("nojs", 1)).await {
            Err(NatsError::Connect { .. }) if tokio::time::Instant::now() < deadline => {
                // The server is still starting.
                tokio::task::yield_now().await;
            }
            other => break other,
        }
    };
    server.kill().unwrap();
    server.wait().unwrap();
    let error = outcome.unwrap_err();
    assert!(matches!(error, NatsError::NoJetStream { .. }), "{error}");
}

#[tokio::test]
async fn idempotency_keys_keep_the_first_answer_in_a_bucket() {
    let Some((log, _)) = log("keys", 1).await else {
        return;
    };
    let store = NatsIdempotencyStore::open(&log, std::time::Duration::from_secs(3600))
        .await
        .unwrap();
    let answer = |fingerprint: &str, position| IdempotentAnswer {
        fingerprint: fingerprint.into(),
        id: "l-1".into(),
        position,
    };
    assert_eq!(store.get("key with spaces/and:colons").await.unwrap(), None);
    assert_eq!(
        store
            .put("key with spaces/and:colons", answer("a", 7))
            .await
            .unwrap(),
        answer("a", 7)
    );
    assert_eq!(
        store
            .put("key with spaces/and:colons", answer("b", 9))
            .await
            .unwrap(),
        answer("a", 7),
        "the first answer wins"
    );
    assert_eq!(
        store.get("key with spaces/and:colons").await.unwrap(),
        Some(answer("a", 7))
    );
    assert_eq!(store.get("another").await.unwrap(), None);
    drop(store);
    clean_up(log).await;
}

/// A command's context (a toy's newest event) is read once and reused within its age: a
/// change made through another process is seen only once the read is that old, one made
/// through this process at once; with an age of zero every read goes to JetStream.
#[tokio::test]
async fn context_reads_are_reused_within_their_age_and_own_appends_are_seen_at_once() {
    let Some(url) = contract::service_url("SANTA_TEST_NATS") else {
        return;
    };
    let options = options("context", 2);
    let connect = |max_age: std::time::Duration| {
        let options = NatsOptions {
            context_max_age: max_age,
            ..options.clone()
        };
        let url = url.clone();
        async move { Arc::new(NatsEventLog::connect(&url, options).await.unwrap()) }
    };
    let hour = std::time::Duration::from_secs(3600);
    let (here, elsewhere, uncached) = (
        connect(hour).await,
        connect(hour).await,
        connect(std::time::Duration::ZERO).await,
    );
    let toy = vec!["toy-kite".to_owned()];
    let version =
        |lasts: Vec<Option<santa_cqrs::RecordedEvent>>| lasts[0].as_ref().map(|e| e.version);
    assert_eq!(
        version(here.read_lasts(&toy).await.unwrap()),
        None,
        "not there yet"
    );
    here.append(
        "toy-kite",
        ExpectedVersion::Exactly(0),
        vec![contract::event("v1")],
    )
    .await
    .unwrap();
    assert_eq!(
        version(here.read_lasts(&toy).await.unwrap()),
        Some(1),
        "a stream not found is not remembered"
    );
    elsewhere
        .append(
            "toy-kite",
            ExpectedVersion::Exactly(1),
            vec![contract::event("v2")],
        )
        .await
        .unwrap();
    assert_eq!(
        version(here.read_lasts(&toy).await.unwrap()),
        Some(1),
        "another process's change is seen once the read is old enough"
    );
    assert_eq!(version(uncached.read_lasts(&toy).await.unwrap()), Some(2));
    here.append(
        "toy-kite",
        ExpectedVersion::Exactly(2),
        vec![contract::event("v3")],
    )
    .await
    .unwrap();
    assert_eq!(
        version(here.read_lasts(&toy).await.unwrap()),
        Some(3),
        "this process's own change is seen at once"
    );
    drop((elsewhere, uncached));
    clean_up(here).await;
}

/// A projection reads a batch ahead while it applies the one before; the broker must hear
/// only of what was applied: acknowledging up to a position leaves the batch read after it
/// unacknowledged.
#[tokio::test]
async fn a_reader_acknowledges_only_up_to_the_position_applied() {
    let Some((log, options)) = log("acks", 1).await else {
        return;
    };
    let mut positions = Vec::new();
    for i in 0..4 {
        let stream = format!("letter-ack{i}");
        let event = contract::event("a");
        positions.push(
            log.append(&stream, ExpectedVersion::Exactly(0), vec![event])
                .await
                .unwrap(),
        );
    }
    let dyn_log: Arc<dyn EventLog> = log.clone();
    let mut source = santa_cqrs::subscribe(&dyn_log, "acks", 0, Position::ZERO)
        .await
        .unwrap();
    // A projector reports whole batches applied: the first batch's last position (one
    // or two events, whichever had arrived) is the one reported.
    let mut read = source.next_batch(2).await.unwrap();
    let applied = read.last().expect("a batch is never empty").position;
    // The next batches are read before the first one is reported applied.
    while read.len() < 4 {
        read.extend(source.next_batch(2).await.unwrap());
    }
    assert_eq!(
        read.iter().map(|e| e.position).collect::<Vec<_>>(),
        positions
    );

    let url = contract::service_url("SANTA_TEST_NATS").unwrap();
    let client = async_nats::connect(&url).await.unwrap();
    let stream = async_nats::jetstream::new(client)
        .get_stream(&options.stream)
        .await
        .unwrap();
    // Acknowledgements are sent without waiting for an answer: poll the consumer's ack
    // floor, which must stop at each position reported, never past it.
    let ack_floor_reaches = |want: Position| {
        let stream = stream.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let info = stream.consumer_info("acks-0").await.unwrap();
                let floor = info.ack_floor.stream_sequence;
                assert!(floor <= want.get(), "acknowledged {floor}, past {want}");
                if floor == want.get() {
                    return;
                }
                assert!(Instant::now() < deadline, "ack floor stuck at {floor}");
                tokio::task::yield_now().await;
            }
        }
    };
    source.committed(applied).await.unwrap();
    ack_floor_reaches(applied).await;
    source.committed(positions[3]).await.unwrap();
    ack_floor_reaches(positions[3]).await;
    drop(source);
    drop(dyn_log);
    clean_up(log).await;
}
