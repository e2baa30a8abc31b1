//! The key-value read store on PostgreSQL: `santa_kv.items` keyed by (pk, sk) with a
//! partial index standing in for the global secondary index.

use std::sync::Arc;

use async_trait::async_trait;
use santa_cqrs::{Position, Progress, ProjectionError};
use santa_workshop::Envelope;
use santa_workshop::kv::{Item, Key, KvApply, KvStore, StoreError, stage_batch};
use santa_workshop::rebuild::StoreRebuild;
use tokio_postgres::Row;

use crate::rebuild::{in_schema, rebuild};

use crate::db::{
    OpenError, Pg, end_batch, lock_checkpoint, lock_checkpoints, projection_error, read_checkpoint,
    store_error, write_checkpoints,
};
use crate::group::{self, Group};
use deadpool_postgres::Transaction;

const SCHEMA: &str = "santa_kv";

const MIGRATIONS: &[&str] = &["CREATE TABLE santa_kv.items (
        pk TEXT COLLATE \"C\" NOT NULL,
        sk TEXT COLLATE \"C\" NOT NULL,
        gsi1pk TEXT COLLATE \"C\",
        gsi1sk TEXT COLLATE \"C\",
        data TEXT NOT NULL,
        PRIMARY KEY (pk, sk));
    CREATE INDEX items_gsi1 ON santa_kv.items (gsi1pk, gsi1sk) WHERE gsi1pk IS NOT NULL;
    CREATE TABLE santa_kv.checkpoints (
        projection TEXT NOT NULL,
        partition INTEGER NOT NULL,
        position BIGINT NOT NULL,
        PRIMARY KEY (projection, partition));"];

const ITEM: &str = "SELECT pk, sk, gsi1pk, gsi1sk, data FROM santa_kv.items";

/// The key-value store in PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgKvStore {
    pg: Pg,
    /// `santa_kv`, or the schema a rebuild fills.
    schema: &'static str,
    /// Batches of the partitions' workers waiting to share a transaction.
    group: Arc<Group<Job>>,
}

impl PgKvStore {
    /// Connects and brings the `santa_kv` schema up to date.
    pub async fn open(pg: Pg) -> Result<Self, OpenError> {
        pg.migrate(SCHEMA, MIGRATIONS).await?;
        Ok(Self {
            pg,
            schema: SCHEMA,
            group: Arc::default(),
        })
    }

    /// `sql`, written against `santa_kv`, for this store's schema.
    fn sql<'a>(&self, sql: &'a str) -> std::borrow::Cow<'a, str> {
        in_schema(sql, SCHEMA, self.schema)
    }
}

fn row_to_item(row: &Row) -> Item {
    Item {
        pk: row.get(0),
        sk: row.get(1),
        gsi1pk: row.get(2),
        gsi1sk: row.get(3),
        data: row.get(4),
    }
}

/// A batch handed to the store: its projection, checkpoint move, events and item logic.
struct Job {
    projection: &'static str,
    progress: Progress,
    events: Vec<Envelope>,
    apply: KvApply,
}

impl PgKvStore {
    /// The batches that gathered (see `group`): in one transaction when they can share
    /// one (advances of one projection, different partitions), else, or when that one
    /// fails, each in its own (so that a failure is its own batch's).
    async fn write_group(&self, jobs: Vec<Job>) -> Vec<Result<(), ProjectionError>> {
        let progresses: Vec<Progress> = jobs.iter().map(|j| j.progress).collect();
        let one_projection = jobs.windows(2).all(|w| w[0].projection == w[1].projection);
        group::write_jobs(
            &jobs,
            one_projection && group::can_share(&progresses),
            self.write_shared(&jobs, &progresses),
            |job: &Job| self.write_one(job),
        )
        .await
    }

    /// One batch in its own transaction.
    async fn write_one(&self, job: &Job) -> Result<(), ProjectionError> {
        let mut client = self.pg.client().await?;
        let tx = client.transaction().await.map_err(projection_error)?;
        let after = lock_checkpoint(&tx, self.schema, job.projection, job.progress).await?;
        // A batch is in log order: the events at or below the checkpoint come first.
        let seen = job.events.partition_point(|e| e.position <= after);
        self.write_items(&tx, &job.events[seen..], job.apply)
            .await?;
        end_batch(tx, self.schema, job.projection, job.progress).await
    }

    /// Advances of different partitions of one projection in one transaction: each batch
    /// whose checkpoint moved is refused alone, the others' events are staged together
    /// (letters of different partitions may count toward the same toy) and written at once.
    async fn write_shared(
        &self,
        jobs: &[Job],
        progresses: &[Progress],
    ) -> Result<Vec<Result<(), ProjectionError>>, ProjectionError> {
        let (projection, apply) = (jobs[0].projection, jobs[0].apply);
        let mut client = self.pg.client().await?;
        let tx = client.transaction().await.map_err(projection_error)?;
        let stored =
            lock_checkpoints(&tx, self.schema, projection, &group::partitions(progresses)).await?;
        let admitted = group::admit(progresses, &stored);
        let fresh: Vec<Envelope> = jobs
            .iter()
            .zip(&admitted)
            .filter_map(|(job, admitted)| admitted.as_ref().ok().map(|after| (job, *after)))
            .flat_map(|(job, after)| job.events.iter().filter(move |e| e.position > after))
            .cloned()
            .collect();
        self.write_items(&tx, &fresh, apply).await?;
        write_checkpoints(
            &tx,
            self.schema,
            projection,
            &group::moves(progresses, &admitted),
        )
        .await?;
        tx.commit().await.map_err(projection_error)?;
        Ok(admitted.into_iter().map(|a| a.map(|_| ())).collect())
    }

