//! Opens the backends named by the settings' URLs. This is the only place that knows which
//! engines exist; everything else sees the kernel's and the workshop's traits.

use std::sync::Arc;

use anyhow::Context;
use santa_cqrs::{EventLog, Leases, LocalLeases};
use santa_sqlite::{SqliteAnalyticsStore, SqliteEventLog, SqliteKvStore, SqliteLogOptions};
use santa_workshop::analytics::AnalyticsStore;
use santa_workshop::kv::KvStore;

use crate::Settings;
use crate::settings::EMBEDDED;

/// The engines a process works with.
#[derive(Debug, Clone)]
pub struct Backends {
    pub log: Arc<dyn EventLog>,
    pub kv: Arc<dyn KvStore>,
    pub analytics: Arc<dyn AnalyticsStore>,
    /// How projector processes share partitions.
    pub leases: Arc<dyn Leases>,
}

impl Backends {
    pub async fn open(settings: &Settings) -> anyhow::Result<Self> {
        let dir = &settings.data_dir;
        let needs_dir = [
            &settings.event_log,
            &settings.read_store,
            &settings.analytics,
        ]
        .iter()
        .any(|u| *u == EMBEDDED);
        if needs_dir {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create data directory {}", dir.display()))?;
        }
        let log: Arc<dyn EventLog> = match scheme(&settings.event_log)? {
            Scheme::Embedded => {
                let options = SqliteLogOptions {
                    queue: settings.append_queue,
                    ..SqliteLogOptions::default()
                };
                Arc::new(SqliteEventLog::open(dir, options)?)
            }
            other => {
                anyhow::bail!("--event-log: {other:?} is not an event log this build supports")
            }
        };
        let kv: Arc<dyn KvStore> = match scheme(&settings.read_store)? {
            Scheme::Embedded => Arc::new(SqliteKvStore::open(dir)?),
            other => anyhow::bail!(
                "--read-store: {other:?} is not a key-value store this build supports"
            ),
        };
        let analytics: Arc<dyn AnalyticsStore> = match scheme(&settings.analytics)? {
            Scheme::Embedded => Arc::new(SqliteAnalyticsStore::open(dir)?),
            other => anyhow::bail!(
                "--analytics: {other:?} is not an analytics store this build supports"
            ),
        };
        Ok(Self {
            log,
            kv,
            analytics,
            leases: Arc::new(LocalLeases),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Embedded,
    Nats,
    Postgres,
}

/// Which engine a backend URL names.
fn scheme(url: &str) -> anyhow::Result<Scheme> {
    match url.split_once("://").map(|(scheme, _)| scheme) {
        _ if url == EMBEDDED => Ok(Scheme::Embedded),
        Some("nats") => Ok(Scheme::Nats),
        Some("postgres" | "postgresql") => Ok(Scheme::Postgres),
        _ => anyhow::bail!(
            "`{url}` is not a backend URL: use `sqlite`, `nats://host:port` or `postgres://…`"
        ),
    }
}
