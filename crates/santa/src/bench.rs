//! `santa bench`: an open-loop load generator for a running workshop.
//!
//! Letters are sent at a fixed arrival rate whatever the server does, and each latency is
//! measured from the moment the letter was *due*, not from when it was sent, so a slow
//! server cannot hide its latency by slowing the client down (coordinated omission).
//! Arrivals are dispatched by a thread of their own that sleeps until each is due (the
//! report shows how far behind schedule dispatch ran).
//! Every `lag_every`-th acknowledged letter is also polled until the read store serves
//! it: the projection lag a client sees.
//!
//! `find_max` runs steady steps at rising rates and keeps the highest one the server
//! sustains within a p99 bound, then narrows the gap to the next rate: the
//! latency-against-offered-load curve comes with it.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// The shape of the offered load over the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// The same rate throughout.
    Steady,
    /// The rate, five times the rate in the middle third (a Christmas-Eve burst), the rate.
    Spike,
    /// Writes and reads at the rate: of every ten arrivals, five submit a letter, four
    /// read (a letter acknowledged a second or two before, or a toy's letters) and one
    /// submits a letter and reads it back at once with `?after=` (read-your-writes).
    Mixed,
    /// Steady steps at rising rates until p99 or errors break the bound (see `find_max`).
    FindMax,
    /// Only reads, of `path` (with `{id}` replaced by one of `read_ids`).
    Reads,
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
    /// Where letters are posted: `/letters`, or a baseline under `/bench/` (no lag then).
    pub path: String,
    /// Show a live progress line.
    pub progress: bool,
    /// find-max: the p99 acknowledgement latency a sustainable rate keeps.
    pub p99_bound: Duration,
    /// find-max: how long each step lasts.
    pub step: Duration,
    /// find-max: how many rates to try, each once the projections have caught up, between
    /// the highest rate sustained and the lowest one above it that was not, halving that
    /// gap each time.
    pub refine: u32,
    /// Reads: letter ids `<prefix><n>` for n in 1..=count of each range, spread over
    /// all of them evenly.
    pub read_ids: Vec<(String, u64)>,
}

impl BenchConfig {
    /// Defaults for `url`: 1,000 letters/s for 30 s, steady, lag of every 20th letter.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            token: None,
            rate: 1000,
            duration: Duration::from_secs(30),
            scenario: Scenario::Steady,
            lag_every: 20,
            max_in_flight: 4096,
            path: "/letters".into(),
            progress: false,
            p99_bound: Duration::from_millis(50),
            step: Duration::from_secs(5),
            refine: 3,
            read_ids: Vec::new(),
        }
    }
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
    /// Each lag measured: (seconds into the run when acknowledged, lag in ms).
    pub lag_series: Vec<(f64, f64)>,
    /// For each second of the run (by due time), the slowest acknowledgement of a letter
    /// due in it, in µs: when in the run a tail came from.
    pub slowest_by_second: Vec<u64>,
    /// Mixed: reads from due time to the 200.
    pub reads: Summary,
    /// Mixed: `GET /letters/{id}?after=P` sent right after the 202, until its 200.
    pub read_your_writes: Summary,
    /// Reads answered anything but 200.
    pub failed_reads: u64,
    /// How late the generator dispatched arrivals behind their schedule (its own timer
    /// tick and CPU share; the server cannot delay dispatch, the loop is open).
    pub dispatch_lateness: Summary,
    /// The letters of this run are [`letter_id`]`(id_prefix, n)`, n from 1 to `offered`.
    pub id_prefix: String,
    /// Why the first few failed letters failed (an error, or a status and its body).
    pub failures: Vec<String>,
    /// The share of the machine's CPU time the hypervisor took during the run (Linux
    /// `steal`), when the machine is a virtual one that reports it: while the host runs
    /// something else or throttles the VM, every thread in it waits, and latency with it.
    pub steal: Option<f64>,
}

impl BenchReport {
    pub fn throughput(&self) -> f64 {
        self.acknowledged as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }

    /// The `n` seconds with the slowest acknowledgements, slowest first, as
    /// "second 12: 193.5 ms"; `None` when nothing was acknowledged.
    pub fn slowest_seconds(&self, n: usize) -> Option<String> {
        let mut seconds: Vec<(usize, u64)> = self
            .slowest_by_second
            .iter()
            .copied()
            .enumerate()
            .filter(|(_, us)| *us > 0)
            .collect();
        seconds.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let shown: Vec<String> = seconds
            .iter()
            .take(n)
            .map(|(second, us)| format!("second {second}: {:.1} ms", *us as f64 / 1000.0))
            .collect();
        (!shown.is_empty()).then(|| shown.join(", "))
    }
}

