//! Typed settings, from flags and `SANTA_*` environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use santa_http::Tokens;

/// Everything `santa serve` needs to start.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where to listen; port 0 picks a free port.
    pub addr: SocketAddr,
    /// Where the embedded databases live.
    pub data_dir: PathBuf,
    /// Bearer tokens; empty means no authentication, which is allowed on loopback only.
    pub tokens: Tokens,
    /// How long `?after=` waits for a projection.
    pub consistency_timeout: Duration,
    /// The largest request body accepted.
    pub max_body_bytes: usize,
    /// Appends that may queue for the log before commands are shed with 503.
    pub append_queue: usize,
}

impl Settings {
    /// Defaults for a local server on `addr` keeping its data in `data_dir`.
    pub fn new(addr: SocketAddr, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            addr,
            data_dir: data_dir.into(),
            tokens: Tokens::default(),
            consistency_timeout: Duration::from_secs(2),
            max_body_bytes: 64 * 1024,
            append_queue: 4096,
        }
    }

    /// Refuses an open server on a public address.
    pub fn check(&self) -> anyhow::Result<()> {
        if !self.tokens.is_enabled() && !self.addr.ip().is_loopback() {
            anyhow::bail!(
                "refusing to listen on {} without authentication: set SANTA_TOKENS (e.g. \
                 `reader-token:read,writer-token:write,admin-token:admin+read+write`) or listen on a \
                 loopback address such as 127.0.0.1",
                self.addr
            );
        }
        Ok(())
    }
}
