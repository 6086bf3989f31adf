//! Every sample app under `examples/` through `tower-host run` and the subprocess plugin, with
//! real `uv` installing from a local wheels folder.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tower_host_tests::*;

const FAILED: i32 = 125;
const CANCELLED: i32 = 130;

/// Returns a config, or `None` (the test is skipped) when uv or the wheels are missing.
fn setup() -> Option<TestConfig> {
    if skip_unless(find_uv().is_some(), "uv is not on PATH") {
        return None;
    }
    let wheels = wheels_dir();
    if skip_unless(wheels.is_some(), "tests/wheels has no wheels") {
        return None;
    }
    Some(subprocess_config(&wheels.unwrap()))
}

fn run_example(config: &TestConfig, name: &str, args: &[&str]) -> HostOutput {
    capture(host(Some(&config.path)).arg("run").arg(example(name)).args(args))
}

#[test]
fn hello_world_prints_greeting() {
    let Some(config) = setup() else { return };
    let output = run_example(&config, "hello-world", &[]);
    assert_eq!(output.code, Some(0), "{output:?}");
    assert_eq!(output.stdout, "Hello from tower-host\n");
    assert!(output.stderr.contains("tower-host: exited with code 0"), "{output:?}");
}

#[test]
fn pyproject_dependency_is_installed() {
    let Some(config) = setup() else { return };
    let output = run_example(&config, "with-dependency", &[]);
    assert_eq!(output.code, Some(0), "{output:?}");
    assert!(output.stdout.contains("| fruit   |   count |"), "{output:?}");
    assert!(output.stdout.contains("| pears   |      12 |"), "{output:?}");
    assert!(output.stderr.contains("[setup] "), "setup output is marked: {output:?}");
}

#[test]
fn requirements_txt_dependency_is_installed() {
    let Some(config) = setup() else { return };
    let output = run_example(&config, "legacy-requirements", &[]);
    assert_eq!(output.code, Some(0), "{output:?}");
    assert_eq!(output.stdout, "six 1.16.0 is installed\nbytes decoded by six\n");
}

#[test]
fn parameters_and_secret_reach_app() {
    let Some(config) = setup() else { return };
    let output = capture(
        host(Some(&config.path))
            .arg("run")
            .arg(example("params-and-secret"))
            .args(["--param", "TARGET=tower", "--secret", "API_TOKEN"])
            .env("API_TOKEN", "s3cr3t-value"),
    );
    assert_eq!(output.code, Some(0), "{output:?}");
    assert_eq!(output.stdout, "GREETING=Hello\nTARGET=tower\nAPI_TOKEN length=12\n");
    assert!(!output.stderr.contains("s3cr3t-value"), "{output:?}");
}

#[test]
fn missing_secret_makes_app_exit_1() {
    let Some(config) = setup() else { return };
    let output = run_example(&config, "params-and-secret", &[]);
    assert_eq!(output.code, Some(1), "{output:?}");
    assert!(output.stderr.contains("the secret API_TOKEN is not set"), "{output:?}");
    assert!(output.stderr.contains("tower-host: crashed with exit code 1"), "{output:?}");
}

#[test]
fn missing_dependency_fails_in_setup() {
    let Some(config) = setup() else { return };
    let output = run_example(&config, "broken-dependency", &[]);
    assert_eq!(output.code, Some(FAILED), "{output:?}");
    assert!(output.stderr.contains("failed during setup"), "{output:?}");
    let uv_error = output.stderr.lines().find(|line| line.starts_with("[setup] ") && line.contains("tower-host-example-missing-package-0f3a9c"));
    assert!(uv_error.is_some(), "uv's error is on the setup channel: {output:?}");
    assert_eq!(output.stdout, "", "the script never ran: {output:?}");
}

#[test]
fn import_paths_are_importable() {
    let Some(config) = setup() else { return };
    let output = run_example(&config, "import-paths", &[]);
    assert_eq!(output.code, Some(0), "{output:?}");
    assert_eq!(output.stdout, "Hello, import paths, from lib_a\nlib_b: 2 + 3 = 5\n");
}

#[test]
fn bash_app_runs_with_parameter() {
    let Some(config) = setup() else { return };
    let output = run_example(&config, "bash-app", &["--param", "NAME=tower"]);
    assert_eq!(output.code, Some(0), "{output:?}");
    assert_eq!(output.stdout, "Hello from a bash app\nNAME=tower\n");
}

#[test]
fn packed_archive_runs_like_folder() {
    let Some(config) = setup() else { return };
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("bash-app.tar.gz");
    tower_package::pack_dir(&example("bash-app"), &archive).unwrap();
    let output = capture(host(Some(&config.path)).arg("run").arg(&archive));
    assert_eq!(output.code, Some(0), "{output:?}");
    assert_eq!(output.stdout, "Hello from a bash app\nNAME=world\n");
}

/// Writes a bash app into a temp folder and returns the folder.
fn bash_app(script: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("Towerfile"), "[app]\nname = \"probe\"\nscript = \"./main.sh\"\n").unwrap();
    std::fs::write(dir.path().join("main.sh"), script).unwrap();
    dir
}

#[test]
fn host_secrets_do_not_reach_app() {
    let Some(config) = setup() else { return };
    let app = bash_app("env\n");
    let output = capture(
        host(Some(&config.path))
            .arg("run")
            .arg(app.path())
            .args(["--environment", "staging"])
            .env("AWS_SECRET_ACCESS_KEY", "host-aws-secret")
            .env("KUBECONFIG", "/host/kubeconfig")
            .env("GITHUB_TOKEN", "host-token"),
    );
    assert_eq!(output.code, Some(0), "{output:?}");
    assert!(!output.stdout.contains("host-aws-secret"), "{output:?}");
    assert!(!output.stdout.contains("KUBECONFIG="), "{output:?}");
    assert!(!output.stdout.contains("host-token"), "{output:?}");
    assert!(output.stdout.lines().any(|line| line.starts_with("PATH=")), "{output:?}");
    assert!(output.stdout.lines().any(|line| line.starts_with("PYTHONUNBUFFERED=")), "{output:?}");
    assert!(output.stdout.lines().any(|line| line == "TOWER_ENVIRONMENT=staging"), "{output:?}");
}

#[test]
fn ctrl_c_stops_app_and_its_children() {
    let Some(config) = setup() else { return };
    let pid_file = tempfile::NamedTempFile::new().unwrap();
    let script = format!("sleep 300 &\necho $! > {}\necho started\nwait\n", pid_file.path().display());
    let app = bash_app(&script);
    let mut child = host(Some(&config.path))
        .arg("run")
        .arg(app.path())
        .args(["--grace", "5s"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "started\n");
    let grandchild: i32 = std::fs::read_to_string(pid_file.path()).unwrap().trim().parse().unwrap();

    let started = Instant::now();
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(CANCELLED));
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
    assert!(!is_running(grandchild), "the app's background process {grandchild} survived the cancel");
}

/// Tells whether a process runs: it exists and is not a zombie waiting for its parent to reap it.
fn is_running(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses and may contain spaces.
        Ok(stat) => stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}
