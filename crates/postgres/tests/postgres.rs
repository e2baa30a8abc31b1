//! The PostgreSQL adapters against a real server (`SANTA_TEST_POSTGRES`, an admin URL such
//! as `postgres://postgres@127.0.0.1:5432/postgres`; `.ci/run` sets it).
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::sync::Arc;

use santa_cqrs::{Leases, Position, Projection, ProjectionError, contract};
use santa_postgres::{Pg, PgAnalyticsStore, PgKvStore, PgLeases, drop_database, fresh_database};
use santa_workshop::analytics::{AnalyticsProjection, AnalyticsStore};
use santa_workshop::kv::MemoryKvStore;
use santa_workshop::letters::{LettersProjection, LettersQueries};

async fn database() -> Option<Pg> {
    let admin = contract::service_url("SANTA_TEST_POSTGRES")?;
    let url = fresh_database(&admin, "santa_test").await.unwrap();
    Some(Pg::connect(&url, 4).await.unwrap())
}

#[tokio::test]
async fn the_postgres_key_value_store_holds_exactly_what_the_reference_store_holds() {
    let Some(pg) = database().await else { return };
    let store = Arc::new(PgKvStore::open(pg.clone()).await.unwrap());
    // Opening again finds the schema migrated and changes nothing.
    PgKvStore::open(pg).await.unwrap();
    let batch = santa_workshop::contract::demo_events().await;
    let head = batch.last().unwrap().position;
    let projection = LettersProjection::new(store.clone());
    // In two batches, so the second reads items the first wrote.
    let (first, second) = batch.split_at(8);
    projection.apply(0, Position::ZERO, first).await.unwrap();
    projection
        .apply(0, first.last().unwrap().position, second)
        .await
        .unwrap();
    let stale = projection.apply(0, Position::ZERO, &batch).await;
    assert!(
        matches!(stale, Err(ProjectionError::Moved { actual, .. }) if actual == head),
        "{stale:?}"
    );
    projection.apply(0, head, &batch).await.unwrap();
    assert_eq!(projection.checkpoint(0).await.unwrap(), head);

    let reference = Arc::new(MemoryKvStore::default());
    LettersProjection::new(reference.clone())
        .apply(0, Position::ZERO, &batch)
        .await
        .unwrap();
    let (pg_queries, ref_queries) = (LettersQueries::new(store), LettersQueries::new(reference));
    for toy in ["rubiks-cube", "teddy-bear", "lego-castle", "telescope"] {
        assert_eq!(
            pg_queries.toy(toy).await.unwrap(),
            ref_queries.toy(toy).await.unwrap(),
            "{toy}"
        );
        assert_eq!(
            pg_queries.toy_letters(toy, None, 50).await.unwrap(),
            ref_queries.toy_letters(toy, None, 50).await.unwrap(),
            "{toy}"
        );
    }
    assert_eq!(
        pg_queries.letters(None, 3).await.unwrap(),
        ref_queries.letters(None, 3).await.unwrap()
    );
    let linus = pg_queries.letter("demo-linus").await.unwrap().unwrap();
    assert_eq!(
        linus.status,
        santa_workshop::letters::LetterStatus::Cancelled
    );
}

#[tokio::test]
async fn the_postgres_analytics_store_reports_exact_totals() {
    let Some(pg) = database().await else { return };
    let store = Arc::new(PgAnalyticsStore::open(pg).await.unwrap());
    let batch = santa_workshop::contract::demo_events().await;
    let head = batch.last().unwrap().position;
    let projection = AnalyticsProjection::new(store.clone());
    projection.apply(3, Position::ZERO, &batch).await.unwrap();
    projection.apply(3, head, &batch).await.unwrap();
    assert_eq!(projection.checkpoint(3).await.unwrap(), head);
    assert_eq!(
        projection.checkpoint(0).await.unwrap(),
        Position::ZERO,
        "partitions are independent"
    );
    let demand = store.toy_demand(10).await.unwrap();
    assert_eq!(
        (
            demand[0].toy_id.as_str(),
            demand[0].quantity,
            demand[0].letters
        ),
        ("rubiks-cube", 3, 2)
    );
    assert!(demand.iter().all(|d| d.toy_id != "lego-castle"));
    let countries = store.totals_by_country().await.unwrap();
    let gb = countries.iter().find(|t| t.key == "GB").unwrap();
    assert_eq!(
        (gb.letters, gb.quantity, gb.total_cents),
        (2, 3 + 4, 12900 + 2 * 1299 + 1299 + 3 * 799)
    );
    let days = store.totals_by_day().await.unwrap();
    assert_eq!(days.iter().map(|d| d.letters).sum::<i64>(), 4);
}

