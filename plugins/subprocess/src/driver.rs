//! The life of an execution after `create` staged it: prepare the Python environment, start the
//! program, stream its output, wait for it, and report how it ended.

use crate::backend::BackendContext;
use crate::environment::{find_executable, Environment};
use crate::logs::{forward_output, LineSplitter};
use crate::process::{CommandLine, Spawned};
use crate::report::{describe_exit, exit_state, stopped_state, Reporter};
use crate::uv::{self, SetupStep, UvInvocation};
use crate::workload::{StopReason, Workload, WorkloadError};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio::task::JoinHandle;
use tracing::Instrument;
use tower_package::Package;
use tower_plugin_api::sdk::LogLine;
use tower_plugin_api::{Channel, ErrorKind, ExecutionState, FailureStageKind, SetupPhaseKind, Stream};

/// Folder inside the execution folder for uv's cache when the spec disables the shared cache.
const PRIVATE_UV_CACHE_DIR_NAME: &str = "uv-cache";

/// An early end of the execution, carrying its terminal state.
type Ended = ExecutionState;

/// The facts about one staged execution that the driver needs.
#[derive(Debug)]
pub struct Launch {
    /// The unpacked package.
    pub package: Package,
    /// The execution folder.
    pub execution_dir: PathBuf,
    /// The app's environment, before the virtual environment is activated.
    pub environment: Environment,
    /// `runtime.entrypoint` of the spec.
    pub entrypoint: Vec<String>,
    /// `runtime.command` of the spec.
    pub command: Vec<String>,
    /// `runtime.version` of the spec: the Python version for `uv venv`.
    pub python_version: Option<String>,
    /// `limits.timeout_seconds`, counted from the program's start.
    pub timeout: Option<Duration>,
    /// `limits.max_processes`.
    pub max_processes: Option<u32>,
    /// `cache.enabled`: whether uv uses the shared cache.
    pub shared_cache: bool,
}

/// Drives one execution from setup to its terminal status.
pub struct Driver {
    /// The backend's settings, folders and uv install lock.
    pub backend: Arc<BackendContext>,
    /// The staged execution.
    pub launch: Launch,
    /// The execution's processes.
    pub workload: Arc<Workload>,
    /// The destination of statuses and logs.
    pub reporter: Reporter,
    /// Set to `true` once the terminal status was delivered.
    pub done: watch::Sender<bool>,
    /// The concurrency slot, released when the driver ends.
    pub permit: Option<OwnedSemaphorePermit>,
}

impl Driver {
    /// Runs the execution to its end and delivers the terminal status, after every log record.
    pub async fn run(self) {
        let state = match self.run_steps().await {
            Ok(state) | Err(state) => state,
        };

        self.workload.finish();
        tracing::info!(state = state.name(), "execution ended");
        self.reporter.report(state);
        let _ = self.done.send(true);
        drop(self.permit);
    }

    async fn run_steps(&self) -> Result<ExecutionState, Ended> {
        let python_venv = if self.launch.package.manifest().is_bash() { None } else { Some(self.prepare_python().await?) };

        let command = self.program_command(python_venv.as_deref())?;
        let environment = match &python_venv {
            Some(venv) => self.launch.environment.with_virtualenv(venv),
            None => self.launch.environment.clone(),
        };
        self.run_program(&command, &environment).await
    }

    /// Creates the virtual environment and installs the dependencies. Returns the venv folder.
    async fn prepare_python(&self) -> Result<PathBuf, Ended> {
        self.reporter.report(ExecutionState::preparing(SetupPhaseKind::InstallingDependencies));
        let uv = self.ensure_uv().await?;

        let working_dir = self.launch.package.working_dir();
        let venv = working_dir.join(uv::VENV_DIR_NAME);
        let cache_dir = if self.launch.shared_cache {
            self.backend.paths.uv_cache_dir.clone()
        } else {
            self.launch.execution_dir.join(PRIVATE_UV_CACHE_DIR_NAME)
        };
        let invocation = UvInvocation {
            uv,
            cache_dir,
            extra_args: self.backend.settings.uv_args.clone(),
            python_version: self.launch.python_version.clone(),
        };
        let mut environment = self.launch.environment.with_virtualenv(&venv);
        for (name, value) in uv::UV_ENVIRONMENT {
            environment.set(name, value);
        }

        for step in uv::plan(&working_dir) {
            let exit = self.run_setup_process(&invocation.command(step, &working_dir), &environment).await?;
            if !exit.success() {
                return Err(setup_step_failed(step, exit));
            }
        }
        Ok(venv)
    }

