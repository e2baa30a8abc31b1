//! `santa bench`: an open-loop load generator for a running workshop.
//!
//! Letters are sent at a fixed arrival rate whatever the server does, and each latency is
//! measured from the moment the letter was *due*, not from when it was sent, so a slow
//! server cannot hide its latency by slowing the client down (coordinated omission).
//! Every `lag_every`-th acknowledged letter is also polled until the read store serves
//! it: the projection lag a client sees.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::StatusCode;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// The shape of the offered load over the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// The same rate throughout.
    Steady,
    /// The rate, five times the rate in the middle third (a Christmas-Eve burst), the rate.
    Spike,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub url: String,
    pub token: Option<String>,
    /// Letters per second (the base rate for a spike).
    pub rate: u32,
    pub duration: Duration,
    pub scenario: Scenario,
    /// Measure the projection lag of every n-th acknowledged letter (0: never).
    pub lag_every: u32,
    /// Requests in flight at most; beyond it, due letters are counted as not sent.
    pub max_in_flight: usize,
    /// Where letters are posted: `/letters`, or the baseline `/bench/ceiling` (no lag then).
    pub path: String,
    /// Show a live progress line.
    pub progress: bool,
}

/// Percentiles of a latency distribution, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub count: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct BenchReport {
    pub offered: u64,
    pub acknowledged: u64,
    /// Answered 429/503: shed by the server.
    pub shed: u64,
    /// Any other answer, or no answer.
    pub failed: u64,
    /// Due but not sent, because `max_in_flight` requests were outstanding.
    pub not_sent: u64,
    pub elapsed: Duration,
    /// From due time to the 202.
    pub latency: Summary,
    /// From the 202 until `GET /letters/{id}` served the letter.
    pub lag: Summary,
}

impl BenchReport {
    pub fn throughput(&self) -> f64 {
        self.acknowledged as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }
}

struct Shared {
    http: reqwest::Client,
    config: BenchConfig,
    latency: Mutex<Histogram<u64>>,
    lag: Mutex<Histogram<u64>>,
    counts: Mutex<(u64, u64, u64)>,
}

fn histogram() -> anyhow::Result<Histogram<u64>> {
    // Microseconds, from 1 µs to 10 minutes, three significant figures.
    Histogram::new_with_bounds(1, 600_000_000, 3).context("histogram bounds")
}

fn record(histogram: &Mutex<Histogram<u64>>, elapsed: Duration) {
    let micros = u64::try_from(elapsed.as_micros())
        .unwrap_or(u64::MAX)
        .clamp(1, 600_000_000);
    let _ = histogram
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .record(micros);
}

fn summary(histogram: &Mutex<Histogram<u64>>) -> Summary {
    let h = histogram.lock().unwrap_or_else(PoisonError::into_inner);
    Summary {
        count: h.len(),
        p50_us: h.value_at_quantile(0.5),
        p90_us: h.value_at_quantile(0.9),
        p99_us: h.value_at_quantile(0.99),
        p999_us: h.value_at_quantile(0.999),
        max_us: h.max(),
    }
}

impl Shared {
    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let url = format!("{}{path}", self.config.url.trim_end_matches('/'));
        let request = self.http.request(method, url);
        match &self.config.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Sends one letter due at `due`; returns its id when acknowledged.
    async fn send(&self, id: String, due: Instant) -> Option<String> {
        let body = json!({
            "id": id, "child": "Bench", "address": "1 Load Lane", "country": "FI",
            "toys": [{"toy_id": "bench-kite", "quantity": 2}, {"toy_id": "bench-drum", "quantity": 1}],
        });
        let outcome = self
            .request(reqwest::Method::POST, &self.config.path)
            .json(&body)
            .send()
            .await;
        let counts = |slot: usize| {
            let mut c = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
            match slot {
                0 => c.0 += 1,
                1 => c.1 += 1,
                _ => c.2 += 1,
            }
        };
        match outcome.map(|r| r.status()) {
            Ok(StatusCode::ACCEPTED) => {
                record(&self.latency, due.elapsed());
                counts(0);
                Some(id)
            }
            Ok(StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS) => {
                counts(1);
                None
            }
            _ => {
                counts(2);
                None
            }
        }
    }

