//! Reporting: the status transitions sent to the event sink and kept for `status()`, and how a
//! process's end becomes a terminal state.

use crate::workload::{StopReason, StopRecord};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use tower_plugin_api::sdk::EventSink;
use tower_plugin_api::{ErrorKind, ExecutionState, ExecutionStatus, FailureStageKind, KeyValue, PluginError, Timestamp};

/// The `reason` of a crash caused by the kernel's OOM killer, as Kubernetes names it.
pub const OOM_KILLED_REASON: &str = "OOMKilled";

/// The latest status of an execution, shared by the task that drives it and its handle.
#[derive(Debug)]
pub struct StatusCell(Mutex<ExecutionStatus>);

impl StatusCell {
    /// Creates a cell holding `status`.
    pub fn new(status: ExecutionStatus) -> Self {
        Self(Mutex::new(status))
    }

    /// Returns a copy of the latest status.
    pub fn get(&self) -> ExecutionStatus {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    fn set(&self, status: ExecutionStatus) {
        *self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = status;
    }
}

/// Sends status transitions to the event sink and stores them in the [`StatusCell`].
///
/// Only the tasks that drive an execution own one, because it contains the event sink. If such a
/// task dies, the sink goes with it and the host reports the execution as failed.
#[derive(Debug, Clone)]
pub struct Reporter {
    events: EventSink,
    cell: Arc<StatusCell>,
    accepted_at: Timestamp,
    metadata: Arc<Mutex<Vec<KeyValue>>>,
}

impl Reporter {
    /// Creates a reporter; `accepted_at` becomes every status's `started_at`.
    pub fn new(events: EventSink, cell: Arc<StatusCell>, accepted_at: Timestamp) -> Self {
        Self { events, cell, accepted_at, metadata: Arc::default() }
    }

    /// Returns the event sink, for log readers.
    pub fn events(&self) -> &EventSink {
        &self.events
    }

    /// Adds or replaces a metadata entry shown with every later status.
    pub fn set_metadata(&self, key: &str, value: impl Into<String>) {
        let mut metadata = self.metadata.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        metadata.retain(|pair| pair.key.as_str() != key);
        metadata.push(KeyValue::new(key, value));
    }

    /// Delivers a state. A terminal state gets `ended_at`; nothing is delivered after one.
    pub fn report(&self, state: ExecutionState) {
        let terminal = state.is_terminal();
        let mut status = ExecutionStatus::new(state).started(Some(self.accepted_at));
        if terminal {
            status = status.ended(Some(Timestamp::now()));
        }
        status.metadata = self.metadata.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).iter().cloned().collect();
        // Saved before it is delivered, so that `status()` right after the host hears of it agrees.
        if self.events.has_ended() {
            return;
        }
        self.cell.set(status.clone());
        if self.events.status(status.clone()) {
            tracing::debug!(state = status.name(), "reported status");
        }
    }

    /// Delivers `Failed` for an error that ended the execution before its program started, and
    /// returns the error.
    pub fn fail_setup(&self, error: PluginError) -> PluginError {
        let kind = error.kind().unwrap_or(ErrorKind::Internal);
        let stage = match kind {
            ErrorKind::Internal | ErrorKind::Unavailable => FailureStageKind::Platform,
            _ => FailureStageKind::Setup,
        };
        let retryable = kind == ErrorKind::Unavailable;
        self.report(ExecutionState::failed(kind, stage, error.message.as_str(), retryable));
        error
    }
}

/// Returns the terminal state of a stopped execution.
pub fn stopped_state(stop: StopRecord) -> ExecutionState {
    match stop.reason {
        StopReason::Cancel => ExecutionState::Cancelled { forced: stop.forced },
        StopReason::Timeout => ExecutionState::TimedOut { forced: stop.forced },
    }
}

/// Maps the app program's exit to a terminal state. A stop request wins over the exit status,
/// whatever the program returned. Otherwise exit code 0 is `Exited`, another code is `Crashed`
/// with that code, and death by a signal is `Crashed` with the signal, and the `OOMKilled`
/// reason when the cgroup counted an OOM kill.
pub fn exit_state(exit: ExitStatus, stop: Option<StopRecord>, oom_killed: bool) -> ExecutionState {
    if let Some(stop) = stop {
        return stopped_state(stop);
    }
    match (exit.code(), exit.signal()) {
        (Some(0), _) => ExecutionState::Exited,
        (Some(code), _) => ExecutionState::crashed_with_code(code),
        (None, Some(signal)) if oom_killed => ExecutionState::Crashed {
            exit_code: None.into(),
            signal: Some(signal).into(),
            reason: Some(OOM_KILLED_REASON.into()).into(),
        },
        (None, Some(signal)) => ExecutionState::crashed_by_signal(signal),
        (None, None) => ExecutionState::lost(format!("the program ended with an unrecognized wait status {}", exit.into_raw())),
    }
}

/// Describes how a process ended, for messages: `exited with code 1`, `was killed by signal 9`.
pub fn describe_exit(exit: ExitStatus) -> String {
    match (exit.code(), exit.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => format!("ended with wait status {}", exit.into_raw()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exited(code: i32) -> ExitStatus {
        ExitStatus::from_raw(code << 8)
    }

    fn signalled(signal: i32) -> ExitStatus {
        ExitStatus::from_raw(signal)
    }

    #[test]
    fn exit_codes_and_signals_map_to_states() {
        assert_eq!(exit_state(exited(0), None, false), ExecutionState::Exited);
        assert_eq!(exit_state(exited(138), None, false), ExecutionState::crashed_with_code(138));
        assert_eq!(exit_state(exited(139), None, false), ExecutionState::crashed_with_code(139));
        assert_eq!(exit_state(signalled(11), None, false), ExecutionState::crashed_by_signal(11));
    }

    #[test]
    fn oom_kill_adds_reason() {
        let state = exit_state(signalled(9), None, true);
        let ExecutionState::Crashed { signal, reason, .. } = state else { panic!("{state:?}") };
        assert_eq!(signal.into_option(), Some(9));
        assert_eq!(reason.into_option().unwrap().as_str(), OOM_KILLED_REASON);
    }

    #[test]
    fn stop_wins_over_exit_status() {
        let cancel = StopRecord { reason: StopReason::Cancel, forced: true };
        assert_eq!(exit_state(exited(0), Some(cancel), false), ExecutionState::Cancelled { forced: true });
        let timeout = StopRecord { reason: StopReason::Timeout, forced: false };
        assert_eq!(exit_state(signalled(15), Some(timeout), false), ExecutionState::TimedOut { forced: false });
    }

    #[test]
    fn describe_exit_names_code_or_signal() {
        assert_eq!(describe_exit(exited(2)), "exited with code 2");
        assert_eq!(describe_exit(signalled(9)), "was killed by signal 9");
    }
}
