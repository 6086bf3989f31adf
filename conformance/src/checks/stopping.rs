//! Stopping executions: terminate in each phase, kill, and a workload killed behind the
//! backend's back.

use crate::apps::{self, READY_LINE};
use crate::local;
use crate::session::{describe, Run, Session, Step, Verdict};
use std::time::{Duration, Instant};
use tower_plugin_api::{ExecutionState, SetupPhaseKind};

/// How long an app may take to print its ready line, setup included.
const READY_LIMIT: Duration = Duration::from_secs(120);
/// How long the terminal status may take after a stop returned.
const END_LIMIT: Duration = Duration::from_secs(60);
/// The grace period the checks give `terminate`.
const GRACE: Duration = Duration::from_secs(5);

/// The workload's processes as a stop check found them before stopping it.
enum Processes {
    Local(Vec<(String, i32)>),
    NotLocal(String),
}

async fn processes(session: &Session, run: &Run) -> Step<Processes> {
    Ok(match local::local_pids(session, run).await? {
        Ok(pids) => Processes::Local(pids),
        Err(reason) => Processes::NotLocal(reason),
    })
}

/// Starts a waiting app and returns once it printed its ready line.
async fn start_waiting(session: &Session, check: &str, ignore_term: bool) -> Step<(Run, Processes)> {
    let package = apps::waiting_bash(session.package_dir(), check, ignore_term)?;
    let mut run = session.start(session.spec(check, package)).await?;
    run.wait_for_line(READY_LIMIT, READY_LINE).await?;
    let processes = processes(session, &run).await?;
    Ok((run, processes))
}

/// Checks that the stopped execution ends as cancelled (with `forced` when given), that none
/// of its processes outlived the stop call where the kit can see them, and cleans it up.
async fn finish_stopped(session: &Session, run: &mut Run, processes: &Processes, call: &str, forced: Option<bool>) -> Step<Verdict> {
    if let Processes::Local(pids) = processes {
        local::check_gone(pids, &run.token, call)?;
    }
    let terminal = run.wait_end(END_LIMIT).await?;
    run.observed.check_order()?;
    match (terminal.state(), forced) {
        (Some(ExecutionState::Cancelled { forced: actual }), Some(expected)) if *actual != expected => {
            return Err(format!("expected cancelled with forced = {expected}, got {}", describe(&terminal)));
        }
        (Some(ExecutionState::Cancelled { .. }), _) => {}
        _ => return Err(format!("expected cancelled after {call}, got {}", describe(&terminal))),
    }
    session.cleanup(&run.execution).await?;
    Ok(Verdict::Pass)
}

