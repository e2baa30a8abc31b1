use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{accepted, letter, problem, spawn_app};

#[tokio::test]
async fn toy_queries_show_demand_and_the_letters_asking() {
    let app = spawn_app().await;
    app.put_toy("kite", 100).await;
    app.put_toy("drum", 500).await;
    accepted(app.submit(&letter("a", &[("kite", 2)])).await).await;
    accepted(app.submit(&letter("b", &[("kite", 5), ("drum", 1)])).await).await;
    let (_, last) = accepted(app.submit(&letter("c", &[("drum", 4)])).await).await;

    let kite = app.read_after("/toys/kite/letters", last).await;
    assert_eq!(kite["total_quantity"], 7);
    assert_eq!(kite["letter_count"], 2);
    let asking: Vec<_> = kite["letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["letter_id"].as_str().unwrap())
        .collect();
    assert_eq!(asking, ["a", "b"]);

    let toys = app.read_after("/toys", last).await;
    let toys = toys["toys"].as_array().unwrap();
    assert_eq!(toys.len(), 2);
    let drum = toys.iter().find(|t| t["id"] == "drum").unwrap();
    assert_eq!(
        drum["demand"],
        serde_json::json!({"total_quantity": 5, "letter_count": 2})
    );

    let page = app.read_after("/toys/kite/letters?limit=1", last).await;
    assert_eq!(page["letters"].as_array().unwrap().len(), 1);
    let next = page["next"].as_str().unwrap();
    let rest = app
        .read_after(&format!("/toys/kite/letters?limit=1&cursor={next}"), last)
        .await;
    assert_eq!(rest["letters"][0]["letter_id"], "b");
}

#[tokio::test]
async fn letters_are_listed_in_pages() {
    let app = spawn_app().await;
    app.put_toy("kite", 100).await;
    let mut last = 0;
    for i in 0..7 {
        last = accepted(app.submit(&letter(&format!("l-{i}"), &[("kite", 1)])).await)
            .await
            .1;
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/letters?limit=3&cursor={c}"),
            None => "/letters?limit=3".to_owned(),
        };
        let page = app.read_after(&path, last).await;
        seen.extend(
            page["letters"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["id"].as_str().unwrap().to_owned()),
        );
        match page["next"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, (0..7).map(|i| format!("l-{i}")).collect::<Vec<_>>());
    problem(
        app.get("/letters?limit=0").await,
        StatusCode::BAD_REQUEST,
        "invalid-query",
    )
    .await;
    problem(
        app.get("/letters?limit=nine").await,
        StatusCode::BAD_REQUEST,
        "invalid-query",
    )
    .await;
}

#[tokio::test]
async fn a_letter_history_lists_its_events_in_order() {
    let app = spawn_app().await;
    app.put_toy("kite", 100).await;
    accepted(app.submit(&letter("l-1", &[("kite", 1)])).await).await;
    accepted(app.cancel("l-1").await).await;
    let history: Value = app.get("/letters/l-1/history").await.json().await.unwrap();
    let kinds: Vec<_> = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["LetterSubmitted", "LetterCancelled"]);
    assert_eq!(history["events"][0]["data"]["total_cents"], 100);
    assert_eq!(history["events"][1]["version"], 2);
    problem(
        app.get("/letters/nobody/history").await,
        StatusCode::NOT_FOUND,
        "not-found",
    )
    .await;
}

