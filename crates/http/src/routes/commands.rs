//! Command endpoints: validate, make durable, answer `202 {id, position}`.
//!
//! With an `Idempotency-Key` header, the first answer is kept for a window (24 h by
//! default): a retry with the same key and request gets it again and has no second
//! effect; the same key with a different request is a 422.

use std::time::Instant;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use santa_domain::{CancelLetter, LetterId};
use santa_workshop::idempotency::IdempotentAnswer;
use santa_workshop::{Accepted, CommandError};

use crate::AppState;
use crate::extract::{Body, PathId};
use crate::problem::{ApiError, Problem};
use crate::wire::{AcceptedResponse, SubmitLetterRequest, UpsertToyRequest};

type CommandResult = Result<(StatusCode, Json<AcceptedResponse>), ApiError>;

/// Add a toy to the catalogue or change it.
#[utoipa::path(put, path = "/toys/{id}", tag = "commands",
    params(("id" = String, Path, description = "Toy slug, e.g. `rubiks-cube`", max_length = 64, pattern = "^[a-z0-9]([a-z0-9-]{0,62}[a-z0-9])?$"),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes a retry safe: the first answer is kept")),
    request_body = UpsertToyRequest,
    responses((status = 202, body = AcceptedResponse), (status = "4XX", body = Problem, content_type = "application/problem+json"), (status = 503, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = ["write"])))]
pub(crate) async fn upsert_toy(
    State(state): State<AppState>,
    PathId(id): PathId,
    headers: HeaderMap,
    Body(body): Body<UpsertToyRequest>,
) -> CommandResult {
    let started = Instant::now();
    let key = Keyed::from_headers(&headers, || fingerprint(&format!("PUT /toys/{id}"), &body))
        .map_err(|e| state.rejected("upsert_toy", e))?;
    let cmd = body
        .into_command(id)
        .map_err(|e| state.rejected("upsert_toy", e.into()))?;
    state
        .run("upsert_toy", started, key, || {
            state.commands.upsert_toy(cmd)
        })
        .await
}

/// Submit a letter to Santa.
#[utoipa::path(post, path = "/letters", tag = "commands",
    request_body = SubmitLetterRequest,
    params(("Idempotency-Key" = Option<String>, Header,
        description = "Makes a retry safe: the first answer is kept, and a letter without an `id` is named after the key")),
    responses((status = 202, body = AcceptedResponse), (status = "4XX", body = Problem, content_type = "application/problem+json"), (status = 503, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = ["write"])))]
pub(crate) async fn submit_letter(
    State(state): State<AppState>,
    headers: HeaderMap,
    Body(body): Body<SubmitLetterRequest>,
) -> CommandResult {
    let started = Instant::now();
    let key = Keyed::from_headers(&headers, || fingerprint("POST /letters", &body))
        .map_err(|e| state.rejected("submit_letter", e))?;
    let id = match &key {
        // Concurrent first tries with one key name the same letter, so they cannot both
        // create one.
        Some(keyed) => {
            uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, keyed.key.as_bytes()).to_string()
        }
        // Time-ordered ids keep the stores' B-trees appending instead of splitting at random.
        None => uuid::Uuid::now_v7().to_string(),
    };
    let cmd = body
        .into_command(id)
        .map_err(|e| state.rejected("submit_letter", e.into()))?;
    state
        .run("submit_letter", started, key, || {
            state.commands.submit_letter(cmd)
        })
        .await
}

/// Cancel a letter.
#[utoipa::path(delete, path = "/letters/{id}", tag = "commands",
    params(("id" = String, Path, description = "Letter id", max_length = 64, pattern = "^[A-Za-z0-9._-]{1,64}$"),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes a retry safe: the first answer is kept")),
    responses((status = 202, body = AcceptedResponse), (status = "4XX", body = Problem, content_type = "application/problem+json"), (status = 503, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = ["write"])))]
