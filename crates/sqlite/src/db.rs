//! Connections, pragmas, migrations, and the bridges to the blocking pool and to a read
//! store's writer thread, shared by the stores.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, mpsc};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use santa_workshop::kv::StoreError;

use crate::OpenError;

/// How hard a database works to survive power loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Durability {
    /// `synchronous=FULL`: a commit is on disk when it returns. For the event log.
    Full,
    /// `synchronous=NORMAL`: a crash may lose the newest commits, never consistency. For
    /// read stores, whose checkpoint is committed with their rows and replays from the log.
    Normal,
    /// No WAL (the rollback journal in memory), no fsync and no foreign-key checks while
    /// rows are written: a crash may leave the file corrupt. For a read store's next
    /// generation while it is rebuilt, which nothing needs after a crash; [`complete`]
    /// checks the keys once at the end, and the switch gives the file its WAL back (see
    /// `generations`).
    Scratch,
}

/// The committing connection of a read store copies the WAL back into the database file
/// once it holds this many pages, inside its commit, and syncs the file. Small copies keep
/// the log's commits (which clients wait on) from queueing behind a large one of another
/// database on the same disk: with every database at 4,000 pages, p99 acknowledgement at
/// 1,000–4,000 letters/s was 9–11 ms; at 250, 2.6–4.7 ms.
pub(crate) const WAL_AUTOCHECKPOINT: u32 = 250;

/// The same for the log (`Durability::Full`), whose copies are inside the commits that
/// clients wait on: at 250 pages one commit in about seventy carried one at 4,462
/// letters/s. At 2,000 (8 MB of WAL), ten 20 s runs in turn with 250 on one host: p99
/// acknowledgement lower in seven of the ten pairs, median 3.73 against 4.62 ms; p99.9
/// median 9.9 against 13.7 ms (1,000 pages, three runs: 4.01–4.67 ms).
pub(crate) const LOG_WAL_AUTOCHECKPOINT: u32 = 2000;

/// The writer connection's page cache (16 MB).
pub(crate) const WRITER_CACHE: &str = "PRAGMA cache_size = -16000";

/// Opens a connection with the project's pragmas and brings the schema up to date.
pub(crate) fn open(
    path: &Path,
    durability: Durability,
    migrations: &[&str],
) -> Result<Connection, OpenError> {
    let fail = |source| OpenError::Sqlite {
        path: path.display().to_string(),
        source,
    };
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn = Connection::open_with_flags(path, flags).map_err(fail)?;
    let (journal, synchronous, foreign_keys, autocheckpoint) = match durability {
        Durability::Full => ("WAL", "FULL", "ON", LOG_WAL_AUTOCHECKPOINT),
        Durability::Normal => ("WAL", "NORMAL", "ON", WAL_AUTOCHECKPOINT),
        Durability::Scratch => ("MEMORY", "OFF", "OFF", WAL_AUTOCHECKPOINT),
    };
    // No memory map: a connection that finds the database changed by another one drops its
    // map whole (munmap, and a TLB shootdown on every core) at its next read transaction,
    // which with the log written thousands of times a second was 8 % of the server's CPU;
    // reading pages with pread costs less. At 4,400 letters/s: 13.6 → 12.5 CPU-seconds per
    // 10 s, p50 acknowledgement 2.0 → 1.3 ms.
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = {journal}; PRAGMA synchronous = {synchronous}; PRAGMA busy_timeout = {busy};
         PRAGMA foreign_keys = OFF; PRAGMA cache_size = -4000; PRAGMA mmap_size = 0;
         PRAGMA wal_autocheckpoint = {autocheckpoint};",
        busy = BUSY_TIMEOUT.as_millis()
    ))
    .map_err(fail)?;
    // Plans never change with bound values: without this, SQLite's STAT4 build re-prepares
    // statements whose parameters feed range estimates, on every new binding.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )
    .map_err(fail)?;
    // Keys are checked after the migrations, not during them: a migration may rebuild a
    // table other tables refer to (create, copy, drop, rename), which they would refuse.
    migrate(&mut conn, migrations).map_err(fail)?;
    conn.execute_batch(&format!("PRAGMA foreign_keys = {foreign_keys}"))
        .map_err(fail)?;
    Ok(conn)
}

