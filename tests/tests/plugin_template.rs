//! The plugin template (`examples/plugin-template`, the bubblewrap backend) against the
//! conformance kit, and its network isolation.

use std::io::Read;
use tower_conformance::Outcome;
use tower_host_tests::*;

#[test]
fn template_plugin_conforms() {
    let tmpdir = bubblewrap_tmpdir();
    if skip_unless(find_bwrap().is_some(), "bwrap (Debian package bubblewrap) is not on PATH") {
        return;
    }
    let uv = find_uv();
    if skip_unless(uv.is_some(), "uv is not on PATH") {
        return;
    }
    let wheels = wheels_dir();
    if skip_unless(wheels.is_some(), "tests/wheels has no wheels") {
        return;
    }
    let settings = bubblewrap_settings(&uv.unwrap(), &wheels.unwrap());

    let report = tower_conformance::run_blocking(&shipped_plugin("bubblewrap"), &settings.to_string(), &[]).unwrap();
    for check in &report.checks {
        if let Outcome::Skipped(reason) = &check.outcome {
            eprintln!("skipped {}: {reason}", check.name);
        }
    }
    assert!(report.success(), "{report}");
    for name in ["terminate_during_setup", "terminate_during_run", "terminate_forced_after_grace", "kill_during_run", "timeout_enforced", "logs_long_line"] {
        assert_eq!(report.outcome(name), Some(&Outcome::Passed), "{name}: {report}");
    }
    // The app's PIDs are of the sandbox's own PID namespace, so the kit cannot see them.
    assert!(report.outcome("killed_behind_back").is_some_and(Outcome::is_skipped), "{report}");
    assert!(report.outcome("recovery_after_restart").is_some_and(Outcome::is_skipped), "{report}");
    let left = std::fs::read_dir(tmpdir.join("work")).unwrap().count();
    assert_eq!(left, 0, "cleanup left {left} execution folders in {}", tmpdir.join("work").display());
}

