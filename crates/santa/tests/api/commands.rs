use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{accepted, letter, problem, spawn_app};

#[tokio::test]
async fn a_toy_upsert_is_accepted_with_its_position() {
    let app = spawn_app().await;
    let (id, position) = accepted(app.put_toy("kite", 1250).await).await;
    assert_eq!((id.as_str(), position), ("kite", 1));
    let (_, changed) = accepted(app.put_toy("kite", 1300).await).await;
    assert_eq!(changed, 2);
    let toy = app.read_after("/toys/kite", changed).await;
    assert_eq!(toy["price_cents"], 1300);
}

#[tokio::test]
async fn an_unchanged_toy_upsert_repeats_the_original_answer() {
    let app = spawn_app().await;
    let first = accepted(app.put_toy("kite", 1250).await).await;
    let again = accepted(app.put_toy("kite", 1250).await).await;
    assert_eq!(first, again);
}

#[tokio::test]
async fn a_letter_is_accepted_and_priced_at_submission_time() {
    let app = spawn_app().await;
    app.put_toy("kite", 1250).await;
    app.put_toy("yo-yo", 300).await;
    let (id, position) = accepted(
        app.submit(&letter("l-1", &[("kite", 2), ("yo-yo", 1)]))
            .await,
    )
    .await;
    assert_eq!(id, "l-1");
    accepted(app.put_toy("kite", 9999).await).await;
    let view = app.read_after("/letters/l-1", position).await;
    assert_eq!(view["total_cents"], 2 * 1250 + 300);
    assert_eq!(view["status"], "submitted");
    assert_eq!(view["lines"][0]["unit_price_cents"], 1250);
    assert_eq!(view["lines"][0]["line_total_cents"], 2500);
    assert_eq!(view["country"], "FI");
    // A letter after the change is priced at the new price.
    let (_, later) = accepted(app.submit(&letter("l-2", &[("kite", 1)])).await).await;
    let view = app.read_after("/letters/l-2", later).await;
    assert_eq!(view["total_cents"], 9999);
}

#[tokio::test]
async fn a_letter_without_an_id_gets_a_generated_one() {
    let app = spawn_app().await;
    app.put_toy("kite", 100).await;
    let mut body = letter("x", &[("kite", 1)]);
    body.as_object_mut().unwrap().remove("id");
    let (first, _) = accepted(app.submit(&body).await).await;
    let (second, _) = accepted(app.submit(&body).await).await;
    assert_ne!(
        first, second,
        "each submission without an id or key is a new letter"
    );
}

#[tokio::test]
async fn an_idempotency_key_makes_a_retry_return_the_original_answer() {
    let app = spawn_app().await;
    app.put_toy("kite", 100).await;
    let mut body = letter("x", &[("kite", 1)]);
    body.as_object_mut().unwrap().remove("id");
    let send = || {
        app.client
            .post(app.url("/letters"))
            .header("Idempotency-Key", "retry-me-42")
            .json(&body)
            .send()
    };
    let first = accepted(send().await.unwrap()).await;
    let retry = accepted(send().await.unwrap()).await;
    assert_eq!(first, retry);
}

#[tokio::test]
async fn resubmitting_an_identical_letter_returns_the_original_answer_and_records_nothing() {
    let app = spawn_app().await;
    app.put_toy("kite", 100).await;
    let first = accepted(app.submit(&letter("l-1", &[("kite", 1)])).await).await;
    let again = accepted(app.submit(&letter("l-1", &[("kite", 1)])).await).await;
    assert_eq!(first, again);
    let history: Value = app.get("/letters/l-1/history").await.json().await.unwrap();
    assert_eq!(history["events"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn different_content_under_a_used_letter_id_is_a_conflict() {
    let app = spawn_app().await;
    app.put_toy("kite", 100).await;
    accepted(app.submit(&letter("l-1", &[("kite", 1)])).await).await;
    problem(
        app.submit(&letter("l-1", &[("kite", 2)])).await,
        StatusCode::CONFLICT,
        "letter-conflict",
    )
    .await;
}

#[tokio::test]
async fn a_letter_is_cancelled_once_and_then_conflicts() {
    let app = spawn_app().await;
    app.put_toy("kite", 100).await;
    accepted(app.submit(&letter("l-1", &[("kite", 3)])).await).await;
    let (_, position) = accepted(app.cancel("l-1").await).await;
    let view = app.read_after("/letters/l-1", position).await;
    assert_eq!(view["status"], "cancelled");
    assert!(view["cancelled_at"].is_string());
    let toy = app.read_after("/toys/kite", position).await;
    assert_eq!(toy["demand"]["total_quantity"], 0);
    problem(
        app.cancel("l-1").await,
        StatusCode::CONFLICT,
        "already-cancelled",
    )
    .await;
    problem(
        app.cancel("never-sent").await,
        StatusCode::NOT_FOUND,
        "not-found",
    )
    .await;
}

#[tokio::test]
async fn seeding_goes_through_the_command_path_and_is_idempotent() {
    let app = spawn_app().await;
    let first = app.seed().await;
    let second = app.seed().await;
    assert_eq!(first, second);
    let last = first["letters"].as_array().unwrap().last().unwrap()["position"]
        .as_u64()
        .unwrap();
    let letters = app.read_after("/letters", last).await;
    assert_eq!(letters["letters"].as_array().unwrap().len(), 5);
}
