//! The analytics store on PostgreSQL (`santa_analytics` schema).

use std::sync::Arc;

use async_trait::async_trait;
use deadpool_postgres::Transaction;
use santa_cqrs::{Position, Progress, ProjectionError};
use santa_workshop::Millis;
use santa_workshop::analytics::{
    AnalyticsChange, AnalyticsStore, LetterRow, NAME, Totals, ToyDemand,
};
use santa_workshop::kv::StoreError;
use santa_workshop::rebuild::StoreRebuild;

use crate::rebuild::{in_schema, rebuild};

use crate::db::{
    OpenError, Pg, end_batch, lock_checkpoint, lock_checkpoints, projection_error, read_checkpoint,
    store_error, write_checkpoints,
};
use crate::group::{self, Group};

const SCHEMA: &str = "santa_analytics";

const MIGRATIONS: &[&str] = &[
    "CREATE TABLE santa_analytics.toys (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        price_cents BIGINT NOT NULL);
    CREATE TABLE santa_analytics.letters (
        id TEXT PRIMARY KEY,
        child TEXT NOT NULL,
        country TEXT,
        total_cents BIGINT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('submitted', 'cancelled')),
        submitted_at TIMESTAMPTZ NOT NULL,
        cancelled_at TIMESTAMPTZ);
    CREATE TABLE santa_analytics.letter_lines (
        letter_id TEXT NOT NULL,
        toy_id TEXT NOT NULL,
        quantity INTEGER NOT NULL,
        unit_price_cents BIGINT NOT NULL,
        PRIMARY KEY (letter_id, toy_id));
    CREATE INDEX letter_lines_toy ON santa_analytics.letter_lines (toy_id);
    CREATE TABLE santa_analytics.checkpoints (
        projection TEXT NOT NULL,
        partition INTEGER NOT NULL,
        position BIGINT NOT NULL,
        PRIMARY KEY (projection, partition));",
    // No report looks lines up by toy (the demand ranking reads them all); every line's
    // write kept the index up.
    "DROP INDEX IF EXISTS santa_analytics.letter_lines_toy;",
];

/// The analytics store in PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgAnalyticsStore {
    pg: Pg,
    /// `santa_analytics`, or the schema a rebuild fills.
    schema: &'static str,
    /// Batches of the partitions' workers waiting to share a transaction.
    group: Arc<Group<Job>>,
}

impl PgAnalyticsStore {
    /// Connects and brings the `santa_analytics` schema up to date.
    pub async fn open(pg: Pg) -> Result<Self, OpenError> {
        pg.migrate(SCHEMA, MIGRATIONS).await?;
        Ok(Self {
            pg,
            schema: SCHEMA,
            group: Arc::default(),
        })
    }

    async fn totals(&self, sql: &str) -> Result<Vec<Totals>, StoreError> {
        let client = self.pg.client().await?;
        let rows = client
            .query(&*in_schema(sql, SCHEMA, self.schema), &[])
            .await
            .map_err(store_error)?;
        Ok(rows
            .iter()
            .map(|r| Totals {
                key: r.get(0),
                letters: r.get(1),
                quantity: r.get(2),
                total_cents: r.get(3),
            })
            .collect())
    }
}

/// A batch handed to the store: its checkpoint move and its changes.
struct Job {
    progress: Progress,
    changes: Vec<(Position, AnalyticsChange)>,
}

impl PgAnalyticsStore {
    /// The batches that gathered (see `group`): in one transaction when they can share
    /// one, else, or when that one fails, each in its own (so that a failure is its own
    /// batch's).
    async fn write_group(&self, jobs: Vec<Job>) -> Vec<Result<(), ProjectionError>> {
        let progresses: Vec<Progress> = jobs.iter().map(|j| j.progress).collect();
        group::write_jobs(
            &jobs,
            group::can_share(&progresses),
            self.write_shared(&jobs, &progresses),
            |job: &Job| self.write_one(job.progress, &job.changes),
        )
        .await
    }

    /// One batch in its own transaction.
    async fn write_one(
        &self,
        progress: Progress,
        changes: &[(Position, AnalyticsChange)],
    ) -> Result<(), ProjectionError> {
        let mut client = self.pg.client().await?;
        let tx = client.transaction().await.map_err(projection_error)?;
        let after = lock_checkpoint(&tx, self.schema, NAME, progress).await?;
        let fresh: Vec<&AnalyticsChange> = changes
            .iter()
            .filter(|(p, _)| *p > after)
            .map(|(_, change)| change)
            .collect();
        apply_changes(&tx, self.schema, &fresh)
            .await
            .map_err(projection_error)?;
        end_batch(tx, self.schema, NAME, progress).await
    }

