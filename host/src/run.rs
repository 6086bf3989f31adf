//! `tower-host run`: one execution from a package or a folder, to completion.

use crate::backend_setup::create_backend;
use crate::cli::RunArgs;
use crate::config::Config;
use crate::exit_code;
use crate::failure::{CommandResult, Failure};
use crate::output::Output;
use crate::plugin::{Execution, ExecutionEvent};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use tower_plugin_api::{ExecutionSpec, ExecutionState, ExecutionStatus, KeyValue, PackageSource, SecretVar};

/// A package ready to hand to the backend.
struct StagedInput {
    archive: PathBuf,
    sha256: String,
    manifest: tower_package::Manifest,
    app_name: String,
}

/// Runs one execution and returns the exit code it maps to.
pub async fn run(config: &Config, args: RunArgs) -> CommandResult {
    // Signals are caught from the start, so that Ctrl-C while a folder is packed or the plugin
    // loads ends the host cleanly and removes the temp folder.
    let mut signals = Signals::listen()?;
    let pid_namespace = pid_namespace();
    if let Some(namespace) = &pid_namespace {
        remove_stale_run_folders(&std::env::temp_dir(), namespace);
    }
    let prefix = format!("{RUN_FOLDER_PREFIX}{}-{}-", pid_namespace.as_deref().unwrap_or("unknown"), std::process::id());
    let temp = tempfile::Builder::new().prefix(&prefix).tempdir().map_err(|error| {
        Failure::host(anyhow::anyhow!("failed to create a temp folder for the package: {error}; check TMPDIR"))
    })?;
    let input_path = args.input.clone().unwrap_or_else(|| PathBuf::from("."));
    let temp_path = temp.path().to_path_buf();
    let staging = tokio::task::spawn_blocking(move || stage_input(&input_path, &temp_path));
    let input = tokio::select! {
        staged = staging => staged.map_err(Failure::host)??,
        _ = signals.recv() => return Ok(interrupted_before_start()),
    };
    let spec = build_spec(&args, &input)?;
    let backend = tokio::select! {
        backend = create_backend(config) => backend?,
        _ = signals.recv() => return Ok(interrupted_before_start()),
    };
    let capabilities = backend.capabilities().await.map_err(Failure::host)?;

    let span = tracing::info_span!("execution", execution.id = %spec.run_id, backend = %capabilities.backend, plugin = %backend.plugin().name);
    let _entered = span.enter();
    let mut output = Output::new(args.output);
    let (execution, mut events) = backend.create(spec).await.map_err(Failure::host)?;
    tracing::info!("execution created");

    // The host enforces the timeout itself only when the backend does not. Like a backend's, it
    // counts from the start of the app's program: the first `running` status.
    let host_deadline = args.timeout.filter(|_| !capabilities.enforced_limits.timeout);
    let mut stop = StopControl::new(execution.clone(), args.grace, signals);
    let deadline = sleep_until_deadline(None);
    tokio::pin!(deadline);
    let mut deadline_armed = false;
    let mut output_error: Option<std::io::Error> = None;

    let final_status = loop {
        tokio::select! {
            event = events.next() => match event {
                Some(ExecutionEvent::Logs(records)) => {
                    output.logs(&records);
                    if let Some(error) = output.take_write_error() {
                        if output_error.is_none() {
                            tracing::debug!(%error, "writing the app's output failed");
                            eprintln!("tower-host: writing the app's output failed ({error}); stopping the app");
                            stop.requests += 1;
                            stop.terminate();
                        }
                        output_error.get_or_insert(error);
                    }
                }
                Some(ExecutionEvent::Status(status)) => {
                    let status = stop.adjust(status);
                    output.status(&status);
                    if status.is_terminal() {
                        break status;
                    }
                    if let (Some(limit), false, Some(ExecutionState::Running)) = (host_deadline, deadline_armed, status.state()) {
                        deadline.as_mut().set(sleep_until_deadline(Some(limit)));
                        deadline_armed = true;
                    }
                }
                None => unreachable!("the event stream ends only after a terminal status"),
            },
            _ = stop.requested() => {
                let message = stop.escalate();
                output.message(&message);
            }
            _ = &mut deadline, if !stop.timed_out => {
                stop.timed_out = true;
                output.message(&format!("timeout of {} reached, stopping the app", humantime::format_duration(host_deadline.unwrap_or_default())));
                stop.terminate();
            }
        }
    };

    if let Err(error) = execution.cleanup().await {
        output.message(&format!("cleanup failed: {error}"));
    }
    if let Err(error) = backend.shutdown().await {
        tracing::warn!(%error, "backend shutdown failed");
    }
    match output_error {
        Some(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(exit_code::OUTPUT_CLOSED),
        Some(_) => Ok(exit_code::HOST_FAILURE),
        None => Ok(exit_code_of(&final_status)),
    }
}

/// Start of the name of a `run` temp folder. The host's pid namespace, its pid and a random
/// part follow, each after a dash.
const RUN_FOLDER_PREFIX: &str = "tower-host-run-";

/// Returns the inode number of this process's pid namespace, from `/proc/self/ns/pid`.
fn pid_namespace() -> Option<String> {
    let link = std::fs::read_link("/proc/self/ns/pid").ok()?;
    let inode = link.to_str()?.strip_prefix("pid:[")?.strip_suffix(']')?;
    is_decimal(inode).then(|| inode.to_string())
}

/// Tells whether `text` is a decimal number as Linux writes one: digits without a sign or a
/// leading zero.
fn is_decimal(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit()) && (text == "0" || !text.starts_with('0'))
}

