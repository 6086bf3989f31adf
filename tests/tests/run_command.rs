//! `tower-host run` end to end with the scripted fixture plugin: exit codes, output formats,
//! Ctrl-C handling, timeouts, panics, and the spec as the plugin receives it.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};
use tower_host_tests::*;

const USAGE: i32 = 64;
const HOST_FAILURE: i32 = 70;
const TIMED_OUT: i32 = 124;
const FAILED: i32 = 125;
const CANCELLED: i32 = 130;

fn scripted() -> TestConfig {
    TestConfig::new(&fixture_plugin("scripted"), "")
}

fn run(config: &TestConfig, args: &[&str]) -> HostOutput {
    capture(host(Some(&config.path)).arg("run").arg(example("hello-world")).args(args))
}

fn last_status(output: &HostOutput) -> serde_json::Value {
    output.json_events().into_iter().filter(|event| event["event"] == "status").last().expect("a status event")
}

#[test]
fn exit_code_of_app_passes_through() {
    let config = scripted();
    assert_eq!(run(&config, &[]).code, Some(0));
    let output = run(&config, &["--param", "exit_code=3"]);
    assert_eq!(output.code, Some(3), "{output:?}");
    assert!(output.stderr.contains("tower-host: crashed with exit code 3"), "{output:?}");
    let output = run(&config, &["--param", "exit_code=138"]);
    assert_eq!(output.code, Some(138), "{output:?}");
}

#[test]
fn death_by_signal_exits_with_128_plus_signal() {
    let output = run(&scripted(), &["--param", "signal=11"]);
    assert_eq!(output.code, Some(139), "{output:?}");
    assert!(output.stderr.contains("killed by signal 11 (SIGSEGV)"), "{output:?}");
}

#[test]
fn json_output_has_statuses_and_numbered_logs_in_order() {
    let output = run(&scripted(), &["--output", "json", "--param", "lines=50", "--param", "setup_lines=2"]);
    assert_eq!(output.code, Some(0), "{output:?}");
    let events = output.json_events();
    assert!(events.iter().all(|event| event.get("event").is_some()), "{output:?}");
    let states: Vec<_> = events.iter().filter(|e| e["event"] == "status").map(|e| e["state"].as_str().unwrap().to_string()).collect();
    assert_eq!(states, ["preparing", "running", "exited"], "{output:?}");
    let logs: Vec<_> = events.iter().filter(|e| e["event"] == "log").collect();
    assert_eq!(logs.len(), 52);
    for (index, log) in logs.iter().enumerate() {
        assert_eq!(log["seq"], index as u64, "{log}");
        assert!(log["timestamp"].as_str().unwrap().ends_with('Z'), "{log}");
    }
    assert_eq!(logs[0]["channel"], "setup");
    assert_eq!(logs[2]["line"], "line 0");
    assert_eq!(logs[2]["stream"], "stdout");
    assert_eq!(events.last().unwrap()["event"], "status", "the terminal status comes after every log record");
}

#[test]
fn text_output_marks_setup_and_separates_streams() {
    let output = run(&scripted(), &["--param", "lines=2", "--param", "stderr_lines=1", "--param", "setup_lines=1"]);
    assert_eq!(output.code, Some(0), "{output:?}");
    assert_eq!(output.stdout, "line 0\nline 1\n");
    assert!(output.stderr.contains("[setup] setup 0\n"), "{output:?}");
    assert!(output.stderr.contains("\nerror 0\n"), "{output:?}");
    assert!(!output.stderr.contains("[setup] error"), "{output:?}");
}

#[test]
fn panic_in_create_fails_that_execution_only() {
    let output = run(&scripted(), &["--param", "panic=create"]);
    assert_eq!(output.code, Some(HOST_FAILURE), "{output:?}");
    assert!(output.stderr.contains("plugin `scripted` failed to create execution"), "{output:?}");
    assert!(output.stderr.contains("the plugin panicked: the scripted create panics on request"), "{output:?}");
}

#[test]
fn panic_in_plugin_task_reports_failed_status() {
    let output = run(&scripted(), &["--param", "panic=task", "--output", "json"]);
    assert_eq!(output.code, Some(FAILED), "{output:?}");
    let status = last_status(&output);
    assert_eq!(status["state"], "failed", "{output:?}");
    assert_eq!(status["code"], "internal");
    assert!(status["message"].as_str().unwrap().contains("stopped reporting this execution"), "{output:?}");
}

#[test]
fn setup_failure_exits_with_failed_code() {
    let output = run(&scripted(), &["--param", "fail_setup=dependency nope not found"]);
    assert_eq!(output.code, Some(FAILED), "{output:?}");
    assert!(output.stderr.contains("failed during setup: dependency nope not found (invalid_package)"), "{output:?}");
}

#[test]
fn host_enforces_timeout_when_backend_does_not() {
    let started = Instant::now();
    let output = run(&scripted(), &["--param", "run_ms=60000", "--timeout", "1s", "--grace", "1s", "--output", "json"]);
    assert_eq!(output.code, Some(TIMED_OUT), "{output:?}");
    assert_eq!(last_status(&output)["state"], "timed_out");
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
}

