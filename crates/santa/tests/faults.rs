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

mod outages {
    use std::collections::HashMap;
    use std::process::{Child, Command, Stdio};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use reqwest::{Client, StatusCode};
    use santa_cqrs::contract::service_url;
    use serde_json::json;
    use tokio::time::Instant;

    use super::support::{
        Processes, caught_up, free_port, fresh_db, get, letter_totals, ready, santa,
    };

    /// A NATS server of the test's own, so stopping it disturbs no other test.
    fn nats_server(port: u16, dir: &std::path::Path) -> Child {
        let binary = if std::path::Path::new("/usr/sbin/nats-server").exists() {
            "/usr/sbin/nats-server"
        } else {
            "nats-server"
        };
        Command::new(binary)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-js",
                "-sd",
                &dir.display().to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server is installed beside the NATS service")
    }

    /// `santa serve` with `args`, ready, with the toy `kite` at 125 cents in its catalogue.
    async fn serve_with_kite(args: Vec<String>) -> (Processes, String, Client) {
        let port = free_port();
        let base = format!("http://127.0.0.1:{port}");
        let server = Processes(vec![santa(
            &[
                vec!["serve".into(), format!("--addr=127.0.0.1:{port}")],
                args,
            ]
            .concat(),
        )]);
        let http = Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        ready(&http, &base).await;
        let body = json!({"name": "Kite", "description": "", "price_cents": 125});
        let response = http
            .put(format!("{base}/toys/kite"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        (server, base, http)
    }

    /// What a client saw: when the answer came and what it was.
    type Answers = Arc<Mutex<Vec<(Instant, String, StatusCode)>>>;

    /// Eight clients sending letters until told to stop.
    fn load(
        http: &Client,
        base: &str,
        answers: &Answers,
        stopped: &tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinSet<()> {
        let mut clients = tokio::task::JoinSet::new();
        for c in 0..8 {
            let (http, url, answers, stopped) = (
                http.clone(),
                format!("{base}/letters"),
                answers.clone(),
                stopped.clone(),
            );
            clients.spawn(async move {
                let mut i = c;
                while !*stopped.borrow() {
                    let id = format!("outage-{i}");
                    let body = json!({"id": id, "child": "Ada", "address": "1 Snow Lane",
                        "toys": [{"toy_id": "kite", "quantity": i % 3 + 1}]});
                    if let Ok(response) = http.post(&url).json(&body).send().await {
                        answers
                            .lock()
                            .unwrap()
                            .push((Instant::now(), id, response.status()));
                    }
                    i += 8;
                }
            });
        }
        clients
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_broker_outage_sheds_commands_and_loses_nothing_acknowledged() {
        let Some(_) = service_url("SANTA_TEST_NATS") else {
            return;
        };
        let Some(db) = fresh_db().await else {
            return;
        };
        let nats_dir = tempfile::tempdir().unwrap();
        let nats_port = free_port();
        let mut nats = Processes(vec![nats_server(nats_port, nats_dir.path())]);
        let (_server, base, http) = serve_with_kite(vec![
            format!("--event-log=nats://127.0.0.1:{nats_port}"),
            format!("--read-store={db}"),
            format!("--analytics={db}"),
        ])
        .await;

        let answers: Answers = Arc::default();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut clients = load(&http, &base, &answers, &stopped);
        tokio::time::sleep(Duration::from_millis(700)).await;

        // Stop the broker for four seconds: longer than a command waits for durability
        // (2 s), so requests caught in flight are answered within the outage too.
        drop(nats);
        let down = Instant::now();
        tokio::time::sleep(Duration::from_millis(2000)).await;
        let readiness = http
            .get(format!("{base}/readyz"))
            .send()
            .await
            .unwrap()
            .status();
        tokio::time::sleep(Duration::from_millis(2000)).await;
        let up = Instant::now();
        nats = Processes(vec![nats_server(nats_port, nats_dir.path())]);
        // The API recovers by itself: wait for the first acknowledgement after the restart.
        super::support::wait_until(Duration::from_secs(30), || {
            let answers = answers.clone();
            async move {
                answers
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|(at, _, s)| *at > up && *s == StatusCode::ACCEPTED)
            }
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.send(true).unwrap();
        while clients.join_next().await.is_some() {}

        assert_eq!(
            readiness,
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready while the broker is down"
        );
        let answers = answers.lock().unwrap().clone();
        let during: Vec<_> = answers
            .iter()
            .filter(|(at, _, _)| *at > down + Duration::from_millis(200) && *at < up)
            .collect();
        assert!(
            !during.is_empty(),
            "commands were answered during the outage"
        );
        assert!(
            during
                .iter()
                .all(|(_, _, s)| *s == StatusCode::SERVICE_UNAVAILABLE),
            "only 503 while the broker is down"
        );
        assert!(
            answers.iter().all(
                |(_, _, s)| *s == StatusCode::ACCEPTED || *s == StatusCode::SERVICE_UNAVAILABLE
            )
        );
        let acknowledged: HashMap<String, ()> = answers
            .iter()
            .filter(|(_, _, s)| *s == StatusCode::ACCEPTED)
            .map(|(_, id, _)| (id.clone(), ()))
            .collect();

        caught_up(&http, &base, Duration::from_secs(60)).await;
        let present = letter_totals(&http, &base).await;
        let lost: Vec<_> = acknowledged
            .keys()
            .filter(|id| !present.contains_key(*id))
            .collect();
        assert!(lost.is_empty(), "acknowledged letters lost: {lost:?}");
        let quantity: i64 = present.values().map(|total| total / 125).sum();
        assert_eq!(
            get(&http, &base, "/toys/kite").await["demand"]["total_quantity"],
            quantity
        );
        eprintln!(
            "broker down {:?}: {} answers during it, all 503; {} letters acknowledged, {} present, 0 lost",
            up - down,
            during.len(),
            acknowledged.len(),
            present.len()
        );
        drop(nats);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_database_outage_is_retried_reported_and_caught_up() {
        let Some(db) = fresh_db().await else {
            return;
        };
        let name = db.rsplit('/').next().unwrap().to_owned();
        let dir = tempfile::tempdir().unwrap();
        let (_server, base, http) = serve_with_kite(vec![
            format!("--data-dir={}", dir.path().display()),
            format!("--read-store={db}"),
            format!("--analytics={db}"),
        ])
        .await;

        let answers: Answers = Arc::default();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut clients = load(&http, &base, &answers, &stopped);
        // Cut every session of the read stores' database, five times during the load.
        let admin = service_url("SANTA_TEST_POSTGRES").unwrap();
        let config: tokio_postgres::Config = admin.parse().unwrap();
        let (killer, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        let mut cut = 0;
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let rows = killer
                .query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                    &[&name],
                )
                .await
                .unwrap();
            cut += rows.len();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.send(true).unwrap();
        while clients.join_next().await.is_some() {}
        assert!(cut > 0, "sessions were cut");

        caught_up(&http, &base, Duration::from_secs(60)).await;
        let status = get(&http, &base, "/admin/projections").await;
        let reported = status["projections"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["last_error"].is_string());
        assert!(
            reported,
            "the failures were reported in the status: {status}"
        );
        let answers = answers.lock().unwrap().clone();
        // Commands never touch the read stores: the outage does not shed them.
        assert!(
            answers.iter().all(|(_, _, s)| *s == StatusCode::ACCEPTED),
            "commands kept being accepted"
        );
        let present = letter_totals(&http, &base).await;
        let lost: Vec<_> = answers
            .iter()
            .filter(|(_, id, _)| !present.contains_key(id))
            .map(|(_, id, _)| id)
            .collect();
        assert!(lost.is_empty(), "acknowledged letters lost: {lost:?}");
        let quantity: i64 = present.values().map(|total| total / 125).sum();
        assert_eq!(
            get(&http, &base, "/toys/kite").await["demand"]["total_quantity"],
            quantity
        );
        let report = get(&http, &base, "/analytics/toys").await;
        assert_eq!(report["toys"][0]["total_quantity"], quantity);
        eprintln!(
            "{cut} database sessions cut; {} letters acknowledged and present, 0 lost",
            present.len()
        );
    }
}
