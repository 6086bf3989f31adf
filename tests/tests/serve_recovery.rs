//! `tower-host serve` across restarts: SIGKILL mid-execution with a backend that cannot recover
//! (lost) and one that can (the scripted fixture with `recovery_dir`), and the shutdown policies.

use std::time::{Duration, Instant};
use tower_host_tests::http::{Client, StreamEnd};
use tower_host_tests::serve::{create, pack_example, ServeSetup};
use tower_host_tests::*;

const FINISH_TIMEOUT: Duration = Duration::from_secs(60);
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

fn read_complete(client: &Client, path: &str) -> Vec<serde_json::Value> {
    let (status, mut stream) = client.stream(path);
    assert_eq!(status, 200, "GET {path}");
    let (records, end) = stream.read_all();
    assert_eq!(end, StreamEnd::Complete, "GET {path} ended early");
    records
}

fn seqs(records: &[serde_json::Value]) -> Vec<u64> {
    records.iter().map(|record| record["seq"].as_u64().expect("seq")).collect()
}

fn lines(records: &[serde_json::Value]) -> Vec<String> {
    records.iter().map(|record| record["line"].as_str().expect("line").to_string()).collect()
}

/// Follows an execution's logs until `count` records arrived; returns them.
fn follow_until(client: &Client, id: &str, count: usize) -> (Vec<serde_json::Value>, tower_host_tests::http::LineStream) {
    let (status, mut stream) = client.stream(&format!("/v1/executions/{id}/logs?follow=true"));
    assert_eq!(status, 200);
    let mut records = Vec::new();
    while records.len() < count {
        let line = stream.next_line().expect("a log record");
        records.push(serde_json::from_str(&line).unwrap());
    }
    (records, stream)
}

/// The slow script of these tests: 2 setup lines, then 60 lines 50 ms apart.
const SLOW: [(&str, &str); 3] = [("setup_lines", "2"), ("lines", "60"), ("interval_ms", "50")];

#[test]
fn sigkill_marks_unrecoverable_execution_lost() {
    let setup = ServeSetup::new(&fixture_plugin("scripted"), "", "");
    let mut host = setup.start();
    create(&host.client, "crash-1", &pack_example("hello-world"), &SLOW);
    let (seen, mut stream) = follow_until(&host.client, "crash-1", 20);
    host.kill();
    // The consumer's stream of the killed host is cut, never completed.
    loop {
        match stream.next_line() {
            Ok(line) => assert!(line.starts_with("{\"seq\":"), "{line}"),
            Err(end) => {
                assert!(matches!(end, StreamEnd::Aborted(_)), "{end:?}");
                break;
            }
        }
    }

    let host = setup.start();
    let finished = host.wait_finished("crash-1", FINISH_TIMEOUT);
    assert_eq!(finished["status"]["state"], "lost", "{finished}");
    assert!(finished["status"]["message"].as_str().unwrap().contains("could not reattach"), "{finished}");
    assert!(finished["status"]["started_at"].is_string(), "{finished}");
    assert_eq!(finished["recoveries"], 1);

    let replay = read_complete(&host.client, "/v1/executions/crash-1/logs?follow=true");
    assert!(replay.len() >= seen.len(), "records were lost: saw {} before the crash, {} after", seen.len(), replay.len());
    assert_eq!(&replay[..seen.len()], &seen[..], "the replay differs from what consumers saw before the crash");
    assert_eq!(seqs(&replay), (0..replay.len() as u64).collect::<Vec<_>>(), "gap or duplicate in the replay");
    assert_eq!(replay.len() as u64, finished["log_records"].as_u64().unwrap());
    let events = read_complete(&host.client, "/v1/executions/crash-1/events");
    assert_eq!(events.last().unwrap()["state"], "lost");
    assert_eq!(events.iter().filter(|event| event["state"] == "exited").count(), 0);
    let metrics = host.client.get("/v1/metrics").text();
    assert!(metrics.contains("tower_host_recoveries_total{result=\"lost\"} 1"), "{metrics}");
}

