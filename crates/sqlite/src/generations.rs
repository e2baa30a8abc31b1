//! Read stores whose database file can be replaced by a rebuilt one.
//!
//! A store lives in `<stem>.db` (generation 0) or `<stem>.<n>.db`; the file `<stem>.current`
//! names the generation in use. A rebuild fills the next generation's file beside the live
//! one, then the switch replaces `<stem>.current` (write, fsync, rename: atomic on POSIX)
//! and the in-memory connections in one step. A crash before the rename leaves the old
//! generation in use and the half-built file is removed at the next start.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use async_trait::async_trait;
use santa_cqrs::ProjectionError;
use santa_workshop::kv::StoreError;
use santa_workshop::rebuild::StoreRebuild;
use tokio::sync::OwnedRwLockWriteGuard;

use crate::db::{Db, Durability, Writeback};
use crate::{OpenError, ReadStoreOptions};

/// The database of one read store, generation after generation.
#[derive(Debug, Clone)]
pub(crate) struct Generations {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    stem: &'static str,
    migrations: &'static [&'static str],
    options: ReadStoreOptions,
    current: RwLock<(u64, Db)>,
    /// Writes hold it shared; a switch holds it exclusively, so that no write of the live
    /// projection lands between levelling the fresh file and switching to it.
    gate: Arc<tokio::sync::RwLock<()>>,
    rebuilding: AtomicBool,
    /// A file being rebuilt: written without syncs, its pages sent to the disk as it grows.
    writeback: Option<Arc<Writeback>>,
}

impl Generations {
    /// Opens the generation in use and removes files that no generation uses.
    pub(crate) fn open(
        dir: &Path,
        stem: &'static str,
        migrations: &'static [&'static str],
        options: ReadStoreOptions,
    ) -> Result<Self, OpenError> {
        let pointer = dir.join(format!("{stem}.current"));
        let generation = match fs::read_to_string(&pointer) {
            Ok(text) => text.trim().parse::<u64>().map_err(|e| OpenError::Io {
                path: pointer.display().to_string(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(source) => {
                return Err(OpenError::Io {
                    path: pointer.display().to_string(),
                    source,
                });
            }
        };
        remove_others(dir, stem, generation);
        let db = Db::open(
            &file(dir, stem, generation),
            Durability::Normal,
            migrations,
            options.writer_nice,
        )?;
        Ok(Self {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                stem,
                migrations,
                options,
                current: RwLock::new((generation, db)),
                gate: Arc::default(),
                rebuilding: AtomicBool::new(false),
                writeback: None,
            }),
        })
    }

    /// The database in use.
    pub(crate) fn db(&self) -> Db {
        self.current().1
    }

    fn current(&self) -> (u64, Db) {
        self.inner
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Runs `f` on the writer connection of the database in use, unless a switch is under
    /// way (then after it, on the new database).
    pub(crate) async fn write<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&mut rusqlite::Connection) -> Result<T, E> + Send + 'static,
    {
        let _shared = self.inner.gate.read().await;
        let writeback = self.inner.writeback.clone();
        // On the thread that wrote: the sync it may start is a thread's spawn.
        self.db()
            .write(move |conn| {
                let written = f(conn);
                if let Some(writeback) = writeback {
                    writeback.wrote();
                }
                written
            })
            .await
    }

    /// Starts a rebuild: an empty database for the next generation, and the store kind
    /// `make` builds over it.
    pub(crate) async fn rebuild<S: ?Sized + Send + Sync + std::fmt::Debug + 'static>(
        &self,
        make: impl FnOnce(Generations) -> Arc<S>,
    ) -> Result<Box<dyn StoreRebuild<S>>, ProjectionError> {
        if self.inner.rebuilding.swap(true, Ordering::SeqCst) {
            return Err(ProjectionError::Busy(format!(
                "{}.db is being rebuilt already",
                self.inner.stem
            )));
        }
        // From here on, dropping the claim lets the next rebuild start.
        let claim = Claim(self.clone());
        let generation = self.current().0 + 1;
        let (dir, stem, migrations, nice) = (
            self.inner.dir.clone(),
            self.inner.stem,
            self.inner.migrations,
            self.inner.options.writer_nice,
        );
        let path = file(&dir, stem, generation);
        let writeback = Writeback::new(path.clone());
        let (db, deferred) = tokio::task::spawn_blocking(move || {
            remove_database(&path);
            // Each page written once (a WAL writes it twice: to the log, then back), and no
            // fsync: nothing reads the file but the rebuild, and nothing needs it after a
            // crash (the pointer still names the old generation; the next start removes
            // it). The switch gives it its WAL back and syncs it before naming it. No
            // secondary index either until the replay is done: nothing queries the file
            // before the switch, and the projection's own reads go by primary key.
            let db = Db::open(&path, Durability::Scratch, migrations, nice)?;
            let deferred = db
                .with_writer(|conn| crate::db::defer_secondary_indexes(conn))
                .map_err(|source| OpenError::Sqlite {
                    path: path.display().to_string(),
                    source,
                })?;
            Ok::<_, OpenError>((db, deferred))
        })
        .await
        .map_err(|e| ProjectionError::Store(format!("store task failed: {e}")))?
        .map_err(|e| ProjectionError::Store(e.to_string()))?;
        let fresh = make(Generations {
            inner: Arc::new(Inner {
                dir: self.inner.dir.clone(),
                stem: self.inner.stem,
                migrations: self.inner.migrations,
                options: self.inner.options,
                current: RwLock::new((generation, db.clone())),
                gate: Arc::default(),
                rebuilding: AtomicBool::new(true),
                writeback: Some(Arc::new(writeback)),
            }),
        });
        Ok(Box::new(FileRebuild {
            claim,
            generation,
            db,
            fresh,
            deferred: Some(deferred),
            frozen: None,
            switched: false,
        }))
    }

    /// Makes `generation` (held by `db`) the one in use: the pointer file first, so that a
    /// crash after it restarts on the new file, then the connections.
    fn install(&self, generation: u64, db: Db) -> std::io::Result<()> {
        let dir = &self.inner.dir;
        let path = file(dir, self.inner.stem, generation);
        let mode: String = db
            .with_writer(|conn| {
                conn.execute_batch(&format!(
                    "PRAGMA synchronous = NORMAL; PRAGMA wal_autocheckpoint = {}",
                    crate::db::WAL_AUTOCHECKPOINT
                ))?;
                conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            })
            .map_err(std::io::Error::other)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(std::io::Error::other(format!(
                "the rebuilt file stayed in journal mode {mode}"
            )));
        }
        db.open_wal_on_readers().map_err(std::io::Error::other)?;
        // Written without fsync while it was being built: on disk before the pointer names it.
        fs::File::open(&path)?.sync_all()?;
        let pointer = dir.join(format!("{}.current", self.inner.stem));
        let staged = dir.join(format!("{}.current.new", self.inner.stem));
        let mut out = fs::File::create(&staged)?;
        writeln!(out, "{generation}")?;
        out.sync_all()?;
        fs::rename(&staged, &pointer)?;
        fs::File::open(dir)?.sync_all()?;
        let (old, _) = std::mem::replace(
            &mut *self
                .inner
                .current
                .write()
                .unwrap_or_else(PoisonError::into_inner),
            (generation, db),
        );
        // Connections still open on the old file finish on it; the file goes with them.
        discard_database(&file(dir, self.inner.stem, old));
        Ok(())
    }
}

