//! Operations: health, readiness, metrics, the OpenAPI document, projection status, seed.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use santa_cqrs::ProjectionState;

use crate::AppState;
use crate::extract::PathId;
use crate::problem::{ApiError, Problem};
use crate::wire::{
    AcceptedResponse, HealthResponse, ProjectionStatusResponse, ProjectionsResponse,
    RebuildResponse, SeedResponse,
};

/// Liveness: the process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, body = HealthResponse)))]
pub(crate) async fn healthz() -> Json<HealthResponse> {
    Json(HealthResponse { status: "ok" })
}

/// Readiness: the log and the read stores answer, and every projection running here
/// has started.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, body = HealthResponse), (status = 503, body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn readyz(
    State(state): State<AppState>,
) -> Result<Json<HealthResponse>, ApiError> {
    state.commands.log().head().await?;
    for view in state.projections.iter() {
        view.projection
            .checkpoint(0)
            .await
            .map_err(|e| not_ready(format!("the {} store: {e}", view.projection.name())))?;
        if let Some(handle) = &view.local
            && handle.status().state == ProjectionState::Starting
        {
            return Err(not_ready(format!(
                "the {} projection is still starting",
                handle.name()
            )));
        }
    }
    Ok(Json(HealthResponse { status: "ready" }))
}

/// A projection behind the log that applied nothing for this long is reported as stalled.
const STALLED_AFTER: std::time::Duration = std::time::Duration::from_secs(30);

fn not_ready(detail: String) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not-ready", detail)
        .retry_after(std::time::Duration::from_secs(1))
}

/// Each projection's checkpoints, lag and state.
#[utoipa::path(get, path = "/admin/projections", tag = "operations",
    responses((status = 200, body = ProjectionsResponse)), security(("bearer" = ["read"])))]
pub(crate) async fn projections(
    State(state): State<AppState>,
) -> Result<Json<ProjectionsResponse>, ApiError> {
    Ok(Json(projection_report(&state).await?))
}

async fn projection_report(state: &AppState) -> Result<ProjectionsResponse, ApiError> {
    let log = state.commands.log();
    let head = log.head().await?.get();
    let heads = log.partition_heads().await?;
    let parked = state
        .dead_letters
        .list(None)
        .await
        .map_err(ApiError::projection)?;
    let now_ms = crate::now_ms();
    let mut projections = Vec::new();
    for view in state.projections.iter() {
        let mut partitions = Vec::with_capacity(heads.len());
        for partition in 0..heads.len() as u32 {
            let checkpoint = view.projection.checkpoint(partition).await.map_err(|e| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store-unavailable",
                    format!("cannot read checkpoints: {e}"),
                )
                .retry_after(std::time::Duration::from_secs(2))
            })?;
            partitions.push(checkpoint.get());
        }
        // A partition that is caught up counts as at the head; the projection is as far as
        // its slowest partition that is behind.
        let behind = || partitions.iter().zip(&heads).filter(|(c, h)| h.get() > **c);
        let position = behind().map(|(c, _)| *c).min().unwrap_or(head);
        // Exact with one partition; with several, positions interleave and this is an
        // upper bound.
        let lag_events: u64 = behind()
            .map(|(c, h)| h.get() - c)
            .sum::<u64>()
            .min(head.saturating_sub(position));
        let local = view.local.as_ref().map(|h| h.status());
        let lag_seconds = match (lag_events, local.as_ref().and_then(|s| s.last_event_at_ms)) {
            (0, _) | (_, None) => 0.0,
            (_, Some(at)) => (now_ms - at).max(0) as f64 / 1000.0,
        };
        let rebuild = state.rebuilds.status(view.projection.name());
        projections.push(ProjectionStatusResponse {
            name: view.projection.name(),
            position,
            partitions,
            lag_events,
            lag_seconds,
            state: match local.as_ref() {
                _ if rebuild
                    .as_ref()
                    .is_some_and(santa_cqrs::RebuildStatus::running) =>
                {
                    "rebuilding"
                }
                None => "elsewhere",
                // Behind the log and no batch applied for a while: something is stuck.
                Some(s) if s.stalled(lag_events > 0, now_ms, STALLED_AFTER) => "stalled",
                Some(s) => s.state.as_str(),
            },
            last_error: local.and_then(|s| s.last_error),
            parked: parked
                .iter()
                .filter(|l| l.projection == view.projection.name())
                .count(),
            rebuild: rebuild
                .as_ref()
                .map(|r| RebuildResponse::new(view.projection.name(), r, now_ms)),
        });
    }
    Ok(ProjectionsResponse { head, projections })
}

/// Rebuilds a projection: replays the whole log into fresh tables while the live ones keep
/// serving queries, then switches to them atomically. Answers at once; the progress shows
/// in `GET /admin/projections`.
#[utoipa::path(post, path = "/admin/projections/{name}/rebuild", tag = "operations",
    params(("name" = String, Path, description = "The projection: `letters` or `analytics`")),
    responses((status = 202, body = RebuildResponse, headers(("Location" = String, description = "Where the progress shows"))),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json", description = "A rebuild of the projection is under way"),
        (status = "4XX", body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = ["admin"])))]
pub(crate) async fn rebuild(
    State(state): State<AppState>,
    PathId(name): PathId,
) -> Result<Response, ApiError> {
    let view = state.projection_named(&name)?;
    let projection = view.projection.clone();
    let name = projection.name();
    let started = state
        .rebuilds
        .start(
            state.commands.log().clone(),
            state.dead_letters.clone(),
            projection,
        )
        .await
        .map_err(|error| match error {
            santa_cqrs::ProjectionError::Busy(detail) => {
                ApiError::new(StatusCode::CONFLICT, "rebuild-in-progress", detail)
            }
            other => ApiError::projection(other),
        })?;
    let now_ms = crate::now_ms();
    let mut response = (
        StatusCode::ACCEPTED,
        Json(RebuildResponse::new(name, &started, now_ms)),
    )
        .into_response();
    response.headers_mut().insert(
        header::LOCATION,
        HeaderValue::from_static("/admin/projections"),
    );
    Ok(response)
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format (OpenMetrics)", content_type = "application/openmetrics-text")),
    security(("bearer" = ["read"])))]
pub(crate) async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let report = projection_report(&state).await?;
    state.metrics.set_head(report.head);
    for p in &report.projections {
        state
            .metrics
            .set_projection(p.name, p.position, p.lag_events, p.lag_seconds, p.parked);
    }
    let text = state.metrics.encode().map_err(|e| ApiError::internal(&e))?;
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    Ok(response)
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json")),
    security(("bearer" = ["read"])))]
pub(crate) async fn openapi() -> Response {
    let mut response = crate::openapi_json().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Loads the demo catalogue and letters through the command path. Idempotent.
#[utoipa::path(post, path = "/admin/seed", tag = "operations",
    responses((status = 200, body = SeedResponse), (status = "4XX", body = Problem, content_type = "application/problem+json"), (status = 503, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = ["admin"])))]
pub(crate) async fn seed(State(state): State<AppState>) -> Result<Json<SeedResponse>, ApiError> {
    let seeded = santa_workshop::seed::seed(&state.commands).await?;
    let wire = |a: santa_workshop::Accepted| AcceptedResponse {
        id: a.id,
        position: a.position.get(),
    };
    Ok(Json(SeedResponse {
        toys: seeded.toys.into_iter().map(wire).collect(),
        letters: seeded.letters.into_iter().map(wire).collect(),
    }))
}
