//! Storage ceilings: how fast this machine writes the rows a projection's rebuild writes,
//! with nothing else to do (no event read or decoded, no rule run). The benchmark suite
//! reports them beside the rebuild rates: a rebuild cannot go faster than its own writes.

use std::ops::Range;
use std::path::Path;

use rusqlite::{Transaction, params};
use santa_workshop::analytics::{LetterRow, LineRow};

use crate::OpenError;
use crate::db::{Durability, WRITER_CACHE};

/// Letters per transaction, as many as a rebuild replays per batch.
const BATCH: u64 = 5_000;

/// The letters table's ceiling: for `letters` synthetic two-line letters, what the letters
/// projection does per letter (looks the letter up, writes it, its two lines and, once
/// per batch, both toys' counters), with the same statements, into a fresh `read.db` in
/// `dir`. Returns letters written per second.
pub fn letters_write_ceiling(dir: &Path, letters: u64) -> Result<f64, OpenError> {
    let letter_data = format!(
        "{{\"id\":\"{}\",\"child\":\"Bench\",\"address\":\"1 Load Lane\",\"country\":\"FI\",\
         \"status\":\"submitted\",\"lines\":[{{\"toy_id\":\"bench-kite\",\"quantity\":2,\
         \"unit_price_cents\":1250}},{{\"toy_id\":\"bench-drum\",\"quantity\":1,\
         \"unit_price_cents\":4999}}],\"total_cents\":7499,\"submitted_at_ms\":1764000000000,\
         \"cancelled_at_ms\":null,\"position\":123456}}",
        uuid_like(0)
    );
    measure(
        &dir.join("read.db"),
        crate::kv::MIGRATIONS,
        letters,
        |tx, batch| {
            let mut upsert = tx.prepare_cached(crate::kv::UPSERT)?;
            let last = batch.end - 1;
            for n in batch {
                let id = uuid_like(n);
                let pk = format!("LETTER#{id}");
                crate::kv::get(tx, &pk, "#META")?;
                upsert.execute(params![pk, "#META", "LETTERS", id, letter_data])?;
                for toy in ["bench-kite", "bench-drum"] {
                    upsert.execute(params![
                        pk,
                        format!("LINE#{toy}"),
                        format!("TOY#{toy}"),
                        pk,
                        "{\"child\":\"Bench\",\"quantity\":2}"
                    ])?;
                }
            }
            for toy in ["bench-kite", "bench-drum"] {
                upsert.execute(params![
                    format!("TOY#{toy}"),
                    "#META",
                    "TOYS",
                    toy,
                    format!("{{\"id\":\"{toy}\",\"letter_count\":{last}}}")
                ])?;
            }
            Ok(())
        },
    )
}

/// The analytics tables' ceiling: for `letters` synthetic two-line letters, the rows the
/// analytics projection inserts (the letter and its lines, with the projection's own
/// statements), into a fresh `analytics.db` in `dir`. Returns letters written per second.
pub fn analytics_write_ceiling(dir: &Path, letters: u64) -> Result<f64, OpenError> {
    measure(
        &dir.join("analytics.db"),
        crate::analytics::MIGRATIONS,
        letters,
        |tx, batch| {
            let mut inserts = crate::analytics::LetterInserts::new(tx)?;
            for n in batch {
                inserts.insert(&LetterRow {
                    id: uuid_like(n),
                    child: "Bench".to_owned(),
                    country: Some("FI".to_owned()),
                    total_cents: 7499,
                    submitted_at_ms: 1_764_000_000_000,
                    lines: vec![
                        LineRow {
                            toy_id: "bench-kite".to_owned(),
                            quantity: 2,
                            unit_price_cents: 1250,
                        },
                        LineRow {
                            toy_id: "bench-drum".to_owned(),
                            quantity: 1,
                            unit_price_cents: 4999,
                        },
                    ],
                })?;
            }
            Ok(())
        },
    )
}

/// Opens a fresh database at `path` as a rebuild opens its next generation (no WAL, no
/// fsync, no foreign-key checks, secondary indexes left out, the writer's page cache), has
/// `write` write letters `1..=letters` in transactions of [`BATCH`], completes the file as
/// a rebuild does (checks the foreign keys, builds the indexes), syncs it once as the
/// switch does, and returns letters per second over all of it.
fn measure(
    path: &Path,
    migrations: &[&str],
    letters: u64,
    mut write: impl FnMut(&Transaction<'_>, Range<u64>) -> rusqlite::Result<()>,
) -> Result<f64, OpenError> {
    let fail = |source| OpenError::Sqlite {
        path: path.display().to_string(),
        source,
    };
    let mut conn = crate::db::open(path, Durability::Scratch, migrations)?;
    conn.execute_batch(WRITER_CACHE).map_err(fail)?;
    let indexes = crate::db::defer_secondary_indexes(&conn).map_err(fail)?;
    let writeback = crate::db::Writeback::new(path.to_path_buf());
    let started = std::time::Instant::now();
    let mut next = 1;
    while next <= letters {
        let end = (next + BATCH).min(letters + 1);
        let tx = conn.transaction().map_err(fail)?;
        write(&tx, next..end).map_err(fail)?;
        tx.commit().map_err(fail)?;
        writeback.wrote();
        next = end;
    }
    crate::db::complete(&mut conn, &indexes).map_err(|e| match e {
        crate::db::CompleteError::Sqlite(source) => fail(source),
        other => OpenError::Io {
            path: path.display().to_string(),
            source: std::io::Error::other(other.to_string()),
        },
    })?;
    drop(conn);
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|source| OpenError::Io {
            path: path.display().to_string(),
            source,
        })?;
    Ok(letters as f64 / started.elapsed().as_secs_f64().max(f64::EPSILON))
}

/// A time-ordered, UUID-shaped id for `n`, like the letters' own (UUIDv7).
fn uuid_like(n: u64) -> String {
    format!(
        "0192f0c4-{:04x}-7000-8000-{:012x}",
        (n >> 48) & 0xffff,
        n & 0xffff_ffff_ffff
    )
}
