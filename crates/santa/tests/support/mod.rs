//! Shared by the tests that run the real `santa` binary as child processes.
#![allow(dead_code, reason = "each test binary uses part of it")]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::{Client, StatusCode};
use serde_json::Value;
use tokio::time::Instant;

/// Child processes, killed when the test ends however it ends.
#[derive(Debug, Default)]
pub struct Processes(pub Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A free loopback port (bound and released; the child binds it right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts the `santa` binary with `args`, logging only warnings and errors.
pub fn santa(args: &[String]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_santa"))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

/// Polls `condition` until it holds; fails the test after `limit`.
pub async fn wait_until<F, Fut>(limit: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !condition().await {
        assert!(
            Instant::now() < deadline,
            "condition not met within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the API at `base` answers `/readyz` with 200.
pub async fn ready(http: &Client, base: &str) {
    wait_until(Duration::from_secs(60), || async {
        http.get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == StatusCode::OK)
    })
    .await;
}

/// GET `path` from `base`, expecting 200 and JSON.
pub async fn get(http: &Client, base: &str, path: &str) -> Value {
    let response = http.get(format!("{base}{path}")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "GET {path}");
    response.json().await.unwrap()
}

/// Waits until every projection has applied the whole log.
pub async fn caught_up(http: &Client, base: &str, limit: Duration) {
    wait_until(limit, || async {
        let status = get(http, base, "/admin/projections").await;
        status["projections"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["lag_events"] == 0)
    })
    .await;
}

/// Every letter in the key-value store, following the pages.
pub async fn all_letters(http: &Client, base: &str) -> Vec<Value> {
    let mut letters = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/letters?limit=500&cursor={c}"),
            None => "/letters?limit=500".to_owned(),
        };
        let page = get(http, base, &path).await;
        letters.extend(page["letters"].as_array().unwrap().iter().cloned());
        match page["next"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return letters,
        }
    }
}

/// A stream name no other run uses, e.g. `SCALE_4242_1700000000000000000`.
pub fn unique_stream(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{tag}_{}_{nanos}", std::process::id())
}

/// Deletes a test's JetStream stream (and its idempotency keys).
pub async fn delete_stream(nats: &str, stream: &str) {
    let options = santa_nats::NatsOptions::named(stream, 8);
    santa_nats::NatsEventLog::connect(nats, options)
        .await
        .unwrap()
        .delete()
        .await
        .unwrap();
}

/// Every letter the key-value store holds, by id, with its total.
pub async fn letter_totals(http: &Client, base: &str) -> std::collections::HashMap<String, i64> {
    all_letters(http, base)
        .await
        .iter()
        .map(|l| {
            (
                l["id"].as_str().unwrap().to_owned(),
                l["total_cents"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// A fresh database on the test PostgreSQL (`SANTA_TEST_POSTGRES`), or `None` when the
/// variable is not set (the test is then skipped, loudly; under `CI=true` it fails).
pub async fn fresh_db() -> Option<String> {
    let admin = santa_cqrs::contract::service_url("SANTA_TEST_POSTGRES")?;
    Some(
        santa_postgres::fresh_database(&admin, "santa_test")
            .await
            .unwrap(),
    )
}
