//! Creating executions (package checks, the concurrency cap, service endpoints) and cleaning
//! them up, including leftovers of hosts that are gone.

mod common;

use common::{state, Harness, PackageBuilder, Recorder};
use std::time::Duration;
use tower_plugin_api::error::code_name;
use tower_plugin_api::sdk::{Backend, Execution};
use tower_plugin_api::{Channel, ExecutionState, PackageSource};
use tower_plugin_subprocess::owner::Owner;

/// Creates an execution that must be rejected; returns the error and the status the sink got.
async fn rejected(harness: &Harness, spec: tower_plugin_api::ExecutionSpec) -> (tower_plugin_api::PluginError, ExecutionState) {
    let recorder = Recorder::default();
    let error = match harness.backend.create(spec, recorder.sink()).await {
        Ok(_) => panic!("the execution was accepted"),
        Err(error) => error,
    };
    let status = recorder.terminal().await;
    (error, state(&status))
}

fn folders(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir).unwrap().flatten().map(|entry| entry.file_name().to_string_lossy().into_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn package_with_parent_dir_entry_fails_naming_it() {
    let harness = Harness::new().await;
    let package = PackageBuilder::bash("echo hi\n").file("../evil.sh", "echo escaped\n");
    let (error, failed) = rejected(&harness, package.spec(harness.work.path(), "run-evil")).await;

    assert_eq!(error.code_name(), "invalid_package");
    assert!(error.message.contains("../evil.sh"), "{error}");
    let ExecutionState::Failed { code, message, retryable, .. } = failed else { panic!("{failed:?}") };
    assert_eq!(code_name(&code), "invalid_package");
    assert!(message.contains("../evil.sh"), "{message}");
    assert!(!retryable);
    assert!(folders(&harness.executions_dir()).is_empty(), "the rejected execution left its folder");
    assert!(!harness.work.path().join("evil.sh").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checksum_mismatch_is_invalid_package() {
    let harness = Harness::new().await;
    let (path, _) = PackageBuilder::bash("true\n").write(harness.work.path());
    let spec = tower_plugin_api::ExecutionSpec::new("run-sum", PackageSource::file(path.to_str().unwrap(), "0".repeat(64)));
    let (error, _) = rejected(&harness, spec).await;
    assert_eq!(error.code_name(), "invalid_package");
    assert!(error.message.contains("SHA-256 mismatch"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_script_is_invalid_package() {
    let harness = Harness::new().await;
    let package = PackageBuilder::bash("true\n").manifest(serde_json::json!({"version": 3, "invoke": "other.sh", "app_dir_name": "app"}));
    let (error, _) = rejected(&harness, package.spec(harness.work.path(), "run-noscript")).await;
    assert_eq!(error.code_name(), "invalid_package");
    assert!(error.message.contains("other.sh"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_source_is_unsupported() {
    let harness = Harness::new().await;
    let spec = tower_plugin_api::ExecutionSpec::new("run-url", PackageSource::url("https://example.invalid/p.tar.gz", "0".repeat(64)));
    let (error, _) = rejected(&harness, spec).await;
    assert_eq!(error.code_name(), "unsupported");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_over_cap_is_unavailable() {
    let harness = Harness::with(|settings| settings.max_concurrent_executions = Some(1)).await;
    let (first, first_recorder) = harness.start(&PackageBuilder::bash("echo ready\nsleep 1000\n")).await;
    first_recorder.line_containing(Channel::Program, "ready").await;

    let (error, failed) = rejected(&harness, PackageBuilder::bash("true\n").spec(harness.work.path(), "run-2")).await;
    assert_eq!(error.code_name(), "unavailable");
    assert!(error.message.contains("max_concurrent_executions"), "{error}");
    assert!(matches!(failed, ExecutionState::Failed { retryable: true, .. }), "{failed:?}");

    first.kill().await.unwrap();
    first_recorder.terminal().await;
    let (status, _) = harness.run(&PackageBuilder::bash("true\n")).await;
    assert_eq!(state(&status), ExecutionState::Exited);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_twice_removes_folder_and_cgroup() {
    let harness = Harness::new().await;
    let (execution, recorder) = harness.start(&PackageBuilder::bash("echo hi\n")).await;
    let status = recorder.terminal().await;
    let cgroup = status.metadata.iter().find(|pair| pair.key.as_str() == "cgroup").map(|pair| pair.value.to_string());
    assert_eq!(folders(&harness.executions_dir()).len(), 1);

    execution.cleanup().await.unwrap();
    execution.cleanup().await.unwrap();
    assert!(folders(&harness.executions_dir()).is_empty());
    if let Some(cgroup) = cgroup {
        assert!(!std::path::Path::new(&cgroup).exists(), "cgroup {cgroup} is left");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_of_running_execution_kills_it_first() {
    let harness = Harness::new().await;
    let (execution, recorder) = harness.start(&PackageBuilder::bash("echo ready\nsleep 1000\n")).await;
    recorder.line_containing(Channel::Program, "ready").await;

    execution.cleanup().await.unwrap();
    assert_eq!(state(&recorder.terminal().await), ExecutionState::Cancelled { forced: true });
    assert!(folders(&harness.executions_dir()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_backend_removes_leftovers_of_dead_hosts() {
    let harness = Harness::new().await;
    let executions = harness.executions_dir();
    let current = Owner::current().unwrap();
    let dead = Owner { pid: current.pid, start_time: current.start_time + 1 };
    std::fs::create_dir_all(executions.join("old-run-abc/package")).unwrap();
    dead.write(&executions.join("old-run-abc")).unwrap();
    std::fs::create_dir_all(executions.join("live-run-abc")).unwrap();
    current.write(&executions.join("live-run-abc")).unwrap();

    let settings = tower_plugin_subprocess::Settings { work_dir: Some(harness.work.path().join("work")), ..Default::default() };
    let _second = tower_plugin_subprocess::SubprocessBackend::new(settings).await.unwrap();
    assert_eq!(folders(&executions), ["live-run-abc"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_endpoint_is_loopback_port() {
    let harness = Harness::new().await;
    let mut spec = PackageBuilder::bash("true\n").spec(harness.work.path(), "run-service");
    spec.network.port = Some(8123).into();
    spec.network.expose_service = true;
    let (execution, recorder) = harness.start_spec(spec).await;
    let endpoint = execution.service_endpoint().unwrap().unwrap();
    assert_eq!(endpoint.host.as_str(), "127.0.0.1");
    assert_eq!(endpoint.port, 8123);
    recorder.terminal().await;

    let (plain, recorder) = harness.start(&PackageBuilder::bash("true\n")).await;
    assert_eq!(plain.service_endpoint().unwrap(), None);
    recorder.terminal().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_returns_latest_state() {
    let harness = Harness::new().await;
    let (execution, recorder) = harness.start(&PackageBuilder::bash("echo ready\nsleep 1000\n")).await;
    recorder.line_containing(Channel::Program, "ready").await;
    assert_eq!(state(&execution.status().await.unwrap()), ExecutionState::Running);

    execution.terminate(Duration::from_secs(5)).await.unwrap();
    let terminal = recorder.terminal().await;
    assert_eq!(execution.status().await.unwrap(), terminal);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_work_dir_and_bash() {
    let harness = Harness::new().await;
    let health = harness.backend.health().await;
    assert!(health.healthy, "{}", health.message);
    assert!(health.message.contains("bash at"), "{}", health.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpu_request_is_unsupported() {
    let harness = Harness::new().await;
    let mut spec = PackageBuilder::bash("true\n").spec(harness.work.path(), "run-gpu");
    spec.limits.gpu_count = Some(1).into();
    let (error, _) = rejected(&harness, spec).await;
    assert_eq!(error.code_name(), "unsupported");
}

#[test]
fn plugin_module_exports_name_and_settings_schema() {
    let module = tower_plugin_subprocess::tower_plugin_root_module();
    assert_eq!(module.name().as_str(), "subprocess");
    let schema = (module.settings_schema())();
    assert!(schema.contains("max_line_bytes"), "{schema}");
    assert!(schema.contains("drain_timeout_seconds"), "{schema}");
}
