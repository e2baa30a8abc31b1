//! The event log on SQLite: one writer thread, group commit, per-stream optimistic
//! concurrency and a global, gap-free position.
//!
//! Appends are queued to the writer thread, which takes every request waiting at that
//! moment, writes them in one transaction and commits once (`synchronous=FULL`, so one
//! fsync is shared by the whole group) before it answers any of them.

use std::path::Path;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use santa_cqrs::{EventLog, ExpectedVersion, LogError, NewEvent, Position, RecordedEvent};
use tokio::sync::{mpsc, oneshot, watch};

use crate::OpenError;
use crate::db::{Db, Durability};

const MIGRATIONS: &[&str] = &["CREATE TABLE events (
        position INTEGER PRIMARY KEY,
        stream TEXT NOT NULL,
        version INTEGER NOT NULL,
        event_id TEXT NOT NULL UNIQUE,
        event_type TEXT NOT NULL,
        schema_version INTEGER NOT NULL,
        recorded_at_ms INTEGER NOT NULL,
        data BLOB NOT NULL,
        UNIQUE (stream, version)
    );"];

/// Tuning for the log.
#[derive(Debug, Clone, Copy)]
pub struct SqliteLogOptions {
    /// Appends that may wait for the writer; beyond this, appends fail fast with
    /// `Overloaded` instead of piling up memory.
    pub queue: usize,
    /// The most appends committed together.
    pub max_group: usize,
}

impl Default for SqliteLogOptions {
    fn default() -> Self {
        Self {
            queue: 4096,
            max_group: 512,
        }
    }
}

/// The embedded event log. Only one process may write a given log file.
#[derive(Debug)]
pub struct SqliteEventLog {
    appends: mpsc::Sender<Append>,
    db: Db,
    head: watch::Receiver<Position>,
}

#[derive(Debug)]
struct Append {
    stream: String,
    expected: ExpectedVersion,
    events: Vec<NewEvent>,
    reply: oneshot::Sender<Result<Position, LogError>>,
}

impl SqliteEventLog {
    /// Opens (or creates) `events.db` in `dir` and starts the writer thread.
    pub fn open(dir: &Path, options: SqliteLogOptions) -> Result<Self, OpenError> {
        let db = Db::open(&dir.join("events.db"), Durability::Full, MIGRATIONS)?;
        let start = db
            .with_writer(|conn| {
                conn.query_row("SELECT COALESCE(MAX(position), 0) FROM events", [], |r| {
                    r.get(0)
                })
            })
            .map_err(|source| OpenError::Sqlite {
                path: dir.join("events.db").display().to_string(),
                source,
            })?;
        let (head_tx, head) = watch::channel(Position::new(start));
        let (appends, queue) = mpsc::channel(options.queue.max(1));
        let writer = Writer {
            db: db.clone(),
            head: head_tx,
            max_group: options.max_group.max(1),
        };
        std::thread::Builder::new()
            .name("santa-log-writer".into())
            .spawn(move || writer.run(queue))
            .map_err(OpenError::Thread)?;
        Ok(Self { appends, db, head })
    }
}

fn stream_events(conn: &Connection, stream: &str) -> rusqlite::Result<Vec<RecordedEvent>> {
    let mut stmt = conn.prepare_cached(&format!("{SELECT} WHERE stream = ?1 ORDER BY version"))?;
    stmt.query_map([stream], row_to_event)?.collect()
}

fn lasts(conn: &Connection, streams: &[String]) -> rusqlite::Result<Vec<Option<RecordedEvent>>> {
    let mut stmt = conn.prepare_cached(&format!(
        "{SELECT} WHERE stream = ?1 ORDER BY version DESC LIMIT 1"
    ))?;
    streams
        .iter()
        .map(|stream| stmt.query_row([stream], row_to_event).optional())
        .collect()
}

#[async_trait]
impl EventLog for SqliteEventLog {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Position, LogError> {
        let (reply, answer) = oneshot::channel();
        let append = Append {
            stream: stream.to_owned(),
            expected,
            events,
            reply,
        };
        self.appends.try_send(append).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => LogError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => {
                LogError::Unavailable("the log writer has stopped".into())
            }
        })?;
        answer
            .await
            .map_err(|_| LogError::Unavailable("the log writer stopped before answering".into()))?
    }

    async fn read_stream(&self, stream: &str) -> Result<Vec<RecordedEvent>, LogError> {
        let stream = stream.to_owned();
        self.db
            .read(move |conn| stream_events(conn, &stream))
            .await
            .map_err(|e| LogError::Unavailable(e.to_string()))
    }

    async fn read_lasts(&self, streams: &[String]) -> Result<Vec<Option<RecordedEvent>>, LogError> {
        let streams = streams.to_vec();
        self.db
            .read(move |conn| lasts(conn, &streams))
            .await
            .map_err(|e| LogError::Unavailable(e.to_string()))
    }

    /// Both reads on one connection in one trip to the blocking pool: a command's reads
    /// cost one thread hand-off, not two.
    async fn read_for_decision(
        &self,
        stream: &str,
        context: &[String],
    ) -> Result<(Vec<RecordedEvent>, Vec<Option<RecordedEvent>>), LogError> {
        let (stream, context) = (stream.to_owned(), context.to_vec());
        self.db
            .read(move |conn| {
                let tx = conn.unchecked_transaction()?;
                let events = stream_events(&tx, &stream)?;
                let lasts = lasts(&tx, &context)?;
                tx.finish()?;
                Ok((events, lasts))
            })
            .await
            .map_err(|e| LogError::Unavailable(e.to_string()))
    }

    async fn read_all(
        &self,
        after: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, LogError> {
        let after = i64::try_from(after.get()).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.db
            .read(move |conn| {
                let mut stmt = conn.prepare_cached(&format!(
                    "{SELECT} WHERE position > ?1 ORDER BY position LIMIT ?2"
                ))?;
                stmt.query_map(params![after, limit], row_to_event)?
                    .collect()
            })
            .await
            .map_err(|e| LogError::Unavailable(e.to_string()))
    }

    async fn head(&self) -> Result<Position, LogError> {
        Ok(*self.head.borrow())
    }

    fn watch_head(&self) -> watch::Receiver<Position> {
        self.head.clone()
    }
}

