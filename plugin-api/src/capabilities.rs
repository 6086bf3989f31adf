//! Backend capabilities, health, and service endpoints.

use crate::KeyValue;
use abi_stable::{
    std_types::{ROption, RString, RVec},
    StableAbi,
};
use serde::{Deserialize, Serialize};

/// The features of a backend, as reported by the loaded instance (after reading its settings and
/// probing the machine).
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Capabilities {
    /// The backend's name, such as `subprocess`.
    pub backend: RString,
    /// Whether dependency caches persist between executions.
    pub persistent_cache: bool,
    /// Whether the backend keeps warm environments ready before executions arrive.
    pub prewarming: bool,
    /// Whether executions are cut off from each other's network.
    pub network_isolation: bool,
    /// Whether `service_endpoint` can return an endpoint.
    pub service_endpoints: bool,
    /// Whether `recover` can reattach to an execution after the host restarts.
    pub recovery: bool,
    /// Whether stdout and stderr arrive merged as [`Stream::Stdout`](crate::Stream::Stdout).
    pub merged_streams: bool,
    /// The maximum number of executions that may run at once, if the backend caps them.
    pub max_concurrent_executions: ROption<u32>,
    /// The resource limits this instance enforces on this machine.
    pub enforced_limits: EnforcedLimits,
    /// Start latency, only where it was measured; see [`StartLatency::method`].
    pub start_latency: ROption<StartLatency>,
    /// Backend-specific facts (`cgroup = v1`, `namespace = jobs`).
    pub details: RVec<KeyValue>,
}

/// Which limits of [`ResourceLimits`](crate::ResourceLimits) a backend enforces.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnforcedLimits {
    /// `cpu_millicores`.
    pub cpu: bool,
    /// `memory_mib`.
    pub memory: bool,
    /// `ephemeral_storage_mib`.
    pub ephemeral_storage: bool,
    /// `max_processes`.
    pub max_processes: bool,
    /// `gpu_count`.
    pub gpu: bool,
    /// `timeout_seconds`.
    pub timeout: bool,
}

/// Measured start latency of a backend.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StartLatency {
    /// Milliseconds from create to the app's first instruction with nothing cached.
    pub cold_millis: u64,
    /// The same with warm caches.
    pub warm_millis: u64,
    /// How and where it was measured (benchmark, machine, date).
    pub method: RString,
}

/// The result of a health probe.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// Whether the backend can take executions.
    pub healthy: bool,
    /// Why not, when unhealthy; what was checked, when healthy.
    pub message: RString,
}

impl Health {
    /// Creates a healthy result.
    pub fn healthy(message: impl Into<String>) -> Self {
        Self { healthy: true, message: message.into().into() }
    }

    /// Creates an unhealthy result.
    pub fn unhealthy(reason: impl Into<String>) -> Self {
        Self { healthy: false, message: reason.into().into() }
    }
}

/// Where an execution's service can be reached.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceEndpoint {
    /// Host name or address, such as `run-1.jobs.svc.cluster.local` or `127.0.0.1`.
    pub host: RString,
    /// TCP port.
    pub port: u16,
}

impl Capabilities {
    /// Creates capabilities that claim nothing, for `backend`.
    pub fn new(backend: impl Into<String>) -> Self {
        Self {
            backend: backend.into().into(),
            persistent_cache: false,
            prewarming: false,
            network_isolation: false,
            service_endpoints: false,
            recovery: false,
            merged_streams: false,
            max_concurrent_executions: ROption::RNone,
            enforced_limits: EnforcedLimits::default(),
            start_latency: ROption::RNone,
            details: RVec::new(),
        }
    }
}
