//! Python apps prepared with uv. uv runs with `--offline`, so these tests use no network once
//! uv is there. When uv is not on PATH, the plugin installs it with pip into a work folder that
//! every run of these tests shares, so that happens once.

mod common;

use common::{state, Harness, PackageBuilder, Recorder};
use std::path::PathBuf;
use tower_plugin_api::error::code_name;
use tower_plugin_api::sdk::Execution;
use tower_plugin_api::{ExecutionState, ExecutionStatus, SetupPhaseKind, Stream};
use tower_plugin_subprocess::{Settings, SubprocessBackend};

/// Returns the work folder shared by the Python tests, which keeps the uv the plugin installed.
fn shared_work_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("subprocess-python-work")
}

async fn python_backend(adjust: impl FnOnce(&mut Settings)) -> SubprocessBackend {
    let mut settings = Settings { work_dir: Some(shared_work_dir()), uv_args: vec!["--offline".into()], ..Settings::default() };
    adjust(&mut settings);
    <SubprocessBackend as tower_plugin_api::sdk::Backend>::new(settings).await.unwrap()
}

/// Tells whether the execution failed because uv could be neither found nor installed, and
/// prints why the test is skipped.
fn uv_unavailable(status: &ExecutionStatus, recorder: &Recorder) -> bool {
    let ExecutionState::Failed { message, .. } = state(status) else { return false };
    let unavailable = message.contains("uv was not found") || message.contains("installing uv failed");
    if unavailable {
        eprintln!("skipped: uv cannot be found or installed here: {message}\nsetup output:\n{}", recorder.setup_text());
    }
    unavailable
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_hello_world_runs_offline() {
    let backend = python_backend(|_| {}).await;
    let packages = tempfile::tempdir().unwrap();
    let script = "import os, sys\nprint('hello from python')\nprint(sys.prefix)\nprint(os.environ['PYTHONUNBUFFERED'])\n";
    let spec = PackageBuilder::python(script).spec(packages.path(), "run-python");
    let recorder = Recorder::default();
    let execution = tower_plugin_api::sdk::Backend::create(&backend, spec, recorder.sink()).await.unwrap();

    let status = recorder.terminal().await;
    if uv_unavailable(&status, &recorder) {
        execution.cleanup().await.unwrap();
        return;
    }
    assert_eq!(state(&status), ExecutionState::Exited, "setup output:\n{}", recorder.setup_text());
    let lines = recorder.program_lines(Stream::Stdout);
    assert_eq!(lines[0], "hello from python");
    assert!(lines[1].ends_with("/package/app/.venv"), "the app ran outside its venv: {lines:?}");
    assert_eq!(lines[2], "1");
    let installing = recorder.statuses().iter().any(|status| {
        matches!(state(status), ExecutionState::Preparing { phase } if phase.as_enum() == Ok(&SetupPhaseKind::InstallingDependencies))
    });
    assert!(installing);
    let setup = recorder.setup_text();
    assert!(setup.contains("Creating virtual environment"), "uv venv output is not on the setup channel:\n{setup}");
    recorder.assert_terminal_is_last();

    let execution_dir = execution.execution_dir().to_path_buf();
    assert!(execution_dir.join("package/app/.venv").is_dir());
    execution.cleanup().await.unwrap();
    assert!(!execution_dir.exists(), "cleanup left the venv");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_dependency_fails_setup_with_uv_output() {
    let backend = python_backend(|_| {}).await;
    let packages = tempfile::tempdir().unwrap();
    let pyproject = "[project]\nname = \"app\"\nversion = \"0.1.0\"\nrequires-python = \">=3.8\"\ndependencies = [\"tower-host-no-such-package-4711\"]\n";
    let spec = PackageBuilder::python("print('never')\n").file("app/pyproject.toml", pyproject).spec(packages.path(), "run-missing-dep");
    let recorder = Recorder::default();
    let execution = tower_plugin_api::sdk::Backend::create(&backend, spec, recorder.sink()).await.unwrap();

    let status = recorder.terminal().await;
    if uv_unavailable(&status, &recorder) {
        execution.cleanup().await.unwrap();
        return;
    }
    let ExecutionState::Failed { code, stage, message, retryable } = state(&status) else { panic!("{status:?}") };
    assert_eq!(code_name(&code), "invalid_package");
    assert_eq!(stage.as_enum().unwrap().as_str(), "setup");
    assert!(message.contains("uv sync"), "{message}");
    assert!(message.contains("setup channel"), "{message}");
    assert!(!retryable);
    let setup = recorder.setup_text();
    assert!(setup.contains("tower-host-no-such-package-4711"), "uv's error is not on the setup channel:\n{setup}");
    assert!(recorder.program_lines(Stream::Stdout).is_empty());
    execution.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_paths_and_requirements_are_used() {
    let backend = python_backend(|_| {}).await;
    let packages = tempfile::tempdir().unwrap();
    let manifest = serde_json::json!({
        "version": 3, "invoke": "main.py", "import_paths": ["modules/lib_a"],
        "app_dir_name": "app", "modules_dir_name": "modules"
    });
    let spec = PackageBuilder::python("import mod_a\nprint(mod_a.NAME)\n")
        .manifest(manifest)
        .file("modules/lib_a/mod_a.py", "NAME = 'from lib_a'\n")
        .file("app/requirements.txt", "# no dependencies\n")
        .spec(packages.path(), "run-imports");
    let recorder = Recorder::default();
    let execution = tower_plugin_api::sdk::Backend::create(&backend, spec, recorder.sink()).await.unwrap();

    let status = recorder.terminal().await;
    if uv_unavailable(&status, &recorder) {
        execution.cleanup().await.unwrap();
        return;
    }
    assert_eq!(state(&status), ExecutionState::Exited, "setup output:\n{}", recorder.setup_text());
    assert_eq!(recorder.program_lines(Stream::Stdout), ["from lib_a"]);
    execution.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_uv_without_install_fails_with_help() {
    let harness = Harness::with(|settings| {
        settings.uv = "/nonexistent/uv".into();
        settings.install_uv = false;
    })
    .await;
    let (status, _) = harness.run(&PackageBuilder::python("print('never')\n")).await;
    let ExecutionState::Failed { code, stage, message, .. } = state(&status) else { panic!("{status:?}") };
    assert_eq!(code_name(&code), "invalid_config");
    assert_eq!(stage.as_enum().unwrap().as_str(), "setup");
    assert!(message.contains("uv was not found"), "{message}");
    assert!(message.contains("install_uv"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "downloads uv from the Python package index; run with --ignored where that is reachable"]
async fn uv_is_installed_with_pip_when_missing() {
    let work = tempfile::tempdir().unwrap();
    let settings = Settings {
        work_dir: Some(work.path().to_path_buf()),
        uv: "tower-host-test-no-such-uv".into(),
        uv_args: vec!["--offline".into()],
        ..Settings::default()
    };
    let backend = <SubprocessBackend as tower_plugin_api::sdk::Backend>::new(settings).await.unwrap();
    let spec = PackageBuilder::python("print('installed')\n").spec(work.path(), "run-install-uv");
    let recorder = Recorder::default();
    let execution = tower_plugin_api::sdk::Backend::create(&backend, spec, recorder.sink()).await.unwrap();

    let status = recorder.terminal().await;
    if uv_unavailable(&status, &recorder) {
        execution.cleanup().await.unwrap();
        return;
    }
    assert_eq!(state(&status), ExecutionState::Exited, "setup output:\n{}", recorder.setup_text());
    assert!(recorder.setup_text().contains("installing it with"), "{}", recorder.setup_text());
    assert!(work.path().join("cache/uv-install/bin/uv").is_file());
    assert_eq!(recorder.program_lines(Stream::Stdout), ["installed"]);
}