struct Shared {
    http: reqwest::Client,
    config: BenchConfig,
    start: Instant,
    latency: Mutex<Histogram<u64>>,
    lag: Mutex<Histogram<u64>>,
    lag_series: Mutex<Vec<(f64, f64)>>,
    slowest_by_second: Mutex<Vec<u64>>,
    reads: Mutex<Histogram<u64>>,
    read_your_writes: Mutex<Histogram<u64>>,
    failed_reads: Mutex<u64>,
    dispatch_lateness: Mutex<Histogram<u64>>,
    /// Recently acknowledged letters, for the mixed scenario's reads.
    recent: Mutex<VecDeque<(String, Instant)>>,
    followers: Semaphore,
    counts: Mutex<(u64, u64, u64)>,
    /// Why the first few failed requests failed.
    failures: Mutex<Vec<String>>,
}

/// What one arrival does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Write,
    Read,
    WriteThenRead,
}

fn op_for(scenario: Scenario, n: u64) -> Op {
    match (scenario, n % 10) {
        (Scenario::Reads, _) => Op::Read,
        (Scenario::Mixed, 5..=8) => Op::Read,
        (Scenario::Mixed, 9) => Op::WriteThenRead,
        _ => Op::Write,
    }
}

pub(crate) fn histogram() -> anyhow::Result<Histogram<u64>> {
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
    summary_of(&histogram.lock().unwrap_or_else(PoisonError::into_inner))
}

pub(crate) fn summary_of(h: &Histogram<u64>) -> Summary {
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
        request(&self.http, &self.config, method, path)
    }

    /// Sends one letter due at `due`; returns its id and position when acknowledged.
    async fn send(&self, id: String, due: Instant) -> Option<(String, u64)> {
        let body = letter_body(&id);
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
        let response = match outcome {
            Ok(response) => response,
            Err(error) => {
                counts(2);
                self.failed_because(format!("{error:#}"));
                return None;
            }
        };
        match response.status() {
            StatusCode::ACCEPTED => {
                let latency = due.elapsed();
                record(&self.latency, latency);
                self.slowest_in_second(due, latency);
                counts(0);
                let position = response
                    .json::<serde_json::Value>()
                    .await
                    .ok()
                    .and_then(|body| body["position"].as_u64())
                    .unwrap_or(0);
                let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
                while recent.len() >= RECENT
                    || recent
                        .front()
                        .is_some_and(|(_, at)| at.elapsed() > 2 * READ_AFTER)
                {
                    recent.pop_front();
                }
                recent.push_back((id.clone(), Instant::now()));
                Some((id, position))
            }
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS => {
                counts(1);
                None
            }
            status => {
                counts(2);
                let body = response.text().await.unwrap_or_default();
                self.failed_because(format!(
                    "{status}: {}",
                    body.chars().take(200).collect::<String>()
                ));
                None
            }
        }
    }

    /// Keeps the reason of one of the first failures, for the report.
    fn failed_because(&self, reason: String) {
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        if failures.len() < MAX_FAILURES_KEPT {
            failures.push(reason);
        }
    }

    /// Keeps `latency` as the slowest of the second `due` falls in, if it is.
    fn slowest_in_second(&self, due: Instant, latency: Duration) {
        let second = (due - self.start).as_secs() as usize;
        let mut slowest = self
            .slowest_by_second
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if slowest.len() <= second {
            slowest.resize(second + 1, 0);
        }
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        slowest[second] = slowest[second].max(us);
    }

    /// Polls the letter until the read store serves it.
    /// At most `LAG_FOLLOWERS` letters are followed at once, and each poll waits longer
    /// than the last (1 ms growing to 20 ms): following must not become the load.
    async fn lag(&self, id: &str, acknowledged: Instant) {
        let Ok(_follower) = self.followers.try_acquire() else {
            return;
        };
        let deadline = acknowledged + Duration::from_secs(30);
        let mut pause = Duration::from_millis(1);
        while Instant::now() < deadline {
            let served = self
                .request(reqwest::Method::GET, &format!("/letters/{id}"))
                .send()
                .await;
            if served.is_ok_and(|r| r.status() == StatusCode::OK) {
                let lag = acknowledged.elapsed();
                record(&self.lag, lag);
                let at = (acknowledged - self.start).as_secs_f64();
                self.lag_series
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push((at, lag.as_secs_f64() * 1000.0));
                return;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 3 / 2).min(Duration::from_millis(20));
        }
    }
}

/// Letters followed for their lag at once, at most.
const LAG_FOLLOWERS: usize = 64;

