//! `santa`: run Santa's Workshop, or talk to a running one.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use reqwest::Method;
use santa::{Application, Role, Settings, telemetry};

use crate::client::RemoteArgs;

mod client;
use santa_http::Tokens;

#[derive(Debug, Parser)]
#[command(
    name = "santa",
    version,
    about = "Santa's Workshop: a CQRS service for letters to Santa"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole workshop in one process: command API, query API and projectors.
    Serve {
        #[command(flatten)]
        http: HttpArgs,
        #[command(flatten)]
        backends: BackendArgs,
    },
    /// Run the command and query API only (needs a shared event log such as NATS).
    Api {
        #[command(flatten)]
        http: HttpArgs,
        #[command(flatten)]
        backends: BackendArgs,
    },
    /// Run projection workers only; several processes share the log's partitions.
    Projector {
        /// Run only this projection (`letters` or `analytics`); all of them by default.
        #[arg(long, env = "SANTA_PROJECTION")]
        projection: Option<String>,
        #[command(flatten)]
        backends: BackendArgs,
    },
    /// Load the demo catalogue and letters into a running workshop (POST /admin/seed).
    Seed(RemoteArgs),
    /// Load a running workshop with letters at a fixed arrival rate and report latency,
    /// throughput and projection lag.
    Bench(BenchArgs),
    /// Run every benchmark with its baselines on this machine (starting the servers it
    /// needs) and write docs/BENCHMARKS.md, its plots and the raw figures.
    BenchSuite(SuiteArgs),
    /// The projections of a running workshop: their status, and rebuilds.
    Projections {
        #[command(subcommand)]
        action: ProjectionAction,
    },
    /// Events the projections set aside: list them, or re-drive them once the cause is fixed.
    DeadLetters {
        #[command(subcommand)]
        action: DeadLetterAction,
    },
}

#[derive(Debug, clap::Args)]
struct BenchArgs {
    /// Letters per second offered (the base rate of a spike).
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// How long to offer them, e.g. `30s`.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    #[arg(long, value_enum, default_value = "steady")]
    scenario: santa::bench::Scenario,
    /// Measure the projection lag of every n-th acknowledged letter (0: never).
    #[arg(long, default_value_t = 20)]
    lag_every: u32,
    /// Requests in flight at most.
    #[arg(long, default_value_t = 4096)]
    max_in_flight: usize,
    /// Where to send the letters: `/letters`, or a baseline served with
    /// `santa serve --bench-endpoints`: `/bench/ceiling` (no storage), `/bench/floor` (each
    /// letter written to a file and synced, nothing else) or `/bench/crud` (both read stores
    /// written inside the request).
    #[arg(long, default_value = "/letters")]
    path: String,
    /// find-max: the p99 acknowledgement latency a sustained rate must keep, e.g. `50ms`.
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
    p99_bound: Duration,
    /// find-max: how long each rate is offered; `--rate` is the first rate.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    step: Duration,
    /// find-max: rates tried after the rising steps, between the highest rate sustained and
    /// the lowest one above it that was not (halving the gap each time), each once the
    /// server's projections have caught up (seen with `/admin/projections`).
    #[arg(long, default_value_t = 3)]
    refine: u32,
    /// reads: letters to read, as `PREFIX:COUNT` (ids `PREFIX0000000001` up to COUNT, the
    /// number zero-padded to ten digits: the letters of an earlier run, whose report
    /// names them); `{id}` in `--path` is replaced by one of them. May be given more
    /// than once.
    #[arg(long = "read-ids", value_parser = parse_read_ids)]
    read_ids: Vec<(String, u64)>,
    #[command(flatten)]
    remote: RemoteArgs,
}

fn parse_read_ids(value: &str) -> Result<(String, u64), String> {
    let (prefix, count) = value
        .rsplit_once(':')
        .ok_or_else(|| format!("`{value}` is not PREFIX:COUNT"))?;
    let count = count
        .parse::<u64>()
        .map_err(|e| format!("`{count}` is not a count: {e}"))?;
    Ok((prefix.to_owned(), count))
}