    /// Advances of different partitions in one transaction: each batch whose checkpoint
    /// moved is refused alone, the others' changes go in together, in batch order.
    async fn write_shared(
        &self,
        jobs: &[Job],
        progresses: &[Progress],
    ) -> Result<Vec<Result<(), ProjectionError>>, ProjectionError> {
        let mut client = self.pg.client().await?;
        let tx = client.transaction().await.map_err(projection_error)?;
        let stored =
            lock_checkpoints(&tx, self.schema, NAME, &group::partitions(progresses)).await?;
        let admitted = group::admit(progresses, &stored);
        let fresh: Vec<&AnalyticsChange> = jobs
            .iter()
            .zip(&admitted)
            .filter_map(|(job, admitted)| admitted.as_ref().ok().map(|after| (job, *after)))
            .flat_map(|(job, after)| {
                job.changes
                    .iter()
                    .filter(move |(p, _)| *p > after)
                    .map(|(_, change)| change)
            })
            .collect();
        apply_changes(&tx, self.schema, &fresh)
            .await
            .map_err(projection_error)?;
        write_checkpoints(&tx, self.schema, NAME, &group::moves(progresses, &admitted)).await?;
        tx.commit().await.map_err(projection_error)?;
        Ok(admitted.into_iter().map(|a| a.map(|_| ())).collect())
    }
}

/// Applies a batch's changes in log order, each run of letters (or of cancellations) in
/// one statement: a batch of 500 letters is two round trips and two statements instead of
/// a thousand of each.
async fn apply_changes(
    tx: &Transaction<'_>,
    schema: &str,
    changes: &[&AnalyticsChange],
) -> Result<(), tokio_postgres::Error> {
    let mut rest = changes;
    while let Some(first) = rest.first() {
        let taken = match first {
            AnalyticsChange::UpsertToy {
                id,
                name,
                price_cents,
            } => {
                upsert_toy(tx, schema, id, name, *price_cents).await?;
                1
            }
            AnalyticsChange::InsertLetter(_) => {
                let letters: Vec<&LetterRow> = rest
                    .iter()
                    .map_while(|c| match c {
                        AnalyticsChange::InsertLetter(letter) => Some(letter),
                        _ => None,
                    })
                    .collect();
                insert_letters(tx, schema, &letters).await?;
                letters.len()
            }
            AnalyticsChange::CancelLetter { .. } => {
                let cancels: Vec<(&str, Millis)> = rest
                    .iter()
                    .map_while(|c| match c {
                        AnalyticsChange::CancelLetter { id, at_ms } => Some((id.as_str(), *at_ms)),
                        _ => None,
                    })
                    .collect();
                cancel_letters(tx, schema, &cancels).await?;
                cancels.len()
            }
        };
        rest = &rest[taken..];
    }
    Ok(())
}

async fn upsert_toy(
    tx: &Transaction<'_>,
    schema: &str,
    id: &str,
    name: &str,
    price_cents: i64,
) -> Result<(), tokio_postgres::Error> {
    let sql = in_schema(
        "INSERT INTO santa_analytics.toys (id, name, price_cents) VALUES ($1, $2, $3)
         ON CONFLICT (id) DO UPDATE SET name = excluded.name, price_cents = excluded.price_cents",
        SCHEMA,
        schema,
    );
    tx.execute(&tx.prepare_cached(&sql).await?, &[&id, &name, &price_cents])
        .await?;
    Ok(())
}

/// Inserts letters that are not there yet, and the lines of those it inserted (a letter
/// already there, or met earlier in the run, is left as it is, as one at a time would).
async fn insert_letters(
    tx: &Transaction<'_>,
    schema: &str,
    letters: &[&LetterRow],
) -> Result<(), tokio_postgres::Error> {
    let mut seen = std::collections::HashSet::new();
    let (mut ids, mut children, mut countries, mut totals, mut at) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut line_letters, mut toys, mut quantities, mut prices) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for letter in letters.iter().filter(|l| seen.insert(l.id.as_str())) {
        ids.push(letter.id.as_str());
        children.push(letter.child.as_str());
        countries.push(letter.country.as_deref());
        totals.push(letter.total_cents);
        at.push(letter.submitted_at_ms);
        for line in &letter.lines {
            line_letters.push(letter.id.as_str());
            toys.push(line.toy_id.as_str());
            quantities.push(i32::try_from(line.quantity).unwrap_or(i32::MAX));
            prices.push(line.unit_price_cents);
        }
    }
    let sql = in_schema(
        "WITH inserted AS (
             INSERT INTO santa_analytics.letters (id, child, country, total_cents, status, submitted_at)
             SELECT id, child, country, total, 'submitted', to_timestamp(at_ms / 1000.0)
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[])
                 AS l (id, child, country, total, at_ms)
             ON CONFLICT (id) DO NOTHING
             RETURNING id)
         INSERT INTO santa_analytics.letter_lines (letter_id, toy_id, quantity, unit_price_cents)
         SELECT ln.letter_id, ln.toy_id, ln.quantity, ln.price
         FROM UNNEST($6::text[], $7::text[], $8::int[], $9::bigint[])
             AS ln (letter_id, toy_id, quantity, price)
         JOIN inserted ON inserted.id = ln.letter_id",
        SCHEMA,
        schema,
    );
    tx.execute(
        &tx.prepare_cached(&sql).await?,
        &[
            &ids,
            &children,
            &countries,
            &totals,
            &at,
            &line_letters,
            &toys,
            &quantities,
            &prices,
        ],
    )
    .await?;
    Ok(())
}