impl Shared {
    /// A read due at `due`: a letter acknowledged a while ago (the oldest of the last
    /// thousand, so it has been projected), or every other time a toy's letters.
    async fn read(&self, n: u64, due: Instant) {
        if self.config.scenario == Scenario::Reads {
            let total: u64 = self.config.read_ids.iter().map(|(_, n)| n).sum();
            let path = if total == 0 {
                self.config.path.clone()
            } else {
                // A multiplicative hash spreads consecutive arrivals over the ids.
                let mut k = (n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 17) % total;
                let mut id = String::new();
                for (prefix, count) in &self.config.read_ids {
                    if k < *count {
                        id = letter_id(prefix, k + 1);
                        break;
                    }
                    k -= count;
                }
                self.config.path.replace("{id}", &id)
            };
            return self.get_ok(&path, due, &self.reads).await;
        }
        // The oldest of the newest letters, once it is `READ_AFTER` old: a plain read of a
        // letter acknowledged a moment ago may find it not projected yet, which is what a
        // plain read promises, not a failure (`?after=` waits for it).
        let recent = self
            .recent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .front()
            .filter(|(_, at)| at.elapsed() >= READ_AFTER)
            .map(|(id, _)| id.clone());
        let path = match recent {
            Some(id) if n.is_multiple_of(2) => format!("/letters/{id}"),
            _ => "/toys/bench-kite/letters?limit=20".to_owned(),
        };
        self.get_ok(&path, due, &self.reads).await;
    }

    /// GET `path`; its latency from `since` goes to `into` when it answers 200.
    async fn get_ok(&self, path: &str, since: Instant, into: &Mutex<Histogram<u64>>) {
        let answer = self.request(reqwest::Method::GET, path).send().await;
        if answer.is_ok_and(|r| r.status() == StatusCode::OK) {
            record(into, since.elapsed());
        } else {
            *self
                .failed_reads
                .lock()
                .unwrap_or_else(PoisonError::into_inner) += 1;
        }
    }
}

/// The mixed scenario reads letters acknowledged this long before (up to twice as long).
const READ_AFTER: Duration = Duration::from_secs(1);

/// The most acknowledged letters the mixed scenario keeps to read from: enough for the
/// oldest of them to be `READ_AFTER` old at up to 65,536 letters/s.
const RECENT: usize = 65_536;

/// The rate in force `elapsed` into a run of `config`.
fn rate_at(config: &BenchConfig, elapsed: Duration) -> f64 {
    let base = f64::from(config.rate.max(1));
    let third = config.duration / 3;
    match config.scenario {
        Scenario::Spike if elapsed >= third && elapsed < third * 2 => base * 5.0,
        _ => base,
    }
}

/// The id of the `n`-th letter of a run: the number zero-padded, so that a run's ids sort
/// in the order they were sent, as the ids the server gives letters itself (UUIDv7) do;
/// the stores' b-trees then grow as they do in use, and as the write ceilings measure
/// them.
pub fn letter_id(prefix: &str, n: u64) -> String {
    format!("{prefix}{n:010}")
}

/// Runs the load and returns what it measured.
pub async fn run(config: BenchConfig) -> anyhow::Result<BenchReport> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    set_up_toys(&http, &config).await?;
    let shared = Arc::new(Shared {
        http,
        start: Instant::now(),
        latency: Mutex::new(histogram()?),
        lag: Mutex::new(histogram()?),
        lag_series: Mutex::default(),
        slowest_by_second: Mutex::default(),
        reads: Mutex::new(histogram()?),
        read_your_writes: Mutex::new(histogram()?),
        failed_reads: Mutex::new(0),
        dispatch_lateness: Mutex::new(histogram()?),
        recent: Mutex::default(),
        followers: Semaphore::new(LAG_FOLLOWERS),
        counts: Mutex::new((0, 0, 0)),
        failures: Mutex::default(),
        config: config.clone(),
    });
    offer(&shared).await
}

/// A request to `path` of the workshop, with the token if there is one.
fn request(
    http: &reqwest::Client,
    config: &BenchConfig,
    method: reqwest::Method,
    path: &str,
) -> reqwest::RequestBuilder {
    let url = format!("{}{path}", config.url.trim_end_matches('/'));
    let request = http.request(method, url);
    match &config.token {
        Some(token) => request.bearer_auth(token),
        None => request,
    }
}

