//! Fault tests on the embedded server: the real binary, killed with SIGKILL at random
//! moments under a steady stream of letters, and restarted on the same data directory.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use tokio::time::Instant;

const TOYS: [(&str, i64); 3] = [("kite", 125), ("drum", 990), ("top", 45)];
const KILLS: usize = 10;

struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start(dir: &std::path::Path, http: &Client) -> Server {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_santa"))
        .args([
            "serve",
            &format!("--addr=127.0.0.1:{port}"),
            &format!("--data-dir={}", dir.display()),
        ])
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let server = Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if http
            .get(format!("{}/readyz", server.base))
            .send()
            .await
            .is_ok_and(|r| r.status() == StatusCode::OK)
        {
            return server;
        }
        assert!(Instant::now() < deadline, "the server did not become ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A pseudo-random number from the clock, for kill moments.
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
        server.child.kill().unwrap();
        server.child.wait().unwrap();
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

    // Wait for the projections to apply the whole log.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status: Value = http
            .get(format!("{}/admin/projections", server.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if status["projections"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["lag_events"] == 0)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "projections did not catch up: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Every letter in the key-value store, once; every acknowledged one among them.
    let prices: HashMap<&str, i64> = TOYS.into_iter().collect();
    let mut present = HashMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = cursor
            .as_ref()
            .map_or("/letters?limit=500".to_owned(), |c| {
                format!("/letters?limit=500&cursor={c}")
            });
        let page: Value = http
            .get(format!("{}{path}", server.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for letter in page["letters"].as_array().unwrap() {
            let id = letter["id"].as_str().unwrap().to_owned();
            let i: usize = id.trim_start_matches("crash-").parse().unwrap();
            let total: i64 = lines_of(i).iter().map(|(t, q)| prices[t] * q).sum();
            assert_eq!(letter["total_cents"], total, "{id}");
            assert!(present.insert(id.clone(), i).is_none(), "{id} listed twice");
        }
        match page["next"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let lost: Vec<_> = acknowledged
        .iter()
        .filter(|id| !present.contains_key(*id))
        .collect();
    assert!(lost.is_empty(), "acknowledged letters lost: {lost:?}");

    // No letter was recorded twice in the log, and both read stores count each once.
    for id in present.keys().take(200) {
        let history: Value = http
            .get(format!("{}/letters/{id}/history", server.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(history["events"].as_array().unwrap().len(), 1, "{id}");
    }
    let report: Value = http
        .get(format!("{}/analytics/toys", server.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for (toy, _) in TOYS {
        let quantity: i64 = present
            .values()
            .flat_map(|i| lines_of(*i))
            .filter(|(t, _)| *t == toy)
            .map(|(_, q)| q)
            .sum();
        let view: Value = http
            .get(format!("{}/toys/{toy}", server.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
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