/// The database file of a generation.
fn file(dir: &Path, stem: &str, generation: u64) -> PathBuf {
    match generation {
        0 => dir.join(format!("{stem}.db")),
        n => dir.join(format!("{stem}.{n}.db")),
    }
}

/// Removes a database file with its WAL and shared-memory files, if present.
fn remove_database(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let _ = fs::remove_file(PathBuf::from(name));
    }
}

/// The prefix of a replaced generation's files on their way out.
const DISCARDED: &str = "discarded.";

/// Takes a replaced generation's files out of the way at once and deletes them on a thread
/// of their own: deleting a large file frees its pages and blocks, which took 0.12 s of a
/// 300,000-letter analytics rebuild's switch (0.5 s of a letters one's) when done inside it.
/// What a crash leaves behind, the next start removes.
fn discard_database(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return remove_database(path);
    };
    let mut discarded = Vec::new();
    for suffix in ["", "-wal", "-shm"] {
        let mut from = name.to_owned();
        from.push(suffix);
        let mut to = std::ffi::OsString::from(DISCARDED);
        to.push(&from);
        let (from, to) = (dir.join(from), dir.join(to));
        match fs::rename(&from, &to) {
            Ok(()) => discarded.push(to),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(_) => {
                let _ = fs::remove_file(&from);
            }
        }
    }
    let removal = std::thread::Builder::new()
        .name("santa-discard".into())
        .spawn(move || {
            for file in discarded {
                let _ = fs::remove_file(file);
            }
        });
    if let Err(error) = removal {
        tracing::warn!(%error, "replaced files left for the next start to remove");
    }
}

