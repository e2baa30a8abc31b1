//! Connection pool, migrations and error mapping.

use std::str::FromStr;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use santa_cqrs::{Position, Progress, ProjectionError};
use santa_workshop::kv::StoreError;
use tokio_postgres::{GenericClient, NoTls};

/// Failure to reach or prepare the database.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("invalid PostgreSQL URL: {0}")]
    Url(String),
    #[error("cannot reach PostgreSQL: {0}")]
    Connect(String),
    #[error("cannot migrate the `{schema}` schema: {source}")]
    Migrate {
        schema: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
}

/// A connection pool to one database.
#[derive(Clone)]
pub struct Pg {
    pub(crate) pool: Pool,
    pub(crate) config: tokio_postgres::Config,
}

impl std::fmt::Debug for Pg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password: show only where it points.
        f.debug_struct("Pg")
            .field("hosts", &self.config.get_hosts().len())
            .field("db", &self.config.get_dbname())
            .finish()
    }
}

impl Pg {
    /// A pool of at most `size` connections to `url` (`postgres://user@host:port/db`).
    pub async fn connect(url: &str, size: usize) -> Result<Self, OpenError> {
        let mut config =
            tokio_postgres::Config::from_str(url).map_err(|e| OpenError::Url(e.to_string()))?;
        // Read stores commit without waiting for their WAL flush, like the embedded ones
        // (`synchronous=NORMAL`): a crash of the database server may lose the newest
        // batches, always with their checkpoints, and the projector replays them from the
        // log. Nothing acknowledged lives only here.
        // Statements are prepared once per connection but planned on every execution: a
        // generic plan made while a table was small kept scanning it whole once it had
        // grown (the key-value fetch read 45 million rows in a 20 s run at 2,000 letters/s).
        const OPTIONS: &str = "-c synchronous_commit=off -c plan_cache_mode=force_custom_plan";
        let options = match config.get_options() {
            Some(given) => format!("{given} {OPTIONS}"),
            None => OPTIONS.to_owned(),
        };
        config.options(&options);
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(size.max(1))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .create_timeout(Some(std::time::Duration::from_secs(5)))
            .wait_timeout(Some(std::time::Duration::from_secs(10)))
            .build()
            .map_err(|e| OpenError::Connect(e.to_string()))?;
        // Fail fast, with the cause, when the server is not there.
        drop(
            pool.get()
                .await
                .map_err(|e| OpenError::Connect(e.to_string()))?,
        );
        Ok(Self { pool, config })
    }

    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))
    }

    /// Applies the migrations `schema` has not seen, each once, in order.
    pub(crate) async fn migrate(
        &self,
        schema: &'static str,
        migrations: &[impl AsRef<str>],
    ) -> Result<(), OpenError> {
        let fail = |source| OpenError::Migrate { schema, source };
        let mut client = self
            .pool
            .get()
            .await
            .map_err(|e| OpenError::Connect(e.to_string()))?;
        let tx = client.transaction().await.map_err(fail)?;
        // One migrating process at a time, whatever schema.
        tx.execute("SELECT pg_advisory_xact_lock(7311, 1)", &[])
            .await
            .map_err(fail)?;
        tx.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {schema};
             CREATE TABLE IF NOT EXISTS {schema}.migrations (
                 version INTEGER PRIMARY KEY,
                 applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        ))
        .await
        .map_err(fail)?;
        let done: i32 = tx
            .query_one(
                &format!("SELECT COALESCE(MAX(version), 0) FROM {schema}.migrations"),
                &[],
            )
            .await
            .map_err(fail)?
            .get(0);
        for (i, migration) in migrations
            .iter()
            .enumerate()
            .skip(usize::try_from(done).unwrap_or(0))
        {
            tx.batch_execute(migration.as_ref()).await.map_err(fail)?;
            let version = i32::try_from(i + 1).unwrap_or(i32::MAX);
            tx.execute(
                &format!("INSERT INTO {schema}.migrations (version) VALUES ($1)"),
                &[&version],
            )
            .await
            .map_err(fail)?;
        }
        tx.commit().await.map_err(fail)
    }
}

/// The error with the server's own message, which `Display` leaves out.
pub(crate) fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => error.to_string(),
    }
}

pub(crate) fn store_error(error: tokio_postgres::Error) -> StoreError {
    StoreError::Unavailable(describe(&error))
}

pub(crate) fn projection_error(error: tokio_postgres::Error) -> ProjectionError {
    ProjectionError::Store(describe(&error))
}

/// Reads a checkpoint from `{schema}.checkpoints`.
pub(crate) async fn read_checkpoint(
    client: &impl GenericClient,
    schema: &str,
    projection: &str,
    partition: u32,
) -> Result<Position, tokio_postgres::Error> {
    let partition = i32::try_from(partition).unwrap_or(i32::MAX);
    let row = client
        .query_opt(
            &format!(
                "SELECT position FROM {schema}.checkpoints WHERE projection = $1 AND partition = $2"
            ),
            &[&projection, &partition],
        )
        .await?;
    Ok(Position::new(row.map_or(0, |r| {
        u64::try_from(r.get::<_, i64>(0)).unwrap_or(0)
    })))
}

