//! Rebuilding a projection: replay the whole log into fresh tables while the live
//! projection keeps serving, then switch to them atomically.
//!
//! The store does the two things only it can: make fresh tables beside the live ones
//! ([`Projection::rebuild`]) and swap them in one step ([`Rebuild::switch`]). The kernel
//! does the rest, the same way on every backend:
//!
//! 1. a [`ProjectionRunner`] (its own log reader, the live dead letters) feeds the fresh
//!    tables until every partition reaches the head the log had when the rebuild began;
//! 2. the live projection's writers are held off ([`Rebuild::freeze`]), and the fresh
//!    tables are brought up to the live checkpoints, so that no query ever goes back;
//! 3. the store switches. Checkpoints live in the tables they describe, so the live
//!    workers' next compare-and-set finds the fresh checkpoint and they resume from it.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use crate::runner::now_ms;
use crate::{
    DeadLetters, EventLog, Position, Prepared, Progress, Projection, ProjectionError,
    ProjectionRunner, ProjectionState, RecordedEvent, subscribe,
};

/// A rebuild in progress in a store: fresh, empty tables beside the live ones. Dropping it
/// without [`Rebuild::switch`] abandons them.
#[async_trait]
pub trait Rebuild: Send + Sync + std::fmt::Debug {
    /// The projection writing into the fresh tables, under the live projection's name.
    fn projection(&self) -> Arc<dyn Projection>;

    /// The replay reached the log's head as it was at the start: the store completes what
    /// it left out to replay faster (secondary indexes, say), before the live projection's
    /// writes are held off for the switch.
    async fn replayed(&mut self) -> Result<(), ProjectionError> {
        Ok(())
    }

    /// Holds the live projection's writes off until the switch (or until this is dropped);
    /// queries go on.
    async fn freeze(&mut self) -> Result<(), ProjectionError>;

    /// Makes the fresh tables the live ones in one atomic step and drops the old ones.
    async fn switch(self: Box<Self>) -> Result<(), ProjectionError>;
}

/// Where a rebuild is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebuildState {
    /// Replaying the log into the fresh tables.
    Replaying,
    /// Caught up; bringing the fresh tables level with the live ones and switching.
    Switching,
    /// Switched: queries read the rebuilt tables.
    Done,
    /// Stopped without switching; the live tables are untouched.
    Failed,
}

impl RebuildState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Replaying => "replaying",
            Self::Switching => "switching",
            Self::Done => "done",
            Self::Failed => "failed",
        }
    }
}

/// A rebuild's progress, published as it goes.
#[derive(Debug, Clone, PartialEq)]
pub struct RebuildStatus {
    pub state: RebuildState,
    /// Events applied to the fresh tables so far.
    pub replayed: u64,
    /// The log's head when the rebuild began: what it replays before switching.
    pub target: Position,
    pub started_at_ms: i64,
    pub finished_at_ms: Option<i64>,
    /// Why it failed, or the last error it is retrying.
    pub error: Option<String>,
}

impl RebuildStatus {
    /// Whether the rebuild is still going.
    pub fn running(&self) -> bool {
        matches!(
            self.state,
            RebuildState::Replaying | RebuildState::Switching
        )
    }

    /// Events replayed per second of the rebuild so far.
    pub fn rate(&self, now_ms: i64) -> f64 {
        let end = self.finished_at_ms.unwrap_or(now_ms);
        let seconds = (end - self.started_at_ms).max(1) as f64 / 1000.0;
        self.replayed as f64 / seconds
    }
}

/// Events per batch while replaying: fewer, larger transactions than live.
const REPLAY_BATCH: usize = 5_000;

/// How long the switch waits for the log while levelling the fresh tables.
const LEVEL_TIMEOUT: Duration = Duration::from_secs(10);

/// Rebuilds one projection; see the module documentation.
#[derive(Debug)]
pub struct Rebuilder {
    log: Arc<dyn EventLog>,
    live: Arc<dyn Projection>,
    rebuild: Box<dyn Rebuild>,
    dead_letters: Option<(Arc<dyn DeadLetters>, u32)>,
    targets: Vec<Position>,
    status: watch::Sender<RebuildStatus>,
}

impl Rebuilder {
    /// Makes the fresh tables and notes how far the log goes. Fails with
    /// [`ProjectionError::Busy`] when the projection is being rebuilt already.
    pub async fn start(
        log: Arc<dyn EventLog>,
        live: Arc<dyn Projection>,
        dead_letters: Option<(Arc<dyn DeadLetters>, u32)>,
    ) -> Result<Self, ProjectionError> {
        let targets = log.partition_heads().await?;
        let target = targets.iter().max().copied().unwrap_or_default();
        let rebuild = live.rebuild().await?;
        tracing::info!(projection = live.name(), %target, "rebuild started");
        let (status, _) = watch::channel(RebuildStatus {
            state: RebuildState::Replaying,
            replayed: 0,
            target,
            started_at_ms: now_ms(),
            finished_at_ms: None,
            error: None,
        });
        Ok(Self {
            log,
            live,
            rebuild,
            dead_letters,
            targets,
            status,
        })
    }

    pub fn status(&self) -> watch::Receiver<RebuildStatus> {
        self.status.subscribe()
    }

