//! The contract between `tower-host` and its backend plugins.
//!
//! A backend plugin is a dynamic library (`cdylib`) that runs Tower app executions on some compute
//! substrate: local processes, Kubernetes pods, a VM pool. The host loads one plugin at startup and
//! talks to it only through the types in this crate, which are all [`StableAbi`]: the layout of
//! every type is checked when the library loads, so a plugin built against an incompatible contract
//! is rejected with an error instead of corrupting memory.
//!
//! The crate has three layers:
//!
//! - the data types that cross the boundary ([`ExecutionSpec`], [`ExecutionStatus`],
//!   [`LogRecord`], [`Capabilities`], [`PluginError`], …);
//! - the raw interface ([`ffi`]): the root module every plugin exports and the FFI-safe trait
//!   objects for the backend, the execution handle and the event sink;
//! - the SDK ([`sdk`]) that plugin authors write against: `async` traits, a typed settings struct
//!   and [`export_plugin!`], which generates the raw interface, gives the plugin its own tokio
//!   runtime and turns every panic into an error.
//!
//! # Versioning
//!
//! The crate version is the contract version ([`API_VERSION`]). A host accepts plugins built
//! against the same major version and an older or equal minor version. A minor version may add
//! methods at the end of a trait (old plugins answer them as unsupported), variants to the
//! non-exhaustive enums, and flags; anything else is a major version.
//!
//! | Version | Added |
//! |---|---|
//! | 1.0 | the contract |
//! | 1.1 | `ExecutionFfi::signal` (`sdk::Execution::signal`) |
//! | 1.2 | `EventSinkFfi::log_batch` and [`LogBatch`]; the SDK's sink delivers batches |
//!
//! [`StableAbi`]: abi_stable::StableAbi
#![deny(missing_docs)]

pub mod capabilities;
pub mod error;
pub mod ffi;
pub mod log;
pub mod sdk;
pub mod spec;
pub mod status;
pub mod time;
mod version;

pub use abi_stable;
pub use capabilities::{Capabilities, EnforcedLimits, Health, ServiceEndpoint, StartLatency};
pub use error::{ErrorCode, ErrorKind, PluginError};
pub use log::{Channel, LogBatch, LogEntry, LogFlags, LogLineRef, LogRecord, Stream};
pub use spec::{
    CacheSpec, ExecutionSpec, KeyValue, NetworkSpec, PackageRef, PackageSource, ResourceLimits,
    RuntimeSpec, Secret, SecretVar,
};
pub use status::{
    ExecutionState, ExecutionState_NE, ExecutionStatus, FailureStage, FailureStageKind, SetupPhase,
    SetupPhaseKind,
};
pub use time::Timestamp;
pub use version::{ApiVersion, API_VERSION, API_VERSION_SYMBOL};
