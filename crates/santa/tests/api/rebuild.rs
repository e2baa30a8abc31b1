//! Rebuilds: the whole log replayed into fresh tables while the live ones serve, then an
//! atomic switch; progress in the status; one rebuild of a projection at a time.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use crate::dead_letters::poisoned_dir;
use crate::helpers::{TestApp, accepted, letter, problem, spawn_app, spawn_app_with};

async fn start_rebuild(app: &TestApp, name: &str) -> reqwest::Response {
    app.client
        .post(app.url(&format!("/admin/projections/{name}/rebuild")))
        .send()
        .await
        .unwrap()
}

/// The status entry of projection `name`.
async fn status_of(app: &TestApp, name: &str) -> Value {
    let status: Value = app.get("/admin/projections").await.json().await.unwrap();
    status["projections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .cloned()
        .unwrap()
}

/// Polls the status until `done` holds for `name`'s entry (at most 30 s).
async fn wait_for_status(app: &TestApp, name: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let entry = status_of(app, name).await;
        if done(&entry) {
            return entry;
        }
        assert!(Instant::now() < deadline, "gave up waiting: {entry}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_rebuild_replays_the_log_into_new_tables_while_commands_and_queries_go_on() {
    let app = spawn_app().await;
    app.seed().await;
    app.put_toy("kite", 100).await;
    for i in 0..300 {
        accepted(
            app.submit(&letter(&format!("before-{i}"), &[("kite", 2)]))
                .await,
        )
        .await;
    }
    for name in ["letters", "analytics"] {
        let response = start_rebuild(&app, name).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        assert_eq!(response.headers()["location"], "/admin/projections");
        let started: Value = response.json().await.unwrap();
        assert_eq!(started["projection"], name);
        assert!(started["target"].as_u64().unwrap() >= 300, "{started}");
        // Commands and queries go on during the rebuild.
        let mut last = 0;
        for i in 0..50 {
            let (_, position) = accepted(
                app.submit(&letter(&format!("{name}-during-{i}"), &[("kite", 1)]))
                    .await,
            )
            .await;
            last = position;
            assert_eq!(app.get("/toys/kite").await.status(), StatusCode::OK);
        }
        let entry = wait_for_status(&app, name, |p| p["rebuild"]["state"] == "done").await;
        let rebuild = &entry["rebuild"];
        assert!(
            rebuild["replayed"].as_u64().unwrap() >= rebuild["target"].as_u64().unwrap(),
            "{entry}"
        );
        assert!(rebuild["finished_at"].is_string(), "{entry}");
        assert!(rebuild["events_per_second"].as_f64().unwrap() > 0.0);
        assert_ne!(entry["state"], "rebuilding", "{entry}");
        app.read_after("/letters", last).await;
        app.read_after("/analytics/toys", last).await;
    }
    // Every letter, once, in both rebuilt stores.
    let (_, last) = accepted(app.submit(&letter("after", &[("kite", 1)])).await).await;
    let kite = app.read_after("/toys/kite", last).await;
    assert_eq!(kite["demand"]["letter_count"], 300 + 100 + 1, "{kite}");
    assert_eq!(kite["demand"]["total_quantity"], 600 + 100 + 1, "{kite}");
    let demand = app.read_after("/analytics/toys", last).await;
    let kite_demand = demand["toys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["toy_id"] == "kite")
        .cloned()
        .unwrap();
    assert_eq!(kite_demand["total_quantity"], 701, "{demand}");
    assert_eq!(
        app.read_after("/letters/letters-during-7", last).await["status"],
        "submitted"
    );

    // The switch survives a restart: the data directory names the rebuilt files.
    let dir = app.stop().await;
    for pointer in ["read.current", "analytics.current"] {
        assert_eq!(
            std::fs::read_to_string(dir.path().join(pointer))
                .unwrap()
                .trim(),
            "1"
        );
    }
    assert!(!dir.path().join("read.db").exists(), "the old file is gone");
    let app = spawn_app_with(dir, |_| {}).await;
    assert_eq!(
        app.read_after("/toys/kite", last).await["demand"]["letter_count"],
        401
    );
    app.stop().await;
}

#[tokio::test]
async fn one_rebuild_of_a_projection_at_a_time_and_its_progress_is_in_the_status() {
    // A poison event and many attempts: the rebuild keeps retrying it, so it is still
    // under way when the second request comes.
    let app = spawn_app_with(poisoned_dir().await, |s| s.max_attempts = 100_000).await;
    assert_eq!(
        start_rebuild(&app, "letters").await.status(),
        StatusCode::ACCEPTED
    );
    let entry = wait_for_status(&app, "letters", |p| p["rebuild"]["error"].is_string()).await;
    assert_eq!(entry["state"], "rebuilding", "{entry}");
    assert_eq!(entry["rebuild"]["state"], "replaying", "{entry}");
    assert!(
        entry["rebuild"]["error"]
            .as_str()
            .unwrap()
            .contains("schema version 9"),
        "{entry}"
    );
    problem(
        start_rebuild(&app, "letters").await,
        StatusCode::CONFLICT,
        "rebuild-in-progress",
    )
    .await;
    // Another projection can be rebuilt meanwhile; an unknown one is not found.
    assert_eq!(
        start_rebuild(&app, "analytics").await.status(),
        StatusCode::ACCEPTED
    );
    problem(
        start_rebuild(&app, "santa").await,
        StatusCode::NOT_FOUND,
        "not-found",
    )
    .await;
    // Stopping abandons the rebuilds; the live tables stay in use.
    let dir = app.stop().await;
    let app = spawn_app_with(dir, |s| s.max_attempts = 2).await;
    assert!(!app.dir.path().join("read.current").exists());
    assert!(
        !app.dir.path().join("read.1.db").exists(),
        "left-overs are removed"
    );
    assert_eq!(status_of(&app, "letters").await["rebuild"], Value::Null);
    app.stop().await;
}
