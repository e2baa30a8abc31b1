//! The scope matrix: with tokens configured, every endpoint but the probes needs one.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{TestApp, accepted, letter, spawn_app_with};

const READ: &str = "reader-token-1";
const WRITE: &str = "writer-token-1";
const ADMIN: &str = "admin-token-123";

async fn secured() -> TestApp {
    let tokens = format!("{READ}:read,{WRITE}:write,{ADMIN}:admin+read+write");
    let mut app = spawn_app_with(tempfile::tempdir().unwrap(), |s| {
        s.tokens = santa_http::Tokens::parse(&tokens).unwrap()
    })
    .await;
    app.token = Some(ADMIN.to_owned());
    assert_eq!(
        app.put_toy("kite", 100).await.status(),
        StatusCode::ACCEPTED
    );
    let (_, position) = accepted(app.submit(&letter("l-1", &[("kite", 1)])).await).await;
    // The letter is projected before the matrix reads it.
    app.read_after("/letters/l-1", position).await;
    app
}

async fn call(app: &TestApp, method: Method, path: &str, token: Option<&str>) -> StatusCode {
    let mut request = app.client.request(method.clone(), app.url(path));
    if method == Method::PUT {
        request = request.json(&json!({"name": "Kite", "description": "", "price_cents": 100}));
    } else if method == Method::POST && path == "/admin/dead-letters/redrive" {
        request = request.json(&json!({"projection": "letters"}));
    } else if method == Method::POST && path == "/letters" {
        request = request.json(&letter("l-2", &[("kite", 1)]));
    }
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    if status.is_client_error() {
        let content_type = response
            .headers()
            .get("content-type")
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(content_type, "application/problem+json", "{method} {path}");
    }
    status
}

#[tokio::test]
async fn every_endpoint_requires_the_right_scope() {
    let app = secured().await;
    let reads = [
        "/toys",
        "/toys/kite",
        "/toys/kite/letters",
        "/letters",
        "/letters/l-1",
        "/letters/l-1/history",
        "/analytics/toys",
        "/analytics/countries",
        "/analytics/days",
        "/admin/projections",
        "/admin/dead-letters",
        "/metrics",
        "/openapi.json",
    ];
    for path in reads {
        assert_eq!(
            call(&app, Method::GET, path, None).await,
            StatusCode::UNAUTHORIZED,
            "{path} without a token"
        );
        assert_eq!(
            call(&app, Method::GET, path, Some("wrong-token-0")).await,
            StatusCode::UNAUTHORIZED,
            "{path}"
        );
        assert_eq!(
            call(&app, Method::GET, path, Some(WRITE)).await,
            StatusCode::FORBIDDEN,
            "{path} with write"
        );
        assert_eq!(
            call(&app, Method::GET, path, Some(READ)).await,
            StatusCode::OK,
            "{path} with read"
        );
    }
    let writes = [
        (Method::PUT, "/toys/kite"),
        (Method::POST, "/letters"),
        (Method::DELETE, "/letters/l-1"),
    ];
    for (method, path) in writes {
        assert_eq!(
            call(&app, method.clone(), path, None).await,
            StatusCode::UNAUTHORIZED,
            "{method} {path}"
        );
        assert_eq!(
            call(&app, method.clone(), path, Some(READ)).await,
            StatusCode::FORBIDDEN,
            "{method} {path}"
        );
        assert_eq!(
            call(&app, method.clone(), path, Some(WRITE)).await,
            StatusCode::ACCEPTED,
            "{method} {path}"
        );
    }
    assert_eq!(
        call(&app, Method::POST, "/admin/seed", Some(WRITE)).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(&app, Method::POST, "/admin/seed", Some(READ)).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(&app, Method::POST, "/admin/seed", None).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(&app, Method::POST, "/admin/seed", Some(ADMIN)).await,
        StatusCode::OK
    );
    let rebuild = "/admin/projections/analytics/rebuild";
    for (token, expected) in [
        (None, StatusCode::UNAUTHORIZED),
        (Some(READ), StatusCode::FORBIDDEN),
        (Some(WRITE), StatusCode::FORBIDDEN),
        (Some(ADMIN), StatusCode::ACCEPTED),
    ] {
        assert_eq!(
            call(&app, Method::POST, rebuild, token).await,
            expected,
            "{token:?}"
        );
    }
    for probe in ["/healthz", "/readyz"] {
        assert_eq!(
            call(&app, Method::GET, probe, None).await,
            StatusCode::OK,
            "{probe} is open"
        );
    }
}