#[tokio::test]
async fn analytics_reports_come_from_the_sql_store() {
    let app = spawn_app().await;
    let seeded = app.seed().await;
    let last = seeded["letters"].as_array().unwrap().last().unwrap()["position"]
        .as_u64()
        .unwrap();
    let (_, cancelled) = accepted(app.cancel("demo-linus").await).await;
    assert!(cancelled > last);

    let demand = app.read_after("/analytics/toys", cancelled).await;
    assert_eq!(demand["toys"][0]["toy_id"], "rubiks-cube");
    assert_eq!(demand["toys"][0]["total_quantity"], 3);
    let countries = app.read_after("/analytics/countries", cancelled).await;
    let keys: Vec<_> = countries["countries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["country"].as_str().unwrap())
        .collect();
    assert!(
        keys.contains(&"GB") && keys.contains(&"unknown") && !keys.contains(&"FI"),
        "{keys:?}"
    );
    let days = app.read_after("/analytics/days", cancelled).await;
    assert_eq!(days["days"][0]["letter_count"], 4);
}

#[tokio::test]
async fn reading_your_own_write_with_after_sees_it_at_once() {
    let app = spawn_app().await;
    app.put_toy("kite", 100).await;
    for i in 0..20 {
        let (id, position) = accepted(
            app.submit(&letter(&format!("ryw-{i}"), &[("kite", 1)]))
                .await,
        )
        .await;
        let view = app.read_after(&format!("/letters/{id}"), position).await;
        assert_eq!(view["id"], id.as_str());
        let toy = app.read_after("/toys/kite", position).await;
        assert_eq!(toy["demand"]["letter_count"], i + 1);
    }
}

#[tokio::test]
async fn a_bad_or_unissued_position_is_refused() {
    let app = spawn_app().await;
    app.put_toy("kite", 100).await;
    let body = problem(
        app.get("/toys/kite?after=abc").await,
        StatusCode::BAD_REQUEST,
        "invalid-position",
    )
    .await;
    assert_eq!(body["field"], "after");
    problem(
        app.get("/toys/kite?after=999999").await,
        StatusCode::BAD_REQUEST,
        "invalid-position",
    )
    .await;
    problem(
        app.get("/toys/kite?after=-1").await,
        StatusCode::BAD_REQUEST,
        "invalid-position",
    )
    .await;
}

#[tokio::test]
async fn absent_things_are_404_problems() {
    let app = spawn_app().await;
    problem(
        app.get("/toys/none").await,
        StatusCode::NOT_FOUND,
        "not-found",
    )
    .await;
    problem(
        app.get("/toys/none/letters").await,
        StatusCode::NOT_FOUND,
        "not-found",
    )
    .await;
    problem(
        app.get("/letters/none").await,
        StatusCode::NOT_FOUND,
        "not-found",
    )
    .await;
    problem(
        app.get("/no/such/endpoint").await,
        StatusCode::NOT_FOUND,
        "not-found",
    )
    .await;
}

#[tokio::test]
async fn operations_endpoints_answer() {
    let app = spawn_app().await;
    assert_eq!(app.get("/healthz").await.status(), StatusCode::OK);
    let ready = app.get("/readyz").await;
    assert!(ready.status() == StatusCode::OK || ready.status() == StatusCode::SERVICE_UNAVAILABLE);
    app.put_toy("kite", 100).await;
    let (_, position) = accepted(app.submit(&letter("m-1", &[("kite", 1)])).await).await;
    app.read_after("/letters/m-1", position).await;
    app.read_after("/analytics/toys", position).await;

    let status: Value = app.get("/admin/projections").await.json().await.unwrap();
    assert_eq!(status["head"], position);
    for p in status["projections"].as_array().unwrap() {
        assert_eq!(p["position"], position, "{p}");
        assert_eq!(p["lag_events"], 0);
        assert_eq!(p["state"], "running");
    }
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("santa_commands_total{command=\"submit_letter\",outcome=\"accepted\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("santa_command_duration_seconds_count{command=\"submit_letter\"} 1"));
    assert!(metrics.contains(&format!(
        "santa_projection_position{{projection=\"letters\"}} {position}"
    )));
    assert!(metrics.contains("santa_projection_lag_events{projection=\"analytics\"} 0"));

    let openapi: Value = app.get("/openapi.json").await.json().await.unwrap();
    assert!(openapi["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/letters",
        "/letters/{id}",
        "/toys/{id}/letters",
        "/analytics/toys",
        "/admin/seed",
    ] {
        assert!(openapi["paths"][path].is_object(), "{path} documented");
    }
    assert_eq!(app.get("/readyz").await.status(), StatusCode::OK);
}