#[test]
fn sigkill_then_recover_continues_without_gap() {
    let scripts = tempfile::tempdir().unwrap();
    let settings = format!("recovery_dir = {:?}", scripts.path().display().to_string());
    let setup = ServeSetup::new(&fixture_plugin("scripted"), &settings, "");
    let mut host = setup.start();
    create(&host.client, "crash-2", &pack_example("hello-world"), &SLOW);
    let (seen, _stream) = follow_until(&host.client, "crash-2", 20);
    host.kill();
    std::thread::sleep(Duration::from_millis(300));

    let host = setup.start();
    let follower = {
        let client = host.client.clone();
        std::thread::spawn(move || read_complete(&client, "/v1/executions/crash-2/logs?follow=true"))
    };
    let finished = host.wait_finished("crash-2", FINISH_TIMEOUT);
    assert_eq!(finished["status"]["state"], "exited", "{finished}");
    assert_eq!(finished["recoveries"], 1);
    let replay = follower.join().unwrap();
    let expected: Vec<String> = ["setup 0", "setup 1"].into_iter().map(String::from).chain((0..60).map(|n| format!("line {n}"))).collect();
    assert_eq!(lines(&replay), expected, "a record was lost or duplicated across the restart");
    assert_eq!(seqs(&replay), (0..62).collect::<Vec<_>>());
    assert_eq!(&replay[..seen.len()], &seen[..]);

    let events = read_complete(&host.client, "/v1/executions/crash-2/events");
    let states: Vec<_> = events.iter().map(|event| event["state"].as_str().unwrap().to_string()).collect();
    assert_eq!(states, ["preparing", "preparing", "running", "exited"], "the reattach repeated or lost a status");
    let metrics = host.client.get("/v1/metrics").text();
    assert!(metrics.contains("tower_host_recoveries_total{result=\"recovered\"} 1"), "{metrics}");
}

#[test]
fn leave_running_policy_lets_next_host_recover() {
    let scripts = tempfile::tempdir().unwrap();
    let settings = format!("recovery_dir = {:?}", scripts.path().display().to_string());
    let setup = ServeSetup::new(&fixture_plugin("scripted"), &settings, "shutdown = \"leave_running\"");
    let mut host = setup.start();
    create(&host.client, "left", &pack_example("hello-world"), &SLOW);
    follow_until(&host.client, "left", 10);
    host.signal(libc::SIGTERM);
    let status = host.wait(EXIT_TIMEOUT).expect("the host exits after SIGTERM");
    assert_eq!(status.code(), Some(0), "{}", host.stderr());

    let host = setup.start();
    let finished = host.wait_finished("left", FINISH_TIMEOUT);
    assert_eq!(finished["status"]["state"], "exited", "{finished}");
    let replay = read_complete(&host.client, "/v1/executions/left/logs");
    assert_eq!(seqs(&replay), (0..62).collect::<Vec<_>>());
    assert_eq!(replay[61]["line"], "line 59");
}

#[test]
fn terminate_policy_cancels_running_executions() {
    let setup = ServeSetup::new(&fixture_plugin("scripted"), "", "shutdown = \"terminate\"\nshutdown_grace = \"5s\"");
    let mut host = setup.start();
    create(&host.client, "stopped", &pack_example("hello-world"), &[("run_ms", "60000")]);
    host.wait_for("stopped", FINISH_TIMEOUT, |execution| execution["status"]["state"] == "running");
    let started = Instant::now();
    host.signal(libc::SIGTERM);
    assert_eq!(host.wait(EXIT_TIMEOUT).expect("the host exits").code(), Some(0), "{}", host.stderr());
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());

    let host = setup.start();
    let finished = host.wait_finished("stopped", FINISH_TIMEOUT);
    assert_eq!(finished["status"]["state"], "cancelled", "{finished}");
    assert_eq!(finished["recoveries"], 0, "a finished execution needs no reattach");
}

