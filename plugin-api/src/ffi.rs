//! The raw interface between the host and a plugin library.
//!
//! Plugin authors do not implement these traits by hand: [`export_plugin!`](crate::export_plugin)
//! generates them from the [`sdk`](crate::sdk) traits. The host uses them directly.
//!
//! Every method may be called from any host thread, and several at once. Methods block the
//! calling thread, so the host calls them off its async runtime. New methods are added after the
//! method marked `last_prefix_field`, with a default body. A plugin built against an older minor
//! version runs that default, which reports [`ErrorKind::Unsupported`](crate::ErrorKind).

use crate::{
    ApiVersion, Capabilities, ExecutionSpec, ExecutionStatus, Health, KeyValue, LogBatch, LogRecord,
    PluginError, ServiceEndpoint,
};
use abi_stable::{
    declare_root_module_statics,
    library::RootModule,
    sabi_trait,
    sabi_types::VersionStrings,
    std_types::{RBox, ROption, RResult, RStr, RString, RVec},
    StableAbi,
};

/// The event sink handed to the plugin: a trait object implemented by the host.
pub type EventSinkBox = EventSinkFfi_TO<RBox<()>>;
/// A backend instance, as the host holds it.
pub type BackendBox = BackendFfi_TO<RBox<()>>;
/// An execution handle, as the host holds it.
pub type ExecutionBox = ExecutionFfi_TO<RBox<()>>;
/// The tracing sink handed to the plugin.
pub type TracingSinkBox = TracingSinkFfi_TO<RBox<()>>;

/// Receives the events of one execution, pushed by the plugin.
///
/// The host implements it. Copies share one destination. When every copy has been dropped and
/// no terminal status was delivered, the host reports the execution as failed: a plugin task that
/// panicked drops its copy on the way out.
#[sabi_trait]
pub trait EventSinkFfi: Clone + Send + Sync + 'static {
    /// Delivers log records, in order. Blocks only while the host's buffer is full, which slows
    /// the workload's output instead of growing memory.
    fn logs(&self, records: RVec<LogRecord>);

    /// Delivers a status transition, in order with the log records. After a terminal status the
    /// host ignores further events. Blocks only while the host's queue of events is full, as
    /// `logs` does, so that a status never overtakes the records before it.
    #[sabi(last_prefix_field)]
    fn status(&self, status: ExecutionStatus);

    /// Delivers a batch of log records, in order, as `logs` does. Added in 1.2. The default
    /// body copies the batch into records and calls `logs`.
    fn log_batch(&self, batch: LogBatch) {
        self.logs(batch.to_records().into());
    }
}

/// One backend instance, created from the plugin's settings.
#[sabi_trait]
pub trait BackendFfi: Send + Sync + 'static {
    /// Returns the capabilities of this instance. Returns at once.
    fn capabilities(&self) -> RResult<Capabilities, PluginError>;

    /// Probes whether the backend can take executions (the API server responds, the work folder
    /// is writable). Blocks for the probe, which the plugin bounds to a few seconds.
    fn health(&self) -> Health;

    /// Creates an execution. Returns once the backend accepted it (the package is verified and
    /// the workload is being set up), not when the app starts. Everything after that arrives
    /// through `events`. Not idempotent: a second call with the same run id is an error unless
    /// the backend documents otherwise.
    fn create(&self, spec: ExecutionSpec, events: EventSinkBox) -> RResult<ExecutionBox, PluginError>;

    /// Reattaches to an execution that a previous host process created, delivering its status and
    /// the logs it can still read to `events`. Blocks for the lookup.
    fn recover(&self, run_id: RString, events: EventSinkBox) -> RResult<ExecutionBox, PluginError>;

    /// Stops accepting executions and releases backend-wide resources; running executions are
    /// left as they are. Blocks until done. Idempotent.
    #[sabi(last_prefix_field)]
    fn shutdown(&self) -> RResult<(), PluginError>;
}

