//! The SDK for plugin authors.
//!
//! Implement [`Backend`] and [`Execution`] with ordinary `async` code, then export the plugin with
//! [`export_plugin!`](crate::export_plugin):
//!
//! ```ignore
//! use tower_plugin_api::sdk::{Backend, EventSink, Execution};
//!
//! #[derive(serde::Deserialize, schemars::JsonSchema)]
//! #[serde(deny_unknown_fields)]
//! struct Settings { work_dir: std::path::PathBuf }
//!
//! struct MyBackend { /* … */ }
//! impl Backend for MyBackend { /* … */ }
//!
//! tower_plugin_api::export_plugin!(name: "my-backend", backend: MyBackend);
//! ```
//!
//! # Runtime rules inside a plugin
//!
//! - The plugin has its own copy of tokio. The SDK gives each backend instance its own
//!   multi-threaded runtime; every method runs inside it, so `tokio::spawn` works there. Never
//!   hand a runtime handle, a task or a channel of the plugin's tokio to the host, or the reverse.
//! - A panic in a method becomes an [`ErrorKind::Internal`](crate::ErrorKind) error with the
//!   panic message. The SDK cannot catch a panic in a task the plugin spawned. So hold the
//!   [`EventSink`] only in the tasks that drive an execution: when such a task dies, its sink is
//!   dropped and the host reports the execution as failed.
//! - `tracing` events of the plugin reach the host's subscriber, tagged with the plugin name.
//!   Never install a subscriber of your own.
//! - Settings structs use `#[serde(deny_unknown_fields)]`, so that a misspelled key fails at load
//!   with its path.

mod adapter;
mod events;
mod tracing_forward;

pub use events::{EventSink, LogLine};

#[doc(hidden)]
pub mod __private {
    pub use super::adapter::root_module;
}

use crate::{Capabilities, ExecutionSpec, ExecutionStatus, Health, PluginError, ServiceEndpoint};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use std::future::Future;
use std::time::Duration;

/// A backend: creates executions on one substrate.
///
/// One value is created per `[backend]` of the host's configuration, from its settings. All
/// methods run inside the backend's own tokio runtime and may be called concurrently.
pub trait Backend: Send + Sync + Sized + 'static {
    /// The plugin's settings, read from `[backend.settings]`. Use `#[serde(deny_unknown_fields)]`.
    type Settings: DeserializeOwned + JsonSchema;
    /// The execution handle type.
    type Execution: Execution;

    /// Creates the backend from its settings. Probe the substrate here and fail with
    /// [`ErrorKind::InvalidConfig`](crate::ErrorKind) or [`ErrorKind::Unavailable`](crate::ErrorKind)
    /// naming the setting or the endpoint.
    fn new(settings: Self::Settings) -> impl Future<Output = Result<Self, PluginError>>;

    /// Returns what this instance supports on this machine.
    fn capabilities(&self) -> Capabilities;

    /// Probes whether the backend can take executions; bound the probe to a few seconds.
    fn health(&self) -> impl Future<Output = Health>;

    /// Creates an execution and returns once the backend accepted it. Everything afterwards,
    /// starting with the first status, goes to `events`.
    fn create(&self, spec: ExecutionSpec, events: EventSink) -> impl Future<Output = Result<Self::Execution, PluginError>>;

    /// Reattaches to an execution created by a previous host process. The default reports
    /// [`ErrorKind::Unsupported`](crate::ErrorKind). Set [`Capabilities::recovery`] when an
    /// implementation overrides it.
    fn recover(&self, run_id: String, events: EventSink) -> impl Future<Output = Result<Self::Execution, PluginError>> {
        drop(events);
        async move { Err(PluginError::unsupported(format!("cannot recover execution `{run_id}`: this backend does not support recovery"))) }
    }

    /// Stops accepting executions and releases backend-wide resources. Idempotent.
    fn shutdown(&self) -> impl Future<Output = Result<(), PluginError>> {
        async { Ok(()) }
    }
}