#[derive(Debug, clap::Args)]
struct SuiteArgs {
    /// Where BENCHMARKS.md goes; plots and results.json go into `<out>/bench/`.
    #[arg(long, default_value = "docs")]
    out: std::path::PathBuf,
    /// Letters in the log before queries and rebuilds are measured.
    #[arg(long, default_value_t = 1_000_000)]
    letters: u64,
    /// Short steps and runs: a smoke run, not figures to publish.
    #[arg(long)]
    quick: bool,
    /// JetStream for the scaled-out mode (skipped without it).
    #[arg(long, env = "SANTA_BENCH_NATS")]
    nats: Option<String>,
    /// An admin URL of a PostgreSQL server for the scaled-out mode; a fresh database is
    /// made on it.
    #[arg(long, env = "SANTA_BENCH_POSTGRES")]
    postgres: Option<String>,
    /// The peer's server (`benches/peer`); built with cargo when missing.
    #[arg(long, default_value = "benches/peer/target/release/santa-peer")]
    peer: std::path::PathBuf,
    /// The p99 acknowledgement latency a sustained rate must keep.
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
    p99_bound: Duration,
}

#[derive(Debug, Subcommand)]
enum ProjectionAction {
    /// Each projection's position, lag, state and last rebuild (GET /admin/projections).
    Status(RemoteArgs),
    /// Replay the whole log into fresh tables while the live ones keep serving, then switch
    /// to them atomically; shows progress until the switch.
    Rebuild {
        /// `letters` or `analytics`.
        name: String,
        /// Start the rebuild and return without waiting for it.
        #[arg(long)]
        no_wait: bool,
        #[command(flatten)]
        remote: RemoteArgs,
    },
}

