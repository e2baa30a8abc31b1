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

#[cfg(test)]
mod tests {
    use regex::Regex;
    use santa_domain::{LetterId, ToyId};
    use serde_json::Value;

    use super::*;

    /// The patterns the document gives for toy and letter ids, wherever they appear, accept
    /// exactly the ids the commands accept: a client validating against the document is
    /// neither stricter nor looser than the server.
    #[test]
    fn the_documented_id_patterns_accept_what_the_commands_accept() {
        let doc: Value = serde_json::from_str(&openapi_json()).unwrap();
        let schemas = &doc["components"]["schemas"];
        let path_id = |path: &str, method: &str| {
            let parameters = doc["paths"][path][method]["parameters"].as_array().unwrap();
            let id = parameters.iter().find(|p| p["name"] == "id").unwrap();
            id["schema"]["pattern"].as_str().unwrap().to_owned()
        };
        let toy_patterns = [
            schemas["ToyLineRequest"]["properties"]["toy_id"]["pattern"]
                .as_str()
                .unwrap()
                .to_owned(),
            path_id("/toys/{id}", "put"),
            path_id("/toys/{id}", "get"),
            path_id("/toys/{id}/letters", "get"),
        ];
        let letter_patterns = [
            schemas["SubmitLetterRequest"]["properties"]["id"]["pattern"]
                .as_str()
                .unwrap()
                .to_owned(),
            path_id("/letters/{id}", "get"),
            path_id("/letters/{id}", "delete"),
            path_id("/letters/{id}/history", "get"),
        ];
        let long = "x".repeat(64);
        let too_long = "x".repeat(65);
        let samples = [
            "rubiks-cube",
            "a",
            "9",
            "a-b",
            "a--b",
            "-a",
            "a-",
            "-",
            "Rubiks",
            "rubiks_cube",
            "letter.0001",
            "Ab-9.z_",
            "le tter",
            "",
            "ü",
            "a/b",
            ".",
            long.as_str(),
            too_long.as_str(),
        ];
        type Accepts = fn(&str) -> bool;
        let rules: [(&str, [String; 4], Accepts); 2] = [
            ("toy id", toy_patterns, |id| ToyId::parse(id).is_ok()),
            ("letter id", letter_patterns, |id| {
                LetterId::parse(id).is_ok()
            }),
        ];
        for (what, patterns, accepted) in rules {
            for pattern in patterns {
                let pattern = Regex::new(&pattern).unwrap();
                for sample in samples {
                    assert_eq!(
                        pattern.is_match(sample),
                        accepted(sample),
                        "{what} {sample:?} against {pattern}"
                    );
                }
            }
        }
    }
}
