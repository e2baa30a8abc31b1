//! `POST /bench/ceiling`: the HTTP ceiling the benchmark compares the durable command path
//! with. It runs the same server stack, extractor and validation as `POST /letters`, and
//! then stores nothing.

use axum::Json;
use axum::http::StatusCode;

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