#[test]
fn host_timeout_counts_from_running() {
    // Setup takes 1.5 s, longer than the 1 s timeout, and the program itself 0.3 s.
    let output = run(&scripted(), &["--param", "setup_ms=1500", "--param", "run_ms=300", "--timeout", "1s", "--output", "json"]);
    assert_eq!(output.code, Some(0), "{output:?}");
    assert_eq!(last_status(&output)["state"], "exited");
}

#[test]
fn spec_reaches_plugin_intact() {
    let config = scripted();
    let mut command = host(Some(&config.path));
    command
        .arg("run")
        .arg(example("params-and-secret"))
        .args(["--id", "run-42", "--param", "echo_spec=1", "--param", "name=tower", "--env", "EXTRA=1"])
        .args(["--environment", "staging", "--secret", "API_TOKEN", "--timeout", "90s", "--output", "json"])
        .env("API_TOKEN", "hunter2-secret");
    let output = capture(&mut command);
    assert_eq!(output.code, Some(0), "{output:?}");
    assert!(!output.stdout.contains("hunter2-secret") && !output.stderr.contains("hunter2-secret"), "{output:?}");
    let echo = output.json_events().into_iter().find(|e| e["event"] == "log").expect("echo line");
    let spec: serde_json::Value = serde_json::from_str(echo["line"].as_str().unwrap()).unwrap();
    assert_eq!(spec["run_id"], "run-42");
    assert_eq!(spec["environment"], "staging");
    assert_eq!(spec["limits"]["timeout_seconds"], 90);
    assert_eq!(spec["env"][0], serde_json::json!({"key": "EXTRA", "value": "1"}));
    assert_eq!(spec["secrets"][0]["name"], "API_TOKEN");
    assert_eq!(spec["secrets"][0]["value"], "***");
    assert_eq!(spec["secret_lengths"][0], "hunter2-secret".len());
    let parameters = spec["parameters"].as_array().unwrap();
    assert!(parameters.contains(&serde_json::json!({"key": "name", "value": "tower"})), "{spec}");
    let package = &spec["package"]["file"];
    assert_eq!(package["sha256"].as_str().unwrap().len(), 64, "{spec}");
}

#[test]
fn missing_secret_variable_is_usage_error() {
    let output = capture(host(Some(&scripted().path)).arg("run").arg(example("hello-world")).args(["--secret", "NOT_SET_ANYWHERE_X"]));
    assert_eq!(output.code, Some(USAGE), "{output:?}");
    assert!(output.stderr.contains("the environment variable `NOT_SET_ANYWHERE_X` is not set"), "{output:?}");
}

#[test]
fn missing_input_is_usage_error() {
    let output = capture(host(Some(&scripted().path)).args(["run", "/nonexistent/app"]));
    assert_eq!(output.code, Some(USAGE), "{output:?}");
    assert!(output.stderr.contains("/nonexistent/app does not exist"), "{output:?}");
    let empty = tempfile::tempdir().unwrap();
    let output = capture(host(Some(&scripted().path)).arg("run").arg(empty.path()));
    assert_eq!(output.code, Some(USAGE), "{output:?}");
    assert!(output.stderr.contains("has no Towerfile"), "{output:?}");
}

/// Starts a long scripted run in JSON mode and waits until it reports `running`.
fn start_long_run(config: &TestConfig, on_terminate: &str, grace: &str) -> (Child, BufReader<std::process::ChildStdout>) {
    let mut child = host(Some(&config.path))
        .arg("run")
        .arg(example("hello-world"))
        .args(["--param", "run_ms=60000", "--param", &format!("on_terminate={on_terminate}"), "--grace", grace, "--output", "json"])
        .stderr(Stdio::null())
        .spawn()
        .expect("tower-host starts");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(stdout.read_line(&mut line).unwrap() > 0, "tower-host ended before the app ran");
        if line.contains("\"state\":\"running\"") {
            return (child, stdout);
        }
    }
}

fn interrupt(child: &Child) {
    let result = unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    assert_eq!(result, 0, "SIGINT delivered");
}

fn finish(mut child: Child, mut stdout: BufReader<std::process::ChildStdout>) -> (Option<i32>, serde_json::Value) {
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    let status = child.wait().unwrap();
    let last = rest.lines().filter(|line| line.contains("\"event\":\"status\"")).last().expect("terminal status").to_string();
    (status.code(), serde_json::from_str(&last).unwrap())
}

#[test]
fn ctrl_c_stops_app_that_exits_on_terminate() {
    let config = scripted();
    let (child, stdout) = start_long_run(&config, "exit", "30s");
    let started = Instant::now();
    interrupt(&child);
    let (code, status) = finish(child, stdout);
    assert_eq!(code, Some(CANCELLED));
    assert_eq!(status["state"], "cancelled");
    assert_eq!(status["forced"], false);
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
}

