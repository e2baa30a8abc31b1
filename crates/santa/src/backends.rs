//! Opens the backends named by the settings' URLs. This is the only place that knows which
//! engines exist; everything else sees the kernel's and the workshop's traits.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use santa_cqrs::{DeadLetters, EventLog, Leases, LocalLeases};
use santa_nats::{NatsEventLog, NatsIdempotencyStore, NatsOptions};
use santa_postgres::{Pg, PgAnalyticsStore, PgDeadLetters, PgKvStore, PgLeases};
use santa_sqlite::{
    ReadStoreOptions, SqliteAnalyticsStore, SqliteDeadLetters, SqliteEventLog,
    SqliteIdempotencyStore, SqliteKvStore, SqliteLogOptions,
};
use santa_workshop::analytics::AnalyticsStore;
use santa_workshop::idempotency::IdempotencyStore;
use santa_workshop::kv::KvStore;

use crate::Settings;
use crate::settings::{EMBEDDED, Role};

/// Connections per PostgreSQL pool.
const POOL: usize = 8;

/// How long a projection writing to PostgreSQL waits, once caught up, for more events
/// before its next batch. Each batch there costs round trips and a dozen statements, and
/// with the log's 8 partitions a worker sees an eighth of the letters: at 1,500 letters/s
/// scaled out, 2 ms (the embedded default) made batches of one letter. Side by side
/// there, 2 → 20 ms took PostgreSQL's CPU per letter from 593 to 360 µs and the
/// projector's from 186 to 129 µs, and lag p99 from 62 to 43 ms (10 ms: 469 µs, 31 ms;
/// 50 ms: 281 µs, 77 ms). The linger ends on the clock, so that the batches of all
/// partitions reach the store together and share its transactions.
const REMOTE_LINGER: Duration = Duration::from_millis(20);

/// The linger of a projection writing to the store at `url`; `None` keeps the runner's
/// default (made for an embedded store).
pub fn linger_for(url: &str) -> Option<Duration> {
    matches!(scheme(url), Ok(Scheme::Postgres)).then_some(REMOTE_LINGER)
}

/// The engines a process works with.
#[derive(Debug, Clone)]
pub struct Backends {
    pub log: Arc<dyn EventLog>,
    pub kv: Arc<dyn KvStore>,
    pub analytics: Arc<dyn AnalyticsStore>,
    pub idempotency: Arc<dyn IdempotencyStore>,
    /// Where projections set aside events that keep failing: beside the key-value store.
    pub dead_letters: Arc<dyn DeadLetters>,
    /// How projector processes share partitions.
    pub leases: Arc<dyn Leases>,
}

impl Backends {
    pub async fn open(settings: &Settings) -> anyhow::Result<Self> {
        let dir = &settings.data_dir;
        let needs_dir = [
            &settings.event_log,
            &settings.read_store,
            &settings.analytics,
        ]
        .iter()
        .any(|u| *u == EMBEDDED);
        if needs_dir {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create data directory {}", dir.display()))?;
        }
        // The idempotency keys live beside the log: they answer retries of its commands.
        let window = settings.idempotency_window;
        let (log, idempotency): (Arc<dyn EventLog>, Arc<dyn IdempotencyStore>) =
            match scheme(&settings.event_log)? {
                Scheme::Embedded => {
                    let options = SqliteLogOptions {
                        queue: settings.append_queue,
                        ..SqliteLogOptions::default()
                    };
                    let log =
                        off_runtime(dir, move |dir| SqliteEventLog::open(dir, options)).await?;
                    (
                        Arc::new(log),
                        Arc::new(
                            off_runtime(dir, move |dir| SqliteIdempotencyStore::open(dir, window))
                                .await?,
                        ),
                    )
                }
                Scheme::Nats => {
                    let options = NatsOptions {
                        context_max_age: settings.context_max_age,
                        publish_linger: settings.publish_linger,
                        ..NatsOptions::named(&settings.nats_stream, settings.partitions)
                    };
                    let log = NatsEventLog::connect(&settings.event_log, options)
                        .await
                        .context("--event-log")?;
                    let keys = NatsIdempotencyStore::open(&log, window)
                        .await
                        .context("--event-log")?;
                    (Arc::new(log), Arc::new(keys))
                }
                Scheme::Postgres => {
                    anyhow::bail!("--event-log: PostgreSQL is a read store here, not an event log")
                }
            };
        let read_store_options = ReadStoreOptions {
            writer_nice: settings.read_store_nice,
        };
        let mut leases: Arc<dyn Leases> = Arc::new(LocalLeases);
        let dead_letters: Arc<dyn DeadLetters>;
        let kv: Arc<dyn KvStore> = match scheme(&settings.read_store)? {
            Scheme::Embedded => {
                dead_letters = Arc::new(off_runtime(dir, SqliteDeadLetters::open).await?);
                Arc::new(
                    off_runtime(dir, move |dir| {
                        SqliteKvStore::open_with(dir, read_store_options)
                    })
                    .await?,
                )
            }
            Scheme::Postgres => {
                let pg = Pg::connect(&settings.read_store, POOL)
                    .await
                    .context("--read-store")?;
                // Projector processes share partitions through the read store's database.
                if matches!(settings.role, Role::Projector { .. } | Role::Serve)
                    && log.partitions() > 1
                {
                    leases = Arc::new(PgLeases::join(pg.clone()).await.context("--read-store")?);
                }
                dead_letters = Arc::new(
                    PgDeadLetters::open(pg.clone())
                        .await
                        .context("--read-store")?,
                );
                Arc::new(PgKvStore::open(pg).await.context("--read-store")?)
            }
            Scheme::Nats => {
                anyhow::bail!("--read-store: NATS is an event log, not a key-value store")
            }
        };
        let analytics: Arc<dyn AnalyticsStore> = match scheme(&settings.analytics)? {
            Scheme::Embedded => Arc::new(
                off_runtime(dir, move |dir| {
                    SqliteAnalyticsStore::open_with(dir, read_store_options)
                })
                .await?,
            ),
            Scheme::Postgres => {
                let pg = Pg::connect(&settings.analytics, POOL)
                    .await
                    .context("--analytics")?;
                Arc::new(PgAnalyticsStore::open(pg).await.context("--analytics")?)
            }
            Scheme::Nats => {
                anyhow::bail!("--analytics: NATS is an event log, not an analytics store")
            }
        };
        Ok(Self {
            log,
            kv,
            analytics,
            idempotency,
            dead_letters,
            leases,
        })
    }
}

/// Opens an embedded database (files, pragmas, migrations) on the blocking pool, not on
/// the async runtime.
async fn off_runtime<T, E, F>(dir: &Path, open: F) -> anyhow::Result<T>
where
    T: Send + 'static,
    E: std::error::Error + Send + Sync + 'static,
    F: FnOnce(&Path) -> Result<T, E> + Send + 'static,
{
    let dir = dir.to_path_buf();
    Ok(tokio::task::spawn_blocking(move || open(&dir)).await??)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Embedded,
    Nats,
    Postgres,
}

/// Which engine a backend URL names.
fn scheme(url: &str) -> anyhow::Result<Scheme> {
    match url.split_once("://").map(|(scheme, _)| scheme) {
        _ if url == EMBEDDED => Ok(Scheme::Embedded),
        Some("nats") => Ok(Scheme::Nats),
        Some("postgres" | "postgresql") => Ok(Scheme::Postgres),
        _ => anyhow::bail!(
            "`{url}` is not a backend URL: use `sqlite`, `nats://host:port` or `postgres://…`"
        ),
    }
}