/// Inside `tx`, for an advance: locks the checkpoint row, checks it is `expected`, and
/// returns it (events at or below it are skipped). A re-drive takes no lock.
pub(crate) async fn lock_checkpoint(
    tx: &deadpool_postgres::Transaction<'_>,
    schema: &str,
    projection: &str,
    progress: Progress,
) -> Result<Position, ProjectionError> {
    let Progress::Advance { partition, .. } = progress else {
        return Ok(Position::ZERO);
    };
    let stored = lock_checkpoints(tx, schema, projection, &[partition]).await?;
    crate::group::admitted(progress, &stored)
}

/// For an advance, moves the checkpoint; then commits.
pub(crate) async fn end_batch(
    tx: deadpool_postgres::Transaction<'_>,
    schema: &str,
    projection: &str,
    progress: Progress,
) -> Result<(), ProjectionError> {
    if let Progress::Advance {
        partition,
        expected,
        upto,
    } = progress
        && upto > expected
    {
        write_checkpoints(&tx, schema, projection, &[(partition, upto)]).await?;
    }
    tx.commit().await.map_err(projection_error)
}

/// Inside `tx`: locks the checkpoints of `partitions` (a lone batch's, or a group's, see
/// `group`), in partition order, and returns them.
pub(crate) async fn lock_checkpoints(
    tx: &deadpool_postgres::Transaction<'_>,
    schema: &str,
    projection: &str,
    partitions: &[u32],
) -> Result<Vec<(u32, Position)>, ProjectionError> {
    let parts: Vec<i32> = partitions
        .iter()
        .map(|p| i32::try_from(*p).unwrap_or(i32::MAX))
        .collect();
    tx.execute(
        &tx.prepare_cached(&format!(
            "INSERT INTO {schema}.checkpoints (projection, partition, position)
             SELECT $1, p, 0 FROM UNNEST($2::int[]) AS p ORDER BY p
             ON CONFLICT (projection, partition) DO NOTHING"
        ))
        .await
        .map_err(projection_error)?,
        &[&projection, &parts],
    )
    .await
    .map_err(projection_error)?;
    let rows = tx
        .query(
            &tx.prepare_cached(&format!(
                "SELECT partition, position FROM {schema}.checkpoints
                 WHERE projection = $1 AND partition = ANY($2) ORDER BY partition FOR UPDATE"
            ))
            .await
            .map_err(projection_error)?,
            &[&projection, &parts],
        )
        .await
        .map_err(projection_error)?;
    Ok(rows
        .iter()
        .map(|row| {
            (
                u32::try_from(row.get::<_, i32>(0)).unwrap_or(0),
                Position::new(u64::try_from(row.get::<_, i64>(1)).unwrap_or(0)),
            )
        })
        .collect())
}

/// Inside `tx`: moves each (partition, position) checkpoint.
pub(crate) async fn write_checkpoints(
    tx: &deadpool_postgres::Transaction<'_>,
    schema: &str,
    projection: &str,
    moves: &[(u32, Position)],
) -> Result<(), ProjectionError> {
    if moves.is_empty() {
        return Ok(());
    }
    let (parts, positions): (Vec<i32>, Vec<i64>) = moves
        .iter()
        .map(|(p, position)| {
            (
                i32::try_from(*p).unwrap_or(i32::MAX),
                i64::try_from(position.get()).unwrap_or(i64::MAX),
            )
        })
        .unzip();
    tx.execute(
        &tx.prepare_cached(&format!(
            "UPDATE {schema}.checkpoints AS c SET position = m.position
             FROM UNNEST($2::int[], $3::bigint[]) AS m (partition, position)
             WHERE c.projection = $1 AND c.partition = m.partition"
        ))
        .await
        .map_err(projection_error)?,
        &[&projection, &parts, &positions],
    )
    .await
    .map_err(projection_error)?;
    Ok(())
}

/// For tests and the benchmark suite: a fresh, empty database on the server of
/// `admin_url`, so that runs never share schemas. Returns its URL.
pub async fn fresh_database(admin_url: &str, prefix: &str) -> Result<String, OpenError> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let name = format!("{prefix}_{}_{nanos}", std::process::id());
    on_server(admin_url, &format!("CREATE DATABASE {name}")).await?;
    let base = admin_url
        .rsplit_once('/')
        .map_or(admin_url, |(base, _)| base);
    Ok(format!("{base}/{name}"))
}

/// Drops a database that [`fresh_database`] made on the server of `admin_url`, given the
/// URL it returned; connections still open to it are ended. A URL naming anything but
/// such a database is refused.
pub async fn drop_database(admin_url: &str, url: &str) -> Result<(), OpenError> {
    let name = url
        .rsplit_once('/')
        .map(|(_, name)| name)
        .filter(|name| {
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        })
        .ok_or_else(|| OpenError::Url(format!("`{url}` does not name a database made here")))?;
    on_server(
        admin_url,
        &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
    )
    .await
}

/// Runs one statement over a connection of its own to `admin_url` (statements such as
/// `CREATE DATABASE` cannot run inside the pool's transactions).
async fn on_server(admin_url: &str, statement: &str) -> Result<(), OpenError> {
    let config =
        tokio_postgres::Config::from_str(admin_url).map_err(|e| OpenError::Url(e.to_string()))?;
    let (client, connection) = config
        .connect(NoTls)
        .await
        .map_err(|e| OpenError::Connect(e.to_string()))?;
    tokio::spawn(connection);
    client
        .batch_execute(statement)
        .await
        .map_err(|e| OpenError::Connect(e.to_string()))
}