/// The toys every bench letter asks for.
async fn set_up_toys(http: &reqwest::Client, config: &BenchConfig) -> anyhow::Result<()> {
    for (toy, price) in [("bench-kite", 1250), ("bench-drum", 4999)] {
        let body = json!({"name": toy, "description": "used by santa bench", "price_cents": price});
        let response = request(http, config, reqwest::Method::PUT, &format!("/toys/{toy}"))
            .json(&body)
            .send()
            .await
            .with_context(|| format!("cannot reach {}; is the workshop running?", config.url))?;
        anyhow::ensure!(
            response.status() == StatusCode::ACCEPTED,
            "setting up the bench toys failed: {}",
            response.status()
        );
        let position = response
            .json::<serde_json::Value>()
            .await
            .ok()
            .and_then(|body| body["position"].as_u64())
            .context("the answer to setting up a bench toy has no position")?;
        // The CRUD baseline checks letters against the read store, not the log: before
        // the first letter, the toy must be there (its first letters failed otherwise).
        // A server that serves no toy reads (405: the peer, whose views are written inside
        // the command) has nothing to wait for.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let path = format!("/toys/{toy}?after={position}");
            let status = request(http, config, reqwest::Method::GET, &path)
                .send()
                .await?
                .status();
            if status == StatusCode::OK || status == StatusCode::METHOD_NOT_ALLOWED {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the bench toy `{toy}` did not reach the read store within a minute: {status}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    Ok(())
}

/// Offers the load of `shared.config` and gathers what it measured.
async fn offer(shared: &Arc<Shared>) -> anyhow::Result<BenchReport> {
    let config = &shared.config;
    let run_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let id_prefix = format!("bench-{run_id}-");
    let expected = match config.scenario {
        Scenario::Spike => {
            f64::from(config.rate) * config.duration.as_secs_f64() * (1.0 + 5.0 + 1.0) / 3.0
        }
        _ => f64::from(config.rate) * config.duration.as_secs_f64(),
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
    let cpu_before = MachineCpu::now();
    let dispatcher = {
        let (shared, id_prefix, bar) = (shared.clone(), id_prefix.clone(), bar.clone());
        tokio::task::spawn_blocking(move || dispatch(&shared, &id_prefix, &bar))
    };
    let (mut tasks, offered, not_sent) = dispatcher.await.context("the dispatcher failed")?;
    let start = shared.start;
    while tasks.join_next().await.is_some() {}
    let elapsed = start.elapsed();
    let steal = MachineCpu::now()
        .zip(cpu_before)
        .and_then(|(after, before)| after.steal_since(before));
    bar.finish_and_clear();
    let (acknowledged, shed, failed) =
        *shared.counts.lock().unwrap_or_else(PoisonError::into_inner);
    let mut lag_series = std::mem::take(
        &mut *shared
            .lag_series
            .lock()
            .unwrap_or_else(PoisonError::into_inner),
    );
    lag_series.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(BenchReport {
        offered,
        acknowledged,
        shed,
        failed,
        not_sent,
        elapsed,
        latency: summary(&shared.latency),
        lag: summary(&shared.lag),
        lag_series,
        slowest_by_second: std::mem::take(
            &mut *shared
                .slowest_by_second
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        ),
        reads: summary(&shared.reads),
        read_your_writes: summary(&shared.read_your_writes),
        failed_reads: *shared
            .failed_reads
            .lock()
            .unwrap_or_else(PoisonError::into_inner),
        dispatch_lateness: summary(&shared.dispatch_lateness),
        id_prefix,
        failures: std::mem::take(
            &mut *shared
                .failures
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        ),
        steal,
    })
}

/// The machine's CPU time so far, all CPUs together, in the kernel's ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MachineCpu {
    total: u64,
    /// Time a virtual CPU was ready to run while the host ran something else.
    steal: u64,
}

impl MachineCpu {
    fn now() -> Option<Self> {
        Self::parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    /// From `/proc/stat`'s first line: `cpu user nice system idle iowait irq softirq steal
    /// guest guest_nice` (guest time is already counted in user and nice).
    fn parse(stat: &str) -> Option<Self> {
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        let ticks = line
            .split_whitespace()
            .skip(1)
            .take(8)
            .map(|field| field.parse::<u64>().ok())
            .collect::<Option<Vec<u64>>>()?;
        Some(Self {
            total: ticks.iter().sum(),
            steal: *ticks.get(7)?,
        })
    }

    /// The share of the CPU time since `before` that was stolen.
    fn steal_since(self, before: Self) -> Option<f64> {
        let total = self.total.checked_sub(before.total).filter(|t| *t > 0)?;
        let steal = self.steal.checked_sub(before.steal)?;
        Some(steal as f64 / total as f64)
    }
}

/// Dispatches the arrivals of `shared.config` at their due times, from a thread of its own
/// (the OS timer wakes it within tens of microseconds; the runtime's timer has 1 ms ticks),
/// onto the runtime; returns the requests in flight, how many were offered and how many
/// were not sent because `max_in_flight` were already out.
fn dispatch(
    shared: &Arc<Shared>,
    id_prefix: &str,
    bar: &ProgressBar,
) -> (tokio::task::JoinSet<()>, u64, u64) {
    let config = &shared.config;
    let in_flight = Arc::new(Semaphore::new(config.max_in_flight.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let start = shared.start;
    let mut due = start;
    let (mut offered, mut not_sent) = (0_u64, 0_u64);
    while due < start + config.duration {
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        record(&shared.dispatch_lateness, due.elapsed());
        offered += 1;
        bar.inc(1);
        if offered.is_multiple_of(200) {
            // Let go of finished requests as the run goes: kept to the end, a run of a
            // million letters freed them all at once, and that stalled the next run in the
            // same process (dispatch up to 98 ms behind schedule).
            while tasks.try_join_next().is_some() {}
            let (ok, shed, failed) = *shared.counts.lock().unwrap_or_else(PoisonError::into_inner);
            bar.set_message(format!(
                "· {ok} acknowledged · {shed} shed · {failed} failed"
            ));
        }
        match in_flight.clone().try_acquire_owned() {
            Ok(permit) => {
                let shared = shared.clone();
                let op = op_for(config.scenario, offered);
                let measure_lag = config.lag_every > 0
                    && config.path == "/letters"
                    && op == Op::Write
                    && offered.is_multiple_of(u64::from(config.lag_every));
                let id = letter_id(id_prefix, offered);
                let n = offered;
                tasks.spawn(async move {
                    match op {
                        Op::Read => shared.read(n, due).await,
                        Op::Write | Op::WriteThenRead => {
                            let acknowledged = shared.send(id, due).await;
                            if let (Some((id, position)), Op::WriteThenRead) = (&acknowledged, op) {
                                let path = format!("/letters/{id}?after={position}");
                                shared
                                    .get_ok(&path, Instant::now(), &shared.read_your_writes)
                                    .await;
                            }
                            drop(permit);
                            if let (Some((id, _)), true) = (acknowledged, measure_lag) {
                                shared.lag(&id, Instant::now()).await;
                            }
                        }
                    }
                });
            }
            Err(_) => not_sent += 1,
        }
        due += Duration::from_secs_f64(1.0 / rate_at(config, due - start));
    }
    (tasks, offered, not_sent)
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
        if self.acknowledged > 0 {
            writeln!(
                f,
                "letters sent: {} to {} (read them with --read-ids {}:{})",
                letter_id(&self.id_prefix, 1),
                letter_id(&self.id_prefix, self.offered),
                self.id_prefix,
                self.offered
            )?;
        }
        writeln!(
            f,
            "acknowledgement latency (from due time): {}",
            self.latency
        )?;
        if let Some(slowest) = self.slowest_seconds(3) {
            writeln!(f, "slowest seconds (by due time): {slowest}")?;
        }
        writeln!(f, "dispatch behind schedule: {}", self.dispatch_lateness)?;
        write!(f, "projection lag (202 until GET serves it): {}", self.lag)?;
        for failure in &self.failures {
            write!(f, "\nfailed: {failure}")?;
        }
        if let Some(steal) = self.steal {
            write!(
                f,
                "\nCPU time taken by the hypervisor (steal) during the run: {:.1} %",
                steal * 100.0
            )?;
        }
        if self.reads.count > 0 || self.read_your_writes.count > 0 {
            write!(
                f,
                "\nreads (from due time): {}\nread-your-writes (GET ?after= right after the 202): {}\nreads failed: {}",
                self.reads, self.read_your_writes, self.failed_reads
            )?;
        }
        Ok(())
    }
}

/// One rate of a find-max run.
#[derive(Debug, Clone)]
pub struct Step {
    pub rate: u32,
    pub report: BenchReport,
    /// Kept within the bound: everything acknowledged, nothing shed, p99 under the bound.
    pub sustained: bool,
    /// Tried between two rising steps once the projections had caught up.
    pub refinement: bool,
}

/// Steady steps at rising rates, then refinements between them; in order of rate.
#[derive(Debug, Clone)]
pub struct FindMaxReport {
    pub path: String,
    pub p99_bound: Duration,
    pub steps: Vec<Step>,
}

impl FindMaxReport {
    /// The highest rate sustained.
    pub fn max_sustained(&self) -> Option<&Step> {
        highest_sustained(&self.steps)
    }
}

fn highest_sustained(steps: &[Step]) -> Option<&Step> {
    steps.iter().filter(|s| s.sustained).max_by_key(|s| s.rate)
}

/// The rate halfway between the highest rate sustained and the lowest one above it that
/// was not, if there is a whole rate between them.
fn next_refinement(steps: &[Step]) -> Option<u32> {
    let low = highest_sustained(steps)?.rate;
    let high = steps
        .iter()
        .filter(|s| !s.sustained && s.rate > low)
        .map(|s| s.rate)
        .min()?;
    let middle = low + (high - low) / 2;
    (middle > low).then_some(middle)
}

/// How much faster each step offers than the one before.
const STEP_GROWTH: f64 = 1.2;

/// How many failures a run keeps the reason of.
const MAX_FAILURES_KEPT: usize = 3;

/// Most rising steps a find-max run takes.
const MAX_STEPS: usize = 40;

/// How long find-max waits for the projections to catch up before a refinement.
const SETTLE_LIMIT: Duration = Duration::from_secs(300);

/// Whether a step's report keeps the bound.
pub fn sustains(report: &BenchReport, rate: u32, p99_bound: Duration) -> bool {
    let bound_us = u64::try_from(p99_bound.as_micros()).unwrap_or(u64::MAX);
    report.not_sent == 0
        && report.shed == 0
        && report.failed == 0
        && report.acknowledged == report.offered
        && report.latency.p99_us <= bound_us
        && report.throughput() >= 0.95 * f64::from(rate)
}

/// Raises the rate from `config.rate` by a fifth per step of `config.step` until two steps
/// in a row break the bound (p99 above `config.p99_bound`, or anything shed, failed or
/// not sent); then tries `config.refine` rates between the highest rate sustained and the
/// next, each once the projections have applied the backlog the steps before left.
pub async fn find_max(config: BenchConfig) -> anyhow::Result<FindMaxReport> {
    let mut rate = config.rate.max(1);
    let mut steps = Vec::new();
    let mut misses = 0;
    while steps.len() < MAX_STEPS && misses < 2 {
        let step = offer_step(&config, rate, false).await?;
        misses = if step.sustained { 0 } else { misses + 1 };
        steps.push(step);
        rate = ((f64::from(rate) * STEP_GROWTH).ceil() as u32).max(rate + 1);
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    for _ in 0..config.refine {
        let Some(rate) = next_refinement(&steps) else {
            break;
        };
        match caught_up(&http, &config, SETTLE_LIMIT).await {
            Ok(_) => {}
            // Measured anyway: a backlog left over only makes the rate harder to sustain.
            Err(error) if config.progress => {
                eprintln!("          not waiting for the projections: {error:#}");
            }
            Err(_) => {}
        }
        steps.push(offer_step(&config, rate, true).await?);
    }
    steps.sort_by_key(|s| s.rate);
    Ok(FindMaxReport {
        path: config.path,
        p99_bound: config.p99_bound,
        steps,
    })
}

/// One step of find-max: `rate` for `config.step`, judged against the bound.
async fn offer_step(config: &BenchConfig, rate: u32, refinement: bool) -> anyhow::Result<Step> {
    let report = run(BenchConfig {
        rate,
        duration: config.step,
        scenario: Scenario::Steady,
        ..config.clone()
    })
    .await?;
    let sustained = sustains(&report, rate, config.p99_bound);
    if config.progress {
        eprintln!(
            "{rate:>7}/s offered: {:>7.0}/s acknowledged, p99 {:>8.2} ms, {} shed, {} failed, {} not sent {}{}",
            report.throughput(),
            report.latency.p99_us as f64 / 1000.0,
            report.shed,
            report.failed,
            report.not_sent,
            if sustained { "✓" } else { "✗" },
            if refinement { " (refinement)" } else { "" }
        );
        if let Some(failure) = report.failures.first() {
            eprintln!("          first failure: {failure}");
        }
    }
    Ok(Step {
        rate,
        report,
        sustained,
        refinement,
    })
}

/// Waits until every projection the server reports has applied the whole log, at most
/// `limit`, and returns how long that took; `None` when the server has no projections to
/// report (`/admin/projections` not found: a server without read stores).
pub async fn caught_up(
    http: &reqwest::Client,
    config: &BenchConfig,
    limit: Duration,
) -> anyhow::Result<Option<Duration>> {
    let started = Instant::now();
    loop {
        let response = request(http, config, reqwest::Method::GET, "/admin/projections")
            .send()
            .await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let status = response.error_for_status()?.json::<Value>().await?;
        let behind = status["projections"]
            .as_array()
            .is_none_or(|all| all.iter().any(|p| p["lag_events"] != 0));
        if !behind {
            return Ok(Some(started.elapsed()));
        }
        anyhow::ensure!(
            started.elapsed() < limit,
            "projections still behind after {limit:?}: {status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl fmt::Display for FindMaxReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:>9} {:>12} {:>9} {:>9} {:>9} {:>6}",
            "offered/s", "acknowledged", "p50 ms", "p99 ms", "max ms", "kept"
        )?;
        for s in &self.steps {
            let ms = |us: u64| us as f64 / 1000.0;
            writeln!(
                f,
                "{:>9} {:>12.0} {:>9.2} {:>9.2} {:>9.2} {:>6}{}",
                s.rate,
                s.report.throughput(),
                ms(s.report.latency.p50_us),
                ms(s.report.latency.p99_us),
                ms(s.report.latency.max_us),
                if s.sustained { "yes" } else { "no" },
                if s.refinement { "  (refinement)" } else { "" }
            )?;
        }
        match self.max_sustained() {
            Some(best) => write!(
                f,
                "highest sustained rate on {}: {}/s (p99 {:.2} ms, bound {} ms)",
                self.path,
                best.rate,
                best.report.latency.p99_us as f64 / 1000.0,
                self.p99_bound.as_millis()
            ),
            None => write!(
                f,
                "no rate tried on {} kept p99 within {} ms",
                self.path,
                self.p99_bound.as_millis()
            ),
        }
    }
}

/// The letter every run sends, under `id`: two lines, of the toys `set_up_toys` puts in the
/// catalogue.
pub(crate) fn letter_body(id: &str) -> Value {
    json!({
        "id": id, "child": "Bench", "address": "1 Load Lane", "country": "FI",
        "toys": [{"toy_id": "bench-kite", "quantity": 2}, {"toy_id": "bench-drum", "quantity": 1}],
    })
}

/// A report of `rate` letters in a second, all acknowledged, with `latency` for every
/// distribution: for tests of what is made of reports.
#[cfg(test)]
pub(crate) fn report_at(rate: u32, latency: Summary) -> BenchReport {
    BenchReport {
        offered: u64::from(rate),
        acknowledged: u64::from(rate),
        shed: 0,
        failed: 0,
        not_sent: 0,
        elapsed: Duration::from_secs(1),
        latency,
        lag: latency,
        lag_series: Vec::new(),
        slowest_by_second: Vec::new(),
        reads: latency,
        read_your_writes: latency,
        failed_reads: 0,
        dispatch_lateness: latency,
        id_prefix: "bench-1-".into(),
        failures: Vec::new(),
        steal: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server with the bench's toy route: PUT answers 202 at position 7; GET answers
    /// `reads` in turn (the last one from then on), and counts the GETs.
    async fn toy_server(reads: Vec<StatusCode>) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        use axum::routing::put;
        let gets = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = gets.clone();
        let app = axum::Router::new().route(
            "/toys/{id}",
            put(|| async {
                (
                    StatusCode::ACCEPTED,
                    axum::Json(json!({"id": "t", "position": 7})),
                )
            })
            .get(move || {
                let n = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let status = reads[n.min(reads.len() - 1)];
                async move { status }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, gets)
    }

    #[tokio::test]
    async fn the_bench_toys_are_awaited_in_the_read_store_where_it_serves_them() {
        let http = reqwest::Client::new();
        // Not projected yet twice, then there: the bench asks until it is.
        let (url, gets) = toy_server(vec![
            StatusCode::NOT_FOUND,
            StatusCode::NOT_FOUND,
            StatusCode::OK,
        ])
        .await;
        set_up_toys(&http, &BenchConfig::new(url)).await.unwrap();
        // Three for the first toy, the second one found at once.
        assert_eq!(gets.load(std::sync::atomic::Ordering::SeqCst), 4);
        // A server without toy reads (the peer): nothing to wait for.
        let (url, gets) = toy_server(vec![StatusCode::METHOD_NOT_ALLOWED]).await;
        set_up_toys(&http, &BenchConfig::new(url)).await.unwrap();
        assert_eq!(gets.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    fn step(rate: u32, sustained: bool) -> Step {
        Step {
            rate,
            report: report_at(rate, Summary::default()),
            sustained,
            refinement: false,
        }
    }

    #[test]
    fn refinements_halve_the_gap_between_the_highest_rate_sustained_and_the_next() {
        let mut steps = vec![
            step(833, true),
            step(1000, true),
            step(1200, false),
            step(1440, false),
        ];
        assert_eq!(next_refinement(&steps), Some(1100));
        steps.push(step(1100, false));
        assert_eq!(next_refinement(&steps), Some(1050));
        steps.push(step(1050, true));
        assert_eq!(next_refinement(&steps), Some(1075));
        steps.push(step(1075, true));
        assert_eq!(next_refinement(&steps), Some(1087));
        // A failed rate below the highest sustained one (a stall) is not the upper end.
        let noisy = vec![
            step(1000, true),
            step(1200, false),
            step(1300, true),
            step(1500, false),
        ];
        assert_eq!(next_refinement(&noisy), Some(1400));
        // Nothing to narrow: no rate sustained, none failed above it, or no rate between.
        assert_eq!(next_refinement(&[step(500, false), step(600, false)]), None);
        assert_eq!(next_refinement(&[step(500, true), step(600, true)]), None);
        assert_eq!(next_refinement(&[step(500, true), step(501, false)]), None);
    }

    /// A server whose `/admin/projections` answers `answers` in turn (the last one from
    /// then on): a status and the lag it reports.
    async fn projections_server(answers: Vec<(StatusCode, u64)>) -> String {
        use axum::routing::get;
        let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let app = axum::Router::new().route(
            "/admin/projections",
            get(move || {
                let n = asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let (status, lag) = answers[n.min(answers.len() - 1)];
                let body = json!({"projections": [
                    {"name": "letters", "lag_events": 0},
                    {"name": "analytics", "lag_events": lag},
                ]});
                async move { (status, axum::Json(body)) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    }

    #[tokio::test]
    async fn find_max_settles_by_waiting_until_every_projection_has_caught_up() {
        let http = reqwest::Client::new();
        let limit = Duration::from_secs(10);
        let url = projections_server(vec![
            (StatusCode::OK, 40),
            (StatusCode::OK, 3),
            (StatusCode::OK, 0),
        ])
        .await;
        let waited = caught_up(&http, &BenchConfig::new(url), limit)
            .await
            .unwrap();
        // Asked three times, twenty milliseconds apart.
        assert!(waited.unwrap() >= Duration::from_millis(40), "{waited:?}");
        // A server without projections (a baseline): nothing to wait for.
        let url = projections_server(vec![(StatusCode::NOT_FOUND, 0)]).await;
        assert_eq!(
            caught_up(&http, &BenchConfig::new(url), limit)
                .await
                .unwrap(),
            None
        );
        // One that refuses to say is an error, not a caught-up server.
        let url = projections_server(vec![(StatusCode::UNAUTHORIZED, 0)]).await;
        assert!(
            caught_up(&http, &BenchConfig::new(url), limit)
                .await
                .is_err()
        );
        // One that never catches up is an error once the limit has passed.
        let url = projections_server(vec![(StatusCode::OK, 5)]).await;
        let error = caught_up(&http, &BenchConfig::new(url), Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(error.to_string().contains("still behind"), "{error}");
    }

    #[test]
    fn the_report_names_the_seconds_its_slowest_acknowledgements_were_due_in() {
        let mut report = report_at(10, Summary::default());
        assert_eq!(report.slowest_seconds(3), None);
        assert!(!report.to_string().contains("slowest seconds"));
        report.slowest_by_second = vec![2_000, 0, 193_500, 1_500, 80_100];
        assert_eq!(
            report.slowest_seconds(3).as_deref(),
            Some("second 2: 193.5 ms, second 4: 80.1 ms, second 0: 2.0 ms")
        );
        assert!(
            report
                .to_string()
                .contains("slowest seconds (by due time): second 2: 193.5 ms,"),
            "{report}"
        );
    }

    #[test]
    fn a_runs_letter_ids_sort_in_the_order_they_were_sent() {
        let ids: Vec<String> = [1, 2, 9, 10, 99, 100, 123_456]
            .iter()
            .map(|n| letter_id("bench-7-", *n))
            .collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(sorted, ids);
        assert_eq!(ids[0], "bench-7-0000000001");
    }

    #[test]
    fn steal_is_the_share_of_the_machines_cpu_time_the_hypervisor_took() {
        let before =
            MachineCpu::parse("cpu  100 0 50 800 10 0 5 35 0 0\ncpu0 50 0 25 400 5 0 2 17 0 0\n")
                .expect("a /proc/stat line");
        let after =
            MachineCpu::parse("cpu  200 0 100 1500 20 0 10 170 7 0\n").expect("a /proc/stat line");
        let steal = after.steal_since(before).expect("time went by");
        assert!((steal - 0.135).abs() < 1e-9, "{steal}");
        assert_eq!(before.steal_since(after), None, "the counters only grow");
        assert_eq!(after.steal_since(after), None, "no time, no share");
        assert_eq!(
            MachineCpu::parse("cpu  100 0 50 800\n"),
            None,
            "no steal field"
        );
    }
}
