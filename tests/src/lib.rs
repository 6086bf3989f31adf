//! Support for the cross-crate integration tests: where the built host and plugins are, and
//! helpers to run the host binary in a temp folder.
//!
//! The tests use the artifacts of `cargo build --workspace`, in the same target folder as the
//! test binaries; `cargo test` alone does not build `cdylib` plugins or the host binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub mod http;
pub mod serve;

/// Returns the target folder of the current profile (`target/debug`), from the test binary's path
/// (`target/debug/deps/<test>`).
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary has a path");
    let deps = exe.parent().expect("the test binary is in target/<profile>/deps");
    deps.parent().expect("deps is inside target/<profile>").to_path_buf()
}

fn artifact(file_name: &str) -> PathBuf {
    let path = profile_dir().join(file_name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace first with `cargo build --workspace` (the README's test command does)",
        path.display()
    );
    path
}

/// Returns the `tower-host` binary.
pub fn host_binary() -> PathBuf {
    artifact("tower-host")
}

/// Returns a shipped plugin, such as `subprocess`.
pub fn shipped_plugin(name: &str) -> PathBuf {
    artifact(&format!("libtower_plugin_{}{}", name.replace('-', "_"), std::env::consts::DLL_SUFFIX))
}

/// Returns a fixture library, such as `scripted` or `other-major`.
pub fn fixture_plugin(name: &str) -> PathBuf {
    artifact(&format!("libtower_fixture_{}{}", name.replace('-', "_"), std::env::consts::DLL_SUFFIX))
}

/// Returns the repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is inside the repository").to_path_buf()
}

/// Returns a sample app folder under `examples/`.
pub fn example(name: &str) -> PathBuf {
    repo_root().join("examples").join(name)
}

/// A temp folder with a config file that selects one plugin file.
pub struct TestConfig {
    /// The temp folder; removed on drop.
    pub dir: tempfile::TempDir,
    /// The config file inside it.
    pub path: PathBuf,
}

impl TestConfig {
    /// Writes a config that loads `plugin` with `settings` (TOML lines for `[backend.settings]`).
    pub fn new(plugin: &Path, settings: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp folder");
        let path = dir.path().join("host.toml");
        let text = format!("[backend]\npath = {:?}\n\n[backend.settings]\n{settings}\n", plugin.display().to_string());
        std::fs::write(&path, text).expect("write config");
        Self { dir, path }
    }

    /// Writes a config from full TOML text.
    pub fn from_text(text: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp folder");
        let path = dir.path().join("host.toml");
        std::fs::write(&path, text).expect("write config");
        Self { dir, path }
    }
}

/// Returns a `tower-host` command with `--config`, its output captured and stdin closed.
pub fn host(config: Option<&Path>) -> Command {
    let mut command = Command::new(host_binary());
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    command
}

/// The captured result of a host run.
pub struct HostOutput {
    /// Exit code; `None` when a signal killed the host.
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl HostOutput {
    /// Parses stdout as JSON lines.
    pub fn json_events(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|error| panic!("invalid JSON line {line:?}: {error}")))
            .collect()
    }
}

impl std::fmt::Debug for HostOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit code {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}", self.code, self.stdout, self.stderr)
    }
}

/// Runs a command to completion and captures its output.
pub fn capture(command: &mut Command) -> HostOutput {
    let Output { status, stdout, stderr } = command.output().expect("tower-host starts");
    HostOutput {
        code: status.code(),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// Copies a file into `dir` under `name`, keeping it private (mode 0755 for the copy).
pub fn copy_plugin(from: &Path, dir: &Path, name: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let to = dir.join(name);
    std::fs::copy(from, &to).expect("copy plugin");
    std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).expect("chmod plugin");
    to
}

/// Tells whether this run is CI (`CI=true`), where a missing prerequisite fails a test instead of
/// skipping it.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| value == "true" || value == "1")
}

