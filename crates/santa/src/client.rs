//! The CLI's side of talking to a running workshop over its HTTP API.

use anyhow::Context;
use reqwest::Method;
use serde_json::Value;

/// Where the workshop is and how to get in.
#[derive(Debug, clap::Args)]
pub struct RemoteArgs {
    /// Base URL of the running workshop.
    #[arg(long, env = "SANTA_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// A bearer token with the scope the command needs, if the workshop requires tokens.
    #[arg(long, env = "SANTA_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl RemoteArgs {
    /// Sends a request and returns the JSON answer, or the problem as an error.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.url.trim_end_matches('/'));
        let mut request = reqwest::Client::new().request(method, &url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach {url}; is the workshop running?"))?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if !status.is_success() {
            let detail = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|problem| problem["detail"].as_str().map(str::to_owned))
                .unwrap_or(text);
            anyhow::bail!("{status}: {detail}");
        }
        serde_json::from_str(&text)
            .with_context(|| format!("{url} answered something other than JSON"))
    }
}
