//! Rebuilding a store's schema: a fresh schema beside the live one, switched to by renaming
//! both in one transaction.
//!
//! The rebuild holds a session on a connection of its own (outside the pool): a
//! session-level advisory lock keeps one rebuild per schema across every process, and the
//! freeze and switch happen in one transaction on it. Freezing takes the live
//! `checkpoints` table in EXCLUSIVE mode: every live batch starts by locking its checkpoint
//! row, so batches wait while queries (plain reads) go on. The switch then takes every
//! live table in ACCESS EXCLUSIVE mode for the instant of the renames. A batch that waited
//! resolves its table names again once it gets its lock, finds the fresh checkpoint and
//! is refused by the compare-and-set, and its worker resumes from the rebuilt position.

use std::borrow::Cow;
use std::sync::Arc;

use async_trait::async_trait;
use santa_cqrs::ProjectionError;
use santa_workshop::rebuild::StoreRebuild;
use tokio_postgres::{Client, NoTls};

use crate::Pg;
use crate::db::{describe, projection_error};

/// Advisory-lock class of rebuild claims (the key is the schema's hash).
const REBUILD_LOCK: i32 = 7316;

/// `sql`, written against the live schema `live`, made to run against `schema`: the live
/// one itself or the one a rebuild fills.
pub(crate) fn in_schema<'a>(sql: &'a str, live: &str, schema: &str) -> Cow<'a, str> {
    if schema == live {
        Cow::Borrowed(sql)
    } else {
        Cow::Owned(sql.replace(&format!("{live}."), &format!("{schema}.")))
    }
}

/// The schema a rebuild of `live` fills.
pub(crate) fn fresh_schema(live: &'static str) -> &'static str {
    match live {
        "santa_kv" => "santa_kv_rebuild",
        "santa_analytics" => "santa_analytics_rebuild",
        _ => unreachable!("only the read stores' schemas are rebuilt"),
    }
}

/// Starts a rebuild of `live`: claims it, makes the fresh schema with `migrations` and the
/// store kind `make` builds over it.
pub(crate) async fn rebuild<S: ?Sized + Send + Sync + std::fmt::Debug + 'static>(
    pg: &Pg,
    live: &'static str,
    migrations: &[&str],
    make: impl FnOnce(&'static str) -> Arc<S>,
) -> Result<Box<dyn StoreRebuild<S>>, ProjectionError> {
    let fresh = fresh_schema(live);
    let (session, connection) = pg.config.connect(NoTls).await.map_err(projection_error)?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(error = %describe(&error), "rebuild session ended");
        }
    });
    let claimed: bool = session
        .query_one(
            "SELECT pg_try_advisory_lock($1, hashtext($2))",
            &[&REBUILD_LOCK, &live],
        )
        .await
        .map_err(projection_error)?
        .get(0);
    if !claimed {
        return Err(ProjectionError::Busy(format!(
            "the {live} schema is being rebuilt already"
        )));
    }
    // Left-overs of a rebuild that stopped half-way.
    session
        .batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {fresh} CASCADE; DROP SCHEMA IF EXISTS {live}_retired CASCADE"
        ))
        .await
        .map_err(projection_error)?;
    let migrations: Vec<String> = migrations
        .iter()
        .map(|m| in_schema(m, live, fresh).into_owned())
        .collect();
    pg.migrate(fresh, &migrations)
        .await
        .map_err(|e| ProjectionError::Store(e.to_string()))?;
    Ok(Box::new(SchemaRebuild {
        session: Some(session),
        live,
        fresh,
        store: make(fresh),
        frozen: false,
    }))
}

struct SchemaRebuild<S: ?Sized> {
    /// `None` once switched.
    session: Option<Client>,
    live: &'static str,
    fresh: &'static str,
    store: Arc<S>,
    frozen: bool,
}

impl<S: ?Sized> std::fmt::Debug for SchemaRebuild<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchemaRebuild")
            .field("live", &self.live)
            .field("fresh", &self.fresh)
            .field("frozen", &self.frozen)
            .finish()
    }
}

impl<S: ?Sized> SchemaRebuild<S> {
    fn session(&self) -> Result<&Client, ProjectionError> {
        self.session
            .as_ref()
            .ok_or_else(|| ProjectionError::Store("the rebuild has switched already".into()))
    }
}

impl<S: ?Sized> Drop for SchemaRebuild<S> {
    fn drop(&mut self) {
        // Abandoned: roll back, drop the fresh schema, end the session (and its claim).
        let (Some(session), Ok(runtime)) =
            (self.session.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let fresh = self.fresh;
        runtime.spawn(async move {
            let _ = session
                .batch_execute(&format!("ROLLBACK; DROP SCHEMA IF EXISTS {fresh} CASCADE"))
                .await;
        });
    }
}

#[async_trait]
impl<S: ?Sized + Send + Sync + std::fmt::Debug + 'static> StoreRebuild<S> for SchemaRebuild<S> {
    fn fresh(&self) -> Arc<S> {
        self.store.clone()
    }

    async fn freeze(&mut self) -> Result<(), ProjectionError> {
        if !self.frozen {
            let live = self.live;
            self.session()?
                .batch_execute(&format!(
                    "BEGIN; LOCK TABLE {live}.checkpoints IN EXCLUSIVE MODE"
                ))
                .await
                .map_err(projection_error)?;
            self.frozen = true;
        }
        Ok(())
    }

    async fn switch(mut self: Box<Self>) -> Result<(), ProjectionError> {
        self.freeze().await?;
        let (live, fresh) = (self.live, self.fresh);
        let session = self.session()?;
        let tables: Vec<String> = session
            .query(
                "SELECT tablename::text FROM pg_tables WHERE schemaname = $1",
                &[&live],
            )
            .await
            .map_err(projection_error)?
            .iter()
            .map(|row| format!("{live}.{}", row.get::<_, String>(0)))
            .collect();
        session
            .batch_execute(&format!(
                "LOCK TABLE {} IN ACCESS EXCLUSIVE MODE;
                 ALTER SCHEMA {live} RENAME TO {live}_retired;
                 ALTER SCHEMA {fresh} RENAME TO {live};
                 DROP SCHEMA {live}_retired CASCADE;
                 COMMIT",
                tables.join(", ")
            ))
            .await
            .map_err(projection_error)?;
        // Switched: ending the session releases the claim.
        self.session = None;
        Ok(())
    }
}