/// Skips the calling test (returns `true`) when a prerequisite is missing, saying why; in CI it
/// panics instead, because CI installs every prerequisite.
pub fn skip_unless(available: bool, what: &str) -> bool {
    if available {
        return false;
    }
    let message = format!("{what}; run `bash .ci/setup` to install it");
    assert!(!in_ci(), "missing test prerequisite in CI: {message}");
    eprintln!("skipped: {message}");
    true
}

/// Returns the `uv` binary on `PATH`, if any.
pub fn find_uv() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|folder| folder.join("uv")).find(|candidate| candidate.is_file())
}

/// Returns the `bwrap` binary on `PATH`, if any.
pub fn find_bwrap() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|folder| folder.join("bwrap")).find(|candidate| candidate.is_file())
}

/// Points `TMPDIR` of this test process at a folder of its own, once, before any test reads it,
/// and returns the folder. The conformance kit creates the folder its apps write PID files to
/// under `TMPDIR`, and the bubblewrap sandbox mounts the host's files read-only, so settings of
/// the bubblewrap plugin bind this folder read-write.
pub fn bubblewrap_tmpdir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("tower-host-tests-bubblewrap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the test's TMPDIR");
        std::env::set_var("TMPDIR", &dir);
        dir
    })
    .clone()
}

/// Returns the settings of the bubblewrap plugin for tests: work folder and writable folders
/// under [`bubblewrap_tmpdir`], `uv` from `PATH`, and the offline wheels. The sandbox mounts an
/// empty /tmp, which hides a checkout under /tmp and its wheels folder, so the wheels are bound
/// in too.
pub fn bubblewrap_settings(uv: &Path, wheels: &Path) -> serde_json::Value {
    let tmpdir = bubblewrap_tmpdir();
    serde_json::json!({
        "work_dir": tmpdir.join("work"),
        "writable_paths": [&tmpdir, wheels],
        "uv": uv,
        "uv_args": ["--offline", "--no-index", "--find-links", wheels],
    })
}

/// Returns the folder of wheels that Python sample apps install offline, if it was filled.
pub fn wheels_dir() -> Option<PathBuf> {
    let dir = repo_root().join("tests/wheels");
    let filled = std::fs::read_dir(&dir).ok()?.filter_map(Result::ok).any(|entry| entry.path().extension().is_some_and(|ext| ext == "whl"));
    filled.then_some(dir)
}

/// A config for the subprocess plugin with a private work folder, and uv set up to install only
/// from the local wheels folder (no network).
pub fn subprocess_config(wheels: &Path) -> TestConfig {
    let work = tempfile::tempdir().expect("temp folder");
    let work_path = work.path().to_path_buf();
    // The uv cache is shared between tests so that each wheel is unpacked once.
    let cache = std::env::temp_dir().join("tower-host-tests-uv-cache");
    let settings = format!(
        "work_dir = {:?}\nuv_cache_dir = {:?}\nuv_args = [\"--offline\", \"--no-index\", \"--find-links\", {:?}]\ninstall_uv = false\n",
        work_path.display().to_string(),
        cache.display().to_string(),
        wheels.display().to_string()
    );
    let config = TestConfig::new(&shipped_plugin("subprocess"), &settings);
    // The work folder lives as long as the config's own temp folder.
    std::mem::forget(work);
    config
}

/// A config for the kubernetes plugin against a kubeconfig, with uv in the pods installing only
/// from the local wheels folder. `extra` adds TOML lines to `[backend.settings]`.
pub fn kubernetes_config(kubeconfig: &Path, wheels: Option<&Path>, extra: &str) -> TestConfig {
    let uv_args = match wheels {
        Some(wheels) => format!("uv_args = [\"--offline\", \"--no-index\", \"--find-links\", {:?}]\n", wheels.display().to_string()),
        None => String::new(),
    };
    let settings = format!("kubeconfig = {:?}\nnamespace = \"default\"\n{uv_args}{extra}\n", kubeconfig.display().to_string());
    TestConfig::new(&shipped_plugin("kubernetes"), &settings)
}
