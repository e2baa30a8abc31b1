//! `Idempotency-Key`: the first answer is kept for the window; a retry gets it again; the
//! same key with another request is a 422.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, accepted, letter, problem, spawn_app, spawn_app_with};

async fn put_toy_with_key(app: &TestApp, key: &str, price: i64) -> reqwest::Response {
    let body = json!({"name": "Kite", "description": "", "price_cents": price});
    app.client
        .put(app.url("/toys/kite"))
        .header("Idempotency-Key", key)
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_same_key_with_another_request_is_refused() {
    let app = spawn_app().await;
    let first = accepted(put_toy_with_key(&app, "price-update-1", 100).await).await;
    assert_eq!(
        accepted(put_toy_with_key(&app, "price-update-1", 100).await).await,
        first
    );
    let body = problem(
        put_toy_with_key(&app, "price-update-1", 999).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency-key-reused",
    )
    .await;
    assert_eq!(body["field"], "Idempotency-Key");
    let toy: Value = app.read_after("/toys/kite", first.1).await;
    assert_eq!(toy["price_cents"], 100, "the refused request had no effect");
    let other = mut_letter_without_id();
    let sent = app
        .client
        .post(app.url("/letters"))
        .header("Idempotency-Key", "price-update-1")
        .json(&other)
        .send()
        .await
        .unwrap();
    problem(
        sent,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency-key-reused",
    )
    .await;
}

fn mut_letter_without_id() -> Value {
    let mut body = letter("x", &[("kite", 1)]);
    body.as_object_mut().unwrap().remove("id");
    body
}

#[tokio::test]
async fn a_retried_cancellation_gets_its_first_answer_again() {
    let app = spawn_app().await;
    app.put_toy("kite", 100).await;
    accepted(app.submit(&letter("l-1", &[("kite", 1)])).await).await;
    let cancel = || {
        app.client
            .delete(app.url("/letters/l-1"))
            .header("Idempotency-Key", "cancel-l-1")
            .send()
    };
    let first = accepted(cancel().await.unwrap()).await;
    assert_eq!(
        accepted(cancel().await.unwrap()).await,
        first,
        "not 409 already-cancelled"
    );
    problem(
        app.cancel("l-1").await,
        StatusCode::CONFLICT,
        "already-cancelled",
    )
    .await;
}

#[tokio::test]
async fn keys_are_forgotten_after_the_window() {
    let app = spawn_app_with(tempfile::tempdir().unwrap(), |s| {
        s.idempotency_window = Duration::ZERO
    })
    .await;
    accepted(put_toy_with_key(&app, "k", 100).await).await;
    let (_, position) = accepted(put_toy_with_key(&app, "k", 250).await).await;
    assert_eq!(
        app.read_after("/toys/kite", position).await["price_cents"],
        250
    );
}

#[tokio::test]
async fn keys_survive_a_restart() {
    let app = spawn_app().await;
    app.put_toy("kite", 100).await;
    let send = |app: &TestApp| {
        app.client
            .post(app.url("/letters"))
            .header("Idempotency-Key", "restart-key")
            .json(&mut_letter_without_id())
            .send()
    };
    let first = accepted(send(&app).await.unwrap()).await;
    let app = spawn_app_with(app.stop().await, |_| {}).await;
    assert_eq!(accepted(send(&app).await.unwrap()).await, first);
    let bad = app
        .client
        .post(app.url("/letters"))
        .header("Idempotency-Key", "bad\u{7f}key")
        .json(&mut_letter_without_id())
        .send()
        .await;
    // A key with a control character cannot even be sent as a header value by some
    // clients; when it arrives, it is refused by name.
    if let Ok(response) = bad {
        problem(response, StatusCode::BAD_REQUEST, "invalid-header").await;
    }
}
