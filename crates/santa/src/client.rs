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

/// Shows a rebuild's progress until it switches (or fails), from the status the workshop
/// publishes.
pub async fn follow_rebuild(remote: &RemoteArgs, name: &str) -> anyhow::Result<()> {
    use indicatif::{ProgressBar, ProgressStyle};
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template(
            "{msg:>10} [{bar:40}] {pos}/{len} events ({per_sec}, {elapsed})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    loop {
        let status = remote.send(Method::GET, "/admin/projections", None).await?;
        let rebuild = status["projections"]
            .as_array()
            .and_then(|all| all.iter().find(|p| p["name"] == name))
            .map(|p| p["rebuild"].clone())
            .filter(|r| !r.is_null())
            .with_context(|| format!("{} reports no rebuild of `{name}`", remote.url))?;
        let replayed = rebuild["replayed"].as_u64().unwrap_or(0);
        let target = rebuild["target"].as_u64().unwrap_or(0);
        bar.set_length(target.max(replayed));
        bar.set_position(replayed);
        let state = rebuild["state"].as_str().unwrap_or("unknown").to_owned();
        bar.set_message(state.clone());
        match state.as_str() {
            "done" => {
                bar.finish();
                println!(
                    "{name} rebuilt: {replayed} events replayed at {} events/s, switched at {}",
                    rebuild["events_per_second"],
                    rebuild["finished_at"].as_str().unwrap_or("?")
                );
                return Ok(());
            }
            "failed" => {
                bar.abandon();
                anyhow::bail!(
                    "the rebuild of {name} failed (the live tables are untouched): {}",
                    rebuild["error"].as_str().unwrap_or("no reason given")
                );
            }
            _ => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
        }
    }
}
