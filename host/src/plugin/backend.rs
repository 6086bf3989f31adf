//! The host's side of a loaded backend. Every plugin call of this module runs on a blocking
//! thread, so the async runtime does not wait on plugin code, and every error carries the plugin
//! name.

use super::LoadedPlugin;
use abi_stable::{
    sabi_trait::TD_Opaque,
    std_types::{RResult, RString, RVec},
};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tower_plugin_api::{
    ffi::{BackendBox, EventSinkFfi, EventSinkFfi_TO, ExecutionBox},
    Capabilities, ErrorKind, ExecutionState, ExecutionStatus, FailureStageKind, Health, LogBatch, LogRecord, PluginError,
    ServiceEndpoint, Timestamp,
};

/// How many event batches the host buffers per execution before the plugin's `logs` call blocks.
const EVENT_BUFFER: usize = 256;
/// How many bytes of log records the host buffers per execution before the plugin's `logs` call
/// blocks. One batch larger than this still passes when nothing else is buffered.
const LOG_BUFFER_BYTES: usize = 16 * 1024 * 1024;
/// Bytes counted for a record besides its text: its entry in the batch, with room to spare.
const RECORD_OVERHEAD_BYTES: usize = 64;

/// A plugin call that failed, naming the plugin and the operation.
#[derive(Debug, thiserror::Error)]
#[error("plugin `{plugin}` failed to {operation}: {error}")]
pub struct PluginCallError {
    /// The plugin name.
    pub plugin: String,
    /// The requested operation (`create execution run-1`).
    pub operation: String,
    /// The plugin's error.
    pub error: PluginError,
}

/// An event of one execution.
#[derive(Debug, Clone)]
pub enum ExecutionEvent {
    /// Log records, in order.
    Logs(LogBatch),
    /// A status transition.
    Status(ExecutionStatus),
}

/// A backend instance created by a loaded plugin.
#[derive(Clone)]
pub struct Backend {
    plugin: Arc<LoadedPlugin>,
    ffi: Arc<BackendBox>,
}

impl Backend {
    /// Creates the backend from its settings (a JSON object).
    pub async fn new(plugin: Arc<LoadedPlugin>, settings_json: String) -> Result<Self, PluginCallError> {
        let module = plugin.module;
        let ffi = call(&plugin.name, "create the backend from its settings", move || {
            (module.new_backend())(settings_json.as_str().into())
        })
        .await?;
        Ok(Self { plugin, ffi: Arc::new(ffi) })
    }

    /// The loaded plugin.
    pub fn plugin(&self) -> &LoadedPlugin {
        &self.plugin
    }

    /// Returns the backend's capabilities.
    pub async fn capabilities(&self) -> Result<Capabilities, PluginCallError> {
        let ffi = Arc::clone(&self.ffi);
        call(&self.plugin.name, "report its capabilities", move || ffi.capabilities()).await
    }

    /// Runs the backend's health probe.
    pub async fn health(&self) -> Health {
        let ffi = Arc::clone(&self.ffi);
        tokio::task::spawn_blocking(move || ffi.health())
            .await
            .unwrap_or_else(|error| Health::unhealthy(format!("the health probe failed: {error}")))
    }

    /// Creates an execution; its events arrive on the returned stream.
    pub async fn create(&self, spec: tower_plugin_api::ExecutionSpec) -> Result<(Execution, EventStream), PluginCallError> {
        let run_id = spec.run_id.to_string();
        let (sender, receiver) = mpsc::channel(EVENT_BUFFER);
        let budget = Arc::new(ByteBudget::default());
        let sink = EventSinkFfi_TO::from_value(HostEventSink { sender, budget: Arc::clone(&budget) }, TD_Opaque);
        let ffi = Arc::clone(&self.ffi);
        let operation = format!("create execution `{run_id}`");
        let handle = call(&self.plugin.name, &operation, move || ffi.create(spec, sink)).await?;
        let execution = Execution { plugin: self.plugin.name.clone(), run_id, ffi: Arc::new(handle) };
        Ok((execution, EventStream { receiver: Some(receiver), next_status: None, ended: false, plugin: self.plugin.name.clone(), budget }))
    }