#[tokio::test]
async fn leases_are_exclusive_shared_fairly_and_released_with_their_process() {
    let Some(pg) = database().await else { return };
    let a = PgLeases::join(pg.clone()).await.unwrap();
    let b = PgLeases::join(pg.clone()).await.unwrap();
    assert!(
        a.fair_share("letters", 8).await.unwrap() <= 4,
        "two members share eight partitions"
    );
    let held = a
        .try_acquire("letters", 0)
        .await
        .unwrap()
        .expect("a free partition is granted");
    assert!(held.is_held());
    assert!(
        b.try_acquire("letters", 0).await.unwrap().is_none(),
        "a held partition is not granted twice"
    );
    assert!(
        b.try_acquire("analytics", 0).await.unwrap().is_some(),
        "projections have their own partitions"
    );
    drop(held);
    // The release is asynchronous; the lock is granted once it lands.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        if b.try_acquire("letters", 0).await.unwrap().is_some() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a released lease becomes free"
        );
        tokio::task::yield_now().await;
    }
}

/// Two deployments on one PostgreSQL server, in two databases: each shares its partitions
/// among its own processes only.
#[tokio::test]
async fn processes_of_another_database_take_no_share_of_this_ones_partitions() {
    let (Some(here), Some(elsewhere)) = (database().await, database().await) else {
        return;
    };
    let others = [
        PgLeases::join(elsewhere.clone()).await.unwrap(),
        PgLeases::join(elsewhere).await.unwrap(),
    ];
    for other in &others {
        assert!(other.fair_share("letters", 8).await.unwrap() <= 4);
    }
    let alone = PgLeases::join(here).await.unwrap();
    assert_eq!(alone.fair_share("letters", 8).await.unwrap(), 8);
}

