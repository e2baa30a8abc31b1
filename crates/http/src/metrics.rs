//! Prometheus metrics: command outcomes and latency, log head, projection positions and lag.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommandLabels {
    command: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommandKind {
    command: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProjectionLabel {
    projection: &'static str,
}

type HistogramFamily = Family<CommandKind, Histogram, fn() -> Histogram>;

/// The service's metrics and their registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    commands: Family<CommandLabels, Counter>,
    command_seconds: HistogramFamily,
    head: Gauge,
    position: Family<ProjectionLabel, Gauge>,
    lag_events: Family<ProjectionLabel, Gauge>,
    lag_seconds: Family<ProjectionLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    parked: Family<ProjectionLabel, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("santa");
        let commands = Family::<CommandLabels, Counter>::default();
        registry.register(
            "commands",
            "Commands by kind and outcome (accepted, rejected, failed)",
            commands.clone(),
        );
        let command_seconds: HistogramFamily =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.000_05, 2.0, 18)));
        registry.register(
            "command_duration_seconds",
            "Time from a command's arrival to its durable acknowledgement (decide + append)",
            command_seconds.clone(),
        );
        let head = Gauge::default();
        registry.register(
            "log_head_position",
            "Position of the newest event in the log",
            head.clone(),
        );
        let position = Family::<ProjectionLabel, Gauge>::default();
        registry.register(
            "projection_position",
            "Position each projection has applied",
            position.clone(),
        );
        let lag_events = Family::<ProjectionLabel, Gauge>::default();
        registry.register(
            "projection_lag_events",
            "Events in the log not yet applied",
            lag_events.clone(),
        );
        let lag_seconds =
            Family::<ProjectionLabel, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "projection_lag_seconds",
            "Age of the newest applied event while the projection is behind",
            lag_seconds.clone(),
        );
        let parked = Family::<ProjectionLabel, Gauge>::default();
        registry.register(
            "projection_parked",
            "Events set aside as dead letters",
            parked.clone(),
        );
        Self {
            registry,
            commands,
            command_seconds,
            head,
            position,
            lag_events,
            lag_seconds,
            parked,
        }
    }
}

impl Metrics {
    /// Records a command's outcome and, when it was acknowledged, its latency.
    pub fn command(&self, command: &'static str, outcome: &'static str, elapsed: Duration) {
        self.commands
            .get_or_create(&CommandLabels { command, outcome })
            .inc();
        if outcome == "accepted" {
            self.command_seconds
                .get_or_create(&CommandKind { command })
                .observe(elapsed.as_secs_f64());
        }
    }

    pub fn set_head(&self, head: u64) {
        self.head.set(i64::try_from(head).unwrap_or(i64::MAX));
    }

    pub fn set_projection(
        &self,
        projection: &'static str,
        position: u64,
        lag_events: u64,
        lag_seconds: f64,
        parked: usize,
    ) {
        let label = ProjectionLabel { projection };
        self.position
            .get_or_create(&label)
            .set(i64::try_from(position).unwrap_or(i64::MAX));
        self.lag_events
            .get_or_create(&label)
            .set(i64::try_from(lag_events).unwrap_or(i64::MAX));
        self.lag_seconds.get_or_create(&label).set(lag_seconds);
        self.parked
            .get_or_create(&label)
            .set(i64::try_from(parked).unwrap_or(i64::MAX));
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}