/// Removes the temp folders of `run` processes that are gone, such as a host killed by SIGKILL.
/// A folder is removed only when its name has the form `run` gives it, with this pid namespace
/// and a pid without a running process, and the folder belongs to this user. Another namespace's
/// pids cannot be checked from here, so its folders stay.
fn remove_stale_run_folders(temp_root: &Path, namespace: &str) {
    let Ok(entries) = std::fs::read_dir(temp_root) else { return };
    // SAFETY: geteuid has no preconditions and cannot fail.
    let own_uid = unsafe { libc::geteuid() };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|name| name.strip_prefix(RUN_FOLDER_PREFIX)) else { continue };
        let mut parts = rest.splitn(3, '-');
        let (Some(folder_namespace), Some(pid), Some(random)) = (parts.next(), parts.next(), parts.next()) else { continue };
        if folder_namespace != namespace || !is_decimal(pid) || random.is_empty() {
            continue;
        }
        let Ok(pid) = pid.parse::<u32>() else { continue };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let path = entry.path();
        let owned = std::fs::symlink_metadata(&path).is_ok_and(|metadata| metadata.is_dir() && metadata.uid() == own_uid);
        if !owned {
            continue;
        }
        match std::fs::remove_dir_all(&path) {
            Ok(()) => tracing::debug!(folder = %path.display(), pid, "removed the temp folder of a run that is gone"),
            Err(error) => tracing::warn!(folder = %path.display(), pid, %error, "failed to remove the temp folder of a run that is gone"),
        }
    }
}

/// Reads the input: a `.tar.gz` package as is, or a folder packed the way Tower packs it.
fn stage_input(input: &Path, temp: &Path) -> Result<StagedInput, Failure> {
    let archive = if input.is_dir() {
        if !input.join("Towerfile").is_file() {
            return Err(Failure::usage(anyhow::anyhow!(
                "{} has no Towerfile; pass a folder with a Towerfile or a Tower package (.tar.gz)",
                input.display()
            )));
        }
        let archive = temp.join("package.tar.gz");
        tower_package::pack_dir(input, &archive).map_err(Failure::usage)?;
        archive
    } else if input.is_file() {
        input.canonicalize().map_err(|error| Failure::usage(anyhow::anyhow!("cannot read {}: {error}", input.display())))?
    } else {
        return Err(Failure::usage(anyhow::anyhow!(
            "{} does not exist; pass a Tower package (.tar.gz) or a folder with a Towerfile",
            input.display()
        )));
    };

    let manifest = tower_package::read_manifest(&archive).map_err(Failure::usage)?;
    let sha256 = tower_package::sha256_file(&archive).map_err(Failure::usage)?;
    let app_name = app_name_of(input);
    Ok(StagedInput { archive, sha256, manifest, app_name })
}

