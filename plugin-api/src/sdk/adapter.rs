//! The raw interface generated from the SDK traits: one tokio runtime per backend and a panic
//! guard at every entry point.

use super::{tracing_forward, Backend, EventSink, Execution};
use crate::{
    ffi::{
        BackendBox, BackendFfi, BackendFfi_TO, EventSinkBox, ExecutionBox, ExecutionFfi,
        ExecutionFfi_TO, PluginModule, PluginModuleRef, TraceLevel, TracingSinkBox,
    },
    Capabilities, ExecutionSpec, ExecutionStatus, Health, PluginError, ServiceEndpoint, API_VERSION,
};
use abi_stable::{
    prefix_type::PrefixTypeTrait,
    sabi_trait::TD_Opaque,
    std_types::{ROption, RResult, RStr, RString},
};
use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

/// Builds the root module of a plugin. Called by [`export_plugin!`](crate::export_plugin).
pub fn root_module<B: Backend>(name: &'static str, version: &'static str) -> PluginModuleRef {
    PluginModule {
        api_version: API_VERSION,
        name: RStr::from_str(name),
        version: RStr::from_str(version),
        settings_schema: settings_schema::<B>,
        init_tracing: init_tracing_entry,
        new_backend: new_backend::<B>,
    }
    .leak_into_prefix()
}

extern "C" fn settings_schema<B: Backend>() -> RString {
    let schema = catch_unwind(|| {
        let schema = schemars::schema_for!(B::Settings);
        serde_json::to_string_pretty(&schema).unwrap_or_else(|error| format!("{{\"error\": \"{error}\"}}"))
    });
    schema.unwrap_or_else(|panic| format!("{{\"error\": \"settings schema panicked: {}\"}}", panic_message(&*panic))).into()
}

extern "C" fn init_tracing_entry(sink: TracingSinkBox, max_level: TraceLevel) {
    // Installing a subscriber cannot panic in practice; a failure here must still not unwind
    // into the host.
    let _ = catch_unwind(AssertUnwindSafe(|| tracing_forward::install(sink, max_level)));
}

extern "C" fn new_backend<B: Backend>(settings_json: RStr<'_>) -> RResult<BackendBox, PluginError> {
    guard(|| {
        let settings: B::Settings = super::parse_settings(settings_json.as_str())?;
        let runtime = PluginRuntime::new()?;
        let backend = runtime.block_on(B::new(settings))?;
        let adapter = BackendAdapter { backend: Arc::new(backend), runtime: Arc::new(runtime) };
        Ok(BackendFfi_TO::from_value(adapter, TD_Opaque))
    })
}

/// Runs `body`, turning a panic into an internal error with the panic message.
fn guard<T>(body: impl FnOnce() -> Result<T, PluginError>) -> RResult<T, PluginError> {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(result) => result.into(),
        Err(panic) => RResult::RErr(PluginError::internal(format!("the plugin panicked: {}", panic_message(&*panic)))),
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic with a non-text payload".to_string()
    }
}

/// A tokio runtime owned by one backend instance. Dropping it does not wait for its tasks, so the
/// host thread that drops the last handle is never blocked.
struct PluginRuntime(Option<tokio::runtime::Runtime>);

impl PluginRuntime {
    fn new() -> Result<Self, PluginError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("tower-plugin")
            .build()
            .map_err(|error| PluginError::internal(format!("failed to start the plugin's tokio runtime: {error}")))?;
        Ok(Self(Some(runtime)))
    }

    fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.0.as_ref().expect("runtime is present until drop").block_on(future)
    }
}

impl Drop for PluginRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

struct BackendAdapter<B> {
    backend: Arc<B>,
    runtime: Arc<PluginRuntime>,
}

impl<B: Backend> BackendFfi for BackendAdapter<B> {
    fn capabilities(&self) -> RResult<Capabilities, PluginError> {
        guard(|| Ok(self.backend.capabilities()))
    }

    fn health(&self) -> Health {
        match catch_unwind(AssertUnwindSafe(|| self.runtime.block_on(self.backend.health()))) {
            Ok(health) => health,
            Err(panic) => Health::unhealthy(format!("the health probe panicked: {}", panic_message(&*panic))),
        }
    }

    fn create(&self, spec: ExecutionSpec, events: EventSinkBox) -> RResult<ExecutionBox, PluginError> {
        let run_id = spec.run_id.clone();
        guard(|| {
            let execution = self.runtime.block_on(self.backend.create(spec, EventSink::new(events)))?;
            Ok(self.wrap(run_id, execution))
        })
    }

    fn recover(&self, run_id: RString, events: EventSinkBox) -> RResult<ExecutionBox, PluginError> {
        guard(|| {
            let execution = self.runtime.block_on(self.backend.recover(run_id.to_string(), EventSink::new(events)))?;
            Ok(self.wrap(run_id, execution))
        })
    }

    fn shutdown(&self) -> RResult<(), PluginError> {
        guard(|| self.runtime.block_on(self.backend.shutdown()))
    }
}

impl<B: Backend> BackendAdapter<B> {
    fn wrap(&self, run_id: RString, execution: B::Execution) -> ExecutionBox {
        let adapter = ExecutionAdapter { run_id, execution, runtime: Arc::clone(&self.runtime) };
        ExecutionFfi_TO::from_value(adapter, TD_Opaque)
    }
}

struct ExecutionAdapter<E> {
    run_id: RString,
    execution: E,
    runtime: Arc<PluginRuntime>,
}

impl<E: Execution> ExecutionFfi for ExecutionAdapter<E> {
    fn id(&self) -> RString {
        self.run_id.clone()
    }

    fn status(&self) -> RResult<ExecutionStatus, PluginError> {
        guard(|| self.runtime.block_on(self.execution.status()))
    }

    fn terminate(&self, grace_millis: u64) -> RResult<(), PluginError> {
        guard(|| self.runtime.block_on(self.execution.terminate(Duration::from_millis(grace_millis))))
    }

    fn kill(&self) -> RResult<(), PluginError> {
        guard(|| self.runtime.block_on(self.execution.kill()))
    }

    fn service_endpoint(&self) -> RResult<ROption<ServiceEndpoint>, PluginError> {
        guard(|| self.execution.service_endpoint().map(ROption::from))
    }

    fn cleanup(&self) -> RResult<(), PluginError> {
        guard(|| self.runtime.block_on(self.execution.cleanup()))
    }

    fn signal(&self, signal: i32) -> RResult<(), PluginError> {
        guard(|| self.runtime.block_on(self.execution.signal(signal)))
    }
}
