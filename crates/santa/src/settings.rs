//! Typed settings, from flags and `SANTA_*` environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use santa_http::Tokens;

/// Which parts of the workshop this process runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Command API, query API and every projector, in one process.
    Serve,
    /// Command and query API only; stateless, run as many as you like.
    Api,
    /// Projection workers only: all projections, or the one named.
    Projector { projection: Option<String> },
}

/// Everything a `santa` process needs to start.
#[derive(Debug, Clone)]
pub struct Settings {
    pub role: Role,
    /// Where to listen (API roles); port 0 picks a free port.
    pub addr: SocketAddr,
    /// Where the embedded databases live.
    pub data_dir: PathBuf,
    /// The event log: `sqlite` (embedded, under `data_dir`) or `nats://host:port`.
    pub event_log: String,
    /// The key-value read store: `sqlite` or `postgres://…`.
    pub read_store: String,
    /// The analytics store: `sqlite` or `postgres://…`.
    pub analytics: String,
    /// Partitions of a JetStream log; fixed when the stream is created.
    pub partitions: u32,
    /// The JetStream stream's name; its subjects are the name in lower case with `_` as `.`
    /// (`SANTA_EVENTS` → `santa.events.>`).
    pub nats_stream: String,
    /// Bearer tokens; empty means no authentication, which is allowed on loopback only.
    pub tokens: Tokens,
    /// How long `?after=` waits for a projection.
    pub consistency_timeout: Duration,
    /// The largest request body accepted.
    pub max_body_bytes: usize,
    /// Appends that may queue for the log before commands are shed with 503.
    pub append_queue: usize,
    /// How long the answer to a command sent with an `Idempotency-Key` is kept.
    pub idempotency_window: Duration,
    /// On JetStream, how old a command's context (a toy's newest event) may be.
    pub context_max_age: Duration,
    /// On JetStream, how long appends' publishes may gather to go together.
    pub publish_linger: Duration,
    /// Attempts at an event that fails to apply before it is set aside as a dead letter.
    pub max_attempts: u32,
    /// Embedded read stores: how much lower their writes' CPU priority is (a nice value).
    pub read_store_nice: u8,
    /// Serve the benchmark's baselines under `/bench/`.
    pub bench_endpoints: bool,
}

/// The backend URL that means "embedded SQLite under the data directory".
pub const EMBEDDED: &str = "sqlite";

impl Settings {
    /// Defaults for a local all-in-one server on `addr` keeping its data in `data_dir`.
    pub fn new(addr: SocketAddr, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            role: Role::Serve,
            addr,
            data_dir: data_dir.into(),
            event_log: EMBEDDED.into(),
            read_store: EMBEDDED.into(),
            analytics: EMBEDDED.into(),
            partitions: 8,
            nats_stream: "SANTA_EVENTS".into(),
            tokens: Tokens::default(),
            consistency_timeout: Duration::from_secs(2),
            max_body_bytes: 64 * 1024,
            append_queue: 4096,
            idempotency_window: santa_workshop::idempotency::DEFAULT_WINDOW,
            context_max_age: santa_nats::DEFAULT_CONTEXT_MAX_AGE,
            publish_linger: santa_nats::DEFAULT_PUBLISH_LINGER,
            max_attempts: 5,
            read_store_nice: santa_sqlite::DEFAULT_READ_STORE_NICE,
            bench_endpoints: false,
        }
    }

    /// Refuses an open server on a public address, and combinations that cannot work.
    pub fn check(&self) -> anyhow::Result<()> {
        let serves_http = !matches!(self.role, Role::Projector { .. });
        if serves_http && !self.tokens.is_enabled() && !self.addr.ip().is_loopback() {
            anyhow::bail!(
                "refusing to listen on {} without authentication: set SANTA_TOKENS (e.g. \
                 `reader-token:read,writer-token:write,admin-token:admin+read+write`) or listen on a \
                 loopback address such as 127.0.0.1",
                self.addr
            );
        }
        if self.role != Role::Serve && self.event_log == EMBEDDED {
            anyhow::bail!(
                "the embedded SQLite event log belongs to one process: run `santa serve`, or give \
                 `--event-log nats://…` to run separate `api` and `projector` processes"
            );
        }
        if self.nats_stream.is_empty()
            || !self
                .nats_stream
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
            || self.nats_stream.starts_with('_')
            || self.nats_stream.ends_with('_')
            || self.nats_stream.contains("__")
        {
            anyhow::bail!(
                "--nats-stream must be letters and digits separated by single `_`, got `{}`",
                self.nats_stream
            );
        }
        if !(1..=1024).contains(&self.partitions) {
            anyhow::bail!(
                "--partitions must be between 1 and 1024, got {}",
                self.partitions
            );
        }
        Ok(())
    }
}