    /// Finds uv, or installs it with pip into the plugin's cache when the settings allow it.
    /// One execution installs at a time; the others wait and then find its result.
    async fn ensure_uv(&self) -> Result<PathBuf, Ended> {
        let settings = &self.backend.settings;
        let cache_dir = &self.backend.paths.cache_dir;
        let host_path = std::env::var_os("PATH");
        let locate = || uv::locate(&settings.uv, host_path.as_deref(), cache_dir);
        let missing = |detail: &str| {
            let message = format!("{detail}{}", uv::missing_uv_help(&settings.uv));
            ExecutionState::failed(ErrorKind::InvalidConfig, FailureStageKind::Setup, message, false)
        };

        if let Some(found) = locate() {
            return Ok(found);
        }
        if !settings.install_uv {
            return Err(missing(""));
        }
        let _install_guard = self.backend.uv_install_lock.lock().await;
        if let Some(found) = locate() {
            return Ok(found);
        }
        let Some(python) = find_executable(uv::PYTHON_FOR_PIP, host_path.as_deref()) else {
            return Err(missing("python3 was not found on PATH, so uv could not be installed; "));
        };

        self.install_uv(python, cache_dir).await?;
        locate().ok_or_else(|| missing("pip reported success but installed no uv binary; "))
    }

    /// Runs `python3 -m pip install --target <cache>/uv-install uv` as a setup step. pip writes
    /// into a temporary folder that is renamed when it succeeded, so an interrupted install
    /// leaves nothing that looks installed.
    async fn install_uv(&self, python: PathBuf, cache_dir: &Path) -> Result<(), Ended> {
        let target = tempfile::Builder::new()
            .prefix(&format!("{}.tmp-", uv::UV_INSTALL_DIR_NAME))
            .tempdir_in(cache_dir)
            .map_err(|error| platform_failure(format!("failed to create a folder in {} to install uv: {error}", cache_dir.display())))?;
        let command = uv::pip_install_command(python, target.path(), cache_dir);
        self.note_setup(format!("uv was not found; installing it with `{}`", command.display())).await;

        let environment = Environment::from_host(std::env::vars_os(), &self.backend.settings.env_allowlist);
        let exit = self.run_setup_process(&command, &environment).await?;
        if !exit.success() {
            let message = format!(
                "installing uv failed: `{}` {}; pip's output is on the setup channel. {}",
                command.display(),
                describe_exit(exit),
                uv::missing_uv_help(&self.backend.settings.uv)
            );
            return Err(ExecutionState::failed(ErrorKind::InvalidConfig, FailureStageKind::Setup, message, false));
        }

        let installed = cache_dir.join(uv::UV_INSTALL_DIR_NAME);
        // Another host may have installed uv meanwhile; then its copy stays and this one goes.
        if let Err(error) = std::fs::rename(target.path(), &installed) {
            tracing::debug!(%error, "kept the uv installed earlier");
        }
        Ok(())
    }