#[derive(Debug, Subcommand)]
enum DeadLetterAction {
    /// List the dead letters of one projection, or of all.
    List {
        /// `letters` or `analytics`.
        #[arg(long)]
        projection: Option<String>,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Apply a projection's dead letters again (all, or one and those waiting behind it).
    Redrive {
        /// `letters` or `analytics`.
        #[arg(long)]
        projection: String,
        /// Only the dead letter at this position, with those waiting behind it.
        #[arg(long)]
        position: Option<u64>,
        #[command(flatten)]
        remote: RemoteArgs,
    },
}

/// Flags of the processes that serve HTTP.
#[derive(Debug, clap::Args)]
struct HttpArgs {
    /// Address to listen on.
    #[arg(long, env = "SANTA_ADDR", default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Bearer tokens and their scopes: `tokenA:read,tokenB:write,tokenC:admin+read+write`.
    #[arg(long, env = "SANTA_TOKENS", hide_env_values = true, default_value = "")]
    tokens: String,
    /// How long a query with `?after=` waits for its projection, in milliseconds.
    #[arg(long, env = "SANTA_CONSISTENCY_TIMEOUT_MS", default_value_t = 2000)]
    consistency_timeout_ms: u64,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "SANTA_MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    max_body_bytes: usize,
    /// Serve the baselines `santa bench --path` compares with: `POST /bench/ceiling`,
    /// `/bench/floor` and `/bench/crud`.
    #[arg(long, env = "SANTA_BENCH_ENDPOINTS")]
    bench_endpoints: bool,
    /// How long answers to commands sent with an `Idempotency-Key` are kept (e.g. `24h`).
    #[arg(long, env = "SANTA_IDEMPOTENCY_WINDOW", default_value = "24h", value_parser = humantime::parse_duration)]
    idempotency_window: Duration,
    /// On JetStream: how old a toy's state may be when a letter is decided on it; within
    /// it, one read of the toy serves the letters that follow (`0s`: read it for each).
    /// Toys changed through this process are read afresh at once.
    #[arg(long, env = "SANTA_CONTEXT_MAX_AGE", default_value = "250ms", value_parser = humantime::parse_duration)]
    context_max_age: Duration,
    /// On JetStream: how long commands' publishes may gather, while JetStream has not
    /// answered those sent before them, to go together (a publish goes at once when all
    /// were answered). Less CPU per letter when JetStream is busy, for up to this much
    /// more acknowledgement latency then; `0s` publishes each at once.
    #[arg(long, env = "SANTA_PUBLISH_LINGER", default_value = "1ms", value_parser = humantime::parse_duration)]
    publish_linger: Duration,
}

/// Where the data lives; the same on every role.
#[derive(Debug, clap::Args)]
struct BackendArgs {
    /// Directory for the embedded databases.
    #[arg(long, env = "SANTA_DATA_DIR", default_value = "./santa-data")]
    data_dir: PathBuf,
    /// The event log: `sqlite` (embedded) or `nats://host:port` (JetStream).
    #[arg(long, env = "SANTA_EVENT_LOG", default_value = "sqlite")]
    event_log: String,
    /// The key-value read store: `sqlite` or `postgres://user@host/db`.
    #[arg(long, env = "SANTA_READ_STORE", default_value = "sqlite")]
    read_store: String,
    /// The analytics store: `sqlite` or `postgres://user@host/db`.
    #[arg(long, env = "SANTA_ANALYTICS", default_value = "sqlite")]
    analytics: String,
    /// Partitions of the JetStream log (fixed when its stream is first created).
    #[arg(long, env = "SANTA_PARTITIONS", default_value_t = 8)]
    partitions: u32,
    /// Attempts at an event that fails to apply before it is set aside as a dead letter.
    #[arg(long, env = "SANTA_MAX_ATTEMPTS", default_value_t = 5)]
    max_attempts: u32,
    /// Embedded read stores: how much lower than the process's the CPU priority of their
    /// writes is, as a nice value added to it (0-19). When the command path and the
    /// projections want the same core, the command path, which clients wait on, gets it;
    /// `0` writes them at the process's priority.
    #[arg(long, env = "SANTA_READ_STORE_NICE", default_value_t = santa_sqlite::DEFAULT_READ_STORE_NICE, value_parser = clap::value_parser!(u8).range(0..=19))]
    read_store_nice: u8,
    /// The JetStream stream holding the events; its subjects follow its name
    /// (`SANTA_EVENTS` → `santa.events.>`).
    #[arg(long, env = "SANTA_NATS_STREAM", default_value = "SANTA_EVENTS")]
    nats_stream: String,
}

impl BackendArgs {
    fn into_settings(self, role: Role, http: Option<HttpArgs>) -> anyhow::Result<Settings> {
        let addr = http
            .as_ref()
            .map_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)), |h| h.addr);
        let mut settings = Settings::new(addr, self.data_dir);
        settings.role = role;
        settings.event_log = self.event_log;
        settings.read_store = self.read_store;
        settings.analytics = self.analytics;
        settings.partitions = self.partitions;
        settings.nats_stream = self.nats_stream;
        settings.max_attempts = self.max_attempts;
        settings.read_store_nice = self.read_store_nice;
        if let Some(http) = http {
            settings.tokens = Tokens::parse(&http.tokens)?;
            settings.consistency_timeout = Duration::from_millis(http.consistency_timeout_ms);
            settings.max_body_bytes = http.max_body_bytes;
            settings.idempotency_window = http.idempotency_window;
            settings.context_max_age = http.context_max_age;
            settings.publish_linger = http.publish_linger;
            settings.bench_endpoints = http.bench_endpoints;
        }
        Ok(settings)
    }
}

