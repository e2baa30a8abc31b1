//! The analytics store on PostgreSQL (`santa_analytics` schema).

use std::sync::Arc;

use async_trait::async_trait;
use deadpool_postgres::Transaction;
use santa_cqrs::{Position, Progress, ProjectionError};
use santa_workshop::analytics::{
    AnalyticsChange, AnalyticsStore, LetterRow, NAME, Totals, ToyDemand,
};
use santa_workshop::kv::StoreError;
use santa_workshop::rebuild::StoreRebuild;

use crate::rebuild::{in_schema, rebuild};

use crate::db::{
    OpenError, Pg, end_batch, lock_checkpoint, projection_error, read_checkpoint, store_error,
};

const SCHEMA: &str = "santa_analytics";

const MIGRATIONS: &[&str] = &["CREATE TABLE santa_analytics.toys (
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
        PRIMARY KEY (projection, partition));"];

/// The analytics store in PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgAnalyticsStore {
    pg: Pg,
    /// `santa_analytics`, or the schema a rebuild fills.
    schema: &'static str,
}

impl PgAnalyticsStore {
    /// Connects and brings the `santa_analytics` schema up to date.
    pub async fn open(pg: Pg) -> Result<Self, OpenError> {
        pg.migrate(SCHEMA, MIGRATIONS).await?;
        Ok(Self { pg, schema: SCHEMA })
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

async fn apply_change(
    tx: &Transaction<'_>,
    schema: &str,
    change: &AnalyticsChange,
) -> Result<(), tokio_postgres::Error> {
    let sql = |sql| in_schema(sql, SCHEMA, schema);
    match change {
        AnalyticsChange::UpsertToy {
            id,
            name,
            price_cents,
        } => {
            tx.execute(
                &tx.prepare_cached(&sql("INSERT INTO santa_analytics.toys (id, name, price_cents) VALUES ($1, $2, $3)
                 ON CONFLICT (id) DO UPDATE SET name = excluded.name, price_cents = excluded.price_cents")).await?,
                &[id, name, price_cents],
            )
            .await?;
        }
        AnalyticsChange::InsertLetter(letter) => insert_letter(tx, schema, letter).await?,
        AnalyticsChange::CancelLetter { id, at_ms } => {
            tx.execute(
                &tx.prepare_cached(&sql("UPDATE santa_analytics.letters SET status = 'cancelled', cancelled_at = to_timestamp($2::bigint / 1000.0)
                 WHERE id = $1 AND status = 'submitted'")).await?,
                &[id, at_ms],
            )
            .await?;
        }
    }
    Ok(())
}

async fn insert_letter(
    tx: &Transaction<'_>,
    schema: &str,
    letter: &LetterRow,
) -> Result<(), tokio_postgres::Error> {
    let sql = |sql| in_schema(sql, SCHEMA, schema);
    let inserted = tx
        .execute(
            &tx.prepare_cached(&sql("INSERT INTO santa_analytics.letters (id, child, country, total_cents, status, submitted_at)
             VALUES ($1, $2, $3, $4, 'submitted', to_timestamp($5::bigint / 1000.0))
             ON CONFLICT (id) DO NOTHING")).await?,
            &[&letter.id, &letter.child, &letter.country, &letter.total_cents, &letter.submitted_at_ms],
        )
        .await?;
    if inserted == 0 {
        return Ok(());
    }
    let toys: Vec<&str> = letter.lines.iter().map(|l| l.toy_id.as_str()).collect();
    let quantities: Vec<i32> = letter
        .lines
        .iter()
        .map(|l| i32::try_from(l.quantity).unwrap_or(i32::MAX))
        .collect();
    let prices: Vec<i64> = letter.lines.iter().map(|l| l.unit_price_cents).collect();
    tx.execute(
        &tx.prepare_cached(&sql("INSERT INTO santa_analytics.letter_lines (letter_id, toy_id, quantity, unit_price_cents)
         SELECT $1, * FROM UNNEST($2::text[], $3::int[], $4::bigint[])")).await?,
        &[&letter.id, &toys, &quantities, &prices],
    )
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
        let mut client = self.pg.client().await?;
        let tx = client.transaction().await.map_err(projection_error)?;
        let after = lock_checkpoint(&tx, self.schema, NAME, progress).await?;
        for (_, change) in changes.iter().filter(|(p, _)| *p > after) {
            apply_change(&tx, self.schema, change)
                .await
                .map_err(projection_error)?;
        }
        end_batch(tx, self.schema, NAME, progress).await
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
            Arc::new(PgAnalyticsStore { pg, schema }) as Arc<dyn AnalyticsStore>
        })
        .await
    }
}
