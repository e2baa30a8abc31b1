//! Dead letters on PostgreSQL (`santa_ops.dead_letters`).

use async_trait::async_trait;
use santa_cqrs::{DeadLetter, DeadLetters, Position, ProjectionError};
use tokio_postgres::Row;

use crate::db::{OpenError, Pg, projection_error};

const MIGRATIONS: &[&str] = &["CREATE TABLE santa_ops.dead_letters (
        projection TEXT NOT NULL,
        position BIGINT NOT NULL,
        partition INTEGER NOT NULL,
        stream TEXT NOT NULL,
        event_type TEXT NOT NULL,
        error TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        parked_at_ms BIGINT NOT NULL,
        behind BIGINT,
        PRIMARY KEY (projection, position));
    CREATE INDEX dead_letters_stream ON santa_ops.dead_letters (projection, stream, position);"];

/// Dead letters in PostgreSQL, shared by every projector process.
#[derive(Debug, Clone)]
pub struct PgDeadLetters {
    pg: Pg,
}

impl PgDeadLetters {
    pub async fn open(pg: Pg) -> Result<Self, OpenError> {
        pg.migrate("santa_ops", MIGRATIONS).await?;
        Ok(Self { pg })
    }
}

fn int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn row(r: &Row) -> DeadLetter {
    let position = |v: i64| Position::new(u64::try_from(v).unwrap_or(0));
    DeadLetter {
        projection: r.get(0),
        position: position(r.get(1)),
        partition: u32::try_from(r.get::<_, i32>(2)).unwrap_or(0),
        stream: r.get(3),
        event_type: r.get(4),
        error: r.get(5),
        attempts: u32::try_from(r.get::<_, i32>(6)).unwrap_or(0),
        parked_at_ms: r.get(7),
        behind: r.get::<_, Option<i64>>(8).map(position),
    }
}

const SELECT: &str = "SELECT projection, position, partition, stream, event_type, error, attempts, parked_at_ms, behind
                      FROM santa_ops.dead_letters";

#[async_trait]
impl DeadLetters for PgDeadLetters {
    async fn park(&self, l: DeadLetter) -> Result<(), ProjectionError> {
        let client = self.pg.client().await?;
        let partition = i32::try_from(l.partition).unwrap_or(i32::MAX);
        let attempts = i32::try_from(l.attempts).unwrap_or(i32::MAX);
        client
            .execute(
                "INSERT INTO santa_ops.dead_letters (projection, position, partition, stream, event_type, error,
                                                     attempts, parked_at_ms, behind)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                 ON CONFLICT (projection, position) DO UPDATE SET error = excluded.error,
                   attempts = excluded.attempts, parked_at_ms = excluded.parked_at_ms, behind = excluded.behind",
                &[
                    &l.projection,
                    &int(l.position.get()),
                    &partition,
                    &l.stream,
                    &l.event_type,
                    &l.error,
                    &attempts,
                    &l.parked_at_ms,
                    &l.behind.map(|p| int(p.get())),
                ],
            )
            .await
            .map_err(projection_error)?;
        Ok(())
    }

    async fn list(&self, projection: Option<&str>) -> Result<Vec<DeadLetter>, ProjectionError> {
        let client = self.pg.client().await?;
        let rows = client
            .query(&format!("{SELECT} WHERE $1::text IS NULL OR projection = $1 ORDER BY position, projection"), &[&projection])
            .await
            .map_err(projection_error)?;
        Ok(rows.iter().map(row).collect())
    }

    async fn blocking(
        &self,
        projection: &str,
        stream: &str,
    ) -> Result<Option<Position>, ProjectionError> {
        let client = self.pg.client().await?;
        let row = client
            .query_one(
                "SELECT MIN(position) FROM santa_ops.dead_letters WHERE projection = $1 AND stream = $2",
                &[&projection, &stream],
            )
            .await
            .map_err(projection_error)?;
        Ok(row
            .get::<_, Option<i64>>(0)
            .map(|p| Position::new(u64::try_from(p).unwrap_or(0))))
    }

    async fn remove(&self, projection: &str, position: Position) -> Result<(), ProjectionError> {
        let client = self.pg.client().await?;
        client
            .execute(
                "DELETE FROM santa_ops.dead_letters WHERE projection = $1 AND position = $2",
                &[&projection, &int(position.get())],
            )
            .await
            .map_err(projection_error)?;
        Ok(())
    }
}
