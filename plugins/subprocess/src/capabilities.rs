//! The capabilities of this backend instance on this machine, as reported to the host.

use crate::cgroup::{CgroupManager, Controller, Version};
use crate::settings::Settings;
use tower_plugin_api::{Capabilities, EnforcedLimits, KeyValue};

/// The backend's name.
pub const BACKEND_NAME: &str = "subprocess";

/// Describes the instance: cgroup use as found by the probe (or `cgroup_absence` for why there
/// is none), the limits that follows from it, and the fixed traits of local processes.
pub fn describe(settings: &Settings, cgroups: Option<&CgroupManager>, cgroup_absence: &str) -> Capabilities {
    let mut capabilities = Capabilities::new(BACKEND_NAME);
    capabilities.persistent_cache = true;
    capabilities.service_endpoints = true;
    capabilities.max_concurrent_executions = settings.max_concurrent_executions.into();

    let has = |controller| cgroups.is_some_and(|manager| manager.has(controller));
    capabilities.enforced_limits = EnforcedLimits {
        cpu: has(Controller::Cpu),
        // Without a memory cgroup, RLIMIT_AS limits each process of the program instead.
        memory: true,
        ephemeral_storage: false,
        max_processes: has(Controller::Pids),
        gpu: false,
        timeout: true,
    };

    let mut details = Vec::new();
    let mut detail = |key: &str, value: String| details.push(KeyValue::new(key, value));
    match cgroups {
        Some(manager) => {
            let version = match manager.version() {
                Version::V1 => "v1",
                Version::V2 => "v2",
            };
            detail("cgroup", version.to_string());
            detail("cgroup_controllers", manager.controller_names());
        }
        None => {
            detail("cgroup", "none".to_string());
            detail("cgroup_unavailable", cgroup_absence.to_string());
        }
    }
    let memory = if has(Controller::Memory) {
        "cgroup memory limit for every process of the execution, setup included"
    } else {
        "RLIMIT_AS on each process of the app's program: virtual address space, not resident memory; setup is not limited"
    };
    detail("memory_limit", memory.to_string());
    let processes = if has(Controller::Pids) {
        "cgroup pids.max, applied when the app's program starts"
    } else {
        "not enforced: RLIMIT_NPROC counts every process of the user, not of the execution"
    };
    detail("max_processes_limit", processes.to_string());
    detail("cpu_limit", if has(Controller::Cpu) { "cgroup CPU quota" } else { "not enforced" }.to_string());
    detail("isolation", "own session, process group and environment; no network or file system isolation".to_string());
    capabilities.details = details.into();
    capabilities
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_cgroups_only_memory_and_timeout_are_enforced() {
        let capabilities = describe(&Settings::default(), None, "disabled by the `cgroups` setting");
        assert_eq!(capabilities.backend.as_str(), "subprocess");
        assert!(capabilities.enforced_limits.memory);
        assert!(capabilities.enforced_limits.timeout);
        assert!(!capabilities.enforced_limits.max_processes);
        assert!(!capabilities.enforced_limits.cpu);
        assert!(!capabilities.recovery);
        assert!(capabilities.service_endpoints);
        let cgroup = capabilities.details.iter().find(|pair| pair.key.as_str() == "cgroup").unwrap();
        assert_eq!(cgroup.value.as_str(), "none");
    }
}
