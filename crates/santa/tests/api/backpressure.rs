//! Back-pressure: when appends queue up beyond the bound, commands are shed with 503 and
//! `Retry-After` instead of piling up; nothing shed is recorded, nothing accepted is lost.

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{letter, spawn_app_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_append_queue_sheds_commands_with_503_and_retry_after() {
    let app = spawn_app_with(tempfile::tempdir().unwrap(), |s| s.append_queue = 1).await;
    app.put_toy("kite", 100).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..300 {
        let (client, url) = (app.client.clone(), app.url("/letters"));
        tasks.spawn(async move {
            let response = client
                .post(url)
                .json(&letter(&format!("bp-{i}"), &[("kite", 1)]))
                .send()
                .await
                .unwrap();
            let status = response.status();
            let retry_after = response.headers().get("retry-after").is_some();
            let body: Value = response.json().await.unwrap();
            (format!("bp-{i}"), status, retry_after, body)
        });
    }
    let (mut accepted, mut shed) = (Vec::new(), 0);
    let mut last = 0;
    while let Some(outcome) = tasks.join_next().await {
        let (id, status, retry_after, body) = outcome.unwrap();
        match status {
            StatusCode::ACCEPTED => {
                last = last.max(body["position"].as_u64().unwrap());
                accepted.push(id);
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(body["type"], "/problems/overloaded", "{body}");
                assert!(retry_after, "a shed command says when to retry");
                shed += 1;
            }
            other => panic!("{id}: unexpected {other}: {body}"),
        }
    }
    eprintln!("shed {shed} of 300");
    assert!(
        shed > 0,
        "300 concurrent commands against a queue of one shed some"
    );
    let listed = app.read_after("/letters?limit=500", last).await;
    let listed: Vec<&str> = listed["letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        listed.len(),
        accepted.len(),
        "exactly the accepted letters were recorded"
    );
    assert!(accepted.iter().all(|id| listed.contains(&id.as_str())));
}
