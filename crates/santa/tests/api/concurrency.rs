//! Many clients at once: every acknowledged letter reaches both read stores exactly.

use std::collections::HashMap;

use serde_json::Value;

use crate::helpers::{accepted, letter, spawn_app};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_letters_all_reach_both_read_stores_with_exact_totals() {
    let app = spawn_app().await;
    let toys = [("kite", 125), ("drum", 990), ("yo-yo", 300), ("top", 45)];
    for (toy, price) in toys {
        accepted(app.put_toy(toy, price).await).await;
    }
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..16 {
        let (http, url) = (app.client.clone(), app.url("/letters"));
        tasks.spawn(async move {
            let mut sent = Vec::new();
            for n in 0..25 {
                let i = client * 25 + n;
                let lines: Vec<(&str, i64)> = toys
                    .iter()
                    .enumerate()
                    .filter(|(t, _)| (i + t) % 3 != 0)
                    .map(|(_, (id, _))| (*id, (i % 7 + 1) as i64))
                    .collect();
                let body = letter(&format!("c-{i}"), &lines);
                let (_, position) =
                    accepted(http.post(&url).json(&body).send().await.unwrap()).await;
                sent.push((
                    format!("c-{i}"),
                    lines
                        .into_iter()
                        .map(|(t, q)| (t.to_owned(), q))
                        .collect::<Vec<_>>(),
                    position,
                ));
            }
            sent
        });
    }
    let mut sent = Vec::new();
    while let Some(batch) = tasks.join_next().await {
        sent.extend(batch.unwrap());
    }
    assert_eq!(sent.len(), 400);
    let last = sent.iter().map(|s| s.2).max().unwrap();
    let prices: HashMap<&str, i64> = toys.into_iter().collect();
    let mut demand: HashMap<String, (i64, i64)> = HashMap::new();
    for (id, lines, _) in &sent {
        let view = app.read_after(&format!("/letters/{id}"), last).await;
        let total: i64 = lines.iter().map(|(t, q)| prices[t.as_str()] * q).sum();
        assert_eq!(view["total_cents"], total, "{id}");
        for (toy, q) in lines {
            let entry = demand.entry(toy.clone()).or_default();
            entry.0 += q;
            entry.1 += 1;
        }
    }
    let report = app.read_after("/analytics/toys", last).await;
    for (toy, (quantity, letters)) in &demand {
        let view = app.read_after(&format!("/toys/{toy}"), last).await;
        assert_eq!(
            view["demand"]["total_quantity"], *quantity,
            "{toy} in the key-value store"
        );
        assert_eq!(view["demand"]["letter_count"], *letters);
        let listed = app
            .read_after(&format!("/toys/{toy}/letters?limit=500"), last)
            .await;
        let sum: i64 = listed["letters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["quantity"].as_i64().unwrap())
            .sum();
        assert_eq!(sum, *quantity, "{toy}: the index agrees with the counter");
        let row = report["toys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["toy_id"] == toy.as_str())
            .unwrap();
        assert_eq!(
            row["total_quantity"], *quantity,
            "{toy} in the analytics store"
        );
        assert_eq!(row["letter_count"], *letters);
    }
    let countries = app.read_after("/analytics/countries", last).await;
    let fi: &Value = &countries["countries"][0];
    assert_eq!(fi["letter_count"], 400);
    let expected: i64 = sent
        .iter()
        .flat_map(|(_, lines, _)| lines.iter().map(|(t, q)| prices[t.as_str()] * q))
        .sum();
    assert_eq!(fi["total_cents"], expected);
}
