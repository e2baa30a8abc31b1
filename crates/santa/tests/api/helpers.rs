//! `spawn_app()`: the real application on 127.0.0.1:0 with a temporary data directory.

use std::time::Duration;

use reqwest::{Response, StatusCode};
use santa::{Application, Settings};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub dir: TempDir,
    pub token: Option<String>,
    stop: oneshot::Sender<()>,
    running: JoinHandle<anyhow::Result<()>>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(tempfile::tempdir().unwrap(), |_| {}).await
}

/// Starts the application on `dir`, with settings adjusted by `configure`.
pub async fn spawn_app_with(dir: TempDir, configure: impl FnOnce(&mut Settings)) -> TestApp {
    let mut settings = Settings::new("127.0.0.1:0".parse().unwrap(), dir.path());
    configure(&mut settings);
    let app = Application::build(settings)
        .await
        .expect("the application builds");
    let base = format!("http://{}", app.addr().expect("an API process listens"));
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    TestApp {
        base,
        client,
        dir,
        token: None,
        stop,
        running,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    pub async fn get(&self, path: &str) -> Response {
        self.authorized(self.client.get(self.url(path)))
            .send()
            .await
            .unwrap()
    }

    pub async fn put_toy(&self, id: &str, price_cents: i64) -> Response {
        let body =
            json!({"name": format!("Toy {id}"), "description": "", "price_cents": price_cents});
        self.authorized(self.client.put(self.url(&format!("/toys/{id}"))))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn submit(&self, body: &Value) -> Response {
        self.authorized(self.client.post(self.url("/letters")))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn cancel(&self, id: &str) -> Response {
        self.authorized(self.client.delete(self.url(&format!("/letters/{id}"))))
            .send()
            .await
            .unwrap()
    }

    pub async fn seed(&self) -> Value {
        let response = self
            .authorized(self.client.post(self.url("/admin/seed")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.unwrap()
    }

    /// GET with `?after=` the given position, expecting 200, returning the JSON.
    pub async fn read_after(&self, path: &str, position: u64) -> Value {
        let sep = if path.contains('?') { '&' } else { '?' };
        let response = self.get(&format!("{path}{sep}after={position}")).await;
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "GET {path} after {position}"
        );
        response.json().await.unwrap()
    }

    /// Stops the server cleanly and hands back its data directory.
    pub async fn stop(self) -> TempDir {
        let _ = self.stop.send(());
        self.running
            .await
            .expect("the server task")
            .expect("a clean stop");
        self.dir
    }
}

/// A letter body with the given lines.
pub fn letter(id: &str, toys: &[(&str, i64)]) -> Value {
    json!({
        "id": id,
        "child": "Ada",
        "address": "1 Snow Lane",
        "country": "FI",
        "toys": toys.iter().map(|(t, q)| json!({"toy_id": t, "quantity": q})).collect::<Vec<_>>(),
    })
}

/// Reads a `202 {id, position}` answer.
pub async fn accepted(response: Response) -> (String, u64) {
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "expected 202, got {status}: {body}"
    );
    (
        body["id"].as_str().unwrap().to_owned(),
        body["position"].as_u64().unwrap(),
    )
}

/// Asserts a problem+json answer with the given status and type, returning its body.
pub async fn problem(response: Response, status: StatusCode, kind: &str) -> Value {
    let actual = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert_eq!(actual, status, "body: {body}");
    assert_eq!(content_type.as_deref(), Some("application/problem+json"));
    assert_eq!(body["type"], format!("/problems/{kind}"), "body: {body}");
    assert_eq!(body["status"], status.as_u16());
    assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()));
    body
}