/// Cancels the letters still submitted (the first cancellation of a letter counts, as one
/// at a time).
async fn cancel_letters(
    tx: &Transaction<'_>,
    schema: &str,
    cancels: &[(&str, Millis)],
) -> Result<(), tokio_postgres::Error> {
    let mut seen = std::collections::HashSet::new();
    let (ids, at): (Vec<&str>, Vec<Millis>) = cancels
        .iter()
        .filter(|(id, _)| seen.insert(*id))
        .copied()
        .unzip();
    let sql = in_schema(
        "UPDATE santa_analytics.letters l
         SET status = 'cancelled', cancelled_at = to_timestamp(c.at_ms / 1000.0)
         FROM UNNEST($1::text[], $2::bigint[]) AS c (id, at_ms)
         WHERE l.id = c.id AND l.status = 'submitted'",
        SCHEMA,
        schema,
    );
    tx.execute(&tx.prepare_cached(&sql).await?, &[&ids, &at])
        .await?;
    Ok(())
}

#[async_trait]
impl AnalyticsStore for PgAnalyticsStore {
    async fn checkpoint(&self, partition: u32) -> Result<Position, StoreError> {
        let client = self.pg.client().await?;
        read_checkpoint(&**client, self.schema, NAME, partition)
            .await
            .map_err(store_error)
    }

    async fn apply(
        &self,
        progress: Progress,
        changes: Vec<(Position, AnalyticsChange)>,
    ) -> Result<(), ProjectionError> {
        let job = Job { progress, changes };
        self.group.submit(job, |jobs| self.write_group(jobs)).await
    }

    async fn toy_demand(&self, limit: usize) -> Result<Vec<ToyDemand>, StoreError> {
        let client = self.pg.client().await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = client
            .query(
                &*in_schema("SELECT ll.toy_id, COALESCE(t.name, ll.toy_id), SUM(ll.quantity)::bigint, COUNT(*)::bigint,
                        SUM(ll.quantity * ll.unit_price_cents)::bigint
                 FROM santa_analytics.letter_lines ll
                 JOIN santa_analytics.letters l ON l.id = ll.letter_id AND l.status = 'submitted'
                 LEFT JOIN santa_analytics.toys t ON t.id = ll.toy_id
                 GROUP BY ll.toy_id, t.name ORDER BY 3 DESC, 1 LIMIT $1", SCHEMA, self.schema),
                &[&limit],
            )
            .await
            .map_err(store_error)?;
        Ok(rows
            .iter()
            .map(|r| ToyDemand {
                toy_id: r.get(0),
                name: r.get(1),
                quantity: r.get(2),
                letters: r.get(3),
                value_cents: r.get(4),
            })
            .collect())
    }

    async fn totals_by_country(&self) -> Result<Vec<Totals>, StoreError> {
        self.totals(
            "SELECT COALESCE(l.country, 'unknown') AS k, COUNT(DISTINCT l.id)::bigint, SUM(ll.quantity)::bigint,
                    SUM(ll.quantity * ll.unit_price_cents)::bigint
             FROM santa_analytics.letters l JOIN santa_analytics.letter_lines ll ON ll.letter_id = l.id
             WHERE l.status = 'submitted' GROUP BY k ORDER BY 4 DESC, 1",
        )
        .await
    }

    async fn totals_by_day(&self) -> Result<Vec<Totals>, StoreError> {
        self.totals(
            "SELECT to_char(l.submitted_at AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS d, COUNT(DISTINCT l.id)::bigint,
                    SUM(ll.quantity)::bigint, SUM(ll.quantity * ll.unit_price_cents)::bigint
             FROM santa_analytics.letters l JOIN santa_analytics.letter_lines ll ON ll.letter_id = l.id
             WHERE l.status = 'submitted' GROUP BY d ORDER BY 1",
        )
        .await
    }

    async fn rebuild(&self) -> Result<Box<dyn StoreRebuild<dyn AnalyticsStore>>, ProjectionError> {
        let pg = self.pg.clone();
        rebuild(&self.pg, SCHEMA, MIGRATIONS, move |schema| {
            Arc::new(PgAnalyticsStore {
                pg,
                schema,
                group: Arc::default(),
            }) as Arc<dyn AnalyticsStore>
        })
        .await
    }
}