/// Removes the files of every generation of `stem` but `keep` (left by a rebuild that
/// never switched, or by a switch that stopped before removing the old file) and those
/// of replaced generations not yet deleted.
fn remove_others(dir: &Path, stem: &str, keep: u64) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name
            .strip_prefix(DISCARDED)
            .is_some_and(|rest| rest.starts_with(&format!("{stem}.")))
        {
            let _ = fs::remove_file(entry.path());
            continue;
        }
        let Some(rest) = name.strip_prefix(&format!("{stem}.")) else {
            continue;
        };
        let generation = match rest.split_once(".db") {
            Some((n, _)) => n.parse::<u64>().ok(),
            None => rest.starts_with("db").then_some(0),
        };
        if let Some(generation) = generation
            && generation != keep
        {
            remove_database(&file(dir, stem, generation));
        }
    }
}

/// The right to rebuild a store, given back when dropped.
#[derive(Debug)]
struct Claim(Generations);

impl Drop for Claim {
    fn drop(&mut self) {
        self.0.inner.rebuilding.store(false, Ordering::SeqCst);
    }
}

/// A rebuild into the next generation's file.
struct FileRebuild<S: ?Sized> {
    claim: Claim,
    generation: u64,
    db: Db,
    fresh: Arc<S>,
    /// The secondary indexes left out while replaying, until they are built.
    deferred: Option<Vec<String>>,
    frozen: Option<OwnedRwLockWriteGuard<()>>,
    switched: bool,
}

impl<S: ?Sized> std::fmt::Debug for FileRebuild<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileRebuild")
            .field("stem", &self.claim.0.inner.stem)
            .field("generation", &self.generation)
            .field("frozen", &self.frozen.is_some())
            .finish()
    }
}

impl<S: ?Sized> Drop for FileRebuild<S> {
    fn drop(&mut self) {
        if !self.switched {
            // Connections still open on the file finish on it; the file goes with them.
            let live = &self.claim.0.inner;
            remove_database(&file(&live.dir, live.stem, self.generation));
        }
    }
}