    /// Reattaches to an execution that an earlier host process created. Its events, starting
    /// with the status and the logs the backend can still read, arrive on the returned stream.
    pub async fn recover(&self, run_id: &str) -> Result<(Execution, EventStream), PluginCallError> {
        let (sender, receiver) = mpsc::channel(EVENT_BUFFER);
        let budget = Arc::new(ByteBudget::default());
        let sink = EventSinkFfi_TO::from_value(HostEventSink { sender, budget: Arc::clone(&budget) }, TD_Opaque);
        let ffi = Arc::clone(&self.ffi);
        let operation = format!("recover execution `{run_id}`");
        let id = RString::from(run_id);
        let handle = call(&self.plugin.name, &operation, move || ffi.recover(id, sink)).await?;
        let execution = Execution { plugin: self.plugin.name.clone(), run_id: run_id.to_string(), ffi: Arc::new(handle) };
        Ok((execution, EventStream { receiver: Some(receiver), next_status: None, ended: false, plugin: self.plugin.name.clone(), budget }))
    }

    /// Asks the backend to release backend-wide resources.
    pub async fn shutdown(&self) -> Result<(), PluginCallError> {
        let ffi = Arc::clone(&self.ffi);
        call(&self.plugin.name, "shut down", move || ffi.shutdown()).await
    }
}

/// A handle to one execution.
#[derive(Clone)]
pub struct Execution {
    plugin: String,
    run_id: String,
    ffi: Arc<ExecutionBox>,
}

impl Execution {
    /// The run id.
    pub fn id(&self) -> &str {
        &self.run_id
    }

    /// Queries the current status.
    pub async fn status(&self) -> Result<ExecutionStatus, PluginCallError> {
        let ffi = Arc::clone(&self.ffi);
        call(&self.plugin, &format!("read the status of `{}`", self.run_id), move || ffi.status()).await
    }

    /// Stops the execution politely, forcing it after `grace`; returns once nothing of it runs.
    pub async fn terminate(&self, grace: Duration) -> Result<(), PluginCallError> {
        let ffi = Arc::clone(&self.ffi);
        let millis = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
        call(&self.plugin, &format!("terminate `{}`", self.run_id), move || ffi.terminate(millis)).await
    }

    /// Forces the execution to stop; returns once nothing of it runs.
    pub async fn kill(&self) -> Result<(), PluginCallError> {
        let ffi = Arc::clone(&self.ffi);
        call(&self.plugin, &format!("kill `{}`", self.run_id), move || ffi.kill()).await
    }

    /// Returns the service endpoint, if any.
    pub async fn service_endpoint(&self) -> Result<Option<ServiceEndpoint>, PluginCallError> {
        let ffi = Arc::clone(&self.ffi);
        call(&self.plugin, &format!("report the service endpoint of `{}`", self.run_id), move || {
            ffi.service_endpoint().map(|endpoint| endpoint.into_option())
        })
        .await
    }

    /// Removes everything the execution created.
    pub async fn cleanup(&self) -> Result<(), PluginCallError> {
        let ffi = Arc::clone(&self.ffi);
        call(&self.plugin, &format!("clean up `{}`", self.run_id), move || ffi.cleanup()).await
    }

    /// Sends a Unix signal to the workload; `unsupported` for plugins built against API 1.0.
    pub async fn signal(&self, signal: i32) -> Result<(), PluginCallError> {
        let ffi = Arc::clone(&self.ffi);
        call(&self.plugin, &format!("send signal {signal} to `{}`", self.run_id), move || ffi.signal(signal)).await
    }
}

/// The events of one execution, ending with exactly one terminal status.
///
/// When the plugin drops every copy of the execution's sink before a terminal status (a plugin
/// task that panicked does), the stream ends with a `failed` status that explains this.
pub struct EventStream {
    receiver: Option<mpsc::Receiver<ExecutionEvent>>,
    /// A status that [`EventStream::ready_logs`] received but did not return.
    next_status: Option<ExecutionEvent>,
    ended: bool,
    plugin: String,
    budget: Arc<ByteBudget>,
}

