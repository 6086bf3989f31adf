//! Checks of the terminal status: exit codes, signals, setup failures, a missing program, the timeout, and
//! the order of statuses.

use crate::apps;
use crate::session::{describe, Session, Step, Verdict};
use std::time::Duration;
use tower_plugin_api::abi_stable::std_types::{ROption, RString};
use tower_plugin_api::{ExecutionState, FailureStageKind};

/// How long an app that should end on its own may take, setup included.
const RUN_LIMIT: Duration = Duration::from_secs(90);

/// Runs a bash app to its end and returns the terminal state, after the common checks.
async fn bash_ending(session: &Session, check: &str, script: &str) -> Step<ExecutionState> {
    let package = apps::bash(session.package_dir(), check, script)?;
    let observed = session.run_to_end(session.spec(check, package), RUN_LIMIT).await?;
    observed.terminal_state().cloned()
}

fn expect_crashed_with_code(state: &ExecutionState, code: i32) -> Step<Verdict> {
    match state {
        ExecutionState::Crashed { exit_code: ROption::RSome(actual), .. } if *actual == code => Ok(Verdict::Pass),
        other => Err(format!("expected crashed with exit code {code}, got {}", describe_state(other))),
    }
}

fn describe_state(state: &ExecutionState) -> String {
    describe(&tower_plugin_api::ExecutionStatus::new(state.clone()))
}

/// Statuses come in a legal order, `status()` agrees with the terminal status, and cleanup works
/// twice.
pub async fn lifecycle_order(session: &Session) -> Step<Verdict> {
    let package = apps::bash(session.package_dir(), "lifecycle", "echo hello\n")?;
    let mut run = session.start(session.spec("lifecycle_order", package)).await?;
    let terminal = run.wait_end(RUN_LIMIT).await?;
    run.observed.check_order()?;
    if !matches!(terminal.state(), Some(ExecutionState::Exited)) {
        return Err(format!("expected exited, got {}", describe(&terminal)));
    }
    let queried = run.execution.status().await.map_err(|error| error.to_string())?;
    if queried.name() != terminal.name() {
        return Err(format!("status() returned {} after the terminal status {}", describe(&queried), describe(&terminal)));
    }
    session.cleanup(&run.execution).await?;
    Ok(Verdict::Pass)
}

/// Exit code 0 is `exited`.
pub async fn exit_code_0(session: &Session) -> Step<Verdict> {
    match bash_ending(session, "exit_code_0", "echo bye\nexit 0\n").await? {
        ExecutionState::Exited => Ok(Verdict::Pass),
        other => Err(format!("expected exited, got {}", describe_state(&other))),
    }
}

/// Exit code 1 is `crashed` with code 1.
pub async fn exit_code_1(session: &Session) -> Step<Verdict> {
    expect_crashed_with_code(&bash_ending(session, "exit_code_1", "exit 1\n").await?, 1)
}

/// Exit code 42 is `crashed` with code 42.
pub async fn exit_code_42(session: &Session) -> Step<Verdict> {
    expect_crashed_with_code(&bash_ending(session, "exit_code_42", "echo before\nexit 42\n").await?, 42)
}

/// Death by SIGSEGV is `crashed` with signal 11, or with exit code 139 where the platform
/// reports only the shell's code for it (Kubernetes does).
pub async fn killed_by_signal(session: &Session) -> Step<Verdict> {
    let state = bash_ending(session, "killed_by_signal", "echo before\nkill -SEGV $$\nsleep 5\n").await?;
    match &state {
        ExecutionState::Crashed { signal: ROption::RSome(11), .. } => Ok(Verdict::Pass),
        ExecutionState::Crashed { exit_code: ROption::RSome(139), signal: ROption::RNone, .. } => Ok(Verdict::Pass),
        other => Err(format!("expected crashed by signal 11, got {}", describe_state(other))),
    }
}

/// Checks that a dependency that no index has fails setup: `failed` with stage `setup`.
pub async fn setup_failure(session: &Session) -> Step<Verdict> {
    let main = "print('the app ran although its dependency was not installed')\n";
    let package = apps::python(session.package_dir(), "setup_failure", main, &[("pyproject.toml", apps::MISSING_DEPENDENCY_PYPROJECT)])?;
    let observed = session.run_to_end(session.spec("setup_failure", package), Duration::from_secs(180)).await?;
    match observed.terminal_state()? {
        ExecutionState::Failed { stage, .. } if stage.as_enum().ok() == Some(&FailureStageKind::Setup) => Ok(Verdict::Pass),
        other => Err(format!("expected failed in stage setup, got {}", describe_state(other))),
    }
}

/// An entrypoint naming a program that does not exist ends as `failed` or `crashed`.
pub async fn missing_interpreter(session: &Session) -> Step<Verdict> {
    let package = apps::bash(session.package_dir(), "missing_interpreter", "echo the interpreter ran\n")?;
    let mut spec = session.spec("missing_interpreter", package);
    spec.runtime.entrypoint.push(RString::from("/nonexistent/tower-conformance-interpreter"));
    let observed = session.run_to_end(spec, RUN_LIMIT).await?;
    match observed.terminal_state()? {
        ExecutionState::Failed { .. } | ExecutionState::Crashed { .. } => Ok(Verdict::Pass),
        other => Err(format!("expected failed or crashed, got {}", describe_state(other))),
    }
}

/// `limits.timeout_seconds` ends a long app as `timed_out`.
pub async fn timeout_enforced(session: &Session) -> Step<Verdict> {
    let package = apps::bash(session.package_dir(), "timeout_enforced", "echo started\nsleep 120\necho not stopped\n")?;
    let mut spec = session.spec("timeout_enforced", package);
    spec.limits.timeout_seconds = ROption::RSome(2);
    let observed = session.run_to_end(spec, Duration::from_secs(120)).await?;
    match observed.terminal_state()? {
        ExecutionState::TimedOut { .. } => Ok(Verdict::Pass),
        other => Err(format!("expected timed_out after the 2 s timeout, got {}", describe_state(other))),
    }
}
