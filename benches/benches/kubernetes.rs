//! The kubernetes plugin on the in-repo API server emulator: API requests per execution, for a
//! 5-second and a 60-second app, and the delay between the emulator marking the app container
//! terminated and the host reporting the terminal status.
//!
//! Each app is one `tower-host run --output json` of a bash script that only sleeps. The request
//! counts are the emulator's own, reset before each run, so the host's start-up lookups are
//! included. The delay is measured twice: to the moment the bench reads the host's terminal
//! status line, and to that status's `ended_at`.
//!
//! Needs release builds: `cargo build --release -p tower-host -p tower-plugin-kubernetes`.
//! Runs for about 80 s and stops by itself.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, SystemTime};
use tower_benches::bash_app;
use tower_k8s_emulator::Emulator;
use tower_plugin_api::Timestamp;

/// Name of the app container in the pods the plugin creates.
const APP_CONTAINER: &str = "app";
/// How often the bench reads the emulator's container state.
const POLL_INTERVAL: Duration = Duration::from_millis(5);

struct RunReport {
    exit_code: Option<i32>,
    terminated_at: Option<SystemTime>,
    status_read_at: Option<SystemTime>,
    ended_at: Option<SystemTime>,
}

fn main() {
    let emulator = Emulator::start();
    let config = tower_host_tests::kubernetes_config(emulator.kubeconfig_path(), None, "");
    println!("| App | Exit code | API requests | Requests by verb and resource | Terminated to status read | Terminated to `ended_at` |");
    println!("|---|---|---|---|---|---|");
    for seconds in [5u64, 60] {
        emulator.reset_request_counts();
        let report = run_once(&emulator, &config.path, seconds);
        let counts = emulator.request_counts();
        let by_resource: Vec<String> = counts.iter().map(|(verb, resource, count)| format!("{verb} {resource}: {count}")).collect();
        println!(
            "| sleep {seconds} s | {:?} | {} | {} | {} | {} |",
            report.exit_code,
            counts.total(),
            by_resource.join(", "),
            delay(report.terminated_at, report.status_read_at),
            delay(report.terminated_at, report.ended_at),
        );
    }
    emulator.shutdown();
}

/// Runs one execution of `sleep <seconds>` and records when each side saw its end.
fn run_once(emulator: &Emulator, config: &std::path::Path, seconds: u64) -> RunReport {
    let app = bash_app("sleeper", &format!("sleep {seconds}\n"));
    let mut child = std::process::Command::new(tower_host_tests::host_binary())
        .arg("--config")
        .arg(config)
        .args(["run", "--output", "json", "--timeout", "120s"])
        .arg(app.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("tower-host starts");
    let stdout = child.stdout.take().expect("piped stdout");

    std::thread::scope(|scope| {
        // The plugin deletes the pod at cleanup, so its container state is read while it exists.
        let watcher = scope.spawn(|| {
            let deadline = std::time::Instant::now() + Duration::from_secs(seconds + 60);
            while std::time::Instant::now() < deadline {
                for pod in emulator.pods() {
                    let name = pod.metadata.name.unwrap_or_default();
                    if let Some(at) = emulator.container_terminated_at("default", &name, APP_CONTAINER) {
                        return Some(at);
                    }
                }
                std::thread::sleep(POLL_INTERVAL);
            }
            None
        });

        let mut status_read_at = None;
        let mut ended_at = None;
        for line in BufReader::new(stdout).lines() {
            let line = line.expect("read the host's stdout");
            let read_at = SystemTime::now();
            let event: serde_json::Value = serde_json::from_str(&line).expect("a JSON event");
            let terminal = event["event"] == "status" && !event["ended_at"].is_null();
            if terminal && status_read_at.is_none() {
                status_read_at = Some(read_at);
                let stamp: Timestamp = serde_json::from_value(event["ended_at"].clone()).expect("an RFC 3339 timestamp");
                ended_at = Some(SystemTime::UNIX_EPOCH + Duration::from_nanos(stamp.unix_nanos as u64));
            }
        }
        let exit_code = child.wait().expect("wait for tower-host").code();
        RunReport { exit_code, terminated_at: watcher.join().expect("watcher thread"), status_read_at, ended_at }
    })
}

fn delay(from: Option<SystemTime>, to: Option<SystemTime>) -> String {
    match (from, to) {
        (Some(from), Some(to)) => match to.duration_since(from) {
            Ok(after) => format!("{:.1} ms", after.as_secs_f64() * 1000.0),
            Err(before) => format!("-{:.1} ms", before.duration().as_secs_f64() * 1000.0),
        },
        _ => "not observed".to_string(),
    }
}
