//! The task that drives one execution: stage, set up, spawn, stream, wait and report.

use crate::execution::{Control, StopReason};
use crate::logs;
use crate::sandbox::{self, SandboxCommand, Spawner};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tower_package::{Package, UnpackLimits};
use tower_plugin_api::sdk::{EventSink, LogLine};
use tower_plugin_api::{Channel, ErrorKind, ExecutionSpec, ExecutionState, ExecutionStatus, FailureStageKind, SetupPhaseKind, Stream, Timestamp};

/// The grace period between SIGTERM and SIGKILL when the timeout runs out.
const TIMEOUT_GRACE: Duration = Duration::from_secs(10);

/// `PATH` inside the sandbox, after the virtual environment's `bin` for Python apps.
const SANDBOX_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// The settings and paths the driver needs besides the spec, built by the backend.
#[derive(Debug, Clone)]
pub struct Job {
    /// The `bwrap` program.
    pub bwrap: PathBuf,
    /// The thread that starts `bwrap`.
    pub spawner: Spawner,
    /// uv, when Python apps are supported.
    pub uv: Option<PathBuf>,
    /// Extra arguments for every uv command.
    pub uv_args: Vec<String>,
    /// Host folders bound read-write.
    pub writable_paths: Vec<PathBuf>,
    /// Maximum bytes of one log record.
    pub max_line_bytes: usize,
    /// The execution's own folder, bound read-write.
    pub folder: PathBuf,
    /// The verified package archive.
    pub archive: PathBuf,
    /// When `create` accepted the execution.
    pub started_at: Timestamp,
}

/// How a step in the sandbox ended.
enum StepEnd {
    /// The `bwrap` process exited with this code, or was killed by this signal.
    Exited(Result<i32, i32>),
    /// A stop was requested before the step could start.
    Stopped,
}

/// How the execution ended, before it becomes a status.
enum Ending {
    State(ExecutionState),
    Failed(ErrorKind, String),
}

/// Runs the execution to its end and reports its terminal status after its last log record.
/// `ended` becomes `true` just before the terminal status goes out; the handle treats a dropped
/// `ended` (this task panicked) as the end too.
pub async fn drive(job: Job, spec: ExecutionSpec, control: Arc<Control>, sink: EventSink, ended: watch::Sender<bool>) {
    let ending = run(&job, &spec, &control, &sink).await;
    let state = match ending {
        Ending::Failed(kind, message) => {
            tracing::warn!(run_id = %spec.run_id, %message, "execution failed in setup");
            ExecutionState::failed(kind, FailureStageKind::Setup, message, false)
        }
        Ending::State(state) => state,
    };
    let status = ExecutionStatus::new(state).started(Some(job.started_at)).ended(Some(Timestamp::now()));
    // Nothing of the execution runs any more, so the handle may return from a stop and clean up
    // as soon as the terminal status arrives.
    control.lock().status = status.clone();
    let _ = ended.send(true);
    sink.status(status);
}

/// Stores `status` for `status()`, then delivers it.
fn report(control: &Control, sink: &EventSink, status: ExecutionStatus) {
    control.lock().status = status.clone();
    sink.status(status);
}

fn preparing(job: &Job, control: &Control, sink: &EventSink, phase: SetupPhaseKind) {
    report(control, sink, ExecutionStatus::new(ExecutionState::preparing(phase)).started(Some(job.started_at)));
}

/// Turns a stop request into its terminal state.
fn stopped_state(control: &Control) -> Option<ExecutionState> {
    let state = control.lock();
    match state.stop? {
        StopReason::Cancelled => Some(ExecutionState::Cancelled { forced: state.forced }),
        StopReason::TimedOut => Some(ExecutionState::TimedOut { forced: state.forced }),
    }
}

