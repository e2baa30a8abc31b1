//! The SQLite adapters against the kernel's contracts and the projections' expectations.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::sync::Arc;

use santa_cqrs::{EventLog, ExpectedVersion, Position, contract};
use santa_sqlite::{SqliteAnalyticsStore, SqliteEventLog, SqliteKvStore, SqliteLogOptions};

fn log(dir: &tempfile::TempDir) -> Arc<dyn EventLog> {
    Arc::new(SqliteEventLog::open(dir.path(), SqliteLogOptions::default()).unwrap())
}

#[tokio::test]
async fn the_sqlite_log_checks_expected_versions() {
    let dir = tempfile::tempdir().unwrap();
    contract::appends_check_the_expected_version(log(&dir)).await;
}

#[tokio::test]
async fn the_sqlite_dead_letters_keep_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    contract::dead_letters_are_kept_per_projection(Arc::new(
        santa_sqlite::SqliteDeadLetters::open(dir.path()).unwrap(),
    ))
    .await;
}

#[tokio::test]
async fn the_sqlite_log_does_not_write_a_repeated_event_twice() {
    let dir = tempfile::tempdir().unwrap();
    contract::repeated_event_ids_are_not_written_twice(log(&dir)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlite_log_is_gap_free_under_concurrent_appends() {
    let dir = tempfile::tempdir().unwrap();
    contract::concurrent_appends_are_gap_free_and_race_safely(log(&dir)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlite_log_decides_at_the_version_it_appends() {
    let dir = tempfile::tempdir().unwrap();
    contract::deciders_append_at_the_version_they_read(log(&dir)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlite_log_serves_catch_up_then_live_subscriptions() {
    let dir = tempfile::tempdir().unwrap();
    contract::subscriptions_catch_up_then_follow_live(log(&dir)).await;
}

#[tokio::test]
async fn the_sqlite_log_keeps_everything_across_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let first = log(&dir);
    let position = first
        .append(
            "keep",
            ExpectedVersion::Exactly(0),
            vec![contract::event("k")],
        )
        .await
        .unwrap();
    drop(first);
    let reopened = log(&dir);
    assert_eq!(reopened.head().await.unwrap(), position);
    assert_eq!(reopened.read_stream("keep").await.unwrap().len(), 1);
    let next = reopened
        .append(
            "keep",
            ExpectedVersion::Exactly(1),
            vec![contract::event("k2")],
        )
        .await
        .unwrap();
    assert_eq!(next, position.next());
}

#[tokio::test]
async fn the_sqlite_log_reads_the_same_events_from_memory_as_from_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let first = log(&dir);
    // More events than the log keeps in memory, so that old ones come from the file.
    let many = (0..5_000)
        .map(|i| contract::event(&format!("m{i}")))
        .collect();
    first
        .append("many", ExpectedVersion::Exactly(0), many)
        .await
        .unwrap();
    let head = first
        .append(
            "more",
            ExpectedVersion::Exactly(0),
            vec![contract::event("x"), contract::event("y")],
        )
        .await
        .unwrap();
    let recent = first.read_all(Position::new(4_990), 100).await.unwrap();
    let everything = first.read_all(Position::ZERO, 10_000).await.unwrap();
    assert!(first.read_all(head, 10).await.unwrap().is_empty());
    drop(first);
    // A reopened log holds nothing in memory: it reads the file.
    let reopened = log(&dir);
    assert_eq!(
        reopened.read_all(Position::new(4_990), 100).await.unwrap(),
        recent
    );
    assert_eq!(
        reopened.read_all(Position::ZERO, 10_000).await.unwrap(),
        everything
    );
    assert_eq!(recent.len(), 12);
    assert_eq!(recent.last().unwrap().position, head);
    assert_eq!(everything.len(), 5_002);
    let positions: Vec<u64> = everything.iter().map(|e| e.position.get()).collect();
    assert_eq!(positions, (1..=5_002).collect::<Vec<_>>());
}

mod projections {
    use santa_cqrs::Projection;
    use santa_domain::{CancelLetter, LetterId};
    use santa_workshop::CommandService;
    use santa_workshop::analytics::{AnalyticsProjection, AnalyticsStore};
    use santa_workshop::kv::KvStore;
    use santa_workshop::letters::{LettersProjection, LettersQueries};

    use super::*;

    #[tokio::test]
    async fn the_sqlite_stores_apply_each_event_once_and_report_exact_totals() {
        let dir = tempfile::tempdir().unwrap();
        let log = log(&dir);
        let commands = CommandService::new(log.clone());
        santa_workshop::seed::seed(&commands).await.unwrap();
        commands
            .cancel_letter(CancelLetter {
                id: LetterId::parse("demo-linus").unwrap(),
            })
            .await
            .unwrap();
        let kv = Arc::new(SqliteKvStore::open(dir.path()).unwrap());
        let analytics = Arc::new(SqliteAnalyticsStore::open(dir.path()).unwrap());
        let letters = LettersProjection::new(kv.clone());
        let reports = AnalyticsProjection::new(analytics.clone());
        let batch = log.read_all(Position::ZERO, 1000).await.unwrap();
        let head = log.head().await.unwrap();
        for expected in [Position::ZERO, head] {
            // The second round is a redelivery at the new checkpoint: it must change nothing.
            letters.apply(0, expected, &batch).await.unwrap();
            reports.apply(0, expected, &batch).await.unwrap();
        }
        // A worker that still believes the partition is at zero is refused.
        assert!(matches!(
            letters.apply(0, Position::ZERO, &batch).await,
            Err(santa_cqrs::ProjectionError::Moved { .. })
        ));
        assert!(matches!(
            reports.apply(0, Position::ZERO, &batch).await,
            Err(santa_cqrs::ProjectionError::Moved { .. })
        ));
        assert_eq!(letters.checkpoint(0).await.unwrap(), head);
        assert_eq!(reports.checkpoint(0).await.unwrap(), head);

        let queries = LettersQueries::new(kv);
        let bear = queries.toy("teddy-bear").await.unwrap().unwrap();
        assert_eq!(
            (bear.requested_quantity, bear.letter_count),
            (2, 1),
            "Linus's cancelled bear is not counted"
        );

        let demand = analytics.toy_demand(10).await.unwrap();
        let top = &demand[0];
        assert_eq!(
            (top.toy_id.as_str(), top.quantity, top.letters),
            ("rubiks-cube", 3, 2)
        );
        assert!(
            demand.iter().all(|d| d.toy_id != "lego-castle"),
            "only cancelled letters asked for it"
        );
        let countries = analytics.totals_by_country().await.unwrap();
        let gb = countries.iter().find(|t| t.key == "GB").unwrap();
        assert_eq!(
            (gb.letters, gb.quantity, gb.total_cents),
            (2, 3 + 4, 12900 + 2 * 1299 + 1299 + 3 * 799)
        );
        assert!(
            countries.iter().all(|t| t.key != "FI"),
            "the only Finnish letter was cancelled"
        );
        let days = analytics.totals_by_day().await.unwrap();
        assert_eq!(days.iter().map(|d| d.letters).sum::<i64>(), 4);
        assert_eq!(days[0].key.len(), "2026-12-24".len());
    }

    #[tokio::test]
    async fn a_log_holding_v1_and_v2_letters_is_read_and_projected_alike() {
        let dir = tempfile::tempdir().unwrap();
        let log = log(&dir);
        let commands = CommandService::new(log.clone());
        santa_workshop::seed::seed(&commands).await.unwrap();
        // A letter as the first release stored it: schema 1, no country.
        let v1 = santa_cqrs::NewEvent {
            event_id: "v1-letter".into(),
            event_type: "LetterSubmitted".into(),
            schema_version: 1,
            data: br#"{"letter_id":"old-1","child":"Ada","address":"1 Snow Lane","lines":[{"toy_id":"telescope","quantity":1,"unit_price_cents":12900}],"total_cents":12900}"#.to_vec(),
        };
        log.append("letter-old-1", ExpectedVersion::Exactly(0), vec![v1])
            .await
            .unwrap();
        let kv = Arc::new(SqliteKvStore::open(dir.path()).unwrap());
        let analytics = Arc::new(SqliteAnalyticsStore::open(dir.path()).unwrap());
        let batch = log.read_all(Position::ZERO, 1000).await.unwrap();
        assert!(
            batch.iter().any(|e| e.schema_version == 1)
                && batch.iter().any(|e| e.schema_version == 2)
        );
        LettersProjection::new(kv.clone())
            .apply(0, Position::ZERO, &batch)
            .await
            .unwrap();
        AnalyticsProjection::new(analytics.clone())
            .apply(0, Position::ZERO, &batch)
            .await
            .unwrap();

        let queries = LettersQueries::new(kv);
        let old = queries.letter("old-1").await.unwrap().unwrap();
        assert_eq!((old.country.as_deref(), old.total_cents), (None, 12900));
        let new = queries.letter("demo-ada").await.unwrap().unwrap();
        assert_eq!(new.country.as_deref(), Some("GB"));
        let telescope = queries.toy("telescope").await.unwrap().unwrap();
        assert_eq!(
            telescope.letter_count, 3,
            "two seeded letters and the v1 one"
        );
        let countries = analytics.totals_by_country().await.unwrap();
        let unknown = countries.iter().find(|t| t.key == "unknown").unwrap();
        assert_eq!(
            unknown.letters, 2,
            "Rosalind's seeded letter and the v1 one have no country"
        );
        // The command side reads the old letter too: an identical resubmission is a repeat.
        let history = commands.history("letter-old-1").await.unwrap();
        assert_eq!(history.len(), 1);
    }

    #[tokio::test]
    async fn the_sqlite_stores_keep_the_checkpoint_contract() {
        let dir = tempfile::tempdir().unwrap();
        let kv = Arc::new(SqliteKvStore::open(dir.path()).unwrap());
        let analytics = Arc::new(SqliteAnalyticsStore::open(dir.path()).unwrap());
        santa_workshop::contract::checkpoints_are_compare_and_set_per_partition(Arc::new(
            LettersProjection::new(kv),
        ))
        .await;
        santa_workshop::contract::checkpoints_are_compare_and_set_per_partition(Arc::new(
            AnalyticsProjection::new(analytics),
        ))
        .await;
    }

    #[tokio::test]
    async fn the_sqlite_stores_are_rebuilt_into_new_files_and_switched() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(SqliteEventLog::open(dir.path(), SqliteLogOptions::default()).unwrap());
        let kv = Arc::new(SqliteKvStore::open(dir.path()).unwrap());
        let analytics = Arc::new(SqliteAnalyticsStore::open(dir.path()).unwrap());
        santa_workshop::contract::rebuilds_replay_the_log_and_switch(log, kv.clone(), analytics)
            .await;
        drop(kv);
        let mut files: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|name| name.starts_with("read.") || name.starts_with("analytics."))
            .filter(|name| !name.ends_with("-wal") && !name.ends_with("-shm"))
            .collect();
        files.sort();
        assert_eq!(
            files,
            [
                "analytics.1.db",
                "analytics.current",
                "read.1.db",
                "read.current"
            ],
            "the old generation is gone, the pointer names the new one"
        );
        // Built without a WAL or fsync, the files went back to WAL mode at the switch.
        for file in ["read.1.db", "analytics.1.db"] {
            let conn = rusqlite::Connection::open(dir.path().join(file)).unwrap();
            let mode: String = conn
                .query_row("PRAGMA journal_mode", [], |r| r.get(0))
                .unwrap();
            assert_eq!(mode, "wal", "{file}");
        }
        // Opened again, the store is the rebuilt one.
        let kv = SqliteKvStore::open(dir.path()).unwrap();
        assert!(kv.get("LETTER#junk", "#META").await.unwrap().is_none());
        assert!(kv.get("LETTER#during-3", "#META").await.unwrap().is_some());
    }
}

/// Answers a query of one number on the database at `path`.
fn counter(path: &std::path::Path) -> impl Fn(&str) -> i64 + use<> {
    let conn = rusqlite::Connection::open(path).unwrap();
    move |sql| conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

#[test]
fn the_write_ceiling_writes_what_the_letters_projection_writes() {
    let dir = tempfile::tempdir().unwrap();
    let rate = santa_sqlite::letters_write_ceiling(dir.path(), 12_000).unwrap();
    assert!(rate > 0.0);
    let count = counter(&dir.path().join("read.db"));
    assert_eq!(count("SELECT COUNT(*) FROM items"), 12_000 * 3 + 2);
    assert_eq!(
        count("SELECT COUNT(*) FROM items WHERE gsi1pk = 'TOY#bench-kite'"),
        12_000
    );
}

#[test]
fn the_analytics_ceiling_inserts_what_the_analytics_projection_inserts() {
    let dir = tempfile::tempdir().unwrap();
    let rate = santa_sqlite::analytics_write_ceiling(dir.path(), 12_000).unwrap();
    assert!(rate > 0.0);
    let count = counter(&dir.path().join("analytics.db"));
    assert_eq!(
        count("SELECT COUNT(*) FROM letters WHERE status = 'submitted'"),
        12_000
    );
    assert_eq!(count("SELECT COUNT(*) FROM letter_lines"), 24_000);
    assert_eq!(
        count("SELECT SUM(quantity) FROM letter_lines WHERE toy_id = 'bench-kite'"),
        24_000
    );
}