    /// Replays, levels and switches; on failure (or when `shutdown` comes first) the fresh
    /// tables are abandoned and the live ones stay as they were.
    #[tracing::instrument(name = "rebuild", skip_all, fields(projection = self.live.name()))]
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<RebuildStatus, ProjectionError> {
        let status = self.status.clone();
        let result = self.replay_and_switch(shutdown).await;
        status.send_modify(|s| {
            s.finished_at_ms = Some(now_ms());
            match &result {
                Ok(()) => {
                    s.state = RebuildState::Done;
                    s.error = None;
                }
                Err(error) => {
                    s.state = RebuildState::Failed;
                    s.error = Some(error.to_string());
                }
            }
        });
        let last = status.borrow().clone();
        match result {
            Ok(()) => {
                tracing::info!(
                    events = last.replayed,
                    rate = last.rate(now_ms()),
                    "rebuild switched"
                );
                Ok(last)
            }
            Err(error) => {
                tracing::warn!(%error, "rebuild abandoned");
                Err(error)
            }
        }
    }

    async fn replay_and_switch(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ProjectionError> {
        let name = self.live.name();
        let reader = format!("{name}-rebuild");
        let applied = Arc::new(AtomicU64::new(0));
        let fresh: Arc<dyn Projection> = Arc::new(Counted {
            inner: self.rebuild.projection(),
            applied: applied.clone(),
        });

        // 1. Replay up to the head the log had at the start.
        let mut runner = ProjectionRunner::new(self.log.clone(), fresh.clone())
            .with_reader(reader.clone())
            .with_batch_size(REPLAY_BATCH);
        if let Some((dead, max)) = &self.dead_letters {
            runner = runner.with_dead_letters(dead.clone(), *max);
        }
        let handle = runner.handle();
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let worker = tokio::spawn(runner.run(async move {
            let _ = stop_rx.wait_for(|stop| *stop).await;
        }));
        let mut changes = handle.status.clone();
        tokio::pin!(shutdown);
        let caught_up = loop {
            let now = handle.status();
            self.status.send_modify(|s| {
                s.replayed = applied.load(Ordering::Relaxed);
                s.error = (now.state == ProjectionState::Retrying)
                    .then(|| now.last_error.clone())
                    .flatten();
            });
            let done = now
                .partitions
                .iter()
                .zip(&self.targets)
                .all(|(at, target)| at.is_some_and(|at| at >= *target));
            if done {
                break true;
            }
            tokio::select! {
                _ = changes.changed() => {}
                () = tokio::time::sleep(Duration::from_millis(250)) => {}
                () = &mut shutdown => break false,
            }
        };
        let _ = stop_tx.send(true);
        worker
            .await
            .map_err(|e| ProjectionError::Store(format!("rebuild worker failed: {e}")))?;
        if !caught_up {
            return Err(ProjectionError::Store(
                "the rebuild was stopped: the process is shutting down".into(),
            ));
        }

        // 2. Complete the fresh tables, hold the live writers off and bring the fresh
        //    tables level with them.
        self.status
            .send_modify(|s| s.state = RebuildState::Switching);
        let mut rebuild = self.rebuild;
        rebuild.replayed().await?;
        rebuild.freeze().await?;
        let parked: HashSet<Position> = match &self.dead_letters {
            Some((dead, _)) => dead
                .list(Some(name))
                .await?
                .into_iter()
                .map(|l| l.position)
                .collect(),
            None => HashSet::new(),
        };
        for partition in 0..self.log.partitions() {
            let live = self.live.checkpoint(partition).await?;
            let from = fresh.checkpoint(partition).await?;
            if from < live {
                level(&self.log, &reader, &*fresh, partition, from, live, &parked).await?;
            }
        }
        self.status
            .send_modify(|s| s.replayed = applied.load(Ordering::Relaxed));

        // 3. Switch.
        rebuild.switch().await
    }
}

/// Applies the events of `partition` in `(from, to]` to `fresh`, leaving out parked ones
/// (the live projection went past them too).
async fn level(
    log: &Arc<dyn EventLog>,
    reader: &str,
    fresh: &dyn Projection,
    partition: u32,
    from: Position,
    to: Position,
    parked: &HashSet<Position>,
) -> Result<(), ProjectionError> {
    let mut source = subscribe(log, reader, partition, from).await?;
    let mut at = from;
    while at < to {
        let batch = tokio::time::timeout(LEVEL_TIMEOUT, source.next_batch(500))
            .await
            .map_err(|_| {
                ProjectionError::Store(format!(
                    "the log did not deliver partition {partition} up to {to} within {LEVEL_TIMEOUT:?}"
                ))
            })??;
        let batch: Vec<RecordedEvent> = batch.into_iter().filter(|e| e.position <= to).collect();
        let Some(upto) = batch.last().map(|e| e.position) else {
            continue;
        };
        let apply: Vec<RecordedEvent> = batch
            .into_iter()
            .filter(|e| !parked.contains(&e.position))
            .collect();
        let progress = Progress::Advance {
            partition,
            expected: at,
            upto,
        };
        fresh.apply_batch(progress, &apply).await?;
        at = upto;
    }
    Ok(())
}

/// Counts the events a projection applies.
#[derive(Debug)]
struct Counted {
    inner: Arc<dyn Projection>,
    applied: Arc<AtomicU64>,
}

#[async_trait]
impl Projection for Counted {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn checkpoint(&self, partition: u32) -> Result<Position, ProjectionError> {
        self.inner.checkpoint(partition).await
    }

    fn prepare(&self, events: &[RecordedEvent]) -> Result<Prepared, ProjectionError> {
        self.inner.prepare(events)
    }

    async fn apply_prepared(
        &self,
        progress: Progress,
        batch: Prepared,
    ) -> Result<(), ProjectionError> {
        let events = batch.events() as u64;
        self.inner.apply_prepared(progress, batch).await?;
        self.applied.fetch_add(events, Ordering::Relaxed);
        Ok(())
    }
}
