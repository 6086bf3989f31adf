//! The mapping of a bash app's end to a terminal state, and the app's working folder, session
//! and arguments.

mod common;

use common::{state, Harness, PackageBuilder};
use std::time::{Duration, Instant};
use tower_plugin_api::{Channel, ExecutionState, SetupPhaseKind, Stream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bash_app_exit_zero_with_output() {
    let harness = Harness::new().await;
    let (status, recorder) = harness.run(&PackageBuilder::bash("echo hello\necho oops >&2\n")).await;

    assert_eq!(state(&status), ExecutionState::Exited);
    assert!(status.ended_at.is_some());
    assert_eq!(recorder.program_lines(Stream::Stdout), ["hello"]);
    assert_eq!(recorder.program_lines(Stream::Stderr), ["oops"]);
    let names: Vec<String> = recorder
        .statuses()
        .iter()
        .map(|status| match state(status) {
            ExecutionState::Preparing { phase } => phase.as_enum().unwrap().as_str().to_string(),
            other => other.name().to_string(),
        })
        .collect();
    assert_eq!(names, ["staging_package", "starting", "running", "exited"]);
    recorder.assert_terminal_is_last();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_138_is_crashed_with_code() {
    let harness = Harness::new().await;
    let (status, _) = harness.run(&PackageBuilder::bash("exit 138\n")).await;
    assert_eq!(state(&status), ExecutionState::crashed_with_code(138));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigsegv_is_crashed_by_signal_11() {
    let harness = Harness::new().await;
    let (status, _) = harness.run(&PackageBuilder::bash("kill -SEGV $$\n")).await;
    assert_eq!(state(&status), ExecutionState::crashed_by_signal(11));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_139_is_a_code_not_a_signal() {
    let harness = Harness::new().await;
    let (status, _) = harness.run(&PackageBuilder::bash("exit 139\n")).await;
    assert_eq!(state(&status), ExecutionState::crashed_with_code(139));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_is_at_end_of_file() {
    let harness = Harness::new().await;
    let started = Instant::now();
    let (status, recorder) = harness.run(&PackageBuilder::bash("cat\necho after-cat\n")).await;
    assert_eq!(state(&status), ExecutionState::Exited);
    assert_eq!(recorder.program_lines(Stream::Stdout), ["after-cat"]);
    assert!(started.elapsed() < Duration::from_secs(10), "cat waited for input");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_leads_its_own_session() {
    let harness = Harness::new().await;
    let (status, recorder) = harness.run(&PackageBuilder::bash("ps -o sid=,pgid= -p $$\necho $$\n")).await;
    assert_eq!(state(&status), ExecutionState::Exited);
    let lines = recorder.program_lines(Stream::Stdout);
    let pid = lines[1].trim();
    let ids: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(ids, [pid, pid]);
    let metadata_pid = status.metadata.iter().find(|pair| pair.key.as_str() == "pid").unwrap();
    assert_eq!(metadata_pid.value.as_str(), pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_v1_runs_in_package_root() {
    let harness = Harness::new().await;
    let package = PackageBuilder::bash("")
        .without_files()
        .manifest(serde_json::json!({"version": 1, "invoke": "run.sh"}))
        .file("run.sh", "ls\n");
    let (status, recorder) = harness.run(&package).await;
    assert_eq!(state(&status), ExecutionState::Exited);
    let lines = recorder.program_lines(Stream::Stdout);
    assert!(lines.contains(&"MANIFEST".to_string()), "{lines:?}");
    assert!(lines.contains(&"run.sh".to_string()), "{lines:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_v3_runs_in_app_dir() {
    let harness = Harness::new().await;
    let (status, recorder) = harness.run(&PackageBuilder::bash("pwd\n")).await;
    assert_eq!(state(&status), ExecutionState::Exited);
    let lines = recorder.program_lines(Stream::Stdout);
    assert!(lines[0].ends_with("/package/app"), "{lines:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entrypoint_and_command_replace_interpreter_and_script() {
    let harness = Harness::new().await;
    let mut spec = PackageBuilder::bash("echo not-this\n").spec(harness.work.path(), "run-override");
    spec.runtime.entrypoint = vec!["bash".into(), "-c".into()].into();
    spec.runtime.command = vec!["echo \"override $0 $(basename $PWD)\"".into(), "zero".into()].into();
    let (_execution, recorder) = harness.start_spec(spec).await;
    let status = recorder.terminal().await;
    assert_eq!(state(&status), ExecutionState::Exited);
    assert_eq!(recorder.program_lines(Stream::Stdout), ["override zero app"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_entrypoint_fails_as_invalid_spec() {
    let harness = Harness::new().await;
    let mut spec = PackageBuilder::bash("true\n").spec(harness.work.path(), "run-missing");
    spec.runtime.entrypoint = vec!["/nonexistent/interpreter".into()].into();
    let (_execution, recorder) = harness.start_spec(spec).await;
    let status = recorder.terminal().await;
    let ExecutionState::Failed { code, message, .. } = state(&status) else { panic!("{status:?}") };
    assert_eq!(tower_plugin_api::error::code_name(&code), "invalid_spec");
    assert!(message.contains("/nonexistent/interpreter"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bash_app_has_no_setup_phase_or_lines() {
    let harness = Harness::new().await;
    let (_, recorder) = harness.run(&PackageBuilder::bash("true\n")).await;
    let installing = recorder.statuses().iter().any(|status| {
        matches!(state(status), ExecutionState::Preparing { phase } if phase.as_enum() == Ok(&SetupPhaseKind::InstallingDependencies))
    });
    assert!(!installing);
    assert!(recorder.logs().iter().all(|record| record.channel == Channel::Program));
}
