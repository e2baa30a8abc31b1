//! Wiring: open the backends, start the projectors and the HTTP server, stop them cleanly.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use santa_cqrs::{EventLog, ProjectionRunner};
use santa_http::{AppState, HttpSettings, Metrics};
use santa_sqlite::{SqliteAnalyticsStore, SqliteEventLog, SqliteKvStore, SqliteLogOptions};
use santa_workshop::CommandService;
use santa_workshop::analytics::AnalyticsProjection;
use santa_workshop::letters::{LettersProjection, LettersQueries};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::Settings;

/// A built, bound, not yet running service.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    runners: Vec<ProjectionRunner>,
    addr: SocketAddr,
}

impl Application {
    /// Opens the embedded stores under the data directory and binds the listener.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        settings.check()?;
        let dir = &settings.data_dir;
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create data directory {}", dir.display()))?;
        let options = SqliteLogOptions {
            queue: settings.append_queue,
            ..SqliteLogOptions::default()
        };
        let log: Arc<dyn EventLog> = Arc::new(SqliteEventLog::open(dir, options)?);
        let kv = Arc::new(SqliteKvStore::open(dir)?);
        let analytics = Arc::new(SqliteAnalyticsStore::open(dir)?);

        let runners = vec![
            ProjectionRunner::new(log.clone(), Arc::new(LettersProjection::new(kv.clone()))),
            ProjectionRunner::new(
                log.clone(),
                Arc::new(AnalyticsProjection::new(analytics.clone())),
            ),
        ];
        let state = AppState {
            commands: CommandService::new(log),
            letters: LettersQueries::new(kv),
            analytics,
            projections: runners.iter().map(ProjectionRunner::handle).collect(),
            metrics: Arc::new(Metrics::default()),
            settings: HttpSettings {
                tokens: settings.tokens.clone(),
                max_body_bytes: settings.max_body_bytes,
                consistency_timeout: settings.consistency_timeout,
            },
        };
        let listener = TcpListener::bind(settings.addr)
            .await
            .with_context(|| format!("cannot listen on {}", settings.addr))?;
        let addr = listener.local_addr()?;
        Ok(Self {
            listener,
            router: santa_http::router(state),
            runners,
            addr,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets in-flight requests
    /// finish, lets each projector finish its batch, and returns.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let stopped = move || {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|stop| *stop).await;
            }
        };
        let mut projectors = JoinSet::new();
        for runner in self.runners {
            projectors.spawn(runner.run(stopped()));
        }
        tracing::info!(addr = %self.addr, "santa's workshop is listening");
        let server = axum::serve(self.listener, self.router).with_graceful_shutdown(stopped());
        let server = tokio::spawn(async move { server.await });
        tokio::pin!(shutdown);

        let outcome = tokio::select! {
            () = &mut shutdown => {
                tracing::info!("shutdown requested; draining");
                Ok(())
            }
            result = projectors.join_next() => {
                Err(anyhow::anyhow!("a projector stopped unexpectedly: {result:?}"))
            }
        };
        let _ = stop_tx.send(true);
        match server.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(%error, "HTTP server failed"),
            Err(error) => tracing::error!(%error, "HTTP server task failed"),
        }
        while projectors.join_next().await.is_some() {}
        tracing::info!("stopped");
        outcome
    }
}
