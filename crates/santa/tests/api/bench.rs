//! `santa bench` against a real server: bounded in rate and time.

use std::time::Duration;

use santa::bench::{BenchConfig, Scenario, run};

use crate::helpers::spawn_app;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_generator_offers_its_rate_and_measures_latency_and_lag() {
    let app = spawn_app().await;
    let config = BenchConfig {
        url: app.base.clone(),
        token: None,
        rate: 200,
        duration: Duration::from_secs(1),
        scenario: Scenario::Steady,
        lag_every: 10,
        max_in_flight: 1000,
        path: "/letters".into(),
        progress: false,
    };
    let report = run(config).await.unwrap();
    assert_eq!(
        report.offered, 200,
        "open loop: every due letter is offered"
    );
    assert_eq!(
        report.acknowledged + report.shed + report.failed + report.not_sent,
        report.offered
    );
    assert_eq!(report.failed, 0, "{report}");
    assert_eq!(report.latency.count, report.acknowledged);
    assert!(report.lag.count >= report.acknowledged / 10 - 1, "{report}");
    assert!(
        report.latency.p50_us <= report.latency.p99_us
            && report.latency.p99_us <= report.latency.max_us
    );
    let listed = app
        .get("/letters?limit=500")
        .await
        .json::<serde_json::Value>()
        .await
        .unwrap();
    assert_eq!(
        listed["letters"].as_array().unwrap().len() as u64,
        report.acknowledged
    );
    assert!(report.to_string().contains("acknowledged"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spike_offers_five_times_the_rate_in_its_middle_third() {
    let app = spawn_app().await;
    let config = BenchConfig {
        url: app.base.clone(),
        token: None,
        rate: 60,
        duration: Duration::from_millis(1500),
        scenario: Scenario::Spike,
        lag_every: 0,
        max_in_flight: 1000,
        path: "/letters".into(),
        progress: false,
    };
    let report = run(config).await.unwrap();
    // 0.5 s at 60/s, 0.5 s at 300/s, 0.5 s at 60/s.
    assert!((205..=215).contains(&report.offered), "{report}");
    assert_eq!(report.lag.count, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ceiling_baseline_parses_and_validates_but_stores_nothing() {
    let app =
        crate::helpers::spawn_app_with(tempfile::tempdir().unwrap(), |s| s.bench_endpoints = true)
            .await;
    let config = BenchConfig {
        url: app.base.clone(),
        token: None,
        rate: 100,
        duration: Duration::from_millis(500),
        scenario: Scenario::Steady,
        lag_every: 5,
        max_in_flight: 1000,
        path: "/bench/ceiling".into(),
        progress: false,
    };
    let report = run(config).await.unwrap();
    assert_eq!(report.acknowledged, report.offered, "{report}");
    assert_eq!(report.lag.count, 0, "nothing to wait for");
    let listed = app
        .get("/letters")
        .await
        .json::<serde_json::Value>()
        .await
        .unwrap();
    assert!(
        listed["letters"].as_array().unwrap().is_empty(),
        "the baseline stores nothing: {listed}"
    );
    let bad = app
        .client
        .post(app.url("/bench/ceiling"))
        .json(&serde_json::json!({"child": "x"}))
        .send()
        .await
        .unwrap();
    crate::helpers::problem(bad, reqwest::StatusCode::BAD_REQUEST, "invalid-body").await;

    let plain = spawn_app().await;
    let response = plain
        .client
        .post(plain.url("/bench/ceiling"))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    crate::helpers::problem(response, reqwest::StatusCode::NOT_FOUND, "not-found").await;
}