/// Drops the indexes a schema made with `CREATE INDEX` (not unique ones, nor those of
/// primary keys and constraints, which writes rely on) and returns the statements that
/// make them again. A rebuild writes its fresh file without them and has [`complete`]
/// build each in one pass at the end (see `complete` for what it saves).
pub(crate) fn defer_secondary_indexes(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let indexes = conn
        .prepare(
            "SELECT m.name, m.sql FROM sqlite_master m
             WHERE m.type = 'index' AND m.sql IS NOT NULL AND NOT EXISTS (
                 SELECT 1 FROM pragma_index_list(m.tbl_name) l WHERE l.name = m.name AND l.\"unique\")
             ORDER BY m.name",
        )?
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    for (name, _) in &indexes {
        conn.execute_batch(&format!("DROP INDEX \"{name}\""))?;
    }
    Ok(indexes.into_iter().map(|(_, sql)| sql).collect())
}

/// Why a file written as [`Durability::Scratch`] cannot be completed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CompleteError {
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    #[error("the rebuilt rows break foreign keys: {0}")]
    ForeignKeys(String),
    #[error("cannot sync the rebuilt file: {0}")]
    Io(#[from] std::io::Error),
}

/// Finishes a file written as [`Durability::Scratch`]: checks every foreign key once (the
/// rows were written without checks), builds the deferred `indexes` and turns the checks
/// back on for the writes that follow. Writing 300,000 analytics letters (medians of
/// three, in turn): 95,900 letters/s with every row checked and the toy index kept up to
/// date, 102,600 with the index built at the end, about 120,000 with the keys checked once
/// at the end as well (that check: 0.2–0.3 s). Rebuilds of a 300,000-letter log, three
/// each in turn: analytics 63,700 → 69,800 events/s, letters 33,200 → 34,700.
///
/// The check only reads: a connection of its own runs it on another thread while this one
/// builds the indexes, whose writes to the file wait (as long as it takes) for the check's
/// read to end. Analytics rebuilds of a 300,000-letter log, three each in turn: 175,400 /
/// 169,400 / 165,500 → 180,800 / 179,900 / 185,900 events/s (the check took 0.15 s of the
/// 0.37 s the file's completion took, the index 0.22 s). Meanwhile a third thread syncs
/// what the replay wrote and the background writeback (see [`Writeback`]) has not yet
/// sent to the disk, which the switch would otherwise wait for.
pub(crate) fn complete(conn: &mut Connection, indexes: &[String]) -> Result<(), CompleteError> {
    let path = conn.path().filter(|p| !p.is_empty()).map(PathBuf::from);
    let broken = std::thread::scope(|scope| -> Result<Vec<String>, CompleteError> {
        // The replay wrote the file without syncing it; its pages go to the disk while the
        // indexes are built, instead of all at once when the file is switched to.
        let flush = path
            .clone()
            .map(|path| scope.spawn(move || sync_data(&path)));
        let check = path.map(|path| {
            scope.spawn(move || {
                let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
                let reader = Connection::open_with_flags(path, flags)?;
                // Started late, it waits for the index builds to be written instead.
                reader.busy_timeout(COMPLETE_BUSY_TIMEOUT)?;
                broken_foreign_keys(&reader)
            })
        });
        conn.busy_timeout(COMPLETE_BUSY_TIMEOUT)?;
        let built = build_indexes(conn, indexes);
        conn.busy_timeout(BUSY_TIMEOUT)?;
        built?;
        if let Some(flush) = flush {
            flush
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
        }
        Ok(match check {
            Some(check) => check
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?,
            // A database without a file: one thing after the other.
            None => broken_foreign_keys(conn)?,
        })
    })?;
    if !broken.is_empty() {
        return Err(CompleteError::ForeignKeys(broken.join("; ")));
    }
    conn.execute_batch("PRAGMA foreign_keys = ON")?;
    Ok(())
}

/// How long a connection waits for another one's lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`complete`]'s index builds and its foreign-key check wait for each other's
/// locks: as long as the other takes, which grows with the file.
const COMPLETE_BUSY_TIMEOUT: Duration = Duration::from_secs(3600);

/// The foreign keys `conn`'s rows break, a line per (table, parent).
fn broken_foreign_keys(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    conn.prepare("SELECT \"table\", parent, count(*) FROM pragma_foreign_key_check GROUP BY 1, 2")?
        .query_map([], |r| {
            Ok(format!(
                "{} rows of {} name no row of {}",
                r.get::<_, i64>(2)?,
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?
            ))
        })?
        .collect()
}

/// Builds `indexes` in one transaction.
fn build_indexes(conn: &mut Connection, indexes: &[String]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    for sql in indexes {
        tx.execute_batch(sql)?;
    }
    tx.commit()
}

/// Applies the migrations the database has not seen yet, tracked in `user_version`.
fn migrate(conn: &mut Connection, migrations: &[&str]) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let done: usize = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (i, migration) in migrations.iter().enumerate().skip(done) {
        tx.execute_batch(migration)?;
        tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))?;
    }
    if done < migrations.len() {
        let broken = broken_foreign_keys(&tx)?;
        if !broken.is_empty() {
            return Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY),
                Some(format!(
                    "migrated rows break foreign keys: {}",
                    broken.join("; ")
                )),
            ));
        }
    }
    tx.commit()
}

