//! Scaled out on real engines: two `santa api` and two `santa projector` processes on
//! NATS JetStream and PostgreSQL (`SANTA_TEST_NATS`, `SANTA_TEST_POSTGRES`).
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

mod support;

use std::collections::HashMap;
use std::time::Duration;

use reqwest::{Client, StatusCode};
use santa_cqrs::contract::service_url;
use serde_json::{Value, json};
use support::{
    Processes, all_letters, delete_stream, free_port, fresh_db, ready, santa, unique_stream,
};
use tokio::time::Instant;

const TOYS: [(&str, i64); 4] = [("kite", 125), ("drum", 990), ("yo-yo", 300), ("top", 45)];

struct Cluster {
    processes: Processes,
    apis: Vec<String>,
    http: Client,
    nats: String,
    stream: String,
}

async fn start() -> Option<Cluster> {
    let nats = service_url("SANTA_TEST_NATS")?;
    let db = fresh_db().await?;
    let stream = unique_stream("SCALE");
    let backends = [
        format!("--event-log={nats}"),
        format!("--read-store={db}"),
        format!("--analytics={db}"),
        format!("--nats-stream={stream}"),
        "--partitions=8".to_owned(),
    ];
    let with = |role: &[String]| santa(&[role, &backends[..]].concat());
    let mut processes = Processes::default();
    let mut apis = Vec::new();
    for _ in 0..2 {
        let port = free_port();
        processes
            .0
            .push(with(&["api".into(), format!("--addr=127.0.0.1:{port}")]));
        apis.push(format!("http://127.0.0.1:{port}"));
    }
    for _ in 0..2 {
        processes.0.push(with(&["projector".into()]));
    }
    let http = Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    for api in &apis {
        ready(&http, api).await;
    }
    Some(Cluster {
        processes,
        apis,
        http,
        nats,
        stream,
    })
}

