//! Fault tests on the embedded server: the real binary, killed with SIGKILL at random
//! moments under a steady stream of letters, and restarted on the same data directory.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::{Client, StatusCode};
use serde_json::json;
use support::{Processes, all_letters, caught_up, free_port, get, ready, santa};

const TOYS: [(&str, i64); 3] = [("kite", 125), ("drum", 990), ("top", 45)];
const KILLS: usize = 10;

struct Server {
    process: Processes,
    base: String,
}

async fn start(dir: &std::path::Path, http: &Client) -> Server {
    let port = free_port();
    let child = santa(&[
        "serve".into(),
        format!("--addr=127.0.0.1:{port}"),
        format!("--data-dir={}", dir.display()),
    ]);
    let server = Server {
        process: Processes(vec![child]),
        base: format!("http://127.0.0.1:{port}"),
    };
    ready(http, &server.base).await;
    server
}

/// A pseudo-random pause from the clock: the moments of the kills.
fn jitter(max_ms: u64) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    Duration::from_millis(100 + u64::from(nanos) % max_ms)
}

fn lines_of(i: usize) -> Vec<(&'static str, i64)> {
    TOYS.iter()
        .enumerate()
        .filter(|(t, _)| (i + t).is_multiple_of(2))
        .map(|(_, (toy, _))| (*toy, (i % 4 + 1) as i64))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_letter_survives_repeated_sigkills_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let http = Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut server = start(dir.path(), &http).await;
    for (toy, price) in TOYS {
        let body = json!({"name": toy, "description": "", "price_cents": price});
        let response = http
            .put(format!("{}/toys/{toy}", server.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
    }

    // Eight clients send letters without pause; the base URL changes at every restart.
    let base = Arc::new(Mutex::new(server.base.clone()));
    let acknowledged = Arc::new(Mutex::new(HashSet::new()));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..8 {
        let (http, base, acknowledged, stopped) = (
            http.clone(),
            base.clone(),
            acknowledged.clone(),
            stopped.clone(),
        );
        clients.spawn(async move {
            let mut i = c;
            while !*stopped.borrow() {
                let id = format!("crash-{i}");
                let body = json!({
                    "id": id, "child": "Ada", "address": "1 Snow Lane",
                    "toys": lines_of(i).iter().map(|(t, q)| json!({"toy_id": t, "quantity": q})).collect::<Vec<_>>(),
                });
                let url = format!("{}/letters", base.lock().unwrap());
                if let Ok(response) = http.post(url).json(&body).send().await
                    && response.status() == StatusCode::ACCEPTED
                {
                    acknowledged.lock().unwrap().insert(id);
                }
                i += 8;
            }
        });
    }

    for kill in 0..KILLS {
        tokio::time::sleep(jitter(400)).await;
        drop(server.process);
        let before = acknowledged.lock().unwrap().len();
        server = start(dir.path(), &http).await;
        *base.lock().unwrap() = server.base.clone();
        eprintln!("kill {}: {before} letters acknowledged so far", kill + 1);
    }
    tokio::time::sleep(jitter(300)).await;
    stop.send(true).unwrap();
    while clients.join_next().await.is_some() {}
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(
        acknowledged.len() > 100,
        "the load kept going: {}",
        acknowledged.len()
    );
    caught_up(&http, &server.base, Duration::from_secs(60)).await;

    // Every letter in the key-value store, once; every acknowledged one among them.
    let prices: HashMap<&str, i64> = TOYS.into_iter().collect();
    let mut present = HashMap::new();
    for letter in all_letters(&http, &server.base).await {
        let id = letter["id"].as_str().unwrap().to_owned();
        let i: usize = id.trim_start_matches("crash-").parse().unwrap();
        let total: i64 = lines_of(i).iter().map(|(t, q)| prices[t] * q).sum();
        assert_eq!(letter["total_cents"], total, "{id}");
        assert!(present.insert(id.clone(), i).is_none(), "{id} listed twice");
    }
    let lost: Vec<_> = acknowledged
        .iter()
        .filter(|id| !present.contains_key(*id))
        .collect();
    assert!(lost.is_empty(), "acknowledged letters lost: {lost:?}");

    // No letter was recorded twice in the log, and both read stores count each once.
    for id in present.keys().take(200) {
        let history = get(&http, &server.base, &format!("/letters/{id}/history")).await;
        assert_eq!(history["events"].as_array().unwrap().len(), 1, "{id}");
    }
    let report = get(&http, &server.base, "/analytics/toys").await;
    for (toy, _) in TOYS {
        let quantity: i64 = present
            .values()
            .flat_map(|i| lines_of(*i))
            .filter(|(t, _)| *t == toy)
            .map(|(_, q)| q)
            .sum();
        let view = get(&http, &server.base, &format!("/toys/{toy}")).await;
        assert_eq!(
            view["demand"]["total_quantity"], quantity,
            "{toy} in the key-value store"
        );
        let row = report["toys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["toy_id"] == toy)
            .unwrap();
        assert_eq!(
            row["total_quantity"], quantity,
            "{toy} in the analytics store"
        );
    }
    eprintln!(
        "{KILLS} kills survived; {} letters acknowledged, {} present, 0 lost",
        acknowledged.len(),
        present.len()
    );
}
