//! Log throughput through `tower-host serve`: the `log-flood` app's lines delivered to a consumer
//! that follows `GET /v1/executions/{id}/logs?follow=true`, against the same app piped to
//! `cat > /dev/null` in the same run.
//!
//! Three figures: the pipe, the live stream and a replay of the finished log from the journal.
//! The live stream runs from the create request to the end of the followed stream, so it
//! includes staging the package, journalling every record and reading it back. The host's resident memory is sampled
//! every 100 ms while the live stream runs, to show whether it grows with the output.
//!
//! Needs release builds: `cargo build --release -p tower-host -p tower-plugin-subprocess`.
//! `LINES=N` changes the line count (default 10 million, 1.07 GB). Runs for about 30 s.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tower_plugin_api::Timestamp;
use tower_benches::{app_dir, pack_app};
use tower_host_tests::http::StreamEnd;
use tower_host_tests::serve::{create, ServeSetup, TestPackage};

/// Bytes of one line of `log-flood`, its newline included.
const LINE_BYTES: u64 = 107;
/// How often the host's resident memory is read.
const RSS_INTERVAL: Duration = Duration::from_millis(100);

fn main() {
    let lines: u64 = std::env::var("LINES").ok().and_then(|text| text.parse().ok()).unwrap_or(10_000_000);
    let app_bytes = lines * LINE_BYTES;
    println!("{lines} lines, {app_bytes} bytes written by the app");
    println!();

    let pipe = time_pipe(lines);
    let packed = pack_app(&app_dir("log-flood"));
    let package = TestPackage { bytes: std::fs::read(&packed.archive).expect("read the package"), sha256: packed.sha256.clone() };
    let plugin = tower_host_tests::shipped_plugin("subprocess");
    let setup = ServeSetup::new(&plugin, "cgroups = \"off\"", "max_running = 4").quiet();
    let host = setup.start();

    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let sampling = Arc::clone(&sampling);
        let pid = host.pid();
        std::thread::spawn(move || {
            let mut samples = Vec::new();
            while sampling.load(Ordering::Relaxed) {
                samples.push(rss_kib(pid));
                std::thread::sleep(RSS_INTERVAL);
            }
            samples
        })
    };
    let idle_kib = rss_kib(host.pid());
    let host_cpu_before = cpu_seconds(host.pid());
    let consumer_cpu_before = cpu_seconds(std::process::id() as i32);

    let started = Instant::now();
    let created_at = SystemTime::now();
    create(&host.client, "flood", &package, &[("LINES", &lines.to_string())]);
    let (status, mut stream) = host.client.stream("/v1/executions/flood/logs?follow=true");
    assert_eq!(status, 200, "GET logs");
    let live_count = stream.count_to_end();
    let live = started.elapsed();
    let consumer_cpu = cpu_seconds(std::process::id() as i32).own - consumer_cpu_before.own;
    let last_line = live_count.last_data_at.map(|at| at - started).unwrap_or_default();
    let (live_lines, live_bytes, end) = (live_count.lines, live_count.bytes, live_count.end);
    sampling.store(false, Ordering::Relaxed);
    let samples = sampler.join().expect("the sampler thread");
    assert_eq!(end, StreamEnd::Complete, "the followed stream ended early");
    let finished = host.wait_finished("flood", Duration::from_secs(60));
    assert_eq!(finished["status"]["state"], "exited", "the app did not exit cleanly: {finished}");
    let ended_at = finished["status"]["ended_at"].as_str().unwrap_or_else(|| panic!("no ended_at in {finished}"));
    let ended_at = Timestamp::parse_rfc3339(ended_at).unwrap_or_else(|| panic!("invalid ended_at {ended_at:?}"));
    let app_ended = ended_at.to_system_time().duration_since(created_at).unwrap_or_default();
    let host_cpu = cpu_seconds(host.pid());
    // The setup channel adds the plugin's own notes, so the stream has a few more lines.
    assert!(live_lines >= lines, "the stream had {live_lines} lines, fewer than the app's {lines}");

    let started = Instant::now();
    let (status, mut stream) = host.client.stream("/v1/executions/flood/logs");
    assert_eq!(status, 200, "GET logs");
    let replay_count = stream.count_to_end();
    let (replay_lines, replay_bytes, end) = (replay_count.lines, replay_count.bytes, replay_count.end);
    let replay = started.elapsed();
    assert_eq!(end, StreamEnd::Complete, "the replay ended early");
    assert_eq!(replay_lines, live_lines, "the replay and the live stream differ");

    println!("| Consumer | Elapsed | App bytes per second | Against the pipe | Stream bytes |");
    println!("|---|---|---|---|---|");
    row("`bash run.sh \\| cat > /dev/null`", pipe, app_bytes, pipe, app_bytes);
    row("serve, followed from create to the last line", last_line, app_bytes, pipe, live_bytes);
    row("serve, followed from create to the end of the stream", live, app_bytes, pipe, live_bytes);
    row("serve, replay of the finished log", replay, app_bytes, pipe, replay_bytes);
    println!();
    println!(
        "After the create request: the app ended at {:.2} s (its `ended_at`), the consumer read the last line at {:.2} s and the stream ended at {:.2} s.",
        app_ended.as_secs_f64(),
        last_line.as_secs_f64(),
        live.as_secs_f64()
    );
    println!();
    println!(
        "CPU time during the live stream, in seconds: host {:.2}, app (reaped by the host) {:.2}, consumer (this bench) {:.2}; {:.2} in all over {:.2} s of wall time on {} CPUs.",
        host_cpu.own - host_cpu_before.own,
        host_cpu.children - host_cpu_before.children,
        consumer_cpu,
        host_cpu.own - host_cpu_before.own + host_cpu.children - host_cpu_before.children + consumer_cpu,
        live.as_secs_f64(),
        std::thread::available_parallelism().map_or(1, |count| count.get())
    );
    println!();
    samples_table(idle_kib, &samples, host.peak_rss_kib());
}

