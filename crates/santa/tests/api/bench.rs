//! `santa bench` against a real server: bounded in rate and time.

use std::time::Duration;

use santa::bench::{BenchConfig, Scenario, find_max, run};

use crate::helpers::spawn_app;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_generator_offers_its_rate_and_measures_latency_and_lag() {
    let app = spawn_app().await;
    let config = BenchConfig {
        rate: 200,
        duration: Duration::from_secs(1),
        scenario: Scenario::Steady,
        lag_every: 10,
        max_in_flight: 1000,
        path: "/letters".into(),
        ..BenchConfig::new(app.base.clone())
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
    // The slowest second's slowest letter is the run's slowest (within the histogram's
    // precision).
    let slowest = *report.slowest_by_second.iter().max().unwrap() as f64;
    let max = report.latency.max_us as f64;
    assert!(
        (slowest - max).abs() <= max * 0.01 + 1.0,
        "{slowest} against {max}"
    );
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
        rate: 60,
        duration: Duration::from_millis(1500),
        scenario: Scenario::Spike,
        lag_every: 0,
        max_in_flight: 1000,
        path: "/letters".into(),
        ..BenchConfig::new(app.base.clone())
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
        rate: 100,
        duration: Duration::from_millis(500),
        scenario: Scenario::Steady,
        lag_every: 5,
        max_in_flight: 1000,
        path: "/bench/ceiling".into(),
        ..BenchConfig::new(app.base.clone())
    };
    let report = run(config).await.unwrap();
    assert_eq!(report.acknowledged, report.offered, "{report}");
    assert_eq!(report.lag.count, 0, "nothing to wait for");
    stores_nothing_rejects_bad_letters_and_is_off_by_default(&app, "/bench/ceiling").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_floor_baseline_syncs_each_letter_to_its_file_before_answering() {
    let app =
        crate::helpers::spawn_app_with(tempfile::tempdir().unwrap(), |s| s.bench_endpoints = true)
            .await;
    let ring = app.dir.path().join("bench-floor.ring");
    assert!(!ring.exists(), "nothing is opened before the first letter");
    let children: Vec<String> = (0..20).map(|n| format!("Floor child {n}")).collect();
    // Sent at once, so that groups hold more than one letter.
    let mut answers = tokio::task::JoinSet::new();
    for child in &children {
        let mut body = crate::helpers::letter("ignored", &[("kite", 1)]);
        body["child"] = serde_json::json!(child);
        answers.spawn(app.client.post(app.url("/bench/floor")).json(&body).send());
    }
    while let Some(answer) = answers.join_next().await {
        crate::helpers::accepted(answer.unwrap().unwrap()).await;
    }
    // Every 202 came after its letter's group was written and synced.
    let written = String::from_utf8_lossy(&std::fs::read(&ring).unwrap()).into_owned();
    for child in &children {
        assert!(
            written.contains(child.as_str()),
            "{child} is not in the floor's file"
        );
    }
    stores_nothing_rejects_bad_letters_and_is_off_by_default(&app, "/bench/floor").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mixed_scenario_reads_and_reads_its_own_writes() {
    let app = spawn_app().await;
    let config = BenchConfig {
        rate: 200,
        // Letters are read once they are a second old: the second second reads some.
        duration: Duration::from_secs(2),
        scenario: Scenario::Mixed,
        lag_every: 0,
        ..BenchConfig::new(app.base.clone())
    };
    let report = run(config).await.unwrap();
    assert_eq!(report.offered, 400, "{report}");
    // Of every ten arrivals: five writes, four reads, one write read back with ?after=.
    assert_eq!(report.acknowledged, 240, "{report}");
    assert_eq!(report.reads.count + report.failed_reads, 160, "{report}");
    assert_eq!(report.read_your_writes.count, 40, "{report}");
    assert_eq!(report.failed_reads, 0, "{report}");
    assert!(report.to_string().contains("read-your-writes"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn find_max_raises_the_rate_until_two_steps_break_the_bound() {
    let app = spawn_app().await;
    let config = BenchConfig {
        rate: 50,
        step: Duration::from_millis(300),
        // No server answers within a microsecond: every step breaks the bound.
        p99_bound: Duration::from_micros(1),
        lag_every: 0,
        ..BenchConfig::new(app.base.clone())
    };
    let report = find_max(config).await.unwrap();
    let rates: Vec<u32> = report.steps.iter().map(|s| s.rate).collect();
    assert_eq!(rates, [50, 60], "{report}");
    assert!(report.max_sustained().is_none(), "{report}");
    assert!(
        report
            .steps
            .iter()
            .all(|s| s.report.acknowledged == s.report.offered)
    );
    assert!(report.to_string().contains("no rate tried"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_crud_baseline_writes_both_read_stores_inside_the_request() {
    let app =
        crate::helpers::spawn_app_with(tempfile::tempdir().unwrap(), |s| s.bench_endpoints = true)
            .await;
    app.put_toy("kite", 250).await;
    let (_, position) = crate::helpers::accepted(
        app.submit(&crate::helpers::letter("warm-up", &[("kite", 1)]))
            .await,
    )
    .await;
    app.read_after("/toys/kite", position).await;
    let post = |body: serde_json::Value| app.client.post(app.url("/bench/crud")).json(&body).send();
    let response = post(crate::helpers::letter("crud-1", &[("kite", 3)]))
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::ACCEPTED);
    // Readable at once, without ?after=: it was written before the answer.
    let letter: serde_json::Value = app.get("/letters/crud-1").await.json().await.unwrap();
    assert_eq!(letter["total_cents"], 750, "{letter}");
    let kite: serde_json::Value = app.get("/toys/kite").await.json().await.unwrap();
    assert_eq!(kite["demand"]["total_quantity"], 4, "{kite}");
    let countries: serde_json::Value = app.get("/analytics/countries").await.json().await.unwrap();
    assert_eq!(countries["countries"][0]["letter_count"], 2, "{countries}");
    crate::helpers::problem(
        post(crate::helpers::letter("crud-1", &[("kite", 3)]))
            .await
            .unwrap(),
        reqwest::StatusCode::CONFLICT,
        "letter-conflict",
    )
    .await;
    crate::helpers::problem(
        post(crate::helpers::letter("crud-2", &[("yo-yo", 1)]))
            .await
            .unwrap(),
        reqwest::StatusCode::UNPROCESSABLE_ENTITY,
        "unknown-toy",
    )
    .await;
}

/// What every baseline shares: no letter reaches the read stores, a bad letter gets the
/// same problem as from `POST /letters`, and a server started without
/// `--bench-endpoints` does not serve `path`.
async fn stores_nothing_rejects_bad_letters_and_is_off_by_default(
    app: &crate::helpers::TestApp,
    path: &str,
) {
    let listed = app
        .get("/letters")
        .await
        .json::<serde_json::Value>()
        .await
        .unwrap();
    assert!(
        listed["letters"].as_array().unwrap().is_empty(),
        "{path} reached a store: {listed}"
    );
    let bad = app
        .client
        .post(app.url(path))
        .json(&serde_json::json!({"child": "x"}))
        .send()
        .await
        .unwrap();
    crate::helpers::problem(bad, reqwest::StatusCode::BAD_REQUEST, "invalid-body").await;

    let plain = spawn_app().await;
    let response = plain
        .client
        .post(plain.url(path))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    crate::helpers::problem(response, reqwest::StatusCode::NOT_FOUND, "not-found").await;
}
