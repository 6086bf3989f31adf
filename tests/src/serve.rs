//! Running `tower-host serve` in tests: a config in a temp folder, the process, its ready line,
//! and helpers to create executions and wait for their states.

use crate::http::{Client, Endpoint, Response};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Maximum wait for the host's ready line.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause between two polls of an execution's state.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// A temp folder with a `serve` config; hosts started from it share its state folder.
pub struct ServeSetup {
    /// The temp folder; removed on drop.
    pub dir: tempfile::TempDir,
    /// The config file.
    pub config: PathBuf,
    /// The state folder.
    pub state_dir: PathBuf,
}

impl ServeSetup {
    /// Writes a config that loads `plugin` with `settings` (TOML lines of `[backend.settings]`)
    /// and `serve` (TOML lines of `[serve]`, besides `state_dir`).
    pub fn new(plugin: &Path, settings: &str, serve: &str) -> Self {
        let dir = tempfile::Builder::new().prefix("serve-").tempdir().expect("temp folder");
        let state_dir = dir.path().join("state");
        let config = dir.path().join("host.toml");
        let text = format!(
            "[backend]\npath = {:?}\n\n[backend.settings]\n{settings}\n\n[serve]\nstate_dir = {:?}\n{serve}\n\n[logging]\nlevel = \"info\"\n",
            plugin.display().to_string(),
            state_dir.display().to_string()
        );
        std::fs::write(&config, text).expect("write config");
        Self { dir, config, state_dir }
    }

    /// Lowers the host's log level to `warn`, for tests whose info lines would be many.
    pub fn quiet(self) -> Self {
        let text = std::fs::read_to_string(&self.config).expect("read config");
        std::fs::write(&self.config, text.replace("level = \"info\"", "level = \"warn\"")).expect("write config");
        self
    }

    /// Starts `tower-host serve` and waits for its ready line.
    pub fn start(&self) -> ServeHost {
        let stderr_path = self.dir.path().join("host-stderr.log");
        let stderr = std::fs::OpenOptions::new().create(true).append(true).open(&stderr_path).expect("stderr log");
        let mut child = std::process::Command::new(crate::host_binary())
            .arg("--config")
            .arg(&self.config)
            .arg("serve")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("tower-host starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = sender.send(line);
            }
            // Keeps reading so that the host never blocks on a full pipe.
            for _ in lines {}
        });
        let line = match receiver.recv_timeout(START_TIMEOUT) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("tower-host serve did not report ready:\n{}", std::fs::read_to_string(&stderr_path).unwrap_or_default());
            }
        };
        let address = line.strip_prefix("tower-host: listening on ").unwrap_or_else(|| panic!("unexpected ready line {line:?}"));
        let endpoint = Endpoint::parse(address);
        ServeHost { child: Some(child), client: Client::new(endpoint.clone()), endpoint, stderr_path }
    }
}

/// A running `tower-host serve`; killed on drop.
pub struct ServeHost {
    child: Option<Child>,
    /// A client without a token.
    pub client: Client,
    /// Where it listens.
    pub endpoint: Endpoint,
    stderr_path: PathBuf,
}

impl ServeHost {
    /// Returns the process id.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// Sends a signal.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) with the id of a child this struct owns and has not reaped.
        let result = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(result, 0, "signal {signal} delivered");
    }

    /// Kills the host with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits up to `timeout` for the host to exit.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        loop {
            if let Some(status) = child.try_wait().expect("wait for the host") {
                self.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Returns what the host wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Reads the host's peak resident set size in KiB (`VmHWM` of `/proc/<pid>/status`).
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("read /proc status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc status")
    }

    /// Polls an execution until `done` accepts it; panics after `timeout`.
    pub fn wait_for(&self, id: &str, timeout: Duration, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let response = self.client.get(&format!("/v1/executions/{id}"));
            if response.status == 200 {
                let execution = response.json();
                if done(&execution) {
                    return execution;
                }
                if Instant::now() > deadline {
                    panic!("execution {id} did not reach the expected state in {timeout:?}: {execution}\n{}", self.stderr());
                }
            } else if Instant::now() > deadline {
                panic!("GET execution {id} returned {}: {}", response.status, response.text());
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Waits until an execution's status is terminal and returns it.
    pub fn wait_finished(&self, id: &str, timeout: Duration) -> serde_json::Value {
        self.wait_for(id, timeout, |execution| execution["phase"] == "finished")
    }
}

impl Drop for ServeHost {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A packed sample app: the archive's bytes and its sha256.
pub struct TestPackage {
    /// The `.tar.gz` bytes.
    pub bytes: Vec<u8>,
    /// Lowercase hex sha256.
    pub sha256: String,
}

/// Packs `examples/<name>` the way the Tower CLI does.
pub fn pack_example(name: &str) -> TestPackage {
    let dir = tempfile::tempdir().expect("temp folder");
    let archive = dir.path().join("package.tar.gz");
    tower_package::pack_dir(&crate::example(name), &archive).expect("pack the example");
    let sha256 = tower_package::sha256_file(&archive).expect("hash the package");
    TestPackage { bytes: std::fs::read(&archive).expect("read the package"), sha256 }
}

/// Returns a spec for an uploaded package with scripted parameters.
pub fn upload_spec(id: &str, package: &TestPackage, parameters: &[(&str, &str)]) -> serde_json::Value {
    let parameters: Vec<_> = parameters.iter().map(|(key, value)| serde_json::json!({ "key": key, "value": value })).collect();
    serde_json::json!({
        "run_id": id,
        "app_name": "hello-world",
        "package": { "upload": { "sha256": package.sha256 } },
        "parameters": parameters,
    })
}

/// Creates an execution with an uploaded package and checks the 201.
pub fn create(client: &Client, id: &str, package: &TestPackage, parameters: &[(&str, &str)]) -> Response {
    let response = client.create_upload(&upload_spec(id, package, parameters), &package.bytes);
    assert_eq!(response.status, 201, "create {id}: {}", response.text());
    response
}