#[test]
fn template_sandbox_blocks_loopback_tcp() {
    let tmpdir = bubblewrap_tmpdir();
    if skip_unless(find_bwrap().is_some(), "bwrap (Debian package bubblewrap) is not on PATH") {
        return;
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();

    let app = tempfile::tempdir_in(&tmpdir).unwrap();
    std::fs::write(app.path().join("Towerfile"), "[app]\nname = \"network-probe\"\nscript = \"./main.sh\"\n").unwrap();
    let script = format!(
        "if exec 3<>/dev/tcp/127.0.0.1/{port}; then echo 'probe: connected' >&3; echo connected; else echo refused; fi\n"
    );
    std::fs::write(app.path().join("main.sh"), script).unwrap();

    let work = tempfile::tempdir_in(&tmpdir).unwrap();
    let settings = format!("work_dir = {:?}", work.path().join("work").display().to_string());
    let config = TestConfig::new(&shipped_plugin("bubblewrap"), &settings);
    let output = capture(host(Some(&config.path)).arg("run").arg(app.path()));

    assert_eq!(output.code, Some(0), "{output:?}");
    assert_eq!(output.stdout.trim(), "refused", "{output:?}");
    let mut accepted = listener.accept();
    if let Ok((stream, _)) = &mut accepted {
        let mut text = String::new();
        let _ = stream.read_to_string(&mut text);
        panic!("the listener outside the sandbox accepted a connection and read {text:?}");
    }
    assert_eq!(accepted.unwrap_err().kind(), std::io::ErrorKind::WouldBlock);
}

/// Returns the PIDs of processes whose command line contains `marker`.
fn processes_with(marker: &str) -> Vec<String> {
    let entries = std::fs::read_dir("/proc").unwrap().filter_map(Result::ok);
    entries
        .filter(|entry| std::fs::read(entry.path().join("cmdline")).is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(marker)))
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Runs `app` through the template with a timeout and returns the first run that printed
/// `started`. On a busy machine SIGTERM can come before bash has set the app's `trap`, and bash
/// dies of it. Such a run is repeated with a longer timeout. `check` runs on every output.
fn run_until_started(app: &std::path::Path, check: impl Fn(&HostOutput, &std::path::Path)) -> HostOutput {
    let tmpdir = bubblewrap_tmpdir();
    for timeout in ["2s", "6s", "15s"] {
        let work = tempfile::tempdir_in(&tmpdir).unwrap();
        let settings = format!("work_dir = {:?}", work.path().join("work").display().to_string());
        let config = TestConfig::new(&shipped_plugin("bubblewrap"), &settings);
        let output = capture(host(Some(&config.path)).args(["run", "--timeout", timeout, "--output", "json"]).arg(app));

        check(&output, &work.path().join("work"));
        let terminal = output.json_events().last().cloned().expect("at least one event");
        assert_eq!(terminal["state"], "timed_out", "{output:?}");
        if output.json_events().iter().any(|event| event["line"] == "started") {
            return output;
        }
        eprintln!("the timeout of {timeout} came before the app's trap was set; trying again with more time");
    }
    panic!("the app never printed `started` before its timeout, even with 15 s");
}

#[test]
fn template_timeout_leaves_no_process() {
    let tmpdir = bubblewrap_tmpdir();
    if skip_unless(find_bwrap().is_some(), "bwrap (Debian package bubblewrap) is not on PATH") {
        return;
    }
    let marker = format!("tower-template-stray-{}", std::process::id());
    let app = tempfile::tempdir_in(&tmpdir).unwrap();
    std::fs::write(app.path().join("Towerfile"), "[app]\nname = \"stray\"\nscript = \"./main.sh\"\n").unwrap();
    // The app ignores SIGTERM, so only the forced stop ends it, and it leaves a child in its
    // process group and a daemon in a session of its own.
    let script = format!(
        "trap '' TERM\n(exec -a {marker}-child sleep 300) &\nsetsid bash -c 'exec -a {marker}-daemon sleep 300' </dev/null >/dev/null 2>&1 &\necho started\nsleep 300\n"
    );
    std::fs::write(app.path().join("main.sh"), script).unwrap();

    let output = run_until_started(app.path(), |output, work| {
        assert_eq!(output.code, Some(124), "{output:?}");
        assert_eq!(processes_with(&marker), Vec::<String>::new(), "processes of the execution outlived it");
        assert_eq!(std::fs::read_dir(work).unwrap().count(), 0, "cleanup left the execution folder");
    });
    let terminal = output.json_events().last().cloned().expect("at least one event");
    assert_eq!(terminal["forced"], true, "{output:?}");
}

#[test]
fn template_timeout_sends_sigterm_first() {
    let tmpdir = bubblewrap_tmpdir();
    if skip_unless(find_bwrap().is_some(), "bwrap (Debian package bubblewrap) is not on PATH") {
        return;
    }
    let app = tempfile::tempdir_in(&tmpdir).unwrap();
    std::fs::write(app.path().join("Towerfile"), "[app]\nname = \"polite\"\nscript = \"./main.sh\"\n").unwrap();
    std::fs::write(app.path().join("main.sh"), "trap 'echo got TERM; exit 3' TERM\necho started\nsleep 300 &\nwait\n").unwrap();

    let output = run_until_started(app.path(), |_, _| {});
    let events = output.json_events();
    assert!(events.iter().any(|event| event["line"] == "got TERM"), "{output:?}");
    let terminal = events.last().expect("at least one event");
    assert_eq!(terminal["forced"], false, "{output:?}");
}

#[test]
fn template_sandbox_survives_idle_plugin_threads() {
    let tmpdir = bubblewrap_tmpdir();
    if skip_unless(find_bwrap().is_some(), "bwrap (Debian package bubblewrap) is not on PATH") {
        return;
    }
    // `--die-with-parent` kills a sandbox when the thread that started `bwrap` exits. Delivering
    // a burst of output hands tokio worker threads over to the blocking pool, which ends a thread
    // after 10 s idle, so the app writes a burst and then stays quiet for longer than that. Four
    // executions at once make it likely that one of them was started by such a thread.
    let app = tempfile::tempdir_in(&tmpdir).unwrap();
    std::fs::write(app.path().join("Towerfile"), "[app]\nname = \"quiet\"\nscript = \"./main.sh\"\n").unwrap();
    std::fs::write(app.path().join("main.sh"), "seq 1 300000\nsleep 13\necho finished\n").unwrap();

    let runs: Vec<_> = (0..4)
        .map(|_| {
            let app = app.path().to_path_buf();
            let tmpdir = tmpdir.clone();
            std::thread::spawn(move || {
                let work = tempfile::tempdir_in(&tmpdir).unwrap();
                let settings = format!("work_dir = {:?}", work.path().join("work").display().to_string());
                let config = TestConfig::new(&shipped_plugin("bubblewrap"), &settings);
                capture(host(Some(&config.path)).arg("run").arg(&app))
            })
        })
        .collect();
    for run in runs {
        let output = run.join().unwrap();
        assert_eq!(output.code, Some(0), "{}", output.stderr);
        assert_eq!(output.stdout.lines().last(), Some("finished"), "{}", output.stderr);
    }
}
