//! Terminate, kill and timeout: what ends, what is reported, and that nothing is left running.

mod common;

use common::{process_runs, state, Harness, PackageBuilder};
use std::time::{Duration, Instant};
use tower_plugin_api::sdk::Execution;
use tower_plugin_api::{Channel, ExecutionState, Stream};

/// Reads the pid an app wrote to `file` in its working folder, waiting for it to appear.
async fn read_pid_file(dir: &std::path::Path, file: &str) -> i32 {
    let deadline = Instant::now() + common::WAIT_TIMEOUT;
    loop {
        let found = std::fs::read_dir(dir).unwrap().flatten().find_map(|entry| {
            std::fs::read_to_string(entry.path().join("package/app").join(file)).ok().filter(|text| text.ends_with('\n'))
        });
        if let Some(text) = found {
            return text.trim().parse().unwrap();
        }
        assert!(Instant::now() < deadline, "the app never wrote {file}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trapping_app_is_killed_after_grace() {
    let harness = Harness::new().await;
    let script = "trap 'echo got-term' TERM\necho ready\nwhile true; do sleep 0.1; done\n";
    let (execution, recorder) = harness.start(&PackageBuilder::bash(script)).await;
    recorder.line_containing(Channel::Program, "ready").await;

    let started = Instant::now();
    execution.terminate(Duration::from_millis(700)).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(700), "terminate returned before the grace ended");

    let status = recorder.terminal().await;
    assert_eq!(state(&status), ExecutionState::Cancelled { forced: true });
    assert!(recorder.program_lines(Stream::Stdout).contains(&"got-term".to_string()));
    recorder.assert_terminal_is_last();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_exiting_on_sigterm_is_not_forced() {
    let harness = Harness::new().await;
    let (execution, recorder) = harness.start(&PackageBuilder::bash("echo ready\nsleep 1000\n")).await;
    recorder.line_containing(Channel::Program, "ready").await;

    let started = Instant::now();
    execution.terminate(Duration::from_secs(20)).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(10), "terminate waited for the whole grace");

    let status = recorder.terminal().await;
    assert_eq!(state(&status), ExecutionState::Cancelled { forced: false });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_cancels_at_once_and_is_forced() {
    let harness = Harness::new().await;
    let script = "trap '' TERM\necho ready\nsleep 1000\n";
    let (execution, recorder) = harness.start(&PackageBuilder::bash(script)).await;
    recorder.line_containing(Channel::Program, "ready").await;

    let started = Instant::now();
    execution.kill().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    let status = recorder.terminal().await;
    assert_eq!(state(&status), ExecutionState::Cancelled { forced: true });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_grandchild_is_gone_after_terminate() {
    let harness = Harness::new().await;
    let script = "sleep 1000 &\necho $! > grandchild.pid\nwait\n";
    let (execution, recorder) = harness.start(&PackageBuilder::bash(script)).await;
    let grandchild = read_pid_file(&harness.executions_dir(), "grandchild.pid").await;
    assert!(process_runs(grandchild));

    execution.terminate(Duration::from_secs(5)).await.unwrap();
    assert!(!process_runs(grandchild), "grandchild {grandchild} still runs after terminate returned");
    assert_eq!(state(&recorder.terminal().await), ExecutionState::Cancelled { forced: false });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setsid_grandchild_is_gone_after_terminate_with_cgroups() {
    let harness = Harness::new().await;
    if harness.cgroup_version().is_none() {
        eprintln!("skipped: this machine gives executions no cgroup, so a grandchild that calls setsid escapes");
        return;
    }
    let script = "setsid bash -c 'echo $$ > escaped.pid; exec sleep 1000' > /dev/null 2>&1 &\nsleep 1000\n";
    let (execution, recorder) = harness.start(&PackageBuilder::bash(script)).await;
    let escaped = read_pid_file(&harness.executions_dir(), "escaped.pid").await;
    assert!(process_runs(escaped));

    execution.terminate(Duration::from_secs(5)).await.unwrap();
    assert!(!process_runs(escaped), "setsid grandchild {escaped} still runs after terminate returned");
    assert_eq!(state(&recorder.terminal().await), ExecutionState::Cancelled { forced: false });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escaped_pipe_holder_ends_at_drain_timeout() {
    let harness = Harness::with(|settings| {
        settings.cgroups = tower_plugin_subprocess::settings::CgroupMode::Off;
        settings.drain_timeout_seconds = 1;
    })
    .await;
    // Without a cgroup, a grandchild in its own session survives the end of the program and
    // keeps stdout open.
    let script = "setsid bash -c 'echo $$ > holder.pid; exec sleep 30' &\nwhile [ ! -s holder.pid ]; do sleep 0.05; done\necho done\n";
    let started = Instant::now();
    let (status, recorder) = harness.run(&PackageBuilder::bash(script)).await;
    let holder = read_pid_file(&harness.executions_dir(), "holder.pid").await;
    // SAFETY: `kill` has no memory-safety preconditions; the pid is the test's own grandchild.
    unsafe { libc::kill(holder, libc::SIGKILL) };

    assert_eq!(state(&status), ExecutionState::Exited);
    assert!(started.elapsed() < Duration::from_secs(20), "the drain timeout was not applied");
    assert_eq!(recorder.program_lines(Stream::Stdout), ["done"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_stops_program_as_timed_out() {
    let harness = Harness::new().await;
    let mut spec = PackageBuilder::bash("echo started\nsleep 1000\n").spec(harness.work.path(), "run-timeout");
    spec.limits.timeout_seconds = Some(1).into();
    let started = Instant::now();
    let (_execution, recorder) = harness.start_spec(spec).await;

    let status = recorder.terminal().await;
    assert_eq!(state(&status), ExecutionState::TimedOut { forced: false });
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(recorder.program_lines(Stream::Stdout), ["started"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_of_trapping_program_is_forced_after_grace() {
    let harness = Harness::with(|settings| settings.default_grace_seconds = 1).await;
    let mut spec = PackageBuilder::bash("trap '' TERM\nsleep 1000\n").spec(harness.work.path(), "run-timeout-trap");
    spec.limits.timeout_seconds = Some(1).into();
    let (_execution, recorder) = harness.start_spec(spec).await;
    assert_eq!(state(&recorder.terminal().await), ExecutionState::TimedOut { forced: true });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_is_idempotent_and_fine_after_end() {
    let harness = Harness::new().await;
    let (execution, recorder) = harness.start(&PackageBuilder::bash("echo ready\nsleep 1000\n")).await;
    recorder.line_containing(Channel::Program, "ready").await;

    let (first, second) = tokio::join!(execution.terminate(Duration::from_secs(5)), execution.terminate(Duration::from_secs(5)));
    first.unwrap();
    second.unwrap();
    recorder.terminal().await;

    let started = Instant::now();
    execution.terminate(Duration::from_secs(5)).await.unwrap();
    execution.kill().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(1));
    recorder.assert_terminal_is_last();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_during_setup_cancels() {
    let harness = Harness::new().await;
    let fake_uv = harness.work.path().join("fake-uv");
    std::fs::write(&fake_uv, "#!/bin/bash\necho fake-uv-started\nexec sleep 1000\n").unwrap();
    std::fs::set_permissions(&fake_uv, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let harness = Harness::with(|settings| settings.uv = fake_uv.to_str().unwrap().to_string()).await;

    let (execution, recorder) = harness.start(&PackageBuilder::python("print('never')\n")).await;
    recorder.line_containing(Channel::Setup, "fake-uv-started").await;
    execution.terminate(Duration::from_secs(5)).await.unwrap();

    let status = recorder.terminal().await;
    assert_eq!(state(&status), ExecutionState::Cancelled { forced: false });
    assert!(recorder.program_lines(Stream::Stdout).is_empty());
    assert!(!recorder.statuses().iter().any(|status| matches!(state(status), ExecutionState::Running)));
}
