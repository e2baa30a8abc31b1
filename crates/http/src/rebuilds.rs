//! Projection rebuilds started through this process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use santa_cqrs::{DeadLetters, EventLog, Projection, ProjectionError, RebuildStatus, Rebuilder};
use tokio::sync::watch;

/// The rebuilds this process runs (and ran: the last one of each projection stays listed),
/// and what a new one needs.
#[derive(Debug, Clone)]
pub struct Rebuilds {
    /// A rebuild parks failing events as the live projection does, after as many attempts.
    max_attempts: u32,
    last: Arc<Mutex<HashMap<&'static str, watch::Receiver<RebuildStatus>>>>,
    /// Turns true when the process stops: a rebuild under way is abandoned then.
    stop: watch::Receiver<bool>,
}

impl Rebuilds {
    pub fn new(max_attempts: u32, stop: watch::Receiver<bool>) -> Self {
        Self {
            max_attempts,
            last: Arc::default(),
            stop,
        }
    }

    /// The last rebuild of `projection` started here, as it stands.
    pub fn status(&self, projection: &str) -> Option<RebuildStatus> {
        self.last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(projection)
            .map(|rx| rx.borrow().clone())
    }

    /// Starts rebuilding `projection` in the background. [`ProjectionError::Busy`] when
    /// it is being rebuilt already, here or (through the store's claim) elsewhere.
    pub async fn start(
        &self,
        log: Arc<dyn EventLog>,
        dead_letters: Arc<dyn DeadLetters>,
        projection: Arc<dyn Projection>,
    ) -> Result<RebuildStatus, ProjectionError> {
        let name = projection.name();
        if self.status(name).is_some_and(|s| s.running()) {
            return Err(ProjectionError::Busy(format!(
                "the {name} projection is being rebuilt already"
            )));
        }
        let rebuilder =
            Rebuilder::start(log, projection, Some((dead_letters, self.max_attempts))).await?;
        let status = rebuilder.status();
        let started = status.borrow().clone();
        self.last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name, status);
        let mut stop = self.stop.clone();
        tokio::spawn(rebuilder.run(async move {
            let _ = stop.wait_for(|stop| *stop).await;
        }));
        Ok(started)
    }
}