async fn run(job: &Job, spec: &ExecutionSpec, control: &Arc<Control>, sink: &EventSink) -> Ending {
    // Stage: unpack into a fresh folder and check the MANIFEST and the script.
    let root = job.folder.join("package");
    let (archive, unpack_root) = (job.archive.clone(), root.clone());
    let staged = tokio::task::spawn_blocking(move || {
        std::fs::create_dir(&unpack_root).map_err(|error| format!("failed to create {}: {error}", unpack_root.display()))?;
        tower_package::unpack(&archive, &unpack_root, &UnpackLimits::default()).map_err(|error| error.to_string())?;
        Package::open(&unpack_root).map_err(|error| error.to_string())
    })
    .await;
    let package = match staged {
        Ok(Ok(package)) => package,
        Ok(Err(message)) => return Ending::Failed(ErrorKind::InvalidPackage, message),
        Err(error) => return Ending::Failed(ErrorKind::Internal, format!("unpacking the package panicked: {error}")),
    };
    let working_dir = package.working_dir();
    let overridden = !spec.runtime.entrypoint.is_empty();
    let python = !overridden && !package.manifest().is_bash();
    let venv = working_dir.join(".venv");

    // Set up: Python apps get a virtual environment and their dependencies, on the setup channel.
    if python {
        let Some(uv) = &job.uv else {
            return Ending::Failed(
                ErrorKind::Unavailable,
                "this Python app needs uv, which is not configured or not found; set the backend setting `uv` to its path".to_string(),
            );
        };
        preparing(job, control, sink, SetupPhaseKind::InstallingDependencies);
        for argv in setup_commands(job, uv, &working_dir, &venv) {
            let command = SandboxCommand { argv: argv.clone(), cwd: working_dir.clone(), env: setup_env() };
            match run_step(job, control, sink, &command, Channel::Setup).await {
                StepEnd::Stopped => return Ending::State(stopped_state(control).unwrap_or(ExecutionState::Cancelled { forced: false })),
                StepEnd::Exited(_) if control.lock().stop.is_some() => {
                    return Ending::State(stopped_state(control).unwrap_or(ExecutionState::Cancelled { forced: false }));
                }
                StepEnd::Exited(Ok(0)) => {}
                StepEnd::Exited(result) => {
                    let outcome = match result {
                        Ok(code) => format!("exited with code {code}"),
                        Err(signal) => format!("was killed by signal {signal}"),
                    };
                    return Ending::Failed(ErrorKind::InvalidPackage, format!("setting up the Python app failed: `{}` {outcome}; its output is on the setup channel", argv[1..].join(" ")));
                }
            }
        }
    }

    // Spawn the program, with the timeout counted from its start.
    preparing(job, control, sink, SetupPhaseKind::Starting);
    let command = SandboxCommand { argv: program_argv(spec, &package, &venv, python), cwd: working_dir.clone(), env: program_env(spec, &package, &venv, python) };
    let timeout = spec.limits.timeout_seconds.into_option().map(Duration::from_secs);
    let timer = timeout.map(|limit| {
        let control = Arc::clone(control);
        tokio::spawn(async move {
            tokio::time::sleep(limit).await;
            control.stop(StopReason::TimedOut, TIMEOUT_GRACE).await;
        })
    });
    let end = run_step(job, control, sink, &command, Channel::Program).await;
    if let Some(timer) = timer {
        timer.abort();
    }

    // Report: a stop request decides the state, whatever the dying program's code was.
    if let Some(state) = stopped_state(control) {
        return Ending::State(state);
    }
    match end {
        StepEnd::Stopped => Ending::State(ExecutionState::Cancelled { forced: false }),
        StepEnd::Exited(Ok(0)) => Ending::State(ExecutionState::Exited),
        StepEnd::Exited(Ok(code)) => Ending::State(ExecutionState::crashed_with_code(code)),
        StepEnd::Exited(Err(signal)) => Ending::State(ExecutionState::crashed_by_signal(signal)),
    }
}

/// Runs one command in the sandbox, streams its output on `channel` and waits until nothing of
/// it runs. Reports `running` when the program channel's process started.
async fn run_step(job: &Job, control: &Control, sink: &EventSink, command: &SandboxCommand, channel: Channel) -> StepEnd {
    let bwrap_command = sandbox::bwrap_command(&job.bwrap, &job.folder, &job.writable_paths, command);
    let spawned = {
        let mut state = control.lock();
        if state.stop.is_some() {
            return StepEnd::Stopped;
        }
        let spawned = job.spawner.spawn(bwrap_command);
        if let Ok(child) = &spawned {
            state.sandbox = child.id().map(|pid| (pid, None));
        }
        spawned
    };
    let mut child = match spawned {
        Ok(child) => child,
        Err(error) => {
            let line = format!("failed to start {}: {error}", job.bwrap.display());
            sink.log(vec![LogLine::new(Stream::Stderr, Channel::Setup, line)]).await;
            return StepEnd::Exited(Ok(127));
        }
    };
    if channel == Channel::Program {
        report(control, sink, ExecutionStatus::new(ExecutionState::Running).started(Some(job.started_at)));
    }

    // Stream both pipes until every process holding them has exited.
    let stdout = tokio::spawn(logs::forward(child.stdout.take().expect("stdout is piped"), Stream::Stdout, channel, job.max_line_bytes, sink.clone()));
    let stderr = tokio::spawn(logs::forward(child.stderr.take().expect("stderr is piped"), Stream::Stderr, channel, job.max_line_bytes, sink.clone()));
    let init = find_init(control, child.id()).await;

    // Wait for `bwrap`, then for the whole sandbox, then for the last output.
    let status = child.wait().await;
    control.lock().sandbox = None;
    if let Some(init) = init {
        if !sandbox::wait_init_gone(init, Duration::from_secs(10)).await {
            tracing::warn!(init, "the sandbox's init still runs 10 s after bwrap exited");
        }
    }
    let _ = stdout.await;
    let _ = stderr.await;
    match status {
        Ok(status) => StepEnd::Exited(status.code().ok_or(status.signal().unwrap_or(0))),
        Err(error) => {
            tracing::error!(%error, "failed to wait for bwrap");
            StepEnd::Exited(Err(0))
        }
    }
}