/// Returns the app's name: the Towerfile's `[app] name` for a folder, else the file name.
fn app_name_of(input: &Path) -> String {
    if input.is_dir() {
        if let Ok(towerfile) = tower_package::Towerfile::from_path(&input.join("Towerfile")) {
            return towerfile.app.name;
        }
    }
    let name = input.canonicalize().ok().and_then(|path| path.file_name().map(|name| name.to_string_lossy().into_owned()));
    name.unwrap_or_default().trim_end_matches(".tar.gz").trim_end_matches(".tgz").to_string()
}

fn build_spec(args: &RunArgs, input: &StagedInput) -> Result<ExecutionSpec, Failure> {
    let run_id = args.id.clone().unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    validate_run_id(&run_id).map_err(|rule| Failure::usage(anyhow::anyhow!("invalid --id {run_id:?}: {rule}")))?;
    let archive = input.archive.to_str().ok_or_else(|| {
        Failure::usage(anyhow::anyhow!("package path {} is not valid UTF-8; rename or move it", input.archive.display()))
    })?;
    let mut spec = ExecutionSpec::new(run_id, PackageSource::file(archive, input.sha256.clone()));
    spec.app_name = input.app_name.clone().into();
    spec.environment = args.environment.clone().into();

    // Parameters: Towerfile defaults, then --param in order (a later one wins).
    let mut parameters: Vec<(String, String)> =
        input.manifest.parameters.iter().map(|parameter| (parameter.name.clone(), parameter.default.clone())).collect();
    for (key, value) in &args.params {
        match parameters.iter_mut().find(|(name, _)| name == key) {
            Some(existing) => existing.1 = value.clone(),
            None => parameters.push((key.clone(), value.clone())),
        }
    }
    spec.parameters = parameters.into_iter().map(|(key, value)| KeyValue::new(key, value)).collect();

    for name in &args.secrets {
        let value = std::env::var(name).map_err(|_| {
            Failure::usage(anyhow::anyhow!(
                "--secret {name}: the environment variable `{name}` is not set (or not UTF-8); export it before running tower-host"
            ))
        })?;
        spec.secrets.push(SecretVar::new(name.clone(), value));
    }
    spec.env = args.env.iter().map(|(key, value)| KeyValue::new(key.clone(), value.clone())).collect();
    if let Some(timeout) = args.timeout {
        // The contract counts whole seconds; round up so that the app never gets less time.
        let seconds = timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0);
        spec.limits.timeout_seconds = abi_stable::std_types::ROption::RSome(seconds.max(1));
    }
    Ok(spec)
}

/// Checks an execution id: 1 to 200 letters, digits, `-`, `_` and `.`, and not `.` or `..`,
/// because backends and `serve` name folders after it. Returns the rule on failure.
pub fn validate_run_id(run_id: &str) -> Result<(), &'static str> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
    if run_id.is_empty() || run_id.len() > 200 || !run_id.chars().all(allowed) || run_id == "." || run_id == ".." {
        return Err("use at most 200 letters, digits, `-`, `_` and `.`, and not `.` or `..`");
    }
    Ok(())
}

/// SIGINT (Ctrl-C) and SIGTERM, the requests to stop.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn listen() -> Result<Self, Failure> {
        let listen = |kind| signal(kind).map_err(|error| Failure::host(anyhow::anyhow!("failed to listen for signals: {error}")));
        Ok(Self { interrupt: listen(SignalKind::interrupt())?, terminate: listen(SignalKind::terminate())? })
    }

    /// Waits for SIGINT or SIGTERM.
    async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

