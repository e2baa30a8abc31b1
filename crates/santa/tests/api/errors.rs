//! Bad input: every case a 4xx problem that names the problem; never a 5xx.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, letter, problem, spawn_app};

async fn post_raw(app: &TestApp, body: &str) -> reqwest::Response {
    app.client
        .post(app.url("/letters"))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

async fn app_with_kite() -> TestApp {
    let app = spawn_app().await;
    app.put_toy("kite", 100).await;
    app
}

#[tokio::test]
async fn malformed_json_is_a_400_naming_the_problem() {
    let app = app_with_kite().await;
    let body = problem(
        post_raw(&app, "{\"child\": ").await,
        StatusCode::BAD_REQUEST,
        "malformed-json",
    )
    .await;
    assert!(body["detail"].as_str().unwrap().contains("EOF"), "{body}");
    problem(
        post_raw(&app, "not json").await,
        StatusCode::BAD_REQUEST,
        "malformed-json",
    )
    .await;
}

#[tokio::test]
async fn wrong_types_missing_and_unknown_fields_are_400s_naming_the_field() {
    let app = app_with_kite().await;
    let cases: [(Value, &str); 5] = [
        (
            json!({"child": 7, "address": "x", "toys": [{"toy_id": "kite", "quantity": 1}]}),
            "child",
        ),
        (
            json!({"address": "x", "toys": [{"toy_id": "kite", "quantity": 1}]}),
            "child",
        ),
        (
            json!({"child": "a", "address": "x", "toys": [{"toy_id": "kite", "quantity": "1"}]}),
            "quantity",
        ),
        (
            json!({"child": "a", "address": "x", "toys": [{"toy_id": "kite", "quantity": 1}], "naughty": true}),
            "naughty",
        ),
        (
            json!({"child": "a", "address": "x", "toys": [{"toy_id": "kite", "quantity": 1e30}]}),
            "quantity",
        ),
    ];
    for (body, field) in cases {
        let answer = problem(
            app.submit(&body).await,
            StatusCode::BAD_REQUEST,
            "invalid-body",
        )
        .await;
        assert!(
            answer["detail"].as_str().unwrap().contains(field),
            "{field} named in {answer}"
        );
    }
    problem(
        app.submit(&json!([1, 2])).await,
        StatusCode::BAD_REQUEST,
        "invalid-body",
    )
    .await;
}

#[tokio::test]
async fn rule_breaking_values_are_422s_with_the_field() {
    let app = app_with_kite().await;
    app.put_toy("drum", 100).await;
    let long_id = "x".repeat(65);
    let cases: Vec<(Value, &str, &str)> = vec![
        (letter("l", &[]), "toys", "validation"),
        (letter("l", &[("kite", 0)]), "quantity", "validation"),
        (letter("l", &[("kite", -2)]), "quantity", "validation"),
        (
            letter("l", &[("kite", 1_000_000)]),
            "quantity",
            "validation",
        ),
        (
            letter("l", &[("kite", 1), ("kite", 2)]),
            "toys",
            "validation",
        ),
        (
            letter("l", &[("kite", 1), ("pony", 1)]),
            "toys",
            "unknown-toy",
        ),
        (letter("l", &[("Not A Slug", 1)]), "toy_id", "validation"),
        (letter(&long_id, &[("kite", 1)]), "id", "validation"),
        (letter("bad\u{7}id", &[("kite", 1)]), "id", "validation"),
        (
            json!({"child": " ", "address": "x", "toys": [{"toy_id": "kite", "quantity": 1}]}),
            "child",
            "validation",
        ),
        (
            json!({"child": "a\u{0}b", "address": "x", "toys": [{"toy_id": "kite", "quantity": 1}]}),
            "child",
            "validation",
        ),
        (
            json!({"child": "a", "address": "x", "country": "Finland", "toys": [{"toy_id": "kite", "quantity": 1}]}),
            "country",
            "validation",
        ),
    ];
    for (body, field, kind) in cases {
        let answer = problem(
            app.submit(&body).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            kind,
        )
        .await;
        assert_eq!(answer["field"], field, "{answer}");
    }
    let toys = json!(
        (0..101)
            .map(|i| json!({"toy_id": format!("t{i}"), "quantity": 1}))
            .collect::<Vec<_>>()
    );
    let many = json!({"child": "a", "address": "x", "toys": toys});
    problem(
        app.submit(&many).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation",
    )
    .await;
}

#[tokio::test]
async fn bad_toys_are_refused() {
    let app = spawn_app().await;
    let put = |id: &str, body: Value| {
        app.client
            .put(app.url(&format!("/toys/{id}")))
            .json(&body)
            .send()
    };
    let answer = problem(
        put("kite", json!({"name": "Kite", "price_cents": -1}))
            .await
            .unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation",
    )
    .await;
    assert_eq!(answer["field"], "price_cents");
    let answer = problem(
        put("Kite!", json!({"name": "Kite", "price_cents": 1}))
            .await
            .unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation",
    )
    .await;
    assert_eq!(answer["field"], "toy_id");
    problem(
        put("kite", json!({"name": "Kite", "price_cents": 1.5}))
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
        "invalid-body",
    )
    .await;
    let answer = problem(
        put("kite", json!({"name": "", "price_cents": 1}))
            .await
            .unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation",
    )
    .await;
    assert_eq!(answer["field"], "name");
}

#[tokio::test]
async fn a_body_over_the_limit_is_a_413() {
    let app = app_with_kite().await;
    let huge = json!({"child": "a".repeat(100_000), "address": "x", "toys": [{"toy_id": "kite", "quantity": 1}]});
    problem(
        app.submit(&huge).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload-too-large",
    )
    .await;
}

#[tokio::test]
async fn a_body_that_is_not_json_is_a_415() {
    let app = app_with_kite().await;
    let response = app
        .client
        .post(app.url("/letters"))
        .body("child=a")
        .send()
        .await
        .unwrap();
    problem(
        response,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported-media-type",
    )
    .await;
}

#[tokio::test]
async fn a_wrong_method_is_a_405_problem() {
    let app = spawn_app().await;
    let response = app.client.patch(app.url("/letters")).send().await.unwrap();
    problem(
        response,
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
    )
    .await;
}

#[tokio::test]
async fn bad_ids_in_paths_are_refused_by_name() {
    let app = spawn_app().await;
    let long = "y".repeat(65);
    let answer = problem(
        app.get(&format!("/letters/{long}")).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation",
    )
    .await;
    assert_eq!(answer["field"], "id");
    problem(
        app.cancel("has%20space").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation",
    )
    .await;
    problem(
        app.get("/toys/UPPER").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation",
    )
    .await;
}
