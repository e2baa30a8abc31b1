//! `application/problem+json` (RFC 9457) for every error the API returns.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use santa_cqrs::LogError;
use santa_domain::{DomainError, InvalidValue};
use santa_workshop::CommandError;
use santa_workshop::kv::StoreError;
use serde::Serialize;
use utoipa::ToSchema;

/// A problem detail as sent to clients.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// A stable identifier of the kind of problem, e.g. `/problems/validation`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    /// What went wrong, in words a person can act on.
    pub detail: String,
    /// The offending field, where there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// Every error the API can answer with. Internal causes go to the log, never to clients.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    detail: String,
    field: Option<String>,
    retry_after: Option<Duration>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            detail: detail.into(),
            field: None,
            retry_after: None,
        }
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", what)
    }

    pub fn bad_request(kind: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, kind, detail)
    }

    /// A failure whose cause must not reach the client: logged here, generic outside.
    pub fn internal(cause: &dyn std::error::Error) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the server failed to handle the request",
        )
    }

    fn unavailable(kind: &'static str, detail: impl Into<String>, retry: u64) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, kind, detail)
            .retry_after(Duration::from_secs(retry))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = Problem {
            kind: format!("/problems/{}", self.kind),
            title: self.status.canonical_reason().unwrap_or("Error").to_owned(),
            status: self.status.as_u16(),
            detail: self.detail,
            field: self.field,
        };
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(after) = self.retry_after {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from(after.as_secs().max(1)),
            );
        }
        response
    }
}

impl ApiError {
    /// A projection-side failure (reading or writing a store) as the API reports it.
    pub fn projection(error: santa_cqrs::ProjectionError) -> Self {
        tracing::warn!(%error, "projection store failure");
        Self::unavailable(
            "store-unavailable",
            "the read store is unavailable right now",
            2,
        )
    }
}

impl From<InvalidValue> for ApiError {
    fn from(e: InvalidValue) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
            format!("`{}` {}", e.field, e.reason),
        )
        .with_field(e.field)
    }
}

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> Self {
        match e {
            DomainError::Invalid(invalid) => invalid.into(),
            DomainError::UnknownToy(_) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unknown-toy",
                e.to_string(),
            )
            .with_field("toys"),
            DomainError::LetterConflict(_) => {
                Self::new(StatusCode::CONFLICT, "letter-conflict", e.to_string())
            }
            DomainError::LetterNotFound(_) => Self::not_found(e.to_string()),
            DomainError::AlreadyCancelled(_) => {
                Self::new(StatusCode::CONFLICT, "already-cancelled", e.to_string())
            }
        }
    }
}

impl From<LogError> for ApiError {
    fn from(e: LogError) -> Self {
        match e {
            LogError::Conflict { .. } => Self::new(
                StatusCode::CONFLICT,
                "concurrent-update",
                "another command changed the same item at the same time; retry the request",
            ),
            LogError::Overloaded => Self::unavailable(
                "overloaded",
                "the event log is busy; retry after the indicated delay",
                1,
            ),
            LogError::Unavailable(ref cause) => {
                tracing::warn!(%cause, "event log unavailable");
                Self::unavailable(
                    "log-unavailable",
                    "the event log cannot make commands durable right now",
                    5,
                )
            }
            LogError::Corrupt(_) => Self::internal(&e),
        }
    }
}

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::Rejected(e) => e.into(),
            CommandError::Log(e) => e.into(),
            CommandError::Corrupt(e) => Self::internal(&e),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(ref cause) => {
                tracing::warn!(%cause, "read store unavailable");
                Self::unavailable(
                    "store-unavailable",
                    "the read store is unavailable right now",
                    2,
                )
            }
            StoreError::Corrupt(_) => Self::internal(&e),
        }
    }
}
