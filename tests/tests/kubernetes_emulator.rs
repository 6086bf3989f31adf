//! The kubernetes plugin through `tower-host run`, against the in-repo API server emulator: the
//! sample apps, a large package, secrets, and every failure mapping with an injected fault.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tower_host_tests::*;
use tower_k8s_emulator::{Emulator, Fault, PodTarget};

const HOST_FAILURE: i32 = 70;
const TIMED_OUT: i32 = 124;
const FAILED: i32 = 125;
const CANCELLED: i32 = 130;

/// Starts an emulator and a config for it; `None` (skipped) when uv or the wheels are missing.
fn setup(extra: &str) -> Option<(Emulator, TestConfig)> {
    if skip_unless(find_uv().is_some(), "uv is not on PATH") {
        return None;
    }
    let wheels = wheels_dir();
    if skip_unless(wheels.is_some(), "tests/wheels has no wheels") {
        return None;
    }
    let emulator = Emulator::start();
    let config = kubernetes_config(emulator.kubeconfig_path(), wheels.as_deref(), extra);
    Some((emulator, config))
}

fn run(config: &TestConfig, app: &std::path::Path, args: &[&str]) -> HostOutput {
    capture(host(Some(&config.path)).arg("run").arg(app).args(args))
}

fn bash_app(script: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("Towerfile"), "[app]\nname = \"probe\"\nscript = \"./main.sh\"\n").unwrap();
    std::fs::write(dir.path().join("main.sh"), script).unwrap();
    dir
}

#[test]
fn sample_apps_match_subprocess_output() {
    let Some((_emulator, config)) = setup("") else { return };
    let cases: [(&str, &[&str], i32, &str); 5] = [
        ("hello-world", &[], 0, "Hello from tower-host\n"),
        ("legacy-requirements", &[], 0, "six 1.16.0 is installed\nbytes decoded by six\n"),
        ("import-paths", &[], 0, "Hello, import paths, from lib_a\nlib_b: 2 + 3 = 5\n"),
        ("bash-app", &["--param", "NAME=pods"], 0, "Hello from a bash app\nNAME=pods\n"),
        ("params-and-secret", &[], 1, "GREETING=Hello\nTARGET=world\n"),
    ];
    for (name, args, code, stdout) in cases {
        let output = run(&config, &example(name), args);
        assert_eq!(output.code, Some(code), "{name}: {output:?}");
        // The API merges stderr into stdout, so only the app's stdout lines are compared.
        assert!(output.stdout.starts_with(stdout), "{name}: {output:?}");
    }
}

#[test]
fn pyproject_dependency_installs_in_setup_container() {
    let Some((_emulator, config)) = setup("") else { return };
    let output = run(&config, &example("with-dependency"), &[]);
    assert_eq!(output.code, Some(0), "{output:?}");
    assert!(output.stdout.contains("| pears   |      12 |"), "{output:?}");
    assert!(output.stderr.contains("[setup] "), "{output:?}");
}

#[test]
fn secret_reaches_app_but_not_pod_spec() {
    let Some((emulator, config)) = setup("keep_finished_pods = true") else { return };
    let output = capture(
        host(Some(&config.path))
            .arg("run")
            .arg(example("params-and-secret"))
            .args(["--secret", "API_TOKEN", "--id", "secret-run"])
            .env("API_TOKEN", "pod-secret-value"),
    );
    assert_eq!(output.code, Some(0), "{output:?}");
    assert!(output.stdout.contains("API_TOKEN length=16"), "{output:?}");
    let pods = emulator.pods();
    assert_eq!(pods.len(), 1, "the finished pod is kept");
    let pod_json = serde_json::to_string(&pods[0]).unwrap();
    assert!(!pod_json.contains("pod-secret-value"), "{pod_json}");
    assert!(pod_json.contains("secretKeyRef"), "{pod_json}");
    let pod_name = pods[0].metadata.name.clone().unwrap();
    let secret = emulator.secret("default", &format!("{pod_name}-secrets")).expect("the secret exists");
    let owners = secret.metadata.owner_references.unwrap_or_default();
    assert_eq!(owners.len(), 1);
    assert_eq!(owners[0].name, pod_name);
    assert_eq!(Some(owners[0].uid.clone()), pods[0].metadata.uid);
}

