//! Dead letters: list them, and re-drive one (with those waiting behind it) or all of a
//! projection's.

use axum::Json;
use axum::extract::State;
use santa_cqrs::Position;

use crate::AppState;
use crate::extract::{Body, Params};
use crate::problem::{ApiError, Problem};
use crate::wire::{
    DeadLetterResponse, DeadLettersParams, DeadLettersResponse, RedriveRequest, RedriveResponse,
    rfc3339,
};

/// Events the projections set aside, oldest first.
#[utoipa::path(get, path = "/admin/dead-letters", tag = "operations", params(DeadLettersParams),
    responses((status = 200, body = DeadLettersResponse), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = ["read"])))]
pub(crate) async fn list(
    State(state): State<AppState>,
    Params(p): Params<DeadLettersParams>,
) -> Result<Json<DeadLettersResponse>, ApiError> {
    if let Some(name) = p.projection.as_deref() {
        state.projection_named(name)?;
    }
    let letters = state
        .dead_letters
        .list(p.projection.as_deref())
        .await
        .map_err(ApiError::projection)?;
    Ok(Json(DeadLettersResponse {
        dead_letters: letters
            .into_iter()
            .map(|l| DeadLetterResponse {
                projection: l.projection,
                partition: l.partition,
                position: l.position.get(),
                stream: l.stream,
                event_type: l.event_type,
                error: l.error,
                attempts: l.attempts,
                parked_at: rfc3339(l.parked_at_ms),
                waiting_behind: l.behind.map(Position::get),
            })
            .collect(),
    }))
}

/// Applies parked events again, in order per letter; those that apply are released.
#[utoipa::path(post, path = "/admin/dead-letters/redrive", tag = "operations", request_body = RedriveRequest,
    responses((status = 200, body = RedriveResponse), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = ["admin"])))]
pub(crate) async fn redrive(
    State(state): State<AppState>,
    Body(request): Body<RedriveRequest>,
) -> Result<Json<RedriveResponse>, ApiError> {
    let view = state.projection_named(&request.projection)?;
    let only = request.position.map(Position::new);
    if let Some(position) = only {
        let parked = state
            .dead_letters
            .list(Some(&request.projection))
            .await
            .map_err(ApiError::projection)?;
        if !parked.iter().any(|l| l.position == position) {
            return Err(ApiError::not_found(format!(
                "no dead letter of the {} projection at position {position}",
                request.projection
            )));
        }
    }
    let outcome = santa_cqrs::redrive(
        state.commands.log(),
        view.projection.as_ref(),
        state.dead_letters.as_ref(),
        only,
    )
    .await
    .map_err(ApiError::projection)?;
    Ok(Json(RedriveResponse {
        applied: outcome.applied,
        still_parked: outcome.parked,
    }))
}