#[async_trait]
impl<S: ?Sized + Send + Sync + std::fmt::Debug + 'static> StoreRebuild<S> for FileRebuild<S> {
    fn fresh(&self) -> Arc<S> {
        self.fresh.clone()
    }

    /// Checks the foreign keys written without checks and builds the deferred indexes.
    async fn replayed(&mut self) -> Result<(), ProjectionError> {
        let Some(indexes) = self.deferred.take() else {
            return Ok(());
        };
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            db.with_writer(|conn| crate::db::complete(conn, &indexes))
        })
        .await
        .map_err(|e| ProjectionError::Store(format!("store task failed: {e}")))?
        .map_err(|e| ProjectionError::Store(format!("cannot complete the rebuilt file: {e}")))
    }

    async fn freeze(&mut self) -> Result<(), ProjectionError> {
        if self.frozen.is_none() {
            self.frozen = Some(self.claim.0.inner.gate.clone().write_owned().await);
        }
        Ok(())
    }

    async fn switch(mut self: Box<Self>) -> Result<(), ProjectionError> {
        self.replayed().await?;
        self.freeze().await?;
        let (live, generation, db) = (self.claim.0.clone(), self.generation, self.db.clone());
        tokio::task::spawn_blocking(move || live.install(generation, db))
            .await
            .map_err(|e| ProjectionError::Store(format!("store task failed: {e}")))?
            .map_err(|e| {
                ProjectionError::Store(format!("cannot switch to the rebuilt file: {e}"))
            })?;
        self.switched = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIGRATIONS: &[&str] = &["CREATE TABLE t (x INTEGER);"];

    /// Parents and children, with a secondary index and a unique one.
    const INDEXED: &[&str] = &["CREATE TABLE p (id TEXT PRIMARY KEY);
        CREATE TABLE c (p TEXT NOT NULL REFERENCES p (id), x INTEGER NOT NULL);
        CREATE INDEX c_p ON c (p);
        CREATE UNIQUE INDEX c_x ON c (x);"];

    async fn indexes(db: &Db) -> Vec<String> {
        db.read(|conn| {
            conn.prepare("SELECT name FROM sqlite_master WHERE type = 'index' ORDER BY name")?
                .query_map([], |r| r.get(0))?
                .collect()
        })
        .await
        .unwrap()
    }

    async fn exec(store: &Generations, sql: &'static str) -> Result<(), StoreError> {
        store
            .write(move |conn| conn.execute_batch(sql).map_err(crate::db::store_error))
            .await
    }

    #[tokio::test]
    async fn a_rebuild_writes_without_secondary_indexes_and_builds_them_before_the_switch() {
        let dir = tempfile::tempdir().unwrap();
        let live =
            Generations::open(dir.path(), "read", INDEXED, ReadStoreOptions::default()).unwrap();
        let all = ["c_p", "c_x", "sqlite_autoindex_p_1"];
        assert_eq!(indexes(&live.db()).await, all);
        let mut rebuild = live.rebuild(Arc::new).await.unwrap();
        let fresh = rebuild.fresh();
        // The unique indexes stay: writes rely on them.
        assert_eq!(indexes(&fresh.db()).await, ["c_x", "sqlite_autoindex_p_1"]);
        exec(
            &fresh,
            "INSERT INTO p VALUES ('a'); INSERT INTO c VALUES ('a', 1)",
        )
        .await
        .unwrap();
        let duplicate = exec(&fresh, "INSERT INTO c VALUES ('a', 1)").await;
        assert!(duplicate.is_err(), "{duplicate:?}");
        rebuild.replayed().await.unwrap();
        assert_eq!(indexes(&fresh.db()).await, all);
        rebuild.switch().await.unwrap();
        assert_eq!(indexes(&live.db()).await, all);
        // The switched file's writer checks foreign keys again.
        let orphan = exec(&live, "INSERT INTO c VALUES ('nobody', 2)").await;
        assert!(orphan.is_err(), "{orphan:?}");
    }

    #[tokio::test]
    async fn a_rebuild_whose_rows_break_a_foreign_key_is_not_switched_to() {
        let dir = tempfile::tempdir().unwrap();
        let live =
            Generations::open(dir.path(), "read", INDEXED, ReadStoreOptions::default()).unwrap();
        exec(&live, "INSERT INTO p VALUES ('live')").await.unwrap();
        let rebuild = live.rebuild(Arc::new).await.unwrap();
        // Written unchecked while replaying; found at the end.
        exec(&rebuild.fresh(), "INSERT INTO c VALUES ('ghost', 1)")
            .await
            .unwrap();
        let error = rebuild.switch().await.unwrap_err();
        assert!(
            error.to_string().contains("1 rows of c name no row of p"),
            "{error}"
        );
        let parents = live
            .db()
            .read(|conn| {
                conn.query_row("SELECT group_concat(id) FROM p", [], |r| {
                    r.get::<_, String>(0)
                })
            })
            .await
            .unwrap();
        assert_eq!(parents, "live");
        assert!(!dir.path().join("read.1.db").exists());
    }

    async fn rebuild_and_switch(live: &Generations) {
        let rebuild = live.rebuild(Arc::new).await.unwrap();
        rebuild.switch().await.unwrap();
    }

    /// A query that took the database in use just before a switch runs after it, on the
    /// old generation's connections, whose files the switch has deleted meanwhile.
    #[tokio::test]
    async fn connections_of_a_replaced_generation_keep_reading_after_its_files_are_gone() {
        let dir = tempfile::tempdir().unwrap();
        let live =
            Generations::open(dir.path(), "read", MIGRATIONS, ReadStoreOptions::default()).unwrap();
        rebuild_and_switch(&live).await;
        let first_rebuilt = live.db();
        rebuild_and_switch(&live).await;
        assert!(!dir.path().join("read.1.db").exists());
        // Twice as many reads as readers: each reader is taken in turn.
        for _ in 0..2 * crate::db::READERS {
            let count = first_rebuilt
                .read(|conn| conn.query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0)))
                .await;
            assert_eq!(count.unwrap(), 0);
        }
    }

    /// A replaced generation's files leave their names at the switch; those a crash left
    /// on their way out go at the next start, and no other store's files with them.
    #[tokio::test]
    async fn replaced_files_leave_at_the_switch_and_leftovers_at_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let live =
            Generations::open(dir.path(), "read", MIGRATIONS, ReadStoreOptions::default()).unwrap();
        exec(&live, "INSERT INTO t VALUES (1)").await.unwrap();
        rebuild_and_switch(&live).await;
        assert!(!dir.path().join("read.db").exists());
        assert!(dir.path().join("read.1.db").exists());
        drop(live);
        // Names no switch here discards: the switch's own removal runs on a thread of its own.
        let leftovers = [
            "discarded.read.7.db",
            "discarded.read.7.db-wal",
            "discarded.analytics.7.db",
        ];
        for name in leftovers {
            std::fs::write(dir.path().join(name), b"left by a crash").unwrap();
        }
        let live =
            Generations::open(dir.path(), "read", MIGRATIONS, ReadStoreOptions::default()).unwrap();
        let left: Vec<bool> = leftovers
            .iter()
            .map(|name| dir.path().join(name).exists())
            .collect();
        assert_eq!(left, [false, false, true]);
        let rows = live
            .db()
            .read(|conn| conn.query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0)))
            .await
            .unwrap();
        assert_eq!(rows, 0, "the rebuilt (empty) generation is the one in use");
    }
}
