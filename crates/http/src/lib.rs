//! The HTTP API of Santa's Workshop (DESIGN.md §5): command, query and admin routers,
//! bearer-token scopes, problem+json errors, the OpenAPI document and Prometheus metrics.
//!
//! This is the only crate that knows the JSON wire types. Handlers parse requests into
//! domain commands, call the workshop's services and map answers back; queries read only
//! the read stores (the letter history alone reads the log). A handler must never panic
//! and never show a client an internal cause.

mod auth;
mod extract;
mod floor;
mod metrics;
mod openapi;
mod problem;
mod rebuilds;
mod routes;
mod wire;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use santa_cqrs::{DeadLetters, Projection, ProjectionHandle};
use santa_workshop::CommandService;
use santa_workshop::analytics::AnalyticsStore;
use santa_workshop::idempotency::IdempotencyStore;
use santa_workshop::letters::LettersQueries;

pub use auth::{Scope, Tokens, TokensError};
pub use floor::SyncedAppends;
pub use metrics::Metrics;
pub use openapi::openapi_json;
pub use problem::{ApiError, Problem};
pub use rebuilds::Rebuilds;

/// Milliseconds since the Unix epoch, UTC (0 if the clock is before it).
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Everything the handlers need.
#[derive(Debug, Clone)]
pub struct AppState {
    pub commands: CommandService,
    pub letters: LettersQueries,
    pub analytics: Arc<dyn AnalyticsStore>,
    /// Answers kept for `Idempotency-Key` retries.
    pub idempotency: Arc<dyn IdempotencyStore>,
    /// Events the projections set aside.
    pub dead_letters: Arc<dyn DeadLetters>,
    /// The projections queries depend on, with their progress where they run in this
    /// process.
    pub projections: Arc<[ProjectionView]>,
    /// Rebuilds of projections started through this process.
    pub rebuilds: Rebuilds,
    pub metrics: Arc<Metrics>,
    pub settings: HttpSettings,
    /// The durable floor behind `POST /bench/floor`, when the benchmark's endpoints are
    /// served.
    pub bench_floor: Option<SyncedAppends>,
}

/// A projection as the API sees it: its store's checkpoints (authoritative, shared by
/// every process) and, when it runs in this process, its live status.
#[derive(Debug, Clone)]
pub struct ProjectionView {
    pub projection: Arc<dyn Projection>,
    pub local: Option<ProjectionHandle>,
}

/// Limits and policies of the HTTP layer.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub tokens: Tokens,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// How long a query with `?after=` waits for its projection.
    pub consistency_timeout: Duration,
    /// Serve the benchmark's baselines under `/bench/` (off by default).
    pub bench_endpoints: bool,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            tokens: Tokens::default(),
            max_body_bytes: 64 * 1024,
            consistency_timeout: Duration::from_secs(2),
            bench_endpoints: false,
        }
    }
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    let max_body = state.settings.max_body_bytes;
    routes::router(state).layer(DefaultBodyLimit::max(max_body))
}
