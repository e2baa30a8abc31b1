//! Route assembly: each group behind the scope it needs.

pub(crate) mod bench;
pub(crate) mod commands;
pub(crate) mod dead_letters;
pub(crate) mod ops;
pub(crate) mod queries;

use axum::Router;
use axum::http::StatusCode;
use axum::middleware::from_fn_with_state;
use axum::routing::{get, post, put};
use std::time::Duration;

use santa_cqrs::{Position, Projection};

use crate::auth::{Guard, Scope, require};
use crate::problem::ApiError;
use crate::{AppState, ProjectionView};

pub(crate) fn router(state: AppState) -> Router {
    let guard = |scope| Guard {
        tokens: state.settings.tokens.clone(),
        scope,
    };
    let write = Router::new()
        .route("/toys/{id}", put(commands::upsert_toy))
        .route("/letters", post(commands::submit_letter))
        .route(
            "/letters/{id}",
            axum::routing::delete(commands::cancel_letter),
        )
        .route_layer(from_fn_with_state(guard(Scope::Write), require));
    // The benchmark's baselines: not part of the API, served only when asked for.
    let write = if state.settings.bench_endpoints {
        write.merge(
            Router::new()
                .route("/bench/ceiling", post(bench::ceiling))
                .route("/bench/crud", post(bench::crud))
                .route("/bench/floor", post(bench::floor))
                .route_layer(from_fn_with_state(guard(Scope::Write), require)),
        )
    } else {
        write
    };
    let read = Router::new()
        .route("/toys", get(queries::list_toys))
        .route("/toys/{id}", get(queries::get_toy))
        .route("/toys/{id}/letters", get(queries::toy_letters))
        .route("/letters", get(queries::list_letters))
        .route("/letters/{id}", get(queries::get_letter))
        .route("/letters/{id}/history", get(queries::letter_history))
        .route("/analytics/toys", get(queries::toy_demand))
        .route("/analytics/countries", get(queries::totals_by_country))
        .route("/analytics/days", get(queries::totals_by_day))
        .route("/admin/projections", get(ops::projections))
        .route("/admin/dead-letters", get(dead_letters::list))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi))
        .route_layer(from_fn_with_state(guard(Scope::Read), require));
    let admin = Router::new()
        .route("/admin/seed", post(ops::seed))
        .route("/admin/projections/{name}/rebuild", post(ops::rebuild))
        .route("/admin/dead-letters/redrive", post(dead_letters::redrive))
        .route_layer(from_fn_with_state(guard(Scope::Admin), require));
    let open = Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz));
    Router::new()
        .merge(write)
        .merge(read)
        .merge(admin)
        .merge(open)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint; see /openapi.json")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "this endpoint does not accept that method",
    )
}

impl AppState {
    fn projection(&self, name: &str) -> Option<&ProjectionView> {
        self.projections
            .iter()
            .find(|p| p.projection.name() == name)
    }

    /// The projection a request names, or a 404 that lists the real ones.
    pub(crate) fn projection_named(&self, name: &str) -> Result<&ProjectionView, ApiError> {
        self.projection(name).ok_or_else(|| {
            let names: Vec<_> = self
                .projections
                .iter()
                .map(|p| p.projection.name())
                .collect();
            ApiError::not_found(format!(
                "there is no projection `{name}` (there are: {})",
                names.join(", ")
            ))
        })
    }

    /// Read-your-writes: with `?after=P`, waits (bounded) until `projection` has applied
    /// P, or answers that it is still behind. Works across processes: the checkpoint is
    /// read from the projection's store when the projection does not run here.
    pub(crate) async fn consistent(
        &self,
        projection: &str,
        after: Option<&str>,
    ) -> Result<(), ApiError> {
        let Some(raw) = after else { return Ok(()) };
        let position: Position = raw.parse().map_err(|e: santa_cqrs::InvalidPosition| {
            ApiError::bad_request("invalid-position", e.to_string()).with_field("after")
        })?;
        let log = self.commands.log();
        let head = log.head().await?;
        if position > head {
            return Err(ApiError::bad_request(
                "invalid-position",
                format!("position {position} has not been issued (the log is at {head})"),
            )
            .with_field("after"));
        }
        if position == Position::ZERO {
            return Ok(());
        }
        let Some(view) = self.projection(projection) else {
            return Err(ApiError::internal(&UnknownProjection(
                projection.to_owned(),
            )));
        };
        let partition = log.partition_at(position).await?;
        let timeout = self.settings.consistency_timeout;
        let reached = match &view.local {
            Some(handle) if handle.serves(partition) => {
                handle.wait_for(partition, position, timeout).await
            }
            _ => poll_checkpoint(view.projection.as_ref(), partition, position, timeout).await?,
        };
        if reached {
            return Ok(());
        }
        Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "projection-behind",
            format!("the {projection} projection did not reach position {position} within {timeout:?}; retry later"),
        )
        .retry_after(Duration::from_secs(1)))
    }
}

/// How often a query waiting for another process's projection looks at its checkpoint.
const CHECKPOINT_POLL: Duration = Duration::from_millis(10);

async fn poll_checkpoint(
    projection: &dyn Projection,
    partition: u32,
    position: Position,
    timeout: Duration,
) -> Result<bool, ApiError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let checkpoint = projection.checkpoint(partition).await.map_err(|e| {
            tracing::warn!(error = %e, "cannot read a projection checkpoint");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store-unavailable",
                "the read store is unavailable right now",
            )
            .retry_after(Duration::from_secs(2))
        })?;
        if checkpoint >= position {
            return Ok(true);
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        // The last look is at the deadline itself.
        tokio::time::sleep(CHECKPOINT_POLL.min(deadline - now)).await;
    }
}

#[derive(Debug, thiserror::Error)]
#[error("no projection named `{0}` runs in this process")]
struct UnknownProjection(String);

/// Clamps a page size: default 50, at most 500.
pub(crate) fn limit(raw: Option<u32>) -> Result<usize, ApiError> {
    match raw {
        None => Ok(50),
        Some(n @ 1..=500) => Ok(n as usize),
        Some(n) => Err(ApiError::bad_request(
            "invalid-query",
            format!("`limit` must be between 1 and 500, got {n}"),
        )
        .with_field("limit")),
    }
}