/// Sends a file's written pages to the disk in the background, one sync at a time, so that
/// a file written without syncs is not written out whole when it is finally synced: Linux
/// starts writing dirty pages back only after 30 s, or once a tenth of memory is dirty.
/// Rebuilds of a 300,000-letter log, three each in turn: analytics 68,500 / 78,900 /
/// 83,200 → 81,000 / 88,000 / 90,100 events/s, letters 28,300 / 30,000 / 29,400 → 33,000
/// / 33,600 / 34,000, with the replaced file's removal taken off the switch as well (see
/// `generations`).
#[derive(Debug)]
pub(crate) struct Writeback {
    path: PathBuf,
    syncing: Arc<AtomicBool>,
}

impl Writeback {
    pub(crate) fn new(path: PathBuf) -> Self {
        Self {
            path,
            syncing: Arc::default(),
        }
    }

    /// After a write: starts a sync of the file on a thread of its own, unless one is
    /// running (a later write starts the next).
    pub(crate) fn wrote(&self) {
        if self.syncing.swap(true, Ordering::AcqRel) {
            return;
        }
        let (path, syncing) = (self.path.clone(), self.syncing.clone());
        let started = std::thread::Builder::new()
            .name("santa-writeback".into())
            .spawn(move || {
                // Only ever early: whoever needs the file durable syncs it and hears of
                // what fails.
                if let Err(error) = sync_data(&path) {
                    tracing::debug!(%error, path = %path.display(), "background sync failed");
                }
                syncing.store(false, Ordering::Release);
            });
        if started.is_err() {
            self.syncing.store(false, Ordering::Release);
        }
    }
}

/// Sends a file's written pages (not its metadata) to the disk.
fn sync_data(path: &Path) -> std::io::Result<()> {
    std::fs::File::open(path)?.sync_data()
}

type Job = Box<dyn FnOnce() + Send>;

/// A thread of its own for a read store's writes, at a lower CPU priority (see
/// [`crate::ReadStoreOptions`]): a nice value belongs to a thread, and one raised cannot be
/// lowered again without privileges, so these writes cannot borrow the blocking pool's
/// threads. It stops when the store is dropped.
#[derive(Debug)]
struct Lane {
    jobs: mpsc::Sender<Job>,
}