impl Drop for EventStream {
    fn drop(&mut self) {
        self.budget.close();
    }
}

impl EventStream {
    /// Returns the next event, or `None` after the terminal status.
    pub async fn next(&mut self) -> Option<ExecutionEvent> {
        let event = match self.next_status.take() {
            Some(event) => Some(event),
            None => self.receiver.as_mut()?.recv().await,
        };
        self.account(event)
    }

    /// Returns log records that have already arrived, without waiting, or `None` when the next
    /// event is not there yet or is a status. A consumer that writes in batches calls it after
    /// [`EventStream::next`] to gather what the plugin delivered meanwhile.
    pub fn ready_logs(&mut self) -> Option<LogBatch> {
        if self.next_status.is_none() {
            self.next_status = Some(self.receiver.as_mut()?.try_recv().ok()?);
        }
        match self.next_status.take() {
            Some(ExecutionEvent::Logs(records)) => {
                self.budget.release(cost_of(&records));
                Some(records)
            }
            other => {
                self.next_status = other;
                None
            }
        }
    }

    fn account(&mut self, event: Option<ExecutionEvent>) -> Option<ExecutionEvent> {
        match event {
            Some(ExecutionEvent::Status(status)) if self.ended => {
                tracing::warn!(plugin = %self.plugin, state = status.name(), "ignored a status after the terminal status");
                None
            }
            Some(ExecutionEvent::Status(status)) => {
                if status.is_terminal() {
                    self.ended = true;
                    // Closing the channel makes any later send of the plugin return at once.
                    self.receiver = None;
                    self.budget.close();
                }
                Some(ExecutionEvent::Status(status))
            }
            Some(ExecutionEvent::Logs(records)) => {
                self.budget.release(cost_of(&records));
                Some(ExecutionEvent::Logs(records))
            }
            None => {
                self.receiver = None;
                if self.ended {
                    return None;
                }
                self.ended = true;
                let message = format!(
                    "plugin `{}` stopped reporting this execution without a final status (a task of the plugin may have panicked; see the host's log)",
                    self.plugin
                );
                let state = ExecutionState::failed(ErrorKind::Internal, FailureStageKind::Platform, message, true);
                Some(ExecutionEvent::Status(ExecutionStatus::new(state).ended(Some(Timestamp::now()))))
            }
        }
    }
}

/// The sink the host hands to the plugin for one execution.
#[derive(Clone)]
struct HostEventSink {
    sender: mpsc::Sender<ExecutionEvent>,
    budget: Arc<ByteBudget>,
}

impl EventSinkFfi for HostEventSink {
    /// Takes records of a plugin built against API 1.0 or 1.1.
    fn logs(&self, records: RVec<LogRecord>) {
        self.log_batch(LogBatch::from_records(&records));
    }

    fn log_batch(&self, batch: LogBatch) {
        if let Err(error) = batch.check() {
            // Only a plugin that builds batches by hand can get here; its records are dropped
            // rather than misread.
            tracing::error!(%error, records = batch.len(), "dropped a malformed log batch from the plugin");
            return;
        }
        let cost = cost_of(&batch);
        self.budget.acquire(cost);
        // An error means the host stopped listening (after the terminal status): drop the records.
        if self.sender.blocking_send(ExecutionEvent::Logs(batch)).is_err() {
            self.budget.release(cost);
        }
    }

    fn status(&self, status: ExecutionStatus) {
        let _ = self.sender.blocking_send(ExecutionEvent::Status(status));
    }
}

/// Returns the bytes a batch of records counts against [`LOG_BUFFER_BYTES`].
fn cost_of(batch: &LogBatch) -> usize {
    batch.text_len() + batch.len() * RECORD_OVERHEAD_BYTES
}

/// The bytes of log records buffered between the plugin and the consumer of one execution.
#[derive(Default)]
struct ByteBudget {
    state: std::sync::Mutex<BudgetState>,
    freed: std::sync::Condvar,
}

#[derive(Default)]
struct BudgetState {
    used: usize,
    /// Set once the consumer is gone, so waiting senders go on at once.
    closed: bool,
}