    /// Inside `tx`: runs the item logic over `fresh` and writes the items it changed.
    async fn write_items(
        &self,
        tx: &Transaction<'_>,
        fresh: &[Envelope],
        apply: KvApply,
    ) -> Result<(), ProjectionError> {
        let fetch = |keys: Vec<Key>| {
            async move {
                let (pks, sks): (Vec<String>, Vec<String>) = keys.into_iter().unzip();
                // Items are read to be changed (a toy's counters by letters of every
                // partition): serialise read-modify-write per item across transactions.
                // Locks are taken in hash order; a rare deadlock across fetch rounds is
                // detected by PostgreSQL and the batch is retried.
                let lock = tx
                    .prepare_cached(
                        "SELECT count(pg_advisory_xact_lock(7315, h)) FROM (
                         SELECT DISTINCT hashtext(pk || '|' || sk) AS h
                         FROM UNNEST($1::text[], $2::text[]) AS k (pk, sk) ORDER BY h) AS ordered",
                    )
                    .await
                    .map_err(store_error)?;
                tx.execute(&lock, &[&pks, &sks])
                    .await
                    .map_err(store_error)?;
                let read = tx
                    .prepare_cached(&self.sql(&format!(
                        "{ITEM} WHERE (pk, sk) IN (SELECT * FROM UNNEST($1::text[], $2::text[]))"
                    )))
                    .await
                    .map_err(store_error)?;
                let rows = tx.query(&read, &[&pks, &sks]).await.map_err(store_error)?;
                Ok(rows.iter().map(row_to_item).collect())
            }
        };
        let mut writes = stage_batch(fresh, apply, fetch).await?;
        // Rows in key order: transactions of different partitions that touch the same
        // items (a toy's counters) then lock them in the same order and never deadlock.
        writes.sort_by(|a, b| a.0.cmp(&b.0));
        let mut put = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut del_pk, mut del_sk) = (Vec::new(), Vec::new());
        for ((pk, sk), item) in writes {
            match item {
                Some(i) => {
                    put.0.push(i.pk);
                    put.1.push(i.sk);
                    put.2.push(i.gsi1pk);
                    put.3.push(i.gsi1sk);
                    put.4.push(i.data);
                }
                None => {
                    del_pk.push(pk);
                    del_sk.push(sk);
                }
            }
        }
        if !put.0.is_empty() {
            let upsert = tx
                .prepare_cached(&self.sql("INSERT INTO santa_kv.items (pk, sk, gsi1pk, gsi1sk, data)
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[])
                 ON CONFLICT (pk, sk) DO UPDATE SET gsi1pk = excluded.gsi1pk, gsi1sk = excluded.gsi1sk,
                 data = excluded.data"))
                .await
                .map_err(projection_error)?;
            tx.execute(&upsert, &[&put.0, &put.1, &put.2, &put.3, &put.4])
                .await
                .map_err(projection_error)?;
        }
        if !del_pk.is_empty() {
            let delete = tx
                .prepare_cached(&self.sql("DELETE FROM santa_kv.items WHERE (pk, sk) IN (SELECT * FROM UNNEST($1::text[], $2::text[]))"))
                .await
                .map_err(projection_error)?;
            tx.execute(&delete, &[&del_pk, &del_sk])
                .await
                .map_err(projection_error)?;
        }
        Ok(())
    }
}

#[async_trait]
impl KvStore for PgKvStore {
    async fn checkpoint(&self, projection: &str, partition: u32) -> Result<Position, StoreError> {
        let client = self.pg.client().await?;
        read_checkpoint(&**client, self.schema, projection, partition)
            .await
            .map_err(store_error)
    }

    async fn apply(
        &self,
        projection: &'static str,
        progress: Progress,
        events: Vec<Envelope>,
        apply: KvApply,
    ) -> Result<(), ProjectionError> {
        let job = Job {
            projection,
            progress,
            events,
            apply,
        };
        self.group.submit(job, |jobs| self.write_group(jobs)).await
    }

    async fn get(&self, pk: &str, sk: &str) -> Result<Option<Item>, StoreError> {
        let client = self.pg.client().await?;
        let stmt = client
            .prepare_cached(&self.sql(&format!("{ITEM} WHERE pk = $1 AND sk = $2")))
            .await
            .map_err(store_error)?;
        Ok(client
            .query_opt(&stmt, &[&pk, &sk])
            .await
            .map_err(store_error)?
            .as_ref()
            .map(row_to_item))
    }

    async fn query_index(
        &self,
        gsi1pk: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Item>, StoreError> {
        let client = self.pg.client().await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let stmt = client
            .prepare_cached(&self.sql(&format!(
                "{ITEM} WHERE gsi1pk = $1 AND gsi1sk > $2 ORDER BY gsi1sk LIMIT $3"
            )))
            .await
            .map_err(store_error)?;
        let rows = client
            .query(&stmt, &[&gsi1pk, &after.unwrap_or(""), &limit])
            .await
            .map_err(store_error)?;
        Ok(rows.iter().map(row_to_item).collect())
    }

    async fn rebuild(&self) -> Result<Box<dyn StoreRebuild<dyn KvStore>>, ProjectionError> {
        let pg = self.pg.clone();
        rebuild(&self.pg, SCHEMA, MIGRATIONS, move |schema| {
            Arc::new(PgKvStore {
                pg,
                schema,
                group: Arc::default(),
            }) as Arc<dyn KvStore>
        })
        .await
    }
}