/// Times the app piped to `cat > /dev/null`.
fn time_pipe(lines: u64) -> Duration {
    let script = app_dir("log-flood").join("run.sh");
    let started = Instant::now();
    let status = Command::new("bash")
        .arg("-c")
        .arg(format!("bash {} | cat > /dev/null", script.display()))
        .env("LINES", lines.to_string())
        .stdout(Stdio::null())
        .status()
        .expect("bash starts");
    assert!(status.success(), "the pipe failed: {status}");
    started.elapsed()
}

fn row(name: &str, elapsed: Duration, app_bytes: u64, pipe: Duration, stream_bytes: u64) {
    let seconds = elapsed.as_secs_f64();
    println!(
        "| {name} | {seconds:.2} s | {:.0} MB/s | {:.2} | {:.2} GB |",
        app_bytes as f64 / seconds / 1e6,
        pipe.as_secs_f64() / seconds,
        stream_bytes as f64 / 1e9
    );
}

/// Prints the resident memory at the start, at each quarter of the live stream, and its peak.
fn samples_table(idle_kib: u64, samples: &[u64], peak_kib: u64) {
    let mib = |kib: u64| format!("{:.1} MiB", kib as f64 / 1024.0);
    let at = |fraction: f64| samples.get(((samples.len().saturating_sub(1)) as f64 * fraction) as usize).copied().unwrap_or(0);
    println!("| Host RSS before create | At 25% | At 50% | At 75% | At the end | Peak (`VmHWM`) | Samples |");
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {} | {} | {} | {} | {} |",
        mib(idle_kib),
        mib(at(0.25)),
        mib(at(0.5)),
        mib(at(0.75)),
        mib(at(1.0)),
        mib(peak_kib),
        samples.len()
    );
}

/// Reads `VmRSS` of a process, in KiB; 0 once the process is gone.
fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// CPU time of a process, user and system together, in seconds.
struct CpuSeconds {
    /// Its own threads.
    own: f64,
    /// Its children that it has waited for.
    children: f64,
}

/// Reads `utime`, `stime`, `cutime` and `cstime` from `/proc/<pid>/stat`.
fn cpu_seconds(pid: i32) -> CpuSeconds {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc stat");
    // The command name (field 2) may contain spaces, so the fields are counted after its `)`.
    let after_name = &stat[stat.rfind(')').expect("a command name in /proc stat") + 2..];
    let fields: Vec<f64> = after_name.split(' ').map(|field| field.parse().unwrap_or(0.0)).collect();
    // SAFETY: sysconf only reads a system setting.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    // Fields 14 to 17 of the stat line are at 11 to 14 once the first two are dropped.
    CpuSeconds { own: (fields[11] + fields[12]) / ticks, children: (fields[13] + fields[14]) / ticks }
}