impl ByteBudget {
    /// Waits until `cost` bytes fit (or nothing is buffered, or the consumer is gone) and takes them.
    fn acquire(&self, cost: usize) {
        let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        while state.used > 0 && state.used + cost > LOG_BUFFER_BYTES && !state.closed {
            state = self.freed.wait(state).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        state.used += cost;
    }

    fn release(&self, cost: usize) {
        let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        state.used = state.used.saturating_sub(cost);
        self.freed.notify_all();
    }

    fn close(&self) {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).closed = true;
        self.freed.notify_all();
    }
}

/// Runs a plugin call on a blocking thread and wraps its error with the plugin name.
async fn call<T: Send + 'static>(
    plugin: &str,
    operation: &str,
    body: impl FnOnce() -> RResult<T, PluginError> + Send + 'static,
) -> Result<T, PluginCallError> {
    let wrap = |error: PluginError| PluginCallError { plugin: plugin.to_string(), operation: operation.to_string(), error };
    match tokio::task::spawn_blocking(body).await {
        Ok(RResult::ROk(value)) => Ok(value),
        Ok(RResult::RErr(error)) => Err(wrap(error)),
        Err(join_error) => Err(wrap(PluginError::internal(format!("the host's call into the plugin failed: {join_error}")))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower_plugin_api::{Channel, LogFlags, Stream};

    fn stream_and_sink() -> (EventStream, HostEventSink) {
        let (sender, receiver) = mpsc::channel(EVENT_BUFFER);
        let budget = Arc::new(ByteBudget::default());
        let sink = HostEventSink { sender, budget: Arc::clone(&budget) };
        (EventStream { receiver: Some(receiver), next_status: None, ended: false, plugin: "test".to_string(), budget }, sink)
    }

    fn records(lines: &[&str]) -> RVec<LogRecord> {
        lines
            .iter()
            .map(|line| LogRecord {
                seq: 0,
                timestamp: Timestamp { unix_nanos: 0 },
                stream: Stream::Stdout,
                channel: Channel::Program,
                line: (*line).into(),
                flags: LogFlags::default(),
            })
            .collect()
    }

    fn lines_of(event: Option<ExecutionEvent>) -> Vec<String> {
        match event {
            Some(ExecutionEvent::Logs(records)) => records.iter().map(|record| record.line.to_string()).collect(),
            other => panic!("expected log records, got {other:?}"),
        }
    }

    /// Runs one future to its end; the sink's calls block, so they stay outside any runtime.
    fn wait<T>(future: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread().build().expect("a runtime").block_on(future)
    }

    #[test]
    fn ready_logs_keeps_order_with_status() {
        let (mut events, sink) = stream_and_sink();
        sink.logs(records(&["one"]));
        sink.logs(records(&["two", "three"]));
        sink.status(ExecutionStatus::new(ExecutionState::Exited));
        sink.logs(records(&["after the end"]));

        assert_eq!(lines_of(wait(events.next())), ["one"]);
        assert_eq!(lines_of(events.ready_logs().map(ExecutionEvent::Logs)), ["two", "three"]);
        // The status is held for `next`, not skipped.
        assert!(events.ready_logs().is_none());
        assert!(events.ready_logs().is_none());
        match wait(events.next()) {
            Some(ExecutionEvent::Status(status)) => assert!(status.is_terminal()),
            other => panic!("expected the terminal status, got {other:?}"),
        }
        assert!(wait(events.next()).is_none());
        assert!(events.ready_logs().is_none());
    }

    #[test]
    fn ready_logs_frees_the_budget() {
        let (mut events, sink) = stream_and_sink();
        sink.logs(records(&["a", "b"]));
        sink.logs(records(&["c"]));
        assert_eq!(events.budget.state.lock().unwrap().used, 3 * (1 + RECORD_OVERHEAD_BYTES));

        wait(events.next());
        assert_eq!(events.budget.state.lock().unwrap().used, 1 + RECORD_OVERHEAD_BYTES);
        events.ready_logs();
        assert_eq!(events.budget.state.lock().unwrap().used, 0);
        assert!(events.ready_logs().is_none(), "nothing more has arrived");
    }
}