#[test]
fn wait_policy_waits_and_rejects_new_creates() {
    let setup = ServeSetup::new(&fixture_plugin("scripted"), "", "shutdown = \"wait\"");
    let mut host = setup.start();
    let package = pack_example("hello-world");
    create(&host.client, "waited-for", &package, &[("run_ms", "1500")]);
    host.wait_for("waited-for", FINISH_TIMEOUT, |execution| execution["status"]["state"] == "running");
    host.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(200));
    let rejected = host.client.create_upload(&tower_host_tests::serve::upload_spec("late", &package, &[]), &package.bytes);
    assert_eq!(rejected.status, 503, "{}", rejected.text());
    assert_eq!(rejected.error_code(), "shutting_down");
    assert_eq!(host.client.get("/v1/health").status, 503);
    assert_eq!(host.wait(EXIT_TIMEOUT).expect("the host exits").code(), Some(0));

    let host = setup.start();
    assert_eq!(host.client.get("/v1/executions/waited-for").json()["status"]["state"], "exited");
}

#[test]
fn queued_execution_at_restart_fails_as_retryable() {
    let setup = ServeSetup::new(&fixture_plugin("scripted"), "", "max_running = 1");
    let mut host = setup.start();
    let package = pack_example("hello-world");
    create(&host.client, "holder", &package, &[("run_ms", "60000")]);
    create(&host.client, "queued", &package, &[]);
    host.wait_for("holder", FINISH_TIMEOUT, |execution| execution["status"]["state"] == "running");
    host.kill();

    let host = setup.start();
    let queued = host.wait_finished("queued", FINISH_TIMEOUT);
    assert_eq!(queued["status"]["state"], "failed", "{queued}");
    assert_eq!(queued["status"]["retryable"], true);
    assert_eq!(queued["status"]["code"], "unavailable");
    assert_eq!(host.wait_finished("holder", FINISH_TIMEOUT)["status"]["state"], "lost");
    let metrics = host.client.get("/v1/metrics").text();
    assert!(metrics.contains("tower_host_recoveries_total{result=\"not_submitted\"} 1"), "{metrics}");
}

#[test]
fn log_limit_holds_across_restart() {
    let scripts = tempfile::tempdir().unwrap();
    let settings = format!("recovery_dir = {:?}", scripts.path().display().to_string());
    let setup = ServeSetup::new(&fixture_plugin("scripted"), &settings, "shutdown = \"leave_running\"\nmax_log_bytes = 1500");
    let mut host = setup.start();
    create(&host.client, "capped", &pack_example("hello-world"), &SLOW);
    let (status, mut stream) = host.client.stream("/v1/executions/capped/logs?follow=true");
    assert_eq!(status, 200);
    // The restart comes after the limit was reached and before the app's end.
    while !stream.next_line().expect("a log record").contains("\"line\":\"tower-host:") {}
    host.signal(libc::SIGTERM);
    assert_eq!(host.wait(EXIT_TIMEOUT).expect("the host exits after SIGTERM").code(), Some(0), "{}", host.stderr());

    let host = setup.start();
    let finished = host.wait_finished("capped", FINISH_TIMEOUT);
    assert_eq!(finished["status"]["state"], "exited", "{finished}");
    let records = read_complete(&host.client, "/v1/executions/capped/logs");
    let all = lines(&records);
    let app_records = all.len() - 2;
    let expected: Vec<String> = ["setup 0", "setup 1"].into_iter().map(String::from).chain((0..60).map(|n| format!("line {n}"))).collect();
    assert_eq!(all[..app_records], expected[..app_records], "the app's records are a prefix of its output");
    assert_eq!(all[app_records], "tower-host: this execution's log reached serve.max_log_bytes (1500 bytes), so its further output is dropped");
    // The restarted host counts what the backend replays beyond the journalled records.
    assert_eq!(all[app_records + 1], format!("tower-host: dropped {} log records over serve.max_log_bytes (1500 bytes)", 62 - app_records));
    assert_eq!(seqs(&records), (0..all.len() as u64).collect::<Vec<_>>());
}
