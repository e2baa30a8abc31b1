//! Command endpoints: validate, make durable, answer `202 {id, position}`.

use std::time::Instant;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use santa_domain::{CancelLetter, LetterId};
use santa_workshop::{Accepted, CommandError};

use crate::AppState;
use crate::extract::{Body, PathId};
use crate::problem::{ApiError, Problem};
use crate::wire::{AcceptedResponse, SubmitLetterRequest, UpsertToyRequest};

type CommandResult = Result<(StatusCode, Json<AcceptedResponse>), ApiError>;

/// Add a toy to the catalogue or change it.
#[utoipa::path(put, path = "/toys/{id}", tag = "commands",
    params(("id" = String, Path, description = "Toy slug, e.g. `rubiks-cube`")),
    request_body = UpsertToyRequest,
    responses((status = 202, body = AcceptedResponse), (status = "4XX", body = Problem, content_type = "application/problem+json"), (status = 503, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = ["write"])))]
pub(crate) async fn upsert_toy(
    State(state): State<AppState>,
    PathId(id): PathId,
    Body(body): Body<UpsertToyRequest>,
) -> CommandResult {
    let started = Instant::now();
    let cmd = body
        .into_command(id)
        .map_err(|e| state.rejected("upsert_toy", e.into()))?;
    accepted(
        &state,
        "upsert_toy",
        started,
        state.commands.upsert_toy(cmd).await,
    )
}

/// Submit a letter to Santa.
#[utoipa::path(post, path = "/letters", tag = "commands",
    request_body = SubmitLetterRequest,
    params(("Idempotency-Key" = Option<String>, Header,
        description = "Makes a retry of a letter without an `id` safe: the same key names the same letter")),
    responses((status = 202, body = AcceptedResponse), (status = "4XX", body = Problem, content_type = "application/problem+json"), (status = 503, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = ["write"])))]
pub(crate) async fn submit_letter(
    State(state): State<AppState>,
    headers: HeaderMap,
    Body(body): Body<SubmitLetterRequest>,
) -> CommandResult {
    let started = Instant::now();
    let id = match headers.get("idempotency-key") {
        Some(key) => {
            idempotent_id(key.as_bytes()).map_err(|e| state.rejected("submit_letter", e))?
        }
        // Time-ordered ids keep the stores' B-trees appending instead of splitting at random.
        None => uuid::Uuid::now_v7().to_string(),
    };
    let cmd = body
        .into_command(id)
        .map_err(|e| state.rejected("submit_letter", e.into()))?;
    accepted(
        &state,
        "submit_letter",
        started,
        state.commands.submit_letter(cmd).await,
    )
}

/// Cancel a letter.
#[utoipa::path(delete, path = "/letters/{id}", tag = "commands",
    params(("id" = String, Path, description = "Letter id")),
    responses((status = 202, body = AcceptedResponse), (status = "4XX", body = Problem, content_type = "application/problem+json"), (status = 503, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = ["write"])))]
pub(crate) async fn cancel_letter(
    State(state): State<AppState>,
    PathId(id): PathId,
) -> CommandResult {
    let started = Instant::now();
    let id = LetterId::parse(id).map_err(|e| state.rejected("cancel_letter", e.into()))?;
    accepted(
        &state,
        "cancel_letter",
        started,
        state.commands.cancel_letter(CancelLetter { id }).await,
    )
}

/// The letter id an `Idempotency-Key` stands for: the same key always names the same
/// letter, so a retried submission is an idempotent repeat.
fn idempotent_id(key: &[u8]) -> Result<String, ApiError> {
    if key.is_empty() || key.len() > 200 {
        return Err(ApiError::bad_request(
            "invalid-header",
            "`Idempotency-Key` must be 1 to 200 bytes",
        )
        .with_field("Idempotency-Key"));
    }
    Ok(uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, key).to_string())
}

fn accepted(
    state: &AppState,
    command: &'static str,
    started: Instant,
    result: Result<Accepted, CommandError>,
) -> CommandResult {
    match result {
        Ok(accepted) => {
            state
                .metrics
                .command(command, "accepted", started.elapsed());
            Ok((
                StatusCode::ACCEPTED,
                Json(AcceptedResponse {
                    id: accepted.id,
                    position: accepted.position.get(),
                }),
            ))
        }
        Err(error) => Err(state.rejected(command, error.into())),
    }
}

impl AppState {
    /// Counts a refused command and passes its error on.
    fn rejected(&self, command: &'static str, error: ApiError) -> ApiError {
        let outcome = if error.status().is_server_error() {
            "failed"
        } else {
            "rejected"
        };
        self.metrics
            .command(command, outcome, std::time::Duration::ZERO);
        error
    }
}