#[test]
fn three_mib_package_arrives_intact() {
    let Some((_emulator, config)) = setup("") else { return };
    let app = bash_app("set -e\nsha256sum data.bin\ntest -x tool.sh && echo executable\n./tool.sh\n");
    // 3 MiB of incompressible bytes from a fixed generator, so the archive is about 3 MiB too.
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let data: Vec<u8> = (0..3 * 1024 * 1024)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    std::fs::write(app.path().join("data.bin"), &data).unwrap();
    std::fs::write(app.path().join("tool.sh"), "#!/bin/sh\necho tool ran\n").unwrap();
    std::fs::set_permissions(app.path().join("tool.sh"), <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755)).unwrap();
    let expected = tower_package::sha256_file(&app.path().join("data.bin")).unwrap();

    let output = run(&config, app.path(), &[]);
    assert_eq!(output.code, Some(0), "{output:?}");
    assert!(output.stdout.contains(&format!("{expected}  data.bin")), "{output:?}");
    assert!(output.stdout.contains("executable\ntool ran\n"), "{output:?}");
}

#[test]
fn exit_code_and_signal_map_to_crashed() {
    let Some((_emulator, config)) = setup("") else { return };
    let output = run(&config, bash_app("echo before\nexit 42\n").path(), &[]);
    assert_eq!(output.code, Some(42), "{output:?}");
    assert!(output.stderr.contains("crashed with exit code 42"), "{output:?}");
}

#[test]
fn missing_dependency_fails_setup_with_log_tail() {
    let Some((_emulator, config)) = setup("") else { return };
    let output = run(&config, &example("broken-dependency"), &["--output", "json"]);
    assert_eq!(output.code, Some(FAILED), "{output:?}");
    let status = output.json_events().into_iter().filter(|e| e["event"] == "status").last().unwrap();
    assert_eq!(status["state"], "failed");
    assert_eq!(status["stage"], "setup");
    let message = status["message"].as_str().unwrap();
    assert!(message.contains("dependency installation failed"), "{message}");
    assert!(message.contains("tower-host-example-missing-package-0f3a9c"), "the log tail names the package: {message}");
}

#[test]
fn image_pull_error_fails_platform_and_deletes_pod() {
    let Some((emulator, config)) = setup("") else { return };
    emulator.faults().inject(Fault::ImagePull { pods: PodTarget::any(), container: None, message: Some("manifest unknown".into()) });
    let output = run(&config, &example("bash-app"), &[]);
    assert_eq!(output.code, Some(FAILED), "{output:?}");
    assert!(output.stderr.contains("failed in the platform"), "{output:?}");
    assert!(output.stderr.contains("ErrImagePull") || output.stderr.contains("ImagePullBackOff"), "{output:?}");
    assert!(output.stderr.contains("manifest unknown"), "{output:?}");
    assert!(emulator.pods().is_empty(), "the pod was deleted");
}

#[test]
fn unschedulable_pod_fails_after_pending_limit() {
    let Some((emulator, config)) = setup("pending_timeout_seconds = 1") else { return };
    emulator.faults().inject(Fault::Unschedulable { pods: PodTarget::any(), message: Some("0/1 nodes are available: 1 Insufficient cpu.".into()) });
    let output = run(&config, &example("bash-app"), &[]);
    assert_eq!(output.code, Some(FAILED), "{output:?}");
    assert!(output.stderr.contains("unschedulable"), "{output:?}");
    assert!(output.stderr.contains("Insufficient cpu"), "{output:?}");
    assert!(emulator.pods().is_empty(), "the pod was deleted");
}

#[test]
fn oom_kill_is_crashed_with_reason() {
    let Some((emulator, config)) = setup("") else { return };
    emulator.faults().inject(Fault::OomKill { pods: PodTarget::any(), container: Some("app".into()), after_millis: 300 });
    let output = run(&config, bash_app("echo allocating\nsleep 30\n").path(), &["--output", "json"]);
    let status = output.json_events().into_iter().filter(|e| e["event"] == "status").last().unwrap();
    assert_eq!(status["state"], "crashed", "{output:?}");
    assert_eq!(status["reason"], "OOMKilled");
    assert_eq!(output.code, Some(137), "{output:?}");
}

#[test]
fn eviction_is_failed_with_message() {
    let Some((emulator, config)) = setup("") else { return };
    emulator.faults().inject(Fault::Evict { pods: PodTarget::any(), after_millis: 300, message: Some("The node was low on resource: memory.".into()) });
    let output = run(&config, bash_app("sleep 30\n").path(), &[]);
    assert_eq!(output.code, Some(FAILED), "{output:?}");
    assert!(output.stderr.contains("evicted: The node was low on resource: memory."), "{output:?}");
}