#[test]
fn ctrl_c_forces_app_that_ignores_terminate_after_grace() {
    let config = scripted();
    let (child, stdout) = start_long_run(&config, "ignore", "1s");
    let started = Instant::now();
    interrupt(&child);
    let (code, status) = finish(child, stdout);
    assert_eq!(code, Some(CANCELLED));
    assert_eq!(status["state"], "cancelled");
    assert_eq!(status["forced"], true);
    assert!(started.elapsed() >= Duration::from_millis(900), "stopped before the grace ran out: {:?}", started.elapsed());
}

#[test]
fn second_ctrl_c_kills_without_waiting_for_grace() {
    let config = scripted();
    let (child, stdout) = start_long_run(&config, "ignore", "60s");
    let started = Instant::now();
    interrupt(&child);
    std::thread::sleep(Duration::from_millis(300));
    interrupt(&child);
    let (code, status) = finish(child, stdout);
    assert_eq!(code, Some(CANCELLED));
    assert_eq!(status["forced"], true);
    assert!(started.elapsed() < Duration::from_secs(20), "waited for the grace period: {:?}", started.elapsed());
}

#[test]
fn plugin_tracing_reaches_host_log_with_plugin_name() {
    let config = scripted();
    let output = capture(host(Some(&config.path)).arg("run").arg(example("hello-world")).args(["--id", "traced-1"]).env("RUST_LOG", "info"));
    assert_eq!(output.code, Some(0), "{output:?}");
    let line = output.stderr.lines().find(|line| line.contains("scripted execution created")).expect("the plugin's event is in the host log");
    assert!(line.contains("plugin=\"scripted\""), "{line}");
    assert!(line.contains("execution.id=\"traced-1\""), "{line}");
}

#[test]
fn bad_arguments_exit_with_usage_code() {
    let config = scripted();
    for args in [&["--param", "NOEQUALS"][..], &["--timeout", "soon"], &["--no-such-flag"]] {
        let output = capture(host(Some(&config.path)).arg("run").arg(example("hello-world")).args(args));
        assert_eq!(output.code, Some(USAGE), "{args:?}: {output:?}");
    }
    let help = capture(host(None).args(["run", "--help"]));
    assert_eq!(help.code, Some(0), "{help:?}");
    assert!(help.stdout.contains("--param"), "{help:?}");
}

#[test]
fn closed_output_stops_app_with_sigpipe_code() {
    let config = scripted();
    let mut child = host(Some(&config.path))
        .arg("run")
        .arg(example("hello-world"))
        .args(["--param", "lines=100000", "--param", "run_ms=60000", "--output", "json"])
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    drop(stdout);
    let started = Instant::now();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(141));
    assert!(started.elapsed() < Duration::from_secs(30), "the app was not stopped: {:?}", started.elapsed());
}

#[test]
fn full_disk_output_is_host_failure() {
    let config = scripted();
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let output = capture(host(Some(&config.path)).arg("run").arg(example("hello-world")).args(["--param", "lines=1000"]).stdout(full));
    assert_eq!(output.code, Some(HOST_FAILURE), "{output:?}");
    assert!(output.stderr.contains("No space left on device"), "{output:?}");
}

#[test]
fn stale_temp_folders_of_gone_runs_are_removed() {
    let temp_root = tempfile::tempdir().unwrap();
    let link = std::fs::read_link("/proc/self/ns/pid").unwrap();
    let namespace = link.to_str().unwrap().trim_start_matches("pid:[").trim_end_matches(']').to_string();
    let mut exited_child = std::process::Command::new("true").spawn().unwrap();
    let exited_pid = exited_child.id();
    exited_child.wait().unwrap();
    let stale = temp_root.path().join(format!("tower-host-run-{namespace}-{exited_pid}-abc123"));
    std::fs::create_dir(&stale).unwrap();
    std::fs::write(stale.join("package.tar.gz"), b"left behind by a killed host").unwrap();
    // A live run, a run of another pid namespace, and names that `run` never gives a folder.
    let untouched = [
        format!("tower-host-run-{namespace}-{}-def456", std::process::id()),
        format!("tower-host-run-1{namespace}-{exited_pid}-abc123"),
        format!("tower-host-run-{namespace}-0{exited_pid}-abc123"),
        format!("tower-host-run-{namespace}-+{exited_pid}-abc123"),
        format!("tower-host-run-{namespace}-{exited_pid}-"),
        "tower-host-run-notes".to_string(),
    ];
    for name in &untouched {
        std::fs::create_dir(temp_root.path().join(name)).unwrap();
    }

    let config = scripted();
    let output = capture(host(Some(&config.path)).env("TMPDIR", temp_root.path()).arg("run").arg(example("hello-world")));
    assert_eq!(output.code, Some(0), "{output:?}");

    // The stale folder is gone, the run removed its own, and the others stay.
    let mut left: Vec<String> = std::fs::read_dir(temp_root.path()).unwrap().map(|entry| entry.unwrap().file_name().into_string().unwrap()).collect();
    left.sort();
    let mut expected = untouched.to_vec();
    expected.sort();
    assert_eq!(left, expected);
}
