//! Prometheus metrics of `tower-host serve`, in the Prometheus text format (version 0.0.4).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram};
use prometheus_client::registry::Registry;
use std::time::Duration;
use tower_plugin_api::{LogBatch, LogFlags};

/// Content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
/// Upper bounds of the latency histograms in seconds, from 1 ms to about 65 s.
const LATENCY_BUCKETS: [f64; 17] =
    [0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096, 8.192, 16.384, 32.768, 65.536];

/// Results of reattach attempts: reattached, lost, or never handed to the backend.
const RECOVERY_RESULTS: [&str; 3] = ["recovered", "lost", "not_submitted"];
/// Reasons for rejecting a create.
const REJECT_REASONS: [&str; 3] = ["full", "queue_full", "shutting_down"];

/// A failure to render the metrics.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The text encoder failed.
    #[error("failed to encode the metrics: {0}")]
    Encode(#[from] std::fmt::Error),
}

/// Label of metrics per execution state.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    /// `preparing`, `running`, `exited`, …
    pub state: String,
}

/// Label of metrics per outcome.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// The outcome, such as `recovered` or `lost`.
    pub result: String,
}

/// Label of rejected creates.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why: `full`, `queue_full`, `shutting_down`.
    pub reason: String,
}

/// Every metric of the server.
pub struct Metrics {
    registry: Registry,
    executions: Family<StateLabel, Gauge>,
    finished: Family<StateLabel, Counter>,
    create_seconds: Histogram,
    backend_create_seconds: Histogram,
    log_records: Counter,
    log_bytes: Counter,
    truncated_records: Counter,
    split_records: Counter,
    dropped_records: Counter,
    active: Gauge,
    queued: Gauge,
    recoveries: Family<ResultLabel, Counter>,
    rejected_creates: Family<ReasonLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric under the `tower_host_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tower_host");
        let metrics = Self {
            executions: Family::default(),
            finished: Family::default(),
            create_seconds: Histogram::new(LATENCY_BUCKETS),
            backend_create_seconds: Histogram::new(LATENCY_BUCKETS),
            log_records: Counter::default(),
            log_bytes: Counter::default(),
            truncated_records: Counter::default(),
            split_records: Counter::default(),
            dropped_records: Counter::default(),
            active: Gauge::default(),
            queued: Gauge::default(),
            recoveries: Family::default(),
            rejected_creates: Family::default(),
            registry: Registry::default(),
        };

        registry.register("executions", "Executions known to the host, by current state", metrics.executions.clone());
        registry.register("executions_finished", "Executions that reached a terminal state, by state", metrics.finished.clone());
        registry.register(
            "create_request_duration_seconds",
            "Time from the start of an accepted create request to its response, upload included",
            metrics.create_seconds.clone(),
        );
        registry.register(
            "backend_create_duration_seconds",
            "Time the backend's create call took",
            metrics.backend_create_seconds.clone(),
        );

        registry.register("log_records", "Log records received from the backend, dropped ones included", metrics.log_records.clone());
        registry.register("log_bytes", "Bytes of log lines received from the backend, without newlines", metrics.log_bytes.clone());
        registry.register("log_records_truncated", "Log records flagged as truncated by the backend", metrics.truncated_records.clone());
        registry.register("log_records_split", "Log records flagged as split from a longer line", metrics.split_records.clone());
        registry.register("log_records_dropped", "Log records dropped because their execution's log reached serve.max_log_bytes", metrics.dropped_records.clone());

        registry.register("executions_active", "Executions handed to the backend and not yet ended", metrics.active.clone());
        registry.register("executions_queued", "Executions waiting for a slot", metrics.queued.clone());
        registry.register("recoveries", "Reattach attempts after a restart, by result", metrics.recoveries.clone());
        registry.register("creates_rejected", "Create requests rejected for capacity or shutdown, by reason", metrics.rejected_creates.clone());

        // Series that exist from the start read as 0 instead of missing.
        for result in RECOVERY_RESULTS {
            drop(metrics.recoveries.get_or_create(&ResultLabel { result: result.to_string() }));
        }
        for reason in REJECT_REASONS {
            drop(metrics.rejected_creates.get_or_create(&ReasonLabel { reason: reason.to_string() }));
        }
        Self { registry, ..metrics }
    }

    /// Moves one execution from state `from` (none for a new one) to state `to` (none when removed).
    pub fn transition(&self, from: Option<&str>, to: Option<&str>) {
        if let Some(from) = from {
            self.executions.get_or_create(&StateLabel { state: from.to_string() }).dec();
        }
        if let Some(to) = to {
            self.executions.get_or_create(&StateLabel { state: to.to_string() }).inc();
        }
    }

    /// Counts an execution that reached terminal state `state`.
    pub fn finished(&self, state: &str) {
        self.finished.get_or_create(&StateLabel { state: state.to_string() }).inc();
    }

    /// Records the latency of an accepted create request.
    pub fn create_request(&self, took: Duration) {
        self.create_seconds.observe(took.as_secs_f64());
    }

    /// Records the latency of the backend's create call.
    pub fn backend_create(&self, took: Duration) {
        self.backend_create_seconds.observe(took.as_secs_f64());
    }

    /// Counts journalled log records, their bytes and their flags.
    pub fn log_records(&self, records: &LogBatch) {
        self.log_records.inc_by(records.len() as u64);
        self.log_bytes.inc_by(records.text_len() as u64);
        let truncated = records.iter().filter(|record| record.flags.contains(LogFlags::TRUNCATED)).count();
        let split = records.iter().filter(|record| record.flags.contains(LogFlags::SPLIT)).count();
        self.truncated_records.inc_by(truncated as u64);
        self.split_records.inc_by(split as u64);
    }

    /// Counts log records dropped at `serve.max_log_bytes`.
    pub fn log_records_dropped(&self, count: usize) {
        self.dropped_records.inc_by(count as u64);
    }

    /// Changes the number of executions handed to the backend.
    pub fn active(&self, delta: i64) {
        self.active.inc_by(delta);
    }

    /// Changes the number of queued executions.
    pub fn queued(&self, delta: i64) {
        self.queued.inc_by(delta);
    }

    /// Counts a reattach attempt: `recovered`, `lost` or `not_submitted`.
    pub fn recovery(&self, result: &str) {
        self.recoveries.get_or_create(&ResultLabel { result: result.to_string() }).inc();
    }

    /// Counts a rejected create.
    pub fn rejected(&self, reason: &str) {
        self.rejected_creates.get_or_create(&ReasonLabel { reason: reason.to_string() }).inc();
    }

    /// Renders every metric in the Prometheus text format.
    pub fn encode(&self) -> Result<String, MetricsError> {
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_text_names_counters_with_prefix() {
        let metrics = Metrics::new();
        metrics.transition(None, Some("running"));
        metrics.finished("exited");
        metrics.recovery("lost");
        let text = metrics.encode().unwrap();
        assert!(text.contains("tower_host_executions{state=\"running\"} 1"), "{text}");
        assert!(text.contains("tower_host_executions_finished_total{state=\"exited\"} 1"), "{text}");
        assert!(text.contains("tower_host_recoveries_total{result=\"lost\"} 1"), "{text}");
        assert!(text.contains("tower_host_log_records_total 0"), "{text}");
    }
}