    /// Builds the program's command line: the interpreter (`runtime.entrypoint`, else the venv's
    /// `python` or bash) followed by the script (`runtime.command`, else the manifest's script).
    ///
    /// Python apps run on the venv's interpreter directly rather than through `uv run`, so the
    /// backend waits on the app's own process and gets its exit code or signal, and signals reach
    /// the app without a process in between.
    fn program_command(&self, python_venv: Option<&Path>) -> Result<CommandLine, Ended> {
        let mut argv: Vec<OsString> = if !self.launch.entrypoint.is_empty() {
            self.launch.entrypoint.iter().map(OsString::from).collect()
        } else if let Some(venv) = python_venv {
            vec![venv.join("bin").join("python").into_os_string()]
        } else {
            let bash = &self.backend.settings.bash;
            let found = find_executable(bash, std::env::var_os("PATH").as_deref()).ok_or_else(|| {
                let message = format!("bash was not found (setting `bash` = {bash:?}, looked up on PATH); install bash or set `bash` to its path");
                ExecutionState::failed(ErrorKind::InvalidConfig, FailureStageKind::Setup, message, false)
            })?;
            vec![found.into_os_string()]
        };
        if self.launch.command.is_empty() {
            argv.push(self.launch.package.invoke_path().into_os_string());
        } else {
            argv.extend(self.launch.command.iter().map(OsString::from));
        }

        let program = PathBuf::from(argv.remove(0));
        Ok(CommandLine { program, args: argv, cwd: self.launch.package.working_dir() })
    }

    /// Starts the app's program, reports it running, and waits for its end.
    async fn run_program(&self, command: &CommandLine, environment: &Environment) -> Result<ExecutionState, Ended> {
        let cgroup = self.workload.cgroup();
        if let (Some(max_processes), Some(cgroup)) = (self.launch.max_processes, cgroup) {
            cgroup.limit_processes(max_processes).map_err(|error| platform_failure(error.to_string()))?;
        }
        let oom_kills_before = cgroup.map_or(0, |cgroup| cgroup.oom_kills());

        self.reporter.report(ExecutionState::preparing(SetupPhaseKind::Starting));
        let spawned = self.spawn(command, environment, true)?;
        let pid = spawned.group.id();
        self.reporter.set_metadata("pid", pid.to_string());
        tracing::info!(pid, program = %command.program.display(), "program started");
        self.reporter.report(ExecutionState::Running);

        let exit = self.supervise(spawned, Channel::Program, self.launch.timeout).await?;
        let oom_killed = cgroup.is_some_and(|cgroup| cgroup.oom_kills() > oom_kills_before);
        Ok(exit_state(exit, self.workload.stop_record(), oom_killed))
    }

    /// Runs one setup process to its end with its output on the setup channel. A stop request
    /// during the step ends the execution as stopped, whatever the step returned.
    async fn run_setup_process(&self, command: &CommandLine, environment: &Environment) -> Result<ExitStatus, Ended> {
        tracing::info!(command = %command.display(), "setup step started");
        let spawned = self.spawn(command, environment, false)?;
        let exit = self.supervise(spawned, Channel::Setup, None).await?;
        if let Some(stop) = self.workload.stop_record() {
            return Err(stopped_state(stop));
        }
        tracing::info!(command = %command.display(), exit = %describe_exit(exit), "setup step ended");
        Ok(exit)
    }

    fn spawn(&self, command: &CommandLine, environment: &Environment, is_program: bool) -> Result<Spawned, Ended> {
        match self.workload.spawn(command, environment, is_program) {
            Ok(Some(spawned)) => Ok(spawned),
            Ok(None) => Err(self.stopped_before_start()),
            Err(error) => Err(spawn_failure(&error, is_program && !self.launch.entrypoint.is_empty())),
        }
    }

    fn stopped_before_start(&self) -> Ended {
        let stop = self.workload.stop_record();
        stop.map(stopped_state).unwrap_or_else(|| ExecutionState::Cancelled { forced: false })
    }

    /// Streams a process's output, waits for it to exit (stopping it when `timeout` runs out),
    /// kills what remains of its process group and cgroup, and waits for both pipes to close.
    async fn supervise(&self, spawned: Spawned, channel: Channel, timeout: Option<Duration>) -> Result<ExitStatus, Ended> {
        let Spawned { mut child, stdout, stderr, .. } = spawned;
        let readers = self.spawn_readers(stdout, stderr, channel);

        let deadline = timeout.map(|timeout| tokio::time::Instant::now() + timeout);
        let mut timed_out = false;
        let waited = loop {
            tokio::select! {
                waited = child.wait() => break waited,
                () = sleep_until(deadline), if !timed_out => {
                    timed_out = true;
                    self.start_timeout_stop();
                }
            }
        };

        if let Err(error) = self.workload.kill_remaining().await {
            tracing::error!(%error, "processes survived the kill after the main process exited");
        }
        self.drain(readers).await;
        waited.map_err(|error| ExecutionState::lost(format!("failed to wait for the process: {error}")))
    }

