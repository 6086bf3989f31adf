//! The conformance kit against the shipped plugins and against the scripted fixture, which runs
//! nothing and so must fail the checks that look at what an app did.

use tower_conformance::{Outcome, Report};
use tower_host_tests::*;
use tower_k8s_emulator::Emulator;

/// Checks that once failed now and then on the subprocess plugin, which stored a status only after
/// delivering it: `status()` right after the terminal status could still return `running`.
const SUBPROCESS_STATUS_RACE: [&str; 2] = ["lifecycle_order", "terminate_after_end"];

/// Returns the settings for the subprocess plugin with a private work folder and offline uv, or
/// `None` (skipped) when uv or the wheels are missing.
fn subprocess_settings(work: &std::path::Path) -> Option<String> {
    if skip_unless(find_uv().is_some(), "uv is not on PATH") {
        return None;
    }
    let wheels = wheels_dir();
    if skip_unless(wheels.is_some(), "tests/wheels has no wheels") {
        return None;
    }
    let settings = serde_json::json!({
        "work_dir": work.join("work"),
        "uv_cache_dir": std::env::temp_dir().join("tower-host-tests-uv-cache"),
        "uv_args": ["--offline", "--no-index", "--find-links", wheels.unwrap()],
        "install_uv": false,
    });
    Some(settings.to_string())
}

fn assert_no_failure(report: &Report) {
    assert!(report.success(), "{report}");
    for check in &report.checks {
        if let Outcome::Skipped(reason) = &check.outcome {
            assert!(!reason.is_empty(), "{} was skipped without a reason", check.name);
        }
    }
}

#[test]
fn subprocess_plugin_conforms() {
    let work = tempfile::tempdir().unwrap();
    let Some(settings) = subprocess_settings(work.path()) else { return };
    let report = tower_conformance::run_blocking(&shipped_plugin("subprocess"), &settings, &[]).unwrap();
    assert_no_failure(&report);
    assert_eq!(
        report.outcome("recovery_after_restart"),
        Some(&Outcome::Skipped("needs capability recovery, which the backend does not report".into()))
    );
    for name in ["terminate_during_run", "kill_during_run", "killed_behind_back", "timeout_enforced", "logs_long_line"] {
        assert_eq!(report.outcome(name), Some(&Outcome::Passed), "{name}: {report}");
    }
}

#[test]
fn subprocess_status_agrees_after_end() {
    let work = tempfile::tempdir().unwrap();
    let Some(settings) = subprocess_settings(work.path()) else { return };
    for _ in 0..5 {
        let report = tower_conformance::run_blocking(&shipped_plugin("subprocess"), &settings, &SUBPROCESS_STATUS_RACE).unwrap();
        assert_no_failure(&report);
    }
}

/// Checks the kubernetes plugin once failed on the emulator: a last line without newline flagged
/// as SPLIT, the timestamps of the runtime's 16 KiB partial entries (and characters cut between
/// them) inside a long line, and a pod killed after the grace period reported as not forced.
const KUBERNETES_PLUGIN_BUGS: [&str; 3] = ["logs_last_line_without_newline", "logs_long_line", "terminate_forced_after_grace"];

/// Starts an emulator and returns it with the kubernetes plugin's settings for it, or `None`
/// (skipped) when uv or the wheels are missing.
fn kubernetes_settings() -> Option<(Emulator, String)> {
    if skip_unless(find_uv().is_some(), "uv is not on PATH") {
        return None;
    }
    let wheels = wheels_dir();
    if skip_unless(wheels.is_some(), "tests/wheels has no wheels") {
        return None;
    }
    let emulator = Emulator::start();
    let settings = serde_json::json!({
        "kubeconfig": emulator.kubeconfig_path(),
        "namespace": "default",
        "uv_args": ["--offline", "--no-index", "--find-links", wheels.unwrap()],
    });
    Some((emulator, settings.to_string()))
}

#[test]
fn kubernetes_plugin_conforms_on_emulator() {
    let Some((emulator, settings)) = kubernetes_settings() else { return };
    let report = tower_conformance::run_blocking(&shipped_plugin("kubernetes"), &settings, &[]).unwrap();
    assert_no_failure(&report);
    for name in ["recovery_after_restart", "timeout_enforced", "killed_behind_back", "terminate_during_setup"] {
        assert_eq!(report.outcome(name), Some(&Outcome::Passed), "{name}: {report}");
    }
    assert!(emulator.pods().is_empty(), "cleanup left {} pods", emulator.pods().len());
}

#[test]
fn kubernetes_former_bugs_stay_fixed() {
    let Some((_emulator, settings)) = kubernetes_settings() else { return };
    let report = tower_conformance::run_blocking(&shipped_plugin("kubernetes"), &settings, &KUBERNETES_PLUGIN_BUGS).unwrap();
    assert_no_failure(&report);
}

#[test]
fn scripted_fixture_fails_app_checks() {
    let report = tower_conformance::run_blocking(&fixture_plugin("scripted"), "{}", &[]).unwrap();
    let expected_failures = [
        "exit_code_1",
        "exit_code_42",
        "killed_by_signal",
        "setup_failure",
        "missing_interpreter",
        "logs_many_lines",
        "logs_stdout_and_stderr",
        "logs_setup_and_program_channels",
        "logs_last_line_without_newline",
        "logs_invalid_utf8",
        "logs_long_line",
        "terminate_during_setup",
        "terminate_during_run",
        "terminate_forced_after_grace",
        "kill_during_run",
        "concurrent_executions",
        "killed_behind_back",
    ];
    assert_eq!(report.failed(), expected_failures, "{report}");
    for name in ["lifecycle_order", "exit_code_0", "terminate_after_end", "unknown_setting_rejected"] {
        assert_eq!(report.outcome(name), Some(&Outcome::Passed), "{name}: {report}");
    }
    for name in ["timeout_enforced", "recovery_after_restart"] {
        assert!(report.outcome(name).is_some_and(Outcome::is_skipped), "{name}: {report}");
    }
    let Some(Outcome::Failed(reason)) = report.outcome("exit_code_42") else { unreachable!("exit_code_42 failed above") };
    assert!(reason.contains("expected crashed with exit code 42, got exited"), "{reason}");
}

#[test]
fn conformance_command_prints_checks_and_fails() {
    let output = capture(host(None).args(["conformance", "--plugin"]).arg(fixture_plugin("scripted")).args(["--check", "exit_code_0", "--check", "exit_code_1"]));
    assert_eq!(output.code, Some(1), "{output:?}");
    assert!(output.stdout.starts_with("PASS exit_code_0\nFAIL exit_code_1: expected crashed with exit code 1, got exited\n"), "{output:?}");
    assert!(output.stdout.ends_with("1 passed, 1 failed, 0 skipped\n"), "{output:?}");
}

#[test]
fn conformance_command_rejects_unknown_check() {
    let output = capture(host(None).args(["conformance", "--plugin"]).arg(fixture_plugin("scripted")).args(["--check", "no_such_check"]));
    assert_eq!(output.code, Some(64), "{output:?}");
    assert!(output.stderr.contains("unknown check `no_such_check`"), "{output:?}");
}
