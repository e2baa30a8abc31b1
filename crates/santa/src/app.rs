//! Wiring: open the backends, start the projectors and the HTTP server, stop them cleanly.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use santa_cqrs::{Projection, ProjectionRunner};
use santa_http::{AppState, HttpSettings, Metrics, ProjectionView, Rebuilds, SyncedAppends};
use santa_workshop::CommandService;
use santa_workshop::analytics::AnalyticsProjection;
use santa_workshop::letters::{LettersProjection, LettersQueries};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::Settings;
use crate::backends::{self, Backends};
use crate::settings::Role;

/// A built, bound, not yet running process.
#[derive(Debug)]
pub struct Application {
    server: Option<(TcpListener, axum::Router)>,
    /// Tells background work started by requests (rebuilds) that the process stops.
    stop: watch::Sender<bool>,
    runners: Vec<ProjectionRunner>,
    addr: Option<SocketAddr>,
}

impl Application {
    /// Opens the backends and binds the listener, as the role requires.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        settings.check()?;
        let backends = Backends::open(&settings).await?;
        let projections: Vec<Arc<dyn Projection>> = vec![
            Arc::new(LettersProjection::new(backends.kv.clone())),
            Arc::new(AnalyticsProjection::new(backends.analytics.clone())),
        ];
        // Each projection waits for more events as suits the store it writes to.
        let lingers = [
            backends::linger_for(&settings.read_store),
            backends::linger_for(&settings.analytics),
        ];
        let runs_here = |p: &Arc<dyn Projection>| match &settings.role {
            Role::Serve => true,
            Role::Api => false,
            Role::Projector { projection } => {
                projection.as_deref().is_none_or(|name| name == p.name())
            }
        };
        if let Role::Projector {
            projection: Some(name),
        } = &settings.role
        {
            anyhow::ensure!(
                projections.iter().any(|p| p.name() == name),
                "there is no projection named `{name}` (there are: letters, analytics)"
            );
        }
        let runners: Vec<ProjectionRunner> = projections
            .iter()
            .zip(lingers)
            .filter(|(p, _)| runs_here(p))
            .map(|(p, linger)| {
                let runner = ProjectionRunner::new(backends.log.clone(), p.clone())
                    .with_leases(backends.leases.clone())
                    .with_dead_letters(backends.dead_letters.clone(), settings.max_attempts);
                match linger {
                    Some(linger) => runner.with_linger_on_clock(linger),
                    None => runner,
                }
            })
            .collect();

        let (stop, stopping) = watch::channel(false);
        if matches!(settings.role, Role::Projector { .. }) {
            return Ok(Self {
                server: None,
                stop,
                runners,
                addr: None,
            });
        }
        let views = projections
            .iter()
            .map(|p| ProjectionView {
                projection: p.clone(),
                local: runners
                    .iter()
                    .map(ProjectionRunner::handle)
                    .find(|h| h.name() == p.name()),
            })
            .collect();
        // The benchmark's durable floor writes beside the embedded stores, on their disk.
        let bench_floor = settings
            .bench_endpoints
            .then(|| SyncedAppends::new(settings.data_dir.join("bench-floor.ring")));
        let state = AppState {
            commands: CommandService::new(backends.log.clone()),
            letters: LettersQueries::new(backends.kv.clone()),
            analytics: backends.analytics.clone(),
            idempotency: backends.idempotency.clone(),
            dead_letters: backends.dead_letters.clone(),
            projections: views,
            rebuilds: Rebuilds::new(settings.max_attempts, stopping),
            metrics: Arc::new(Metrics::default()),
            settings: HttpSettings {
                tokens: settings.tokens.clone(),
                max_body_bytes: settings.max_body_bytes,
                consistency_timeout: settings.consistency_timeout,
                bench_endpoints: settings.bench_endpoints,
            },
            bench_floor,
        };
        let listener = TcpListener::bind(settings.addr)
            .await
            .with_context(|| format!("cannot listen on {}", settings.addr))?;
        let addr = listener.local_addr()?;
        Ok(Self {
            server: Some((listener, santa_http::router(state))),
            stop,
            runners,
            addr: Some(addr),
        })
    }

    /// The address actually bound (useful with port 0); `None` for a projector.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// Runs until `shutdown` resolves, then stops accepting, lets in-flight requests
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
        let mut tasks = JoinSet::new();
        for runner in self.runners {
            let name = format!("the {:?} projector", runner);
            let stopped = stopped();
            tasks.spawn(async move {
                runner.run(stopped).await;
                name
            });
        }
        if let Some((listener, router)) = self.server {
            tracing::info!(addr = ?self.addr, "santa's workshop is listening");
            let server = axum::serve(listener, router).with_graceful_shutdown(stopped());
            tasks.spawn(async move {
                if let Err(error) = server.await {
                    tracing::error!(%error, "HTTP server failed");
                }
                "the HTTP server".to_owned()
            });
        }
        tokio::pin!(shutdown);
        let outcome = tokio::select! {
            () = &mut shutdown => {
                tracing::info!("shutdown requested; draining");
                Ok(())
            }
            Some(exited) = tasks.join_next() => {
                Err(anyhow::anyhow!("{} stopped unexpectedly", exited.unwrap_or_else(|e| e.to_string())))
            }
        };
        let _ = stop_tx.send(true);
        let _ = self.stop.send(true);
        while tasks.join_next().await.is_some() {}
        tracing::info!("stopped");
        outcome
    }
}