impl Lane {
    fn start(path: &Path, nice: u8) -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let name = path.file_stem().map_or_else(String::new, |s| {
            s.to_string_lossy().chars().take(9).collect::<String>()
        });
        std::thread::Builder::new()
            .name(format!("santa-w-{name}"))
            .spawn(move || {
                if let Err(error) = lower_priority(nice) {
                    tracing::debug!(%error, "a read store's writes run at the process's priority");
                }
                while let Ok(job) = queue.recv() {
                    // A job that panics drops its answer's sender: the caller hears of it,
                    // and the lane goes on.
                    let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
                }
            })?;
        Ok(Self { jobs })
    }

    async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = answer.send(f());
        });
        self.jobs
            .send(job)
            .map_err(|_| StoreError::Unavailable("the store's writer stopped".into()))?;
        answered
            .await
            .map_err(|_| StoreError::Unavailable("store task failed: the write panicked".into()))
    }
}

/// Raises the calling thread's nice value by `nice`, to 19 at most (on Linux a nice value
/// is a thread's, not the process's).
fn lower_priority(nice: u8) -> std::io::Result<()> {
    let now = rustix::process::getpriority_process(None)?;
    rustix::process::setpriority_process(None, lowered(now, nice))?;
    Ok(())
}

/// A nice value raised by `by`, within the range Linux allows.
fn lowered(nice: i32, by: u8) -> i32 {
    (nice + i32::from(by)).min(19)
}

/// One writer connection and a few readers, used from the blocking pool; a read store's
/// writes go through a [`Lane`] of its own instead.
#[derive(Debug, Clone)]
pub(crate) struct Db {
    writer: Arc<Mutex<Connection>>,
    readers: Arc<[Mutex<Connection>]>,
    next_reader: Arc<AtomicUsize>,
    lane: Option<Arc<Lane>>,
}

pub(crate) const READERS: usize = 4;

impl Db {
    /// Opens the database at `path`; with a `writer_nice` above 0 its writes run on a
    /// [`Lane`] of their own at that much lower a priority, else in the blocking pool.
    pub(crate) fn open(
        path: &Path,
        durability: Durability,
        migrations: &[&str],
        writer_nice: u8,
    ) -> Result<Self, OpenError> {
        let writer = open(path, durability, migrations)?;
        // Readers read pages with `pread` and keep small caches (4 MB each); the writer
        // keeps the b-tree pages it modifies over and over (16 MB). With 32 MB for every
        // connection, resident memory reached 450 MB in the benchmark suite; like this,
        // 70-95 MB at 4,000-9,000 letters/s, and a letters rebuild runs faster.
        writer
            .execute_batch(WRITER_CACHE)
            .map_err(|source| OpenError::Sqlite {
                path: path.display().to_string(),
                source,
            })?;
        let readers = (0..READERS)
            .map(|_| open(path, durability, migrations).map(Mutex::new))
            .collect::<Result<Vec<_>, _>>()?;
        let lane = match writer_nice {
            0 => None,
            nice => Some(Arc::new(Lane::start(path, nice).map_err(|source| {
                OpenError::Io {
                    path: path.display().to_string(),
                    source,
                }
            })?)),
        };
        Ok(Self {
            writer: Arc::new(Mutex::new(writer)),
            readers: readers.into(),
            next_reader: Arc::default(),
            lane,
        })
    }

    /// Runs `f` on a reader connection in the blocking pool.
    pub(crate) async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let readers = self.readers.clone();
        let first = self.next_reader.fetch_add(1, Ordering::Relaxed);
        blocking(move || {
            // The first reader free, so that a short query never queues behind a long one
            // (a projection reading a batch) while another connection idles.
            let n = readers.len();
            let free = (0..n).find_map(|k| readers[(first + k) % n].try_lock().ok());
            match free {
                Some(conn) => f(&conn),
                None => f(&lock(&readers[first % n])),
            }
        })
        .await
    }

    /// Runs `f` on the writer connection: on the store's lane, or in the blocking pool.
    pub(crate) async fn write<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, E> + Send + 'static,
    {
        let writer = self.writer.clone();
        let job = move || f(&mut lock(&writer));
        match &self.lane {
            Some(lane) => lane.run(job).await.map_err(E::from)?,
            None => tokio::task::spawn_blocking(job)
                .await
                .map_err(|e| E::from(StoreError::Unavailable(format!("store task failed: {e}"))))?,
        }
    }
}

