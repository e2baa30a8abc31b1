//! Leases on (projection, partition) as PostgreSQL advisory locks, held by one session per
//! process. When a process dies its session ends and its locks are released, so the
//! others take its partitions over. Each process also holds one "member" lock, and the
//! number of members tells everyone their fair share.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use santa_cqrs::{Lease, Leases, ProjectionError};
use tokio::sync::Mutex;
use tokio_postgres::{Client, NoTls};

use crate::db::{OpenError, Pg};

/// Advisory-lock key spaces (the first of the two `int4` keys).
const MEMBERS: i32 = 7313;
const PARTITIONS: i32 = 7314;
/// At most this many projector processes take part.
const MAX_MEMBERS: i32 = 1024;

/// Shares partitions between processes through one database.
#[derive(Debug, Clone)]
pub struct PgLeases {
    pg: Pg,
    session: Arc<Mutex<Option<Arc<Session>>>>,
    /// The last fair share and when it was computed: workers ask after every batch.
    share: Arc<std::sync::Mutex<Option<(Instant, u32)>>>,
}

/// How long a computed fair share is reused.
const SHARE_TTL: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Session {
    client: Client,
    alive: Arc<AtomicBool>,
}

#[derive(Debug)]
struct PgLease {
    session: Arc<Session>,
    key: i32,
}

impl Lease for PgLease {
    fn is_held(&self) -> bool {
        self.session.alive.load(Ordering::Acquire)
    }
}

impl Drop for PgLease {
    fn drop(&mut self) {
        let (session, key) = (self.session.clone(), self.key);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(error) = session
                    .client
                    .execute("SELECT pg_advisory_unlock($1, $2)", &[&PARTITIONS, &key])
                    .await
                {
                    tracing::debug!(%error, "lease release failed; it ends with the session");
                }
            });
        }
    }
}

impl PgLeases {
    /// Joins the set of projector processes sharing `pg`'s database.
    pub async fn join(pg: Pg) -> Result<Self, OpenError> {
        let leases = Self {
            pg,
            session: Arc::default(),
            share: Arc::default(),
        };
        leases
            .session()
            .await
            .map_err(|e| OpenError::Connect(e.to_string()))?;
        Ok(leases)
    }

    /// The live lock session, opened (and registered as a member) when needed.
    async fn session(&self) -> Result<Arc<Session>, ProjectionError> {
        let mut current = self.session.lock().await;
        if let Some(session) = current.as_ref()
            && session.alive.load(Ordering::Acquire)
        {
            return Ok(session.clone());
        }
        let fail = |e: tokio_postgres::Error| ProjectionError::Store(format!("lease session: {e}"));
        let (client, connection) = self.pg.config.connect(NoTls).await.map_err(fail)?;
        let alive = Arc::new(AtomicBool::new(true));
        let flag = alive.clone();
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::warn!(%error, "lease session lost");
            }
            flag.store(false, Ordering::Release);
        });
        let mut member = None;
        for slot in 0..MAX_MEMBERS {
            let row = client
                .query_one("SELECT pg_try_advisory_lock($1, $2)", &[&MEMBERS, &slot])
                .await
                .map_err(fail)?;
            if row.get::<_, bool>(0) {
                member = Some(slot);
                break;
            }
        }
        let slot = member
            .ok_or_else(|| ProjectionError::Store("no free projector membership slot".into()))?;
        tracing::info!(slot, "joined the projector processes");
        let session = Arc::new(Session { client, alive });
        *current = Some(session.clone());
        Ok(session)
    }
}

/// The lock key of (projection, partition): the name's hash in the high bits.
fn key(projection: &str, partition: u32) -> i32 {
    let hash = projection.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    let high = (hash & 0x1FFFF) << 12;
    i32::try_from(high | (partition & 0xFFF)).unwrap_or(i32::MAX)
}

#[async_trait]
impl Leases for PgLeases {
    async fn try_acquire(
        &self,
        projection: &str,
        partition: u32,
    ) -> Result<Option<Box<dyn Lease>>, ProjectionError> {
        let session = self.session().await?;
        let key = key(projection, partition);
        let row = session
            .client
            .query_one("SELECT pg_try_advisory_lock($1, $2)", &[&PARTITIONS, &key])
            .await
            .map_err(|e| ProjectionError::Store(e.to_string()))?;
        Ok(row
            .get::<_, bool>(0)
            .then(|| Box::new(PgLease { session, key }) as Box<dyn Lease>))
    }

    async fn fair_share(&self, _projection: &str, partitions: u32) -> Result<u32, ProjectionError> {
        let cached = *self
            .share
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((at, members)) = cached
            && at.elapsed() < SHARE_TTL
        {
            return Ok(partitions.div_ceil(members));
        }
        let session = self.session().await?;
        let row = session
            .client
            .query_one(
                // `pg_locks` shows the advisory locks of every database on the server;
                // only this database's processes share its partitions.
                "SELECT count(*) FROM pg_locks
                 WHERE locktype = 'advisory' AND objsubid = 2 AND classid::bigint = $1 AND granted
                   AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                &[&i64::from(MEMBERS)],
            )
            .await
            .map_err(|e| ProjectionError::Store(e.to_string()))?;
        let members = u32::try_from(row.get::<_, i64>(0)).unwrap_or(1).max(1);
        *self
            .share
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((Instant::now(), members));
        Ok(partitions.div_ceil(members))
    }
}