#[tokio::test]
async fn the_postgres_stores_keep_the_checkpoint_contract() {
    let Some(pg) = database().await else { return };
    let kv = Arc::new(PgKvStore::open(pg.clone()).await.unwrap());
    let analytics = Arc::new(PgAnalyticsStore::open(pg).await.unwrap());
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
async fn the_postgres_dead_letters_keep_the_contract() {
    let Some(pg) = database().await else { return };
    let dead = santa_postgres::PgDeadLetters::open(pg).await.unwrap();
    contract::dead_letters_are_kept_per_projection(Arc::new(dead)).await;
}

#[tokio::test]
async fn the_postgres_stores_are_rebuilt_into_new_schemas_and_switched() {
    let Some(admin) = contract::service_url("SANTA_TEST_POSTGRES") else {
        return;
    };
    let url = fresh_database(&admin, "santa_test").await.unwrap();
    let pg = Pg::connect(&url, 4).await.unwrap();
    let kv = Arc::new(PgKvStore::open(pg.clone()).await.unwrap());
    let analytics = Arc::new(PgAnalyticsStore::open(pg.clone()).await.unwrap());
    let log = Arc::new(santa_cqrs::memory::MemoryEventLog::default());
    santa_workshop::contract::rebuilds_replay_the_log_and_switch(log, kv, analytics).await;
    // Opening again finds the switched schemas fully migrated, and no left-overs.
    PgKvStore::open(pg.clone()).await.unwrap();
    PgAnalyticsStore::open(pg.clone()).await.unwrap();
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let schemas: Vec<String> = client
        .query(
            "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'santa_%' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(schemas, ["santa_analytics", "santa_kv"]);
}

/// One batch whose changes depend on each other: a letter repeated, cancelled twice, a
/// toy changed between letters, a letter submitted again after its cancellation. Applied
/// a run at a time, it must end as one change at a time would.
#[tokio::test]
async fn the_postgres_analytics_store_applies_a_batch_as_one_change_at_a_time_would() {
    use santa_workshop::analytics::AnalyticsChange;
    let Some(pg) = database().await else { return };
    let store = PgAnalyticsStore::open(pg).await.unwrap();
    let toy = |id: &str, name: &str| AnalyticsChange::UpsertToy {
        id: id.into(),
        name: name.into(),
        price_cents: 100,
    };
    let letter = letter_change;
    let cancel = |id: &str| AnalyticsChange::CancelLetter {
        id: id.into(),
        at_ms: 1_764_000_100_000,
    };
    let changes = vec![
        toy("kite", "Kite"),
        letter("a", "GB", &[("kite", 2, 100)]),
        letter("a", "GB", &[("kite", 2, 100)]),
        cancel("a"),
        cancel("a"),
        letter("b", "FI", &[("kite", 1, 100), ("drum", 3, 50)]),
        toy("kite", "Red kite"),
        letter("c", "FI", &[("drum", 1, 50)]),
        cancel("c"),
        letter("c", "FI", &[("drum", 1, 50)]),
    ];
    let upto = Position::new(changes.len() as u64);
    let changes: Vec<_> = (1..).map(Position::new).zip(changes).collect();
    store
        .apply(
            santa_cqrs::Progress::Advance {
                partition: 0,
                expected: Position::ZERO,
                upto,
            },
            changes,
        )
        .await
        .unwrap();
    let demand: Vec<_> = store
        .toy_demand(10)
        .await
        .unwrap()
        .into_iter()
        .map(|d| (d.toy_id, d.name, d.quantity, d.letters, d.value_cents))
        .collect();
    assert_eq!(
        demand,
        [
            ("drum".to_owned(), "drum".to_owned(), 3, 1, 150),
            ("kite".to_owned(), "Red kite".to_owned(), 1, 1, 100)
        ]
    );
    let countries: Vec<_> = store
        .totals_by_country()
        .await
        .unwrap()
        .into_iter()
        .map(|t| (t.key, t.letters, t.quantity, t.total_cents))
        .collect();
    assert_eq!(countries, [("FI".to_owned(), 1, 4, 250)]);
}

/// The workers of eight partitions hand their batches over at once, as a projector's do:
/// batches that gather share a transaction. Every batch must end as if applied alone — the
/// toys' counters summed over all partitions, every letter there once — and a stale batch
/// among them is refused alone, without failing the others.
#[tokio::test]
async fn batches_of_many_partitions_applied_together_end_as_one_at_a_time() {
    use santa_cqrs::EventLog;
    use santa_workshop::CommandService;
    let Some(pg) = database().await else { return };
    let log = Arc::new(santa_cqrs::memory::MemoryEventLog::default());
    let commands = CommandService::new(log.clone());
    santa_workshop::seed::seed(&commands).await.unwrap();
    let seeded = log.head().await.unwrap();
    for n in 0..160 {
        santa_workshop::contract::submit_teddy_letter(&commands, &format!("group-{n:03}")).await;
    }
    let events = log.read_all(Position::ZERO, 10_000).await.unwrap();
    let (seed, letters) = events.split_at(events.iter().filter(|e| e.position <= seeded).count());
    let kv = Arc::new(PgKvStore::open(pg.clone()).await.unwrap());
    let analytics = Arc::new(PgAnalyticsStore::open(pg).await.unwrap());
    let projections: [Arc<dyn Projection>; 2] = [
        Arc::new(LettersProjection::new(kv.clone())),
        Arc::new(AnalyticsProjection::new(analytics.clone())),
    ];
    for projection in &projections {
        projection.apply(0, Position::ZERO, seed).await.unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for partition in 1..=8u32 {
            let mine: Vec<_> = letters
                .iter()
                .enumerate()
                .filter(|(i, _)| *i as u32 % 8 == partition - 1)
                .map(|(_, e)| e.clone())
                .collect();
            let projection = projection.clone();
            tasks.spawn(async move {
                let mut at = Position::ZERO;
                for batch in mine.chunks(5) {
                    projection.apply(partition, at, batch).await.unwrap();
                    at = batch.last().unwrap().position;
                }
                (partition, at)
            });
        }
        // Partition 0 is past the seed already: this worker is stale.
        let stale = projection.apply(0, Position::ZERO, seed).await;
        assert!(
            matches!(stale, Err(ProjectionError::Moved { actual, .. }) if actual == seeded),
            "{stale:?}"
        );
        while let Some(done) = tasks.join_next().await {
            let (partition, at) = done.unwrap();
            assert_eq!(projection.checkpoint(partition).await.unwrap(), at);
        }
        assert_eq!(projection.checkpoint(0).await.unwrap(), seeded);
    }

    let reference = Arc::new(MemoryKvStore::default());
    LettersProjection::new(reference.clone())
        .apply(0, Position::ZERO, &events)
        .await
        .unwrap();
    let (pg_queries, ref_queries) = (LettersQueries::new(kv), LettersQueries::new(reference));
    let teddy = pg_queries.toy("teddy-bear").await.unwrap().unwrap();
    assert_eq!(
        Some(&teddy),
        ref_queries.toy("teddy-bear").await.unwrap().as_ref()
    );
    assert_eq!(
        pg_queries
            .toy_letters("teddy-bear", None, 500)
            .await
            .unwrap(),
        ref_queries
            .toy_letters("teddy-bear", None, 500)
            .await
            .unwrap()
    );
    let teddy_demand = analytics
        .toy_demand(10)
        .await
        .unwrap()
        .into_iter()
        .find(|d| d.toy_id == "teddy-bear")
        .unwrap();
    let teddies = ref_queries.toy("teddy-bear").await.unwrap().unwrap();
    assert_eq!(
        (teddy_demand.letters, teddy_demand.quantity),
        (
            i64::try_from(teddies.letter_count).unwrap(),
            i64::try_from(teddies.requested_quantity).unwrap()
        ),
        "the analytics store counted every letter once"
    );
}

/// A new letter for the analytics store, its lines as (toy, quantity, unit price).
fn letter_change(
    id: &str,
    country: &str,
    lines: &[(&str, u32, i64)],
) -> santa_workshop::analytics::AnalyticsChange {
    use santa_workshop::analytics::{AnalyticsChange, LetterRow, LineRow};
    AnalyticsChange::InsertLetter(LetterRow {
        id: id.into(),
        child: "Ada".into(),
        country: Some(country.into()),
        total_cents: lines.iter().map(|l| i64::from(l.1) * l.2).sum(),
        submitted_at_ms: 1_764_000_000_000,
        lines: lines
            .iter()
            .map(|&(toy_id, quantity, unit_price_cents)| LineRow {
                toy_id: toy_id.into(),
                quantity,
                unit_price_cents,
            })
            .collect(),
    })
}

/// A batch the store cannot write, handed over with others that may share its
/// transaction, fails alone: the others are written and move their checkpoints, and it
/// keeps its own error (which a projection needs to set the right event aside).
#[tokio::test]
async fn a_batch_that_fails_beside_others_fails_alone() {
    let Some(pg) = database().await else { return };
    let store = Arc::new(PgAnalyticsStore::open(pg).await.unwrap());
    let broken = 8;
    let mut tasks = tokio::task::JoinSet::new();
    for partition in 0..=broken {
        let store = store.clone();
        tasks.spawn(async move {
            // Naming one toy twice breaks the lines' key: the database refuses the batch.
            let lines: &[(&str, u32, i64)] = if partition == broken {
                &[("kite", 1, 100), ("kite", 2, 100)]
            } else {
                &[("kite", 1, 100)]
            };
            let at = Position::new(u64::from(partition) + 1);
            let change = letter_change(&format!("letter-{partition}"), "FI", lines);
            let progress = santa_cqrs::Progress::Advance {
                partition,
                expected: Position::ZERO,
                upto: at,
            };
            (partition, store.apply(progress, vec![(at, change)]).await)
        });
    }
    while let Some(done) = tasks.join_next().await {
        let (partition, result) = done.unwrap();
        let checkpoint = store.checkpoint(partition).await.unwrap();
        if partition == broken {
            assert!(
                matches!(result, Err(ProjectionError::Store(_))),
                "{result:?}"
            );
            assert_eq!(checkpoint, Position::ZERO);
        } else {
            result.unwrap();
            assert_eq!(checkpoint, Position::new(u64::from(partition) + 1));
        }
    }
    let kite = store.toy_demand(10).await.unwrap();
    assert_eq!(
        kite.iter()
            .map(|d| (d.toy_id.as_str(), d.letters, d.quantity))
            .collect::<Vec<_>>(),
        [("kite", 8, 8)],
        "every letter but the broken one"
    );
}

#[tokio::test]
async fn a_database_made_for_a_run_is_dropped_even_while_connected() {
    let Some(admin) = contract::service_url("SANTA_TEST_POSTGRES") else {
        return;
    };
    let url = fresh_database(&admin, "santa_test").await.unwrap();
    let open = Pg::connect(&url, 1).await.unwrap();
    drop_database(&admin, &url).await.unwrap();
    assert!(
        Pg::connect(&url, 1).await.is_err(),
        "the dropped database still takes connections"
    );
    drop(open);
    // Only a name as `fresh_database` makes them is taken.
    let refused = drop_database(&admin, "postgres://postgres@127.0.0.1/x;DROP").await;
    assert!(matches!(refused, Err(santa_postgres::OpenError::Url(_))));
}