/// glibc's allocator took a fifth of the server's CPU at 11,000 letters/s (its arenas
/// consolidating and splitting chunks for each request's short-lived buffers).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init();
    let settings = match Cli::parse().command {
        Command::Serve { http, backends } => backends.into_settings(Role::Serve, Some(http))?,
        Command::Api { http, backends } => backends.into_settings(Role::Api, Some(http))?,
        Command::Projector {
            projection,
            backends,
        } => backends.into_settings(Role::Projector { projection }, None)?,
        Command::Seed(remote) => return seed(remote).await,
        Command::DeadLetters { action } => return dead_letters(action).await,
        Command::Projections { action } => return projections(action).await,
        Command::Bench(args) => return bench(args).await,
        Command::BenchSuite(args) => {
            let command = std::env::args().collect::<Vec<_>>().join(" ");
            return santa::suite::run(santa::suite::SuiteConfig {
                out: args.out,
                letters: args.letters,
                quick: args.quick,
                nats: args.nats,
                postgres: args.postgres,
                peer: args.peer,
                p99_bound: args.p99_bound,
                command,
            })
            .await;
        }
    };
    let app = Application::build(settings).await?;
    app.run_until_stopped(shutdown_signal()).await
}

async fn seed(remote: RemoteArgs) -> anyhow::Result<()> {
    let seeded = remote
        .send(Method::POST, "/admin/seed", None)
        .await
        .context("seeding failed")?;
    println!("{}", serde_json::to_string_pretty(&seeded)?);
    Ok(())
}

async fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let config = santa::bench::BenchConfig {
        url: args.remote.url,
        token: args.remote.token,
        rate: args.rate,
        duration: args.duration,
        scenario: args.scenario,
        lag_every: args.lag_every,
        max_in_flight: args.max_in_flight,
        path: args.path,
        progress: true,
        p99_bound: args.p99_bound,
        step: args.step,
        refine: args.refine,
        read_ids: args.read_ids,
    };
    if args.scenario == santa::bench::Scenario::FindMax {
        println!("{}", santa::bench::find_max(config).await?);
    } else {
        println!("{}", santa::bench::run(config).await?);
    }
    Ok(())
}

async fn projections(action: ProjectionAction) -> anyhow::Result<()> {
    match action {
        ProjectionAction::Status(remote) => {
            let status = remote.send(Method::GET, "/admin/projections", None).await?;
            println!("{}", serde_json::to_string_pretty(&status)?);
            Ok(())
        }
        ProjectionAction::Rebuild {
            name,
            no_wait,
            remote,
        } => {
            let path = format!("/admin/projections/{name}/rebuild");
            let started = remote
                .send(Method::POST, &path, None)
                .await
                .with_context(|| format!("cannot start rebuilding `{name}`"))?;
            if no_wait {
                println!("{}", serde_json::to_string_pretty(&started)?);
                return Ok(());
            }
            client::follow_rebuild(&remote, &name).await
        }
    }
}

async fn dead_letters(action: DeadLetterAction) -> anyhow::Result<()> {
    match action {
        DeadLetterAction::List { projection, remote } => {
            let path = match &projection {
                Some(name) => format!("/admin/dead-letters?projection={name}"),
                None => "/admin/dead-letters".to_owned(),
            };
            let listed = remote.send(Method::GET, &path, None).await?;
            let letters = listed["dead_letters"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if letters.is_empty() {
                println!("no dead letters");
            }
            for l in letters {
                let reason = match l["waiting_behind"].as_u64() {
                    Some(first) => format!("waiting behind {first}"),
                    None => l["error"].as_str().unwrap_or_default().to_owned(),
                };
                println!(
                    "{:>10}  {:<10} {:<24} attempts {:<3} {}",
                    l["position"],
                    l["projection"].as_str().unwrap_or_default(),
                    l["stream"].as_str().unwrap_or_default(),
                    l["attempts"],
                    reason
                );
            }
        }
        DeadLetterAction::Redrive {
            projection,
            position,
            remote,
        } => {
            let body = serde_json::json!({"projection": projection, "position": position});
            let outcome = remote
                .send(Method::POST, "/admin/dead-letters/redrive", Some(body))
                .await?;
            println!(
                "applied {}, still parked {}",
                outcome["applied"], outcome["still_parked"]
            );
        }
    }
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