#[test]
fn broken_log_stream_loses_and_repeats_nothing() {
    let Some((emulator, config)) = setup("") else { return };
    emulator.faults().inject(Fault::BrokenLogStream { pods: PodTarget::any(), container: Some("app".into()), after_lines: 40, abort: true });
    let script = "for i in $(seq 1 300); do echo \"line $i\"; if [ $((i % 50)) -eq 0 ]; then sleep 0.2; fi; done\n";
    let output = run(&config, bash_app(script).path(), &[]);
    assert_eq!(output.code, Some(0), "{output:?}");
    let expected: String = (1..=300).map(|i| format!("line {i}\n")).collect();
    assert_eq!(output.stdout, expected);
}

#[test]
fn watch_gone_is_survived() {
    let Some((emulator, config)) = setup("") else { return };
    emulator.faults().inject_times(Fault::WatchGone { resource: Some("pods".into()), http: false }, 2);
    let output = run(&config, bash_app("sleep 0.5\necho done\n").path(), &["--output", "json"]);
    assert_eq!(output.code, Some(0), "{output:?}");
    let terminal: Vec<_> = output.json_events().into_iter().filter(|e| e["event"] == "status" && e["state"] == "exited").collect();
    assert_eq!(terminal.len(), 1, "one terminal status: {output:?}");
}

#[test]
fn server_errors_are_retried() {
    let Some((emulator, config)) = setup("") else { return };
    // kube-rs retries 503 on its own; a 500 reaches the plugin's own retries.
    emulator.faults().inject_times(Fault::ApiError { verb: "create".into(), resource: "pods".into(), code: 500, message: None }, 2);
    let output = run(&config, &example("bash-app"), &[]);
    assert_eq!(output.code, Some(0), "{output:?}");
}

#[test]
fn forbidden_names_verb_resource_and_account() {
    let Some((emulator, config)) = setup("") else { return };
    emulator.faults().inject(Fault::Forbidden { verb: "create".into(), resource: "pods".into(), user: None });
    let output = run(&config, &example("bash-app"), &[]);
    assert_eq!(output.code, Some(HOST_FAILURE), "{output:?}");
    assert!(output.stderr.contains("permission_denied"), "{output:?}");
    assert!(output.stderr.contains("system:serviceaccount:default:tower-host"), "{output:?}");
    assert!(output.stderr.contains("pods"), "{output:?}");
}

#[test]
fn pod_deleted_behind_back_is_failed_not_success() {
    let Some((emulator, config)) = setup("") else { return };
    let app = bash_app("echo started\nsleep 60\n");
    let mut child = host(Some(&config.path))
        .arg("run")
        .arg(app.path())
        .args(["--output", "json"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(stdout.read_line(&mut line).unwrap() > 0, "the host ended early");
        let event: serde_json::Value = serde_json::from_str(&line).unwrap();
        if event["event"] == "log" && event["line"] == "started" {
            break;
        }
    }
    let pod = emulator.pods()[0].metadata.name.clone().unwrap();
    assert!(emulator.faults().delete_pod("default", &pod, 0));
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(FAILED), "{rest}");
    assert!(rest.contains("was deleted outside tower-host"), "{rest}");
}

#[test]
fn timeout_maps_to_timed_out() {
    let Some((_emulator, config)) = setup("") else { return };
    let started = Instant::now();
    let output = run(&config, bash_app("sleep 60\n").path(), &["--timeout", "2s"]);
    assert_eq!(output.code, Some(TIMED_OUT), "{output:?}");
    assert!(started.elapsed() < Duration::from_secs(40), "{:?}", started.elapsed());
}

#[test]
fn timeout_counts_from_app_start() {
    let Some((emulator, config)) = setup("") else { return };
    // Setup takes 3 s, longer than the 2 s timeout; the app itself needs 1 s of it.
    emulator.faults().inject(Fault::StartDelay { pods: PodTarget::any(), container: Some("unpack".into()), delay_millis: 3000 });
    let output = run(&config, bash_app("echo started\nsleep 1\necho done\n").path(), &["--timeout", "2s"]);
    assert_eq!(output.code, Some(0), "{output:?}");
    assert!(output.stdout.ends_with("started\ndone\n"), "{output:?}");
    assert!(!output.stderr.contains("lost the rest of the log"), "{output:?}");
}