/// Reports a stop request that came before the app started, and returns the cancelled code.
fn interrupted_before_start() -> u8 {
    eprintln!("tower-host: interrupted before the app started; nothing was run");
    exit_code::CANCELLED
}

/// Stop requests after the execution exists: the first one terminates with the grace period, the
/// next one kills.
struct StopControl {
    execution: Execution,
    grace: Duration,
    signals: Signals,
    requests: u32,
    timed_out: bool,
}

impl StopControl {
    fn new(execution: Execution, grace: Duration, signals: Signals) -> Self {
        Self { execution, grace, signals, requests: 0, timed_out: false }
    }

    /// Waits for SIGINT or SIGTERM.
    async fn requested(&mut self) {
        self.signals.recv().await;
    }

    /// Acts on a stop request and returns what to tell the user.
    fn escalate(&mut self) -> String {
        self.requests += 1;
        if self.requests == 1 && !self.timed_out {
            self.terminate();
            format!("stopping the app (grace period {}); press Ctrl-C again to kill it", humantime::format_duration(self.grace))
        } else {
            let execution = self.execution.clone();
            tokio::spawn(async move {
                if let Err(error) = execution.kill().await {
                    tracing::error!(%error, "kill failed");
                }
            });
            "killing the app".to_string()
        }
    }

    fn terminate(&self) {
        let execution = self.execution.clone();
        let grace = self.grace;
        tokio::spawn(async move {
            if let Err(error) = execution.terminate(grace).await {
                tracing::error!(%error, "terminate failed");
            }
        });
    }

    /// Rewrites the cancellation that follows the host's own timeout stop into a timeout.
    fn adjust(&self, status: ExecutionStatus) -> ExecutionStatus {
        match status.state() {
            Some(ExecutionState::Cancelled { forced }) if self.timed_out && self.requests == 0 => {
                let mut adjusted = ExecutionStatus::new(ExecutionState::TimedOut { forced: *forced });
                adjusted.started_at = status.started_at;
                adjusted.ended_at = status.ended_at;
                adjusted.metadata = status.metadata;
                adjusted
            }
            _ => status,
        }
    }
}

async fn sleep_until_deadline(deadline: Option<Duration>) {
    match deadline {
        Some(after) => tokio::time::sleep(after).await,
        None => std::future::pending().await,
    }
}

/// Maps a terminal status to the exit code of `tower-host run`.
pub fn exit_code_of(status: &ExecutionStatus) -> u8 {
    match status.state() {
        Some(ExecutionState::Exited) => 0,
        Some(ExecutionState::Crashed { exit_code, signal, .. }) => match (exit_code.into_option(), signal.into_option()) {
            (_, Some(signal)) => 128u8.wrapping_add(signal as u8),
            (Some(code), None) if code != 0 => code as u8,
            // A crash without a usable code, such as OOMKilled with exit code 0.
            _ => exit_code::FAILED,
        },
        Some(ExecutionState::Cancelled { .. }) => exit_code::CANCELLED,
        Some(ExecutionState::TimedOut { .. }) => exit_code::TIMED_OUT,
        _ => exit_code::FAILED,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_code_follows_shell_conventions() {
        assert_eq!(exit_code_of(&ExecutionStatus::new(ExecutionState::Exited)), 0);
        assert_eq!(exit_code_of(&ExecutionStatus::new(ExecutionState::crashed_with_code(138))), 138);
        assert_eq!(exit_code_of(&ExecutionStatus::new(ExecutionState::crashed_by_signal(11))), 139);
        assert_eq!(exit_code_of(&ExecutionStatus::new(ExecutionState::Cancelled { forced: false })), exit_code::CANCELLED);
        assert_eq!(exit_code_of(&ExecutionStatus::new(ExecutionState::TimedOut { forced: true })), exit_code::TIMED_OUT);
        assert_eq!(exit_code_of(&ExecutionStatus::new(ExecutionState::lost("gone"))), exit_code::FAILED);
    }
}