    fn spawn_readers<O, E>(&self, stdout: O, stderr: E, channel: Channel) -> Readers
    where
        O: tokio::io::AsyncRead + Unpin + Send + 'static,
        E: tokio::io::AsyncRead + Unpin + Send + 'static,
    {
        let max_line_bytes = self.backend.settings.max_line_bytes;
        let stdout = (stdout, LineSplitter::new(Stream::Stdout, channel, max_line_bytes));
        let stderr = (stderr, LineSplitter::new(Stream::Stderr, channel, max_line_bytes));
        let events = self.reporter.events().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(forward_output(stdout, stderr, events, stopped).in_current_span());
        Readers { task, stop }
    }

    /// Waits for the pipes to reach end of file, up to the drain timeout. Past it, the reader
    /// delivers what it has read and stops.
    async fn drain(&self, readers: Readers) {
        let Readers { mut task, stop } = readers;
        let timeout = self.backend.settings.drain_timeout();
        if tokio::time::timeout(timeout, &mut task).await.is_ok() {
            return;
        }
        tracing::warn!(
            drain_timeout_seconds = self.backend.settings.drain_timeout_seconds,
            "output pipes stayed open after the program's processes were killed; output after this point is lost"
        );
        let _ = stop.send(());
        // The reader stops at once unless the host's buffer is full; it gets one more drain
        // timeout to hand over its last batch.
        if tokio::time::timeout(timeout, &mut task).await.is_err() {
            tracing::warn!("the output reader did not stop; its last lines are lost");
            task.abort();
        }
    }

    fn start_timeout_stop(&self) {
        tracing::info!("timeout reached; stopping the program");
        let workload = Arc::clone(&self.workload);
        let grace = self.backend.settings.default_grace();
        let stop = async move {
            if let Err(error) = workload.stop(StopReason::Timeout, grace).await {
                tracing::error!(%error, "failed to stop the program after its timeout");
            }
        };
        tokio::spawn(stop.in_current_span());
    }

    /// Writes a line of the plugin's own on the setup channel.
    async fn note_setup(&self, line: String) {
        let line = LogLine::new(Stream::Stdout, Channel::Setup, format!("tower-host: {line}"));
        self.reporter.events().log(vec![line]).await;
    }
}

/// The task that reads a process's output, and the way to stop it.
struct Readers {
    task: JoinHandle<()>,
    stop: tokio::sync::oneshot::Sender<()>,
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn setup_step_failed(step: SetupStep, exit: ExitStatus) -> Ended {
    // A venv that cannot be created means no usable Python on this machine; a failed install
    // means dependencies that cannot be resolved or built.
    let kind = match step {
        SetupStep::CreateVenv => ErrorKind::InvalidConfig,
        SetupStep::Sync | SetupStep::InstallRequirements => ErrorKind::InvalidPackage,
    };
    let message = format!("setup step `{}` {}; uv's output is on the setup channel", step.name(), describe_exit(exit));
    ExecutionState::failed(kind, FailureStageKind::Setup, message, false)
}

fn spawn_failure(error: &WorkloadError, is_entrypoint_override: bool) -> Ended {
    let not_found = matches!(error, WorkloadError::Spawn { source, .. } if source.kind() == std::io::ErrorKind::NotFound);
    if not_found && is_entrypoint_override {
        let message = format!("{error}; check `runtime.entrypoint` of the spec");
        return ExecutionState::failed(ErrorKind::InvalidSpec, FailureStageKind::Setup, message, false);
    }
    platform_failure(error.to_string())
}

fn platform_failure(message: String) -> Ended {
    tracing::error!(%message, "execution failed on the platform side");
    ExecutionState::failed(ErrorKind::Internal, FailureStageKind::Platform, message, false)
}
