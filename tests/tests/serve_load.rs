//! Many concurrent executions through the API: 200 scripted ones in the regular suite, and 500
//! bash apps through the subprocess plugin as an ignored measurement of the host's memory.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tower_host_tests::http::{Client, StreamEnd};
use tower_host_tests::serve::{create, pack_example, ServeHost, ServeSetup, TestPackage};
use tower_host_tests::*;

/// Threads that send the create requests.
const CREATE_THREADS: usize = 8;

/// Creates `count` executions named `<prefix>-<n>` from `CREATE_THREADS` threads. Returns when
/// each create request was sent, indexed by `n`.
fn create_all(client: &Client, package: &Arc<TestPackage>, prefix: &str, count: usize, parameters: &'static [(&'static str, &'static str)]) -> Vec<SystemTime> {
    let threads: Vec<_> = (0..CREATE_THREADS)
        .map(|thread| {
            let client = client.clone();
            let package = Arc::clone(package);
            let prefix = prefix.to_string();
            std::thread::spawn(move || {
                let mut sent = Vec::new();
                for n in (thread..count).step_by(CREATE_THREADS) {
                    sent.push((n, SystemTime::now()));
                    create(&client, &format!("{prefix}-{n}"), &package, parameters);
                }
                sent
            })
        })
        .collect();
    let mut sent_at = vec![SystemTime::UNIX_EPOCH; count];
    for thread in threads {
        for (n, at) in thread.join().expect("create thread") {
            sent_at[n] = at;
        }
    }
    sent_at
}

/// Parses an RFC 3339 timestamp of a log record.
fn record_time(record: &serde_json::Value) -> SystemTime {
    let stamp: tower_plugin_api::Timestamp = serde_json::from_value(record["timestamp"].clone()).expect("an RFC 3339 timestamp");
    SystemTime::UNIX_EPOCH + Duration::from_nanos(u64::try_from(stamp.unix_nanos).expect("a timestamp after 1970"))
}

/// Returns the value at `quantile` (0 to 1) of sorted `values`, by the nearest-rank method.
fn percentile(sorted: &[Duration], quantile: f64) -> Duration {
    let rank = (quantile * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Counts the open file descriptors of a process (entries of `/proc/<pid>/fd`).
fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|entries| entries.count()).unwrap_or(0)
}

/// Follows the logs of every execution at once, one thread each, until each stream completes.
fn follow_all(client: &Client, prefix: &str, count: usize) -> Vec<Vec<serde_json::Value>> {
    let threads: Vec<_> = (0..count)
        .map(|n| {
            let client = client.clone();
            let path = format!("/v1/executions/{prefix}-{n}/logs?follow=true");
            std::thread::spawn(move || {
                let (status, mut stream) = client.stream(&path);
                assert_eq!(status, 200, "{path}");
                let (records, end) = stream.read_all();
                assert_eq!(end, StreamEnd::Complete, "{path}");
                records
            })
        })
        .collect();
    threads.into_iter().map(|thread| thread.join().expect("follow thread")).collect()
}

fn wait_all_finished(host: &ServeHost, count: usize, timeout: Duration) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let list = host.client.get(&format!("/v1/executions?state=finished&limit={}", count.max(1)));
        let finished = list.json()["executions"].as_array().cloned().unwrap_or_default();
        if finished.len() == count {
            return finished;
        }
        assert!(Instant::now() < deadline, "{} of {count} executions finished in {timeout:?}\n{}", finished.len(), host.stderr());
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn two_hundred_concurrent_executions_keep_every_log() {
    const COUNT: usize = 200;
    const PARAMETERS: &[(&str, &str)] = &[("setup_lines", "5"), ("lines", "50"), ("interval_ms", "10"), ("stderr_lines", "10")];
    let started = Instant::now();
    let setup = ServeSetup::new(&fixture_plugin("scripted"), "", "max_running = 256").quiet();
    let host = setup.start();
    let package = Arc::new(pack_example("hello-world"));

    create_all(&host.client, &package, "load", COUNT, PARAMETERS);
    let logs = follow_all(&host.client, "load", COUNT);
    for (n, records) in logs.iter().enumerate() {
        assert_eq!(records.len(), 65, "load-{n} has {} records", records.len());
        for (index, record) in records.iter().enumerate() {
            assert_eq!(record["seq"], index as u64, "load-{n}");
        }
        assert_eq!(records[5]["line"], "line 0", "load-{n}");
        assert_eq!(records[54]["line"], "line 49", "load-{n}");
        assert_eq!(records[64]["line"], "error 9", "load-{n}");
    }
    let finished = wait_all_finished(&host, COUNT, Duration::from_secs(60));
    for execution in &finished {
        assert_eq!(execution["status"]["state"], "exited", "{execution}");
        assert_eq!(execution["log_records"], 65, "{execution}");
    }
    let metrics = host.client.get("/v1/metrics").text();
    assert!(metrics.contains(&format!("tower_host_log_records_total {}", COUNT * 65)), "{metrics}");
    assert!(started.elapsed() < Duration::from_secs(120), "took {:?}", started.elapsed());
}