/// `terminate` during setup ends the execution as cancelled before the program starts.
pub async fn terminate_during_setup(session: &Session) -> Step<Verdict> {
    let files = [("pyproject.toml", apps::SLOW_SETUP_PYPROJECT), ("slow_backend.py", apps::SLOW_SETUP_BACKEND)];
    let package = apps::python(session.package_dir(), "terminate_during_setup", "print('the program ran')\n", &files)?;
    let mut run = session.start(session.spec("terminate_during_setup", package)).await?;
    let pid_file = session.pid_file(&run.token);
    // Setup is underway once the slow build records its PID here, or once the backend reports
    // the dependency install, whichever comes first.
    let installing = |observed: &crate::session::Observed| {
        observed.statuses.iter().any(|status| {
            matches!(status.state(), Some(ExecutionState::Preparing { phase }) if phase.as_enum().ok() == Some(&SetupPhaseKind::InstallingDependencies))
        })
    };

    let deadline = Instant::now() + Duration::from_secs(180);
    while !pid_file.exists() && !installing(&run.observed) {
        if Instant::now() > deadline {
            return Err("setup did not reach the dependency install within 180 s".to_string());
        }
        match run.wait_for(Duration::from_millis(200), "setup reached the dependency install", installing).await {
            Ok(()) => {}
            Err(reason) if run.observed.terminal().is_some() => return Err(reason),
            Err(_) => {}
        }
    }
    // Give the slow build a moment to record its PID, so that the process check can run.
    for _ in 0..50 {
        if pid_file.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let processes = if pid_file.exists() { processes(session, &run).await? } else { Processes::NotLocal("no PID file".to_string()) };
    run.execution.terminate(GRACE).await.map_err(|error| error.to_string())?;
    let verdict = finish_stopped(session, &mut run, &processes, "terminate", None).await?;
    if run.observed.statuses.iter().any(|status| matches!(status.state(), Some(ExecutionState::Running))) {
        return Err("the program started although terminate was called during setup".to_string());
    }
    if run.observed.printed("the program ran") {
        return Err("the program printed its line although terminate was called during setup".to_string());
    }
    Ok(verdict)
}

/// `terminate` of a running app that exits on SIGTERM: cancelled, and nothing of it runs once
/// `terminate` returned.
pub async fn terminate_during_run(session: &Session) -> Step<Verdict> {
    let (mut run, processes) = start_waiting(session, "terminate_during_run", false).await?;
    run.execution.terminate(GRACE).await.map_err(|error| error.to_string())?;
    finish_stopped(session, &mut run, &processes, "terminate", None).await
}

/// `terminate` of an app that ignores SIGTERM forces it after the grace period: cancelled with
/// `forced`, and nothing of it runs once `terminate` returned.
pub async fn terminate_forced_after_grace(session: &Session) -> Step<Verdict> {
    let (mut run, processes) = start_waiting(session, "terminate_forced_after_grace", true).await?;
    let started = Instant::now();
    run.execution.terminate(Duration::from_secs(2)).await.map_err(|error| error.to_string())?;
    if let Processes::Local(_) = processes {
        // The app ignores SIGTERM, so only the forced stop after the grace period can end it.
        if started.elapsed() < Duration::from_millis(1500) {
            return Err(format!("terminate returned after {:?}, before the 2 s grace period ran out", started.elapsed()));
        }
    }
    finish_stopped(session, &mut run, &processes, "terminate", Some(true)).await
}

/// `terminate` after the end returns at once and changes nothing.
pub async fn terminate_after_end(session: &Session) -> Step<Verdict> {
    let package = apps::bash(session.package_dir(), "terminate_after_end", "echo done\n")?;
    let mut run = session.start(session.spec("terminate_after_end", package)).await?;
    let terminal = run.wait_end(Duration::from_secs(90)).await?;
    let started = Instant::now();
    run.execution.terminate(GRACE).await.map_err(|error| error.to_string())?;
    if started.elapsed() > Duration::from_secs(3) {
        return Err(format!("terminate after the end took {:?}; it must return at once", started.elapsed()));
    }
    let queried = run.execution.status().await.map_err(|error| error.to_string())?;
    if queried.name() != terminal.name() {
        return Err(format!("status() returned {} after terminate, but the execution had ended as {}", describe(&queried), describe(&terminal)));
    }
    run.execution.kill().await.map_err(|error| format!("kill after the end failed: {error}"))?;
    session.cleanup(&run.execution).await?;
    Ok(Verdict::Pass)
}

/// `kill` of a running app: cancelled, and nothing of it runs once `kill` returned.
pub async fn kill_during_run(session: &Session) -> Step<Verdict> {
    let (mut run, processes) = start_waiting(session, "kill_during_run", false).await?;
    run.execution.kill().await.map_err(|error| error.to_string())?;
    finish_stopped(session, &mut run, &processes, "kill", None).await
}

/// A workload killed from outside with SIGKILL ends as crashed, failed or lost; never exited,
/// and not cancelled, since no stop was requested from the backend.
pub async fn killed_behind_back(session: &Session) -> Step<Verdict> {
    let (mut run, processes) = start_waiting(session, "killed_behind_back", false).await?;
    let pids = match processes {
        Processes::Local(pids) => pids,
        Processes::NotLocal(reason) => return Ok(local::skip(reason)),
    };
    let app = pids.iter().find(|(role, _)| role == "app").map(|(_, pid)| *pid).ok_or("the PID file names no `app` process")?;
    local::kill_group(app)?;
    for (_, pid) in &pids {
        // SAFETY: kill takes plain integers; a process that is already gone only yields ESRCH.
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    let terminal = run.wait_end(END_LIMIT).await?;
    run.observed.check_order()?;
    session.cleanup(&run.execution).await?;
    match terminal.state() {
        Some(ExecutionState::Crashed { .. } | ExecutionState::Failed { .. } | ExecutionState::Lost { .. }) => Ok(Verdict::Pass),
        _ => Err(format!("expected crashed, failed or lost after SIGKILL from outside, got {}", describe(&terminal))),
    }
}
