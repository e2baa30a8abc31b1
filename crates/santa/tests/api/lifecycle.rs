//! Start, stop, restart.

use std::net::SocketAddr;

use reqwest::StatusCode;
use santa::{Application, Settings};

use crate::helpers::{accepted, letter, spawn_app, spawn_app_with};

#[tokio::test]
async fn everything_acknowledged_is_still_there_after_a_restart() {
    let app = spawn_app().await;
    app.seed().await;
    app.put_toy("kite", 100).await;
    let mut last = 0;
    for i in 0..30 {
        last = accepted(app.submit(&letter(&format!("r-{i}"), &[("kite", 2)])).await)
            .await
            .1;
    }
    let (_, cancelled) = accepted(app.cancel("r-0").await).await;
    let dir = app.stop().await;

    let app = spawn_app_with(dir, |_| {}).await;
    let kite = app.read_after("/toys/kite", cancelled).await;
    assert_eq!(kite["demand"]["total_quantity"], 2 * 29);
    assert_eq!(
        app.get("/letters/r-0")
            .await
            .json::<serde_json::Value>()
            .await
            .unwrap()["status"],
        "cancelled"
    );
    let (_, next) = accepted(app.submit(&letter("after-restart", &[("kite", 1)])).await).await;
    assert_eq!(
        (cancelled, next),
        (last + 1, last + 2),
        "positions continue without a gap"
    );
    let demand = app.read_after("/analytics/toys", next).await;
    let kite_row = demand["toys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["toy_id"] == "kite")
        .unwrap()
        .clone();
    assert_eq!(kite_row["total_quantity"], 2 * 29 + 1);
    // Identical resubmissions across the restart are still recognised.
    let again = accepted(app.submit(&letter("r-5", &[("kite", 2)])).await).await;
    assert_eq!(again.0, "r-5");
    assert_eq!(
        app.get("/letters/r-5/history")
            .await
            .json::<serde_json::Value>()
            .await
            .unwrap()["events"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    app.stop().await;
}

#[tokio::test]
async fn without_tokens_the_server_refuses_a_public_address() {
    let dir = tempfile::tempdir().unwrap();
    let public: SocketAddr = "0.0.0.0:0".parse().unwrap();
    let error = Application::build(Settings::new(public, dir.path()))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("SANTA_TOKENS"), "{error}");
}

#[tokio::test]
async fn a_clean_stop_lets_in_flight_commands_finish() {
    let app = spawn_app().await;
    app.put_toy("kite", 100).await;
    let client = app.client.clone();
    let url = app.url("/letters");
    let mut sent = tokio::task::JoinSet::new();
    for i in 0..50 {
        let (client, url) = (client.clone(), url.clone());
        sent.spawn(async move {
            client
                .post(url)
                .json(&letter(&format!("f-{i}"), &[("kite", 1)]))
                .send()
                .await
        });
    }
    // Stop once the first answer is in, while the rest are in flight or refused.
    let first = sent.join_next().await.unwrap().unwrap().unwrap();
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let dir = app.stop().await;
    let mut acknowledged = vec![
        first.json::<serde_json::Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned(),
    ];
    while let Some(result) = sent.join_next().await {
        if let Ok(response) = result.unwrap()
            && response.status() == StatusCode::ACCEPTED
        {
            acknowledged.push(
                response.json::<serde_json::Value>().await.unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            );
        }
    }
    let app = spawn_app_with(dir, |_| {}).await;
    for id in &acknowledged {
        let history = app.get(&format!("/letters/{id}/history")).await;
        assert_eq!(
            history.status(),
            StatusCode::OK,
            "acknowledged letter {id} survived the stop"
        );
    }
}