/// What the test sent and got acknowledged.
#[derive(Default)]
struct Sent {
    letters: HashMap<String, Vec<(&'static str, i64)>>,
    /// Letters cancelled right after their submission, through the other API.
    cancelled: std::collections::HashSet<String>,
}

impl Sent {
    /// The lines of letters that still count.
    fn counting(&self) -> impl Iterator<Item = &Vec<(&'static str, i64)>> {
        self.letters
            .iter()
            .filter(|(id, _)| !self.cancelled.contains(*id))
            .map(|(_, lines)| lines)
    }
}

impl Cluster {
    /// Submits `count` letters with ids `{tag}-n` from 64 concurrent clients across both
    /// APIs; returns the acknowledged ones.
    async fn burst(
        &self,
        tag: &str,
        count: usize,
        on_progress: impl Fn(usize) + Send + Sync + 'static,
    ) -> Sent {
        let on_progress = std::sync::Arc::new(on_progress);
        let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        let clients = 64;
        for c in 0..clients {
            let (http, apis, tag) = (self.http.clone(), self.apis.clone(), tag.to_owned());
            let (done, on_progress) = (done.clone(), on_progress.clone());
            tasks.spawn(async move {
                let mut sent = Vec::new();
                for i in (c..count).step_by(clients) {
                    let lines: Vec<(&'static str, i64)> = TOYS
                        .iter()
                        .enumerate()
                        .filter(|(t, _)| (i + t) % 3 != 0)
                        .map(|(_, (toy, _))| (*toy, (i % 5 + 1) as i64))
                        .collect();
                    let id = format!("{tag}-{i}");
                    let body = json!({
                        "id": id, "child": "Ada", "address": "1 Snow Lane", "country": "FI",
                        "toys": lines.iter().map(|(t, q)| json!({"toy_id": t, "quantity": q})).collect::<Vec<_>>(),
                    });
                    let api = &apis[i % apis.len()];
                    let response = http.post(format!("{api}/letters")).json(&body).send().await.unwrap();
                    assert_eq!(response.status(), StatusCode::ACCEPTED, "{}", response.text().await.unwrap());
                    // Every tenth letter is cancelled at once, through the other API: the
                    // cancellation must never overtake the submission in any read store.
                    let cancel = i % 10 == 0;
                    if cancel {
                        let other = &apis[(i + 1) % apis.len()];
                        let response = http.delete(format!("{other}/letters/{id}")).send().await.unwrap();
                        assert_eq!(response.status(), StatusCode::ACCEPTED, "{}", response.text().await.unwrap());
                    }
                    sent.push((id, lines, cancel));
                    on_progress(done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1);
                }
                sent
            });
        }
        let mut all = Sent::default();
        while let Some(batch) = tasks.join_next().await {
            for (id, lines, cancelled) in batch.unwrap() {
                if cancelled {
                    all.cancelled.insert(id.clone());
                }
                all.letters.insert(id, lines);
            }
        }
        all
    }

    async fn get(&self, api: usize, path: &str) -> Value {
        support::get(&self.http, &self.apis[api], path).await
    }

    /// Waits until every projection has applied the whole log.
    async fn caught_up(&self, limit: Duration) {
        support::caught_up(&self.http, &self.apis[0], limit).await;
    }

    /// Both read stores hold exactly the acknowledged letters, with exact totals and
    /// demand, and both APIs answer alike.
    async fn check(&self, sent: &Sent) {
        let prices: HashMap<&str, i64> = TOYS.into_iter().collect();
        let letters = all_letters(&self.http, &self.apis[0]).await;
        for letter in &letters {
            let id = letter["id"].as_str().unwrap();
            let Some(lines) = sent.letters.get(id) else {
                panic!("letter {id} was not acknowledged: {letter}")
            };
            let total: i64 = lines.iter().map(|(t, q)| prices[t] * q).sum();
            assert_eq!(letter["total_cents"], total);
            let status = if sent.cancelled.contains(id) {
                "cancelled"
            } else {
                "submitted"
            };
            assert_eq!(letter["status"], status, "{id}");
        }
        assert_eq!(
            letters.len(),
            sent.letters.len(),
            "every acknowledged letter, once"
        );
        let report = self.get(0, "/analytics/toys").await;
        for (toy, _) in TOYS {
            let quantity: i64 = sent
                .counting()
                .flatten()
                .filter(|(t, _)| *t == toy)
                .map(|(_, q)| q)
                .sum();
            let letters = sent
                .counting()
                .filter(|lines| lines.iter().any(|(t, _)| *t == toy))
                .count();
            let view = self.get(1, &format!("/toys/{toy}")).await;
            assert_eq!(view["demand"]["total_quantity"], quantity, "{toy}");
            assert_eq!(view["demand"]["letter_count"], letters, "{toy}");
            let row = report["toys"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["toy_id"] == toy)
                .unwrap();
            assert_eq!(row["total_quantity"], quantity, "{toy} in analytics");
            assert_eq!(row["letter_count"], letters, "{toy} in analytics");
        }
        for path in [
            "/toys",
            "/analytics/toys",
            "/analytics/countries",
            "/letters?limit=20",
        ] {
            assert_eq!(
                self.get(0, path).await,
                self.get(1, path).await,
                "{path} through either API"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_apis_and_two_projectors_share_the_work_and_survive_a_killed_projector() {
    let Some(mut cluster) = start().await else {
        return;
    };
    assert_eq!(cluster.processes.0.len(), 4);
    for (toy, price) in TOYS {
        let body = json!({"name": toy, "description": "", "price_cents": price});
        let response = cluster
            .http
            .put(format!("{}/toys/{toy}", cluster.apis[0]))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
    }

    let started = Instant::now();
    let mut sent = cluster.burst("a", 10_000, |_| {}).await;
    let elapsed = started.elapsed();
    eprintln!(
        "10000 letters acknowledged in {elapsed:?} ({:.0}/s)",
        10_000.0 / elapsed.as_secs_f64()
    );
    cluster.caught_up(Duration::from_secs(120)).await;
    eprintln!(
        "projections caught up {:?} after the last acknowledgement",
        started.elapsed() - elapsed
    );
    cluster.check(&sent).await;

    // Kill one projector (SIGKILL) a third of the way into a second burst.
    let mut victim = cluster.processes.0.remove(2);
    let (kill_tx, kill_rx) = tokio::sync::oneshot::channel::<()>();
    let kill_tx = std::sync::Mutex::new(Some(kill_tx));
    let second = cluster.burst("b", 3_000, move |done| {
        if done == 1_000
            && let Some(tx) = kill_tx.lock().unwrap().take()
        {
            let _ = tx.send(());
        }
    });
    let killer = async {
        kill_rx.await.unwrap();
        victim.kill().unwrap();
        victim.wait().unwrap();
    };
    let (second, ()) = tokio::join!(second, killer);
    sent.letters.extend(second.letters);
    sent.cancelled.extend(second.cancelled);
    cluster.caught_up(Duration::from_secs(120)).await;
    cluster.check(&sent).await;

    // Rebuild both projections through one API while letters keep coming through both.
    for name in ["letters", "analytics"] {
        let url = format!("{}/admin/projections/{name}/rebuild", cluster.apis[0]);
        let response = cluster.http.post(url).send().await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::ACCEPTED,
            "{}",
            response.text().await.unwrap()
        );
    }
    let third = cluster.burst("c", 2_000, |_| {}).await;
    sent.letters.extend(third.letters);
    sent.cancelled.extend(third.cancelled);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let status = cluster.get(0, "/admin/projections").await;
        let rebuilds: Vec<&Value> = status["projections"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| &p["rebuild"])
            .collect();
        assert!(rebuilds.iter().all(|r| r["state"] != "failed"), "{status}");
        if rebuilds.iter().all(|r| r["state"] == "done") {
            for r in rebuilds {
                eprintln!(
                    "{} rebuilt on PostgreSQL from JetStream: {} events, {} events/s",
                    r["projection"], r["replayed"], r["events_per_second"]
                );
            }
            break;
        }
        assert!(Instant::now() < deadline, "rebuilds still going: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.caught_up(Duration::from_secs(120)).await;
    cluster.check(&sent).await;

    drop(cluster.processes);
    delete_stream(&cluster.nats, &cluster.stream).await;
}

#[tokio::test]
async fn a_query_after_a_position_no_projector_has_reached_says_so() {
    let Some(nats) = service_url("SANTA_TEST_NATS") else {
        return;
    };
    let Some(db) = fresh_db().await else {
        return;
    };
    let stream = unique_stream("BEHIND");
    let port = free_port();
    let api = format!("http://127.0.0.1:{port}");
    // An API and no projector: nothing will ever apply what it accepts.
    let processes = Processes(vec![santa(&[
        "api".into(),
        format!("--addr=127.0.0.1:{port}"),
        format!("--event-log={nats}"),
        format!("--read-store={db}"),
        format!("--analytics={db}"),
        format!("--nats-stream={stream}"),
        "--consistency-timeout-ms=200".into(),
    ])]);
    let http = Client::new();
    ready(&http, &api).await;
    let body = json!({"name": "Kite", "description": "", "price_cents": 125});
    let response = http
        .put(format!("{api}/toys/kite"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let position = response.json::<Value>().await.unwrap()["position"]
        .as_u64()
        .unwrap();

    let started = Instant::now();
    let response = http
        .get(format!("{api}/toys/kite?after={position}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().get("retry-after").is_some());
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["type"], "/problems/projection-behind", "{problem}");
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "it waited the configured bound first"
    );
    // Without `after`, the same query answers at once from what the store has: nothing yet.
    let response = http.get(format!("{api}/toys/kite")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);

    drop(processes);
    delete_stream(&nats, &stream).await;
}
