//! Finding and signalling the workload's processes on this machine, for backends whose
//! processes are local.
//!
//! The kit decides that a process belongs to the execution when the PID named in the app's PID
//! file exists in this machine's `/proc` and its environment contains the execution's
//! `TOWER_CONFORMANCE_TOKEN`. A PID file that never appears, or a PID without the token, means
//! the workload runs elsewhere (another machine, another PID namespace), and the checks that need
//! local processes are skipped.

use crate::session::{Run, Session, Step, Verdict};
use std::time::Duration;

/// Tells whether process `pid` exists on this machine, is not a zombie, and has
/// `TOWER_CONFORMANCE_TOKEN=<token>` in its environment.
pub fn runs_with_token(pid: i32, token: &str) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    // The state follows the command name, which is in parentheses and may contain spaces.
    let state = stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next());
    if matches!(state, Some('Z') | Some('X') | None) {
        return false;
    }
    let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else { return false };
    let expected = format!("TOWER_CONFORMANCE_TOKEN={token}");
    environ.split(|byte| *byte == 0).any(|entry| entry == expected.as_bytes())
}

/// Reads the PIDs of a running app and confirms they are local. Returns `Ok(Err(reason))` when
/// the processes are not visible here, so the calling check is skipped.
pub async fn local_pids(session: &Session, run: &Run) -> Step<Result<Vec<(String, i32)>, String>> {
    // The app wrote its PID file before it printed its ready line, but a shared file system
    // may show the file a little later.
    let mut pids = None;
    for _ in 0..20 {
        pids = run.read_pids(session);
        if pids.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let Some(pids) = pids else {
        return Ok(Err(format!(
            "the app's PID file did not appear in {} on this machine, so the workload's processes are not local",
            session.shared_dir().display()
        )));
    };
    if pids.is_empty() {
        return Err(format!("the app's PID file {} names no process", session.pid_file(&run.token).display()));
    }
    if let Some((role, pid)) = pids.iter().find(|(_, pid)| !runs_with_token(*pid, &run.token)) {
        return Ok(Err(format!(
            "process {pid} ({role}) named in the PID file does not run on this machine with the execution's environment, so its PIDs are of another PID namespace"
        )));
    }
    Ok(Ok(pids))
}

/// Fails when any of `pids` still runs.
pub fn check_gone(pids: &[(String, i32)], token: &str, after: &str) -> Step {
    let running: Vec<_> = pids.iter().filter(|(_, pid)| runs_with_token(*pid, token)).map(|(role, pid)| format!("{pid} ({role})")).collect();
    if running.is_empty() {
        Ok(())
    } else {
        Err(format!("process {} still runs after {after} returned", running.join(", ")))
    }
}

/// Sends SIGKILL to the process group of `pid`, or to `pid` alone when it shares the kit's own
/// group, so that the kit never signals itself.
pub fn kill_group(pid: i32) -> Step {
    // SAFETY: getpgid and kill take plain integers and touch no memory of this process.
    let group = unsafe { libc::getpgid(pid) };
    let own = unsafe { libc::getpgid(0) };
    let target = if group > 1 && group != own { -group } else { pid };
    if unsafe { libc::kill(target, libc::SIGKILL) } != 0 {
        return Err(format!("failed to send SIGKILL to {target}: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Returns the skip verdict for a check that needs local processes.
pub fn skip(reason: String) -> Verdict {
    Verdict::Skip(format!("needs capability local_processes: {reason}"))
}