/// A handle to one execution. The host keeps it until after `cleanup`.
pub trait Execution: Send + Sync + 'static {
    /// Queries the current status afresh.
    fn status(&self) -> impl Future<Output = Result<ExecutionStatus, PluginError>>;

    /// Asks the workload to stop, waits up to `grace`, then forces it; returns only once nothing
    /// of the execution runs. Idempotent.
    fn terminate(&self, grace: Duration) -> impl Future<Output = Result<(), PluginError>>;

    /// Forces the workload to stop at once; returns only once nothing of it runs. Idempotent.
    fn kill(&self) -> impl Future<Output = Result<(), PluginError>>;

    /// Returns the service endpoint, if the execution has one. The default has none.
    fn service_endpoint(&self) -> Result<Option<ServiceEndpoint>, PluginError> {
        Ok(None)
    }

    /// Removes everything the execution created. Valid after the end; idempotent.
    fn cleanup(&self) -> impl Future<Output = Result<(), PluginError>>;

    /// Sends a Unix signal to the workload's processes. The default reports
    /// [`ErrorKind::Unsupported`](crate::ErrorKind). Added in plugin API 1.1.
    fn signal(&self, signal: i32) -> impl Future<Output = Result<(), PluginError>> {
        async move { Err(PluginError::unsupported(format!("cannot send signal {signal}: this backend does not support signals"))) }
    }
}

/// Parses plugin settings from JSON into `T`, naming the key path of the first error.
pub fn parse_settings<T: DeserializeOwned>(json: &str) -> Result<T, PluginError> {
    let deserializer = &mut serde_json::Deserializer::from_str(json);
    serde_path_to_error::deserialize(deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = strip_json_position(&error.inner().to_string());
        PluginError::invalid_config(format!("invalid setting `{path}`: {inner}"))
    })
}

/// Removes serde_json's ` at line N column M` suffix: the JSON is generated by the host from the
/// TOML file, so its positions mean nothing to the reader.
fn strip_json_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(at) if message[at..].contains(" column ") => message[..at].to_string(),
        _ => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, schemars::JsonSchema, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Settings {
        work_dir: String,
        #[serde(default)]
        limits: Limits,
    }

    #[derive(serde::Deserialize, schemars::JsonSchema, Debug, Default)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Limits {
        #[serde(default)]
        max_entries: u64,
    }

    #[test]
    fn settings_error_names_unknown_nested_key() {
        let error = parse_settings::<Settings>(r#"{"work_dir":"/w","limits":{"max_entris":3}}"#).unwrap_err();
        assert!(error.message.contains("limits.max_entris"), "{error}");
        assert!(!error.message.contains("line 1"), "{error}");
    }

    #[test]
    fn settings_error_names_wrong_type() {
        let error = parse_settings::<Settings>(r#"{"work_dir":"/w","limits":{"max_entries":"many"}}"#).unwrap_err();
        assert!(error.message.contains("`limits.max_entries`"), "{error}");
        assert!(error.message.contains("invalid type"), "{error}");
    }

    #[test]
    fn settings_error_names_missing_key() {
        let error = parse_settings::<Settings>("{}").unwrap_err();
        assert!(error.message.contains("work_dir"), "{error}");
    }
}

/// Exports a backend as a tower-host plugin: the abi_stable root module and the contract version
/// symbol that the host reads first.
///
/// The plugin crate needs `crate-type = ["cdylib"]` (add `"rlib"` to test it in-process) and a
/// direct dependency on `abi_stable`, which the generated code names.
#[macro_export]
macro_rules! export_plugin {
    (name: $name:literal, backend: $backend:ty $(,)?) => {
        /// The plugin's abi_stable root module.
        #[::abi_stable::export_root_module]
        pub fn tower_plugin_root_module() -> $crate::ffi::PluginModuleRef {
            $crate::sdk::__private::root_module::<$backend>($name, ::core::env!("CARGO_PKG_VERSION"))
        }

        /// The contract version this plugin was built against.
        #[no_mangle]
        pub extern "C" fn tower_plugin_api_version() -> $crate::ApiVersion {
            $crate::API_VERSION
        }
    };
}