/// Writes and packs a bash app that prints a line, sleeps `SLEEP_SECONDS` (a parameter) and
/// prints another, so that executions overlap.
fn sleepy_bash_package() -> TestPackage {
    let app = tempfile::tempdir().expect("app folder");
    let towerfile = "[app]\nname = \"sleepy-bash\"\nscript = \"./run.sh\"\n\n[[parameters]]\nname = \"SLEEP_SECONDS\"\ndefault = \"10\"\n";
    std::fs::write(app.path().join("Towerfile"), towerfile).expect("write Towerfile");
    std::fs::write(app.path().join("run.sh"), "#!/usr/bin/env bash\necho \"start\"\nsleep \"$SLEEP_SECONDS\"\necho \"done\"\n").expect("write run.sh");
    // The archive goes outside the app folder, so that packing does not include it.
    let out = tempfile::tempdir().expect("package folder");
    let archive = out.path().join("package.tar.gz");
    tower_package::pack_dir(app.path(), &archive).expect("pack the app");
    let sha256 = tower_package::sha256_file(&archive).expect("hash the package");
    TestPackage { bytes: std::fs::read(&archive).expect("read the package"), sha256 }
}

/// Runs 500 bash apps at once through the subprocess plugin and prints the host's peak RSS,
/// the number recorded in docs/benchmarks.md.
#[test]
#[ignore = "a measurement: 500 bash processes at once; run with `cargo test --test serve_load -- --ignored --nocapture`"]
fn five_hundred_bash_executions_through_subprocess() {
    const COUNT: usize = 500;
    let work = tempfile::tempdir().expect("work folder");
    let settings = format!("work_dir = {:?}\ncgroups = \"off\"", work.path().display().to_string());
    let setup = ServeSetup::new(&shipped_plugin("subprocess"), &settings, "max_running = 500").quiet();
    let host = setup.start();
    let idle_rss = host.peak_rss_kib();
    let package = Arc::new(sleepy_bash_package());

    let idle_fds = open_fds(host.pid());

    let started = Instant::now();
    let sent_at = create_all(&host.client, &package, "bash", COUNT, &[("SLEEP_SECONDS", "10")]);
    let created = started.elapsed();
    let peaks = {
        let client = host.client.clone();
        let pid = host.pid();
        std::thread::spawn(move || {
            let mut peak = 0;
            let mut peak_fds = 0;
            let deadline = Instant::now() + Duration::from_secs(600);
            while Instant::now() < deadline {
                let metrics = client.get("/v1/metrics").text();
                let running = metrics
                    .lines()
                    .find_map(|line| line.strip_prefix("tower_host_executions{state=\"running\"} "))
                    .and_then(|value| value.trim().parse::<u64>().ok())
                    .unwrap_or(0);
                peak = peak.max(running);
                peak_fds = peak_fds.max(open_fds(pid));
                let finished = metrics
                    .lines()
                    .find_map(|line| line.strip_prefix("tower_host_executions_finished_total{state=\"exited\"} "))
                    .and_then(|value| value.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if finished == COUNT {
                    break;
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            (peak, peak_fds)
        })
    };
    let logs = follow_all(&host.client, "bash", COUNT);
    let finished = wait_all_finished(&host, COUNT, Duration::from_secs(600));
    let took = started.elapsed();
    let peak_rss = host.peak_rss_kib();
    let (peak_running, peak_fds) = peaks.join().expect("metrics poller");

    for execution in &finished {
        assert_eq!(execution["status"]["state"], "exited", "{execution}");
    }
    for (n, records) in logs.iter().enumerate() {
        let program: Vec<_> = records.iter().filter(|record| record["channel"] == "program").map(|record| record["line"].as_str().unwrap()).collect();
        assert_eq!(program, ["start", "done"], "bash-{n}");
    }
    // Create to first log: from sending the create request to the timestamp the plugin gave the
    // first record it read, so the delay of the log stream itself is not counted.
    let mut first_log: Vec<Duration> = logs
        .iter()
        .zip(&sent_at)
        .map(|(records, sent)| record_time(&records[0]).duration_since(*sent).unwrap_or_default())
        .collect();
    first_log.sort();
    let running = peak_running.max(1);
    println!(
        "serve: {COUNT} bash executions (10 s each): created in {:.1}s, all finished in {:.1}s, at most {peak_running} running at once; host peak RSS {} MiB (idle {} MiB), {:.0} KiB per running execution; open fds at most {peak_fds} (idle {idle_fds}); create to first log p50 {} ms, p99 {} ms, max {} ms",
        created.as_secs_f64(),
        took.as_secs_f64(),
        peak_rss / 1024,
        idle_rss / 1024,
        peak_rss.saturating_sub(idle_rss) as f64 / running as f64,
        percentile(&first_log, 0.5).as_millis(),
        percentile(&first_log, 0.99).as_millis(),
        first_log.last().copied().unwrap_or_default().as_millis(),
    );
}