const SELECT: &str = "SELECT position, stream, version, event_id, event_type, schema_version, recorded_at_ms, data FROM events";

fn row_to_event(row: &rusqlite::Row<'_>) -> rusqlite::Result<RecordedEvent> {
    Ok(RecordedEvent {
        position: Position::new(row.get(0)?),
        stream: row.get(1)?,
        version: row.get(2)?,
        event_id: row.get(3)?,
        event_type: row.get(4)?,
        schema_version: row.get(5)?,
        recorded_at_ms: row.get(6)?,
        data: row.get(7)?,
    })
}

/// The writer thread's state.
struct Writer {
    db: Db,
    head: watch::Sender<Position>,
    max_group: usize,
}

impl Writer {
    /// Commits groups until every sender is gone (the log was dropped).
    fn run(self, mut queue: mpsc::Receiver<Append>) {
        let mut group = Vec::with_capacity(self.max_group);
        while let Some(first) = queue.blocking_recv() {
            group.push(first);
            while group.len() < self.max_group {
                match queue.try_recv() {
                    Ok(next) => group.push(next),
                    Err(_) => break,
                }
            }
            let started = Instant::now();
            let head = *self.head.borrow();
            let outcome = self.db.with_writer(|conn| commit_group(conn, &group, head));
            match outcome {
                Ok((results, new_head)) => {
                    self.head.send_replace(new_head);
                    tracing::trace!(appends = group.len(), elapsed = ?started.elapsed(), "group committed");
                    for (append, result) in group.drain(..).zip(results) {
                        let _ = append.reply.send(result);
                    }
                }
                Err(error) => {
                    tracing::error!(%error, appends = group.len(), "event log commit failed");
                    for append in group.drain(..) {
                        let _ = append
                            .reply
                            .send(Err(LogError::Unavailable(error.to_string())));
                    }
                }
            }
        }
        tracing::debug!("event log writer stopped");
    }
}

/// Writes a group in one transaction. Each append is checked first (a repeat of known
/// event ids, then its stream's version) and written only if it passes, so a refused
/// append leaves no trace while the others commit. Returns each append's outcome and the
/// new head.
fn commit_group(
    conn: &mut Connection,
    group: &[Append],
    head: Position,
) -> rusqlite::Result<(Vec<Result<Position, LogError>>, Position)> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut next = head.get();
    let mut results = Vec::with_capacity(group.len());
    {
        let mut known = tx.prepare_cached("SELECT position FROM events WHERE event_id = ?1")?;
        let mut version = tx.prepare_cached("SELECT MAX(version) FROM events WHERE stream = ?1")?;
        let mut insert = tx.prepare_cached(
            "INSERT INTO events (position, stream, version, event_id, event_type, schema_version, recorded_at_ms, data)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        for append in group {
            // Events whose ids are already in the log are a repeat: answer with the position
            // they were given the first time and write nothing.
            if let Some(last) = append.events.last()
                && let Some(position) = known
                    .query_row([&last.event_id], |r| r.get::<_, u64>(0))
                    .optional()?
            {
                results.push(Ok(Position::new(position)));
                continue;
            }
            let actual = version
                .query_row([&append.stream], |r| r.get::<_, Option<u64>>(0))?
                .unwrap_or(0);
            if let ExpectedVersion::Exactly(expected) = append.expected
                && expected != actual
            {
                results.push(Err(LogError::Conflict {
                    stream: append.stream.clone(),
                    expected,
                    actual,
                }));
                continue;
            }
            for (i, event) in append.events.iter().enumerate() {
                next += 1;
                insert.execute(params![
                    next,
                    append.stream,
                    actual + 1 + i as u64,
                    event.event_id,
                    event.event_type,
                    event.schema_version,
                    now,
                    event.data
                ])?;
            }
            results.push(Ok(Position::new(next)));
        }
    }
    tx.commit()?;
    Ok((results, Position::new(next)))
}
