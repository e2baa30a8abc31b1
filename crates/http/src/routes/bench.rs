//! The baselines the benchmark compares the durable command path with, served only with
//! `--bench-endpoints`:
//! - `POST /bench/ceiling`: the same server stack, extractor and validation as
//!   `POST /letters`, then nothing stored: the HTTP ceiling;
//! - `POST /bench/floor`: the same stack and validation, then the letter written into a
//!   file and synced, one sync per group, before the 202: the durable floor (see
//!   `SyncedAppends`);
//! - `POST /bench/crud`: the same letter decided against the read store and written into
//!   both read stores inside the request, with no event log: synchronous CRUD.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use santa_workshop::baseline::{BaselineError, submit_letter_synchronously};

use crate::AppState;
use crate::extract::Body;
use crate::problem::ApiError;
use crate::wire::{AcceptedResponse, SubmitLetterRequest};

pub(crate) async fn ceiling(
    Body(body): Body<SubmitLetterRequest>,
) -> Result<(StatusCode, Json<AcceptedResponse>), ApiError> {
    let cmd = body.into_command(uuid::Uuid::now_v7().to_string())?;
    Ok((
        StatusCode::ACCEPTED,
        Json(AcceptedResponse {
            id: cmd.id().to_string(),
            position: 0,
        }),
    ))
}

pub(crate) async fn crud(
    State(state): State<AppState>,
    Body(body): Body<SubmitLetterRequest>,
) -> Result<(StatusCode, Json<AcceptedResponse>), ApiError> {
    let cmd = body.into_command(uuid::Uuid::now_v7().to_string())?;
    let id = cmd.id().to_string();
    let projections: Vec<_> = state
        .projections
        .iter()
        .map(|view| view.projection.clone())
        .collect();
    let now_ms = crate::now_ms();
    submit_letter_synchronously(&state.letters, &projections, cmd, now_ms)
        .await
        .map_err(|error| match error {
            BaselineError::Rejected(e) => ApiError::from(e),
            BaselineError::Store(e) => ApiError::projection(e),
        })?;
    Ok((
        StatusCode::ACCEPTED,
        Json(AcceptedResponse { id, position: 0 }),
    ))
}

pub(crate) async fn floor(
    State(state): State<AppState>,
    Body(body): Body<SubmitLetterRequest>,
) -> Result<(StatusCode, Json<AcceptedResponse>), ApiError> {
    let floor = state
        .bench_floor
        .as_ref()
        .ok_or_else(|| ApiError::not_found("the durable floor"))?;
    let mut bytes = serde_json::to_vec(&body).map_err(|e| ApiError::internal(&e))?;
    bytes.push(b'\n');
    let cmd = body.into_command(uuid::Uuid::now_v7().to_string())?;
    floor
        .append(bytes)
        .await
        .map_err(|e| ApiError::internal(&*e))?;
    Ok((
        StatusCode::ACCEPTED,
        Json(AcceptedResponse {
            id: cmd.id().to_string(),
            position: 0,
        }),
    ))
}