pub(crate) async fn cancel_letter(
    State(state): State<AppState>,
    PathId(id): PathId,
    headers: HeaderMap,
) -> CommandResult {
    let started = Instant::now();
    let key = Keyed::from_headers(&headers, || {
        fingerprint(&format!("DELETE /letters/{id}"), &())
    })
    .map_err(|e| state.rejected("cancel_letter", e))?;
    let id = LetterId::parse(id).map_err(|e| state.rejected("cancel_letter", e.into()))?;
    state
        .run("cancel_letter", started, key, || {
            state.commands.cancel_letter(CancelLetter { id })
        })
        .await
}

/// A command sent with an `Idempotency-Key`, and the fingerprint of the request it was
/// sent with.
struct Keyed {
    key: String,
    fingerprint: String,
}

impl Keyed {
    /// The `Idempotency-Key` header, if sent, with the request's `fingerprint` (only then
    /// worked out: a command without a key has no use for it).
    fn from_headers(
        headers: &HeaderMap,
        fingerprint: impl FnOnce() -> String,
    ) -> Result<Option<Self>, ApiError> {
        Ok(idempotency_key(headers)?.map(|key| Self {
            key,
            fingerprint: fingerprint(),
        }))
    }
}

/// The `Idempotency-Key` header, if sent: 1 to 200 visible ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let invalid = || {
        ApiError::bad_request(
            "invalid-header",
            "`Idempotency-Key` must be 1 to 200 visible ASCII characters",
        )
        .with_field("Idempotency-Key")
    };
    let key = value.to_str().map_err(|_| invalid())?;
    if key.is_empty() || key.len() > 200 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid());
    }
    Ok(Some(key.to_owned()))
}

/// Identifies a request: what it is sent to and its body, as parsed.
fn fingerprint(target: &str, body: &impl serde::Serialize) -> String {
    let body = serde_json::to_string(body).unwrap_or_default();
    uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_OID,
        format!("{target}\n{body}").as_bytes(),
    )
    .to_string()
}

impl AppState {
    /// Runs a command, honouring an idempotency key, and answers 202 or a problem.
    async fn run<F, Fut>(
        &self,
        command: &'static str,
        started: Instant,
        key: Option<Keyed>,
        execute: F,
    ) -> CommandResult
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Accepted, CommandError>>,
    {
        let Some(Keyed { key, fingerprint }) = key else {
            return self.accepted(command, started, execute().await);
        };
        if let Some(kept) = self
            .idempotency
            .get(&key)
            .await
            .map_err(|e| self.rejected(command, e.into()))?
        {
            if kept.fingerprint != fingerprint {
                return Err(self.rejected(command, key_reused()));
            }
            self.metrics.command(command, "accepted", started.elapsed());
            return Ok((
                StatusCode::ACCEPTED,
                Json(AcceptedResponse {
                    id: kept.id,
                    position: kept.position,
                }),
            ));
        }
        let outcome = execute().await;
        if let Ok(accepted) = &outcome {
            let answer = IdempotentAnswer {
                fingerprint,
                id: accepted.id.clone(),
                position: accepted.position.get(),
            };
            self.idempotency
                .put(&key, answer)
                .await
                .map_err(|e| self.rejected(command, e.into()))?;
        }
        self.accepted(command, started, outcome)
    }

    fn accepted(
        &self,
        command: &'static str,
        started: Instant,
        result: Result<Accepted, CommandError>,
    ) -> CommandResult {
        match result {
            Ok(accepted) => {
                self.metrics.command(command, "accepted", started.elapsed());
                Ok((
                    StatusCode::ACCEPTED,
                    Json(AcceptedResponse {
                        id: accepted.id,
                        position: accepted.position.get(),
                    }),
                ))
            }
            Err(error) => Err(self.rejected(command, error.into())),
        }
    }

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

fn key_reused() -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency-key-reused",
        "this Idempotency-Key was already used with a different request; use a new key for a new request",
    )
    .with_field("Idempotency-Key")
}
