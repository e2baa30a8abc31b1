//! The OpenAPI document, generated from the handlers and wire types.

use std::sync::OnceLock;

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes::{commands, dead_letters, ops, queries};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Santa's Workshop",
        description = "A CQRS service for letters to Santa. Commands answer 202 once their event is durable; \
                       queries read projections, which follow the log. Pass a command's `position` as \
                       `?after=` to read your own write.",
    ),
    paths(
        commands::upsert_toy, commands::submit_letter, commands::cancel_letter,
        queries::list_toys, queries::get_toy, queries::toy_letters, queries::list_letters, queries::get_letter,
        queries::letter_history, queries::toy_demand, queries::totals_by_country, queries::totals_by_day,
        ops::healthz, ops::readyz, ops::metrics, ops::openapi, ops::projections, ops::rebuild, ops::seed,
        dead_letters::list, dead_letters::redrive,
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "commands", description = "Writes: validated, made durable, acknowledged with 202"),
        (name = "queries", description = "Reads from the key-value read store"),
        (name = "analytics", description = "Reports from the SQL analytics store"),
        (name = "operations", description = "Health, readiness, metrics and administration"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document as JSON, rendered once.
pub fn openapi_json() -> String {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| ApiDoc::openapi().to_pretty_json().unwrap_or_default())
        .clone()
}