    /// Polls the letter until the read store serves it.
    async fn lag(&self, id: &str, acknowledged: Instant) {
        let deadline = acknowledged + Duration::from_secs(30);
        while Instant::now() < deadline {
            let served = self
                .request(reqwest::Method::GET, &format!("/letters/{id}"))
                .send()
                .await;
            if served.is_ok_and(|r| r.status() == StatusCode::OK) {
                record(&self.lag, acknowledged.elapsed());
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// The rate in force `elapsed` into a run of `config`.
fn rate_at(config: &BenchConfig, elapsed: Duration) -> f64 {
    let base = f64::from(config.rate.max(1));
    let third = config.duration / 3;
    match config.scenario {
        Scenario::Spike if elapsed >= third && elapsed < third * 2 => base * 5.0,
        _ => base,
    }
}

/// Runs the load and returns what it measured.
pub async fn run(config: BenchConfig) -> anyhow::Result<BenchReport> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let shared = Arc::new(Shared {
        http,
        latency: Mutex::new(histogram()?),
        lag: Mutex::new(histogram()?),
        counts: Mutex::new((0, 0, 0)),
        config: config.clone(),
    });
    for (toy, price) in [("bench-kite", 1250), ("bench-drum", 4999)] {
        let body = json!({"name": toy, "description": "used by santa bench", "price_cents": price});
        let response = shared
            .request(reqwest::Method::PUT, &format!("/toys/{toy}"))
            .json(&body)
            .send()
            .await
            .with_context(|| format!("cannot reach {}; is the workshop running?", config.url))?;
        anyhow::ensure!(
            response.status() == StatusCode::ACCEPTED,
            "setting up the bench toys failed: {}",
            response.status()
        );
    }
    let run_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let expected = match config.scenario {
        Scenario::Steady => f64::from(config.rate) * config.duration.as_secs_f64(),
        Scenario::Spike => {
            f64::from(config.rate) * config.duration.as_secs_f64() * (1.0 + 5.0 + 1.0) / 3.0
        }
    };
    let bar = if config.progress {
        ProgressBar::new(expected as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} letters sent {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let in_flight = Arc::new(Semaphore::new(config.max_in_flight.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let start = Instant::now();
    let mut due = start;
    let (mut offered, mut not_sent) = (0_u64, 0_u64);
    while due < start + config.duration {
        tokio::time::sleep_until(due).await;
        offered += 1;
        bar.inc(1);
        if offered.is_multiple_of(200) {
            let (ok, shed, failed) = *shared.counts.lock().unwrap_or_else(PoisonError::into_inner);
            bar.set_message(format!(
                "· {ok} acknowledged · {shed} shed · {failed} failed"
            ));
        }
        match in_flight.clone().try_acquire_owned() {
            Ok(permit) => {
                let shared = shared.clone();
                let (id, measure_lag) = (
                    format!("bench-{run_id}-{offered}"),
                    config.lag_every > 0
                        && config.path == "/letters"
                        && offered.is_multiple_of(u64::from(config.lag_every)),
                );
                tasks.spawn(async move {
                    let acknowledged = shared.send(id, due).await;
                    drop(permit);
                    if let (Some(id), true) = (acknowledged, measure_lag) {
                        shared.lag(&id, Instant::now()).await;
                    }
                });
            }
            Err(_) => not_sent += 1,
        }
        due += Duration::from_secs_f64(1.0 / rate_at(&config, due - start));
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = start.elapsed();
    bar.finish_and_clear();
    let (acknowledged, shed, failed) =
        *shared.counts.lock().unwrap_or_else(PoisonError::into_inner);
    Ok(BenchReport {
        offered,
        acknowledged,
        shed,
        failed,
        not_sent,
        elapsed,
        latency: summary(&shared.latency),
        lag: summary(&shared.lag),
    })
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |us: u64| us as f64 / 1000.0;
        write!(
            f,
            "n={} p50={:.2} ms p90={:.2} ms p99={:.2} ms p99.9={:.2} ms max={:.2} ms",
            self.count,
            ms(self.p50_us),
            ms(self.p90_us),
            ms(self.p99_us),
            ms(self.p999_us),
            ms(self.max_us)
        )
    }
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "offered {} letters in {:.1} s: {} acknowledged ({:.0}/s), {} shed, {} failed, {} not sent",
            self.offered,
            self.elapsed.as_secs_f64(),
            self.acknowledged,
            self.throughput(),
            self.shed,
            self.failed,
            self.not_sent
        )?;
        writeln!(
            f,
            "acknowledgement latency (from due time): {}",
            self.latency
        )?;
        write!(f, "projection lag (202 until GET serves it): {}", self.lag)
    }
}
