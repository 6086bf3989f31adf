//! Resource limits: cgroup limits where the machine has cgroups, `RLIMIT_AS` without them.

mod common;

use common::{state, Harness, PackageBuilder};
use tower_plugin_api::sdk::Backend;
use tower_plugin_api::{Channel, ExecutionState, Stream};
use tower_plugin_subprocess::cgroup::Controller;
use tower_plugin_subprocess::settings::CgroupMode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cgroup_limits_are_written() {
    let harness = Harness::new().await;
    if harness.cgroup_version().as_deref() != Some("v1") {
        eprintln!("skipped: this test reads cgroup v1 files, and this machine uses {:?}", harness.cgroup_version());
        return;
    }
    let mut spec = PackageBuilder::bash("ulimit -v\necho ready\nsleep 1000\n").spec(harness.work.path(), "run-limits");
    spec.limits.memory_mib = Some(256).into();
    spec.limits.max_processes = Some(64).into();
    spec.limits.cpu_millicores = Some(500).into();
    let (execution, recorder) = harness.start_spec(spec).await;
    recorder.line_containing(Channel::Program, "ready").await;

    // The folders come from the backend's own record rather than from the app's
    // `/proc/self/cgroup`. On some build machines a process manager outside the product moves
    // processes between memory cgroups (into `process_api/<id>`), the app and this test too.
    let manager = harness.backend.cgroups().expect("cgroup v1 is in use");
    let cgroup = harness.execution_names().iter().find_map(|name| manager.existing(name)).expect("the execution has a cgroup");
    let read = |controller: Controller, file: &str| {
        let dir = cgroup.dir_of(controller).unwrap_or_else(|| panic!("the execution has no {} cgroup", controller.name()));
        std::fs::read_to_string(dir.join(file)).unwrap().trim().to_string()
    };
    // Each machine mounts its own set of v1 controllers. Without a memory cgroup the memory
    // limit becomes the program's `RLIMIT_AS`, which `ulimit -v` prints in KiB.
    if manager.has(Controller::Memory) {
        assert_eq!(read(Controller::Memory, "memory.limit_in_bytes"), (256u64 * 1024 * 1024).to_string());
    } else {
        assert_eq!(recorder.program_lines(Stream::Stdout).first().map(String::as_str), Some("262144"));
    }
    if manager.has(Controller::Pids) {
        assert_eq!(read(Controller::Pids, "pids.max"), "64");
    }
    if manager.has(Controller::Cpu) {
        let period: u64 = read(Controller::Cpu, "cpu.cfs_period_us").parse().unwrap();
        assert_eq!(read(Controller::Cpu, "cpu.cfs_quota_us"), (period / 2).to_string());
    }

    tower_plugin_api::sdk::Execution::kill(&execution).await.unwrap();
    recorder.terminal().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_oom_kills_app() {
    let harness = Harness::new().await;
    let memory_cgroup = harness.backend.capabilities().details.iter().any(|pair| {
        pair.key.as_str() == "cgroup_controllers" && pair.value.split(',').any(|name| name == "memory")
    });
    if !memory_cgroup {
        eprintln!("skipped: this machine gives executions no memory cgroup");
        return;
    }
    // bash keeps the whole 200 MB string in memory, over the 64 MiB limit.
    let mut spec = PackageBuilder::bash("data=$(head -c 200000000 /dev/zero | tr '\\0' a)\necho survived\n")
        .spec(harness.work.path(), "run-oom");
    spec.limits.memory_mib = Some(64).into();
    let (_execution, recorder) = harness.start_spec(spec).await;

    let status = recorder.terminal().await;
    let ExecutionState::Crashed { signal, reason, .. } = state(&status) else { panic!("{status:?}") };
    assert_eq!(signal.into_option(), Some(9));
    assert_eq!(reason.into_option().map(|reason| reason.to_string()).as_deref(), Some("OOMKilled"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_without_cgroups_is_rlimit_as() {
    let harness = Harness::with(|settings| settings.cgroups = CgroupMode::Off).await;
    let capabilities = harness.backend.capabilities();
    assert!(capabilities.enforced_limits.memory);
    assert!(!capabilities.enforced_limits.max_processes);

    let mut spec = PackageBuilder::bash("ulimit -v\n").spec(harness.work.path(), "run-rlimit");
    spec.limits.memory_mib = Some(512).into();
    let (_execution, recorder) = harness.start_spec(spec).await;
    assert_eq!(state(&recorder.terminal().await), ExecutionState::Exited);
    // `ulimit -v` prints KiB.
    assert_eq!(recorder.program_lines(Stream::Stdout), [(512 * 1024).to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_describe_this_machine() {
    let harness = Harness::new().await;
    let capabilities = harness.backend.capabilities();
    let details: Vec<String> = capabilities.details.iter().map(|pair| format!("{} = {}", pair.key, pair.value)).collect();
    eprintln!("capabilities on this machine: {:?}\n{}", capabilities.enforced_limits, details.join("\n"));
    assert_eq!(capabilities.backend.as_str(), "subprocess");
    assert!(capabilities.persistent_cache);
    assert!(!capabilities.recovery);
    assert!(capabilities.start_latency.is_none());
    assert_eq!(capabilities.enforced_limits.max_processes, harness.cgroup_version().is_some() && details.iter().any(|d| d.contains("pids")));
}