/// Looks for the sandbox's init for up to 2 s, records it, and passes on a stop requested
/// before it was found.
async fn find_init(control: &Control, bwrap_pid: Option<u32>) -> Option<u32> {
    let bwrap_pid = bwrap_pid?;
    for _ in 0..200 {
        if let Some(init) = sandbox::find_init(bwrap_pid) {
            let mut state = control.lock();
            state.sandbox = Some((bwrap_pid, Some(init)));
            if state.forced {
                sandbox::kill_init(init);
            } else if state.stop.is_some() {
                sandbox::terminate_app(init);
            }
            return Some(init);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

/// The uv commands that set up a Python app: `uv venv`, then `uv sync` for a `pyproject.toml`
/// or `uv pip install -r` for a `requirements.txt`.
fn setup_commands(job: &Job, uv: &Path, working_dir: &Path, venv: &Path) -> Vec<Vec<String>> {
    let uv = uv.display().to_string();
    let cache = job.folder.join("uv-cache").display().to_string();
    let with_common = |words: &[&str]| -> Vec<String> {
        let mut argv: Vec<String> = std::iter::once(uv.clone()).chain(words.iter().map(|word| word.to_string())).collect();
        argv.extend(["--cache-dir".to_string(), cache.clone()]);
        argv.extend(job.uv_args.iter().cloned());
        argv
    };
    let mut commands = vec![with_common(&["venv", &venv.display().to_string()])];
    if working_dir.join("pyproject.toml").is_file() {
        commands.push(with_common(&["sync"]));
    } else if working_dir.join("requirements.txt").is_file() {
        let python = venv.join("bin/python").display().to_string();
        commands.push(with_common(&["pip", "install", "--python", &python, "-r", "requirements.txt"]));
    }
    commands
}

/// The environment of the uv commands. `HOME` points at the sandbox's empty `/tmp`, so uv reads
/// no user settings of the host.
fn setup_env() -> Vec<(String, String)> {
    vec![("PATH".to_string(), SANDBOX_PATH.to_string()), ("HOME".to_string(), "/tmp".to_string())]
}

/// The program and its arguments: the spec's entrypoint and command where set, else `bash` or
/// the virtual environment's `python` with the package's script.
fn program_argv(spec: &ExecutionSpec, package: &Package, venv: &Path, python: bool) -> Vec<String> {
    let script = vec![package.invoke_path().display().to_string()];
    let arguments: Vec<String> = if spec.runtime.command.is_empty() { script } else { spec.runtime.command.iter().map(|word| word.to_string()).collect() };
    let interpreter: Vec<String> = if !spec.runtime.entrypoint.is_empty() {
        spec.runtime.entrypoint.iter().map(|word| word.to_string()).collect()
    } else if python {
        vec![venv.join("bin/python").display().to_string()]
    } else {
        vec!["bash".to_string()]
    };
    interpreter.into_iter().chain(arguments).collect()
}

/// The program's whole environment: parameters, secrets, the spec's variables, then the
/// variables the plugin sets.
fn program_env(spec: &ExecutionSpec, package: &Package, venv: &Path, python: bool) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    env.extend(spec.parameters.iter().map(|pair| (pair.key.to_string(), pair.value.to_string())));
    env.extend(spec.secrets.iter().map(|secret| (secret.name.to_string(), secret.value.expose().to_string())));
    env.extend(spec.env.iter().map(|pair| (pair.key.to_string(), pair.value.to_string())));
    let import_paths: Vec<String> = package.import_paths().iter().chain([&package.working_dir()]).map(|path| path.display().to_string()).collect();
    env.push(("PYTHONUNBUFFERED".to_string(), "1".to_string()));
    env.push(("PYTHONPATH".to_string(), import_paths.join(":")));
    let path = if python { format!("{}:{SANDBOX_PATH}", venv.join("bin").display()) } else { SANDBOX_PATH.to_string() };
    env.push(("PATH".to_string(), path));
    env
}