impl Db {
    /// Has every reader connection open the WAL and its shared memory now, after the
    /// writer turned the file to WAL mode (see `generations`): a connection opens them by
    /// name at its first read in WAL mode, and holds them open from then on. One that did
    /// so only after a later switch had deleted the files failed with "disk I/O error".
    /// Runs on the calling thread (which must not be an async worker).
    pub(crate) fn open_wal_on_readers(&self) -> rusqlite::Result<()> {
        for reader in self.readers.iter() {
            lock(reader).query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))?;
        }
        Ok(())
    }

    /// Runs `f` on the writer connection on the calling thread (which must not be an
    /// async worker).
    pub(crate) fn with_writer<T, E>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, E>,
    ) -> Result<T, E> {
        f(&mut lock(&self.writer))
    }
}

pub(crate) fn lock(conn: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    conn.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn blocking<T, F>(f: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce() -> rusqlite::Result<T> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))?
        .map_err(store_error)
}

pub(crate) fn store_error(error: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn autocheckpoint(durability: Durability) -> u32 {
        let dir = tempfile::tempdir().unwrap();
        let conn = open(&dir.path().join("t.db"), durability, &[]).unwrap();
        conn.query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn the_log_copies_its_wal_back_in_larger_steps_than_the_read_stores() {
        assert_eq!(autocheckpoint(Durability::Full), LOG_WAL_AUTOCHECKPOINT);
        assert_eq!(autocheckpoint(Durability::Normal), WAL_AUTOCHECKPOINT);
    }

    /// `.cargo/config.toml` builds SQLite without its memory statistics, whose one
    /// process-wide mutex every allocation of every connection would take.
    #[test]
    fn sqlite_is_built_without_memory_statistics() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open(&dir.path().join("t.db"), Durability::Normal, &[]).unwrap();
        let options: Vec<String> = conn
            .prepare("PRAGMA compile_options")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            options.iter().any(|o| o == "DEFAULT_MEMSTATUS=0"),
            "SQLite was built with memory statistics: {options:?}"
        );
    }

    /// The nice value of the thread a write runs on.
    async fn nice_of_writes(durability: Durability, writer_nice: u8) -> i32 {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.db"), durability, &[], writer_nice).unwrap();
        db.write(|_| {
            rustix::process::getpriority_process(None)
                .map_err(|e| StoreError::Unavailable(e.to_string()))
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn writes_run_at_the_priority_asked_for_and_the_caller_keeps_its_own() {
        let process = rustix::process::getpriority_process(None).unwrap();
        assert_eq!(nice_of_writes(Durability::Full, 0).await, process);
        assert_eq!(nice_of_writes(Durability::Normal, 0).await, process);
        assert_eq!(
            nice_of_writes(Durability::Normal, 10).await,
            lowered(process, 10)
        );
        assert_eq!(
            nice_of_writes(Durability::Scratch, 19).await,
            lowered(process, 19)
        );
        assert_ne!(lowered(process, 10), process, "the test runs below nice 19");
        assert_eq!(
            rustix::process::getpriority_process(None).unwrap(),
            process,
            "the caller's priority is left as it was"
        );
    }

    #[tokio::test]
    async fn a_write_that_panics_is_an_error_and_the_next_one_runs() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.db"), Durability::Normal, &[], 10).unwrap();
        let failed = db
            .write(|_| -> Result<(), StoreError> { panic!("a write that panics") })
            .await;
        assert!(
            matches!(failed, Err(StoreError::Unavailable(ref m)) if m.contains("panicked")),
            "{failed:?}"
        );
        let answer = db
            .write(|conn| {
                conn.query_row("SELECT 40 + 2", [], |r| r.get::<_, i64>(0))
                    .map_err(store_error)
            })
            .await
            .unwrap();
        assert_eq!(answer, 42);
    }
}