/// A handle to one execution.
#[sabi_trait]
pub trait ExecutionFfi: Send + Sync + 'static {
    /// Returns the run id. Returns at once.
    fn id(&self) -> RString;

    /// Queries the current status afresh from the substrate. Blocks for the query.
    fn status(&self) -> RResult<ExecutionStatus, PluginError>;

    /// Asks the workload to stop, waits up to `grace_millis`, then forces it. Returns only once
    /// nothing of the execution runs. Idempotent; after the end it returns at once.
    fn terminate(&self, grace_millis: u64) -> RResult<(), PluginError>;

    /// Forces the workload to stop at once. Returns only once nothing of the execution runs.
    /// Idempotent.
    fn kill(&self) -> RResult<(), PluginError>;

    /// Returns where the execution's service can be reached, if it has one. Returns at once.
    fn service_endpoint(&self) -> RResult<ROption<ServiceEndpoint>, PluginError>;

    /// Removes everything the execution created (folders, pods, secrets, services). Valid only
    /// after the end; idempotent. Blocks until done.
    #[sabi(last_prefix_field)]
    fn cleanup(&self) -> RResult<(), PluginError>;

    /// Sends a Unix signal (such as 10 for SIGUSR1) to the workload's processes, without
    /// changing the execution's status. Returns at once. Added in plugin API 1.1: for a plugin
    /// built against 1.0, whose table of methods ends before it, this default body runs in the
    /// host and reports `unsupported`.
    fn signal(&self, signal: i32) -> RResult<(), PluginError> {
        RResult::RErr(PluginError::unsupported(format!(
            "cannot send signal {signal}: the plugin was built against plugin API 1.0, which has no `signal`"
        )))
    }
}

/// Severity of a forwarded tracing event, as `tracing::Level` orders them.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TraceLevel {
    /// `TRACE`.
    Trace = 0,
    /// `DEBUG`.
    Debug = 1,
    /// `INFO`.
    Info = 2,
    /// `WARN`.
    Warn = 3,
    /// `ERROR`.
    Error = 4,
}

/// A tracing event emitted inside the plugin, forwarded to the host's subscriber.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct TraceEvent {
    /// Severity.
    pub level: TraceLevel,
    /// The `tracing` target (usually the module path inside the plugin).
    pub target: RString,
    /// The formatted message.
    pub message: RString,
    /// Fields of the event and of the spans it was emitted in, innermost last.
    pub fields: RVec<KeyValue>,
}

/// Receives the plugin's tracing events. The host implements it.
#[sabi_trait]
pub trait TracingSinkFfi: Send + Sync + 'static {
    /// Delivers one event. Returns at once.
    #[sabi(last_prefix_field)]
    fn event(&self, event: TraceEvent);
}

/// The root module every plugin library exports. Generated by
/// [`export_plugin!`](crate::export_plugin).
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModuleRef)))]
#[sabi(missing_field(option))]
pub struct PluginModule {
    /// The contract version the plugin was built against.
    pub api_version: ApiVersion,
    /// The plugin's name, such as `subprocess`.
    pub name: RStr<'static>,
    /// The plugin's own version.
    pub version: RStr<'static>,
    /// Returns the JSON Schema of the plugin's settings.
    pub settings_schema: extern "C" fn() -> RString,
    /// Routes the plugin's tracing events at `max_level` and above to `sink`. The first call
    /// wins; later calls are ignored.
    pub init_tracing: extern "C" fn(sink: TracingSinkBox, max_level: TraceLevel),
    /// Creates a backend from its settings, given as a JSON object.
    #[sabi(last_prefix_field)]
    pub new_backend: extern "C" fn(settings_json: RStr<'_>) -> RResult<BackendBox, PluginError>,
}

impl RootModule for PluginModuleRef {
    declare_root_module_statics! {PluginModuleRef}
    const BASE_NAME: &'static str = "tower_plugin";
    const NAME: &'static str = "tower-host backend plugin";
    /// Fixed at `MAJOR.0.0`: abi_stable refuses a library whose minor version is lower than the
    /// host's, but plugins built against an older minor must keep loading. The real version is
    /// [`PluginModule::api_version`], which the host checks itself.
    const VERSION_STRINGS: VersionStrings = VersionStrings::new(ROOT_MODULE_VERSION);
}

/// The version string of the root module: the contract's major version only.
pub const ROOT_MODULE_VERSION: &str = concat!(env!("CARGO_PKG_VERSION_MAJOR"), ".0.0");