#[test]
fn template_deadline_in_setup_times_out() {
    // An operator's deadline counts from the pod's start, so it can run out before the app starts.
    let Some((emulator, config)) = setup("pod_template_patch = { spec = { activeDeadlineSeconds = 2 } }") else { return };
    emulator.faults().inject(Fault::StartDelay { pods: PodTarget::any(), container: Some("app".into()), delay_millis: 5000 });
    let output = run(&config, bash_app("echo started\n").path(), &[]);
    assert_eq!(output.code, Some(TIMED_OUT), "{output:?}");
    assert!(!output.stdout.contains("started"), "{output:?}");
    assert!(!output.stderr.contains("lost the rest of the log"), "{output:?}");
}

#[test]
fn timeout_without_patch_permission_fails_and_deletes_pod() {
    let Some((emulator, config)) = setup("") else { return };
    emulator.faults().inject(Fault::Forbidden { verb: "patch".into(), resource: "pods".into(), user: None });
    let output = run(&config, bash_app("echo started\nsleep 30\n").path(), &["--timeout", "20s"]);
    assert_eq!(output.code, Some(FAILED), "{output:?}");
    assert!(output.stderr.contains("failed to set activeDeadlineSeconds"), "{output:?}");
    assert!(output.stderr.contains("the `patch` verb on pods"), "{output:?}");
    assert!(output.stderr.contains("permission_denied"), "{output:?}");
    assert!(emulator.pods().is_empty(), "the pod was deleted");
}

#[test]
fn ctrl_c_cancels_and_leaves_no_pod() {
    let Some((emulator, config)) = setup("") else { return };
    let app = bash_app("echo started\nsleep 60\n");
    let mut child = host(Some(&config.path))
        .arg("run")
        .arg(app.path())
        .args(["--grace", "2s"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "started\n");
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(CANCELLED));
    assert!(emulator.pods().is_empty(), "no pod is left after terminate and cleanup");
}

#[test]
fn real_cluster_runs_hello_world() {
    let Some(kubeconfig) = std::env::var_os("KUBECONFIG") else {
        eprintln!("skipped: KUBECONFIG is not set, so there is no real cluster to run against");
        return;
    };
    let config = kubernetes_config(std::path::Path::new(&kubeconfig), None, "");
    let output = run(&config, &example("hello-world"), &["--timeout", "10m"]);
    assert_eq!(output.code, Some(0), "{output:?}");
    assert!(output.stdout.contains("Hello from tower-host"), "{output:?}");
}

#[test]
fn invalid_image_name_fails_platform() {
    let Some((emulator, config)) = setup("image = \"Not A Valid/Image::Name\"") else { return };
    let output = run(&config, &example("bash-app"), &[]);
    assert_eq!(output.code, Some(FAILED), "{output:?}");
    assert!(output.stderr.contains("InvalidImageName"), "{output:?}");
    assert!(emulator.pods().is_empty(), "the pod was deleted");
}

#[test]
fn missing_secret_reference_fails_with_config_error() {
    // A template patch that references a Secret nobody created: the kubelet cannot build the
    // container's environment.
    let patch = r#"pod_template_patch = { spec = { containers = [{ name = "app", env = [{ name = "FROM_MISSING", valueFrom = { secretKeyRef = { name = "no-such-secret", key = "k" } } }] }] } }"#;
    let Some((emulator, config)) = setup(patch) else { return };
    let output = run(&config, &example("bash-app"), &[]);
    assert_eq!(output.code, Some(FAILED), "{output:?}");
    assert!(output.stderr.contains("CreateContainerConfigError"), "{output:?}");
    assert!(output.stderr.contains("no-such-secret"), "{output:?}");
    assert!(emulator.pods().is_empty(), "the pod was deleted");
}

#[test]
fn app_killed_by_sigkill_is_crashed_with_signal() {
    let Some((_emulator, config)) = setup("") else { return };
    let output = run(&config, bash_app("echo dying\nkill -9 $$\n").path(), &["--output", "json"]);
    let status = output.json_events().into_iter().filter(|e| e["event"] == "status").last().unwrap();
    assert_eq!(status["state"], "crashed", "{output:?}");
    assert_eq!(status["exit_code"], 137);
    assert_eq!(status["signal"], 9);
    assert_eq!(output.code, Some(137), "{output:?}");
}
