//! The processes of one execution: the process group of the step that runs now (a uv command or
//! the app's program) and the execution's cgroup. Starts processes, stops them on request or
//! timeout, and checks that none is left.

use crate::cgroup::{CgroupError, ExecutionCgroup};
use crate::environment::Environment;
use crate::process::{self, ChildSetup, CommandLine, ProcessGroup, Spawned};
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;

/// Pause between two checks for processes that are still running, while a stop waits for them.
const STOP_POLL_INTERVAL: Duration = Duration::from_millis(20);

/// How long processes may take to disappear after SIGKILL. The kernel delivers SIGKILL at once,
/// but a process in uninterruptible sleep (a hung NFS read) dies only when the sleep ends.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// The reason for stopping an execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// `terminate` or `kill` was called.
    Cancel,
    /// `limits.timeout_seconds` ran out.
    Timeout,
}

/// A stop request and whether it had to use SIGKILL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopRecord {
    /// The first reason given; later requests do not change it.
    pub reason: StopReason,
    /// Whether processes were still running when the stop sent SIGKILL.
    pub forced: bool,
}

/// Errors of starting or stopping processes.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    /// The program could not be started.
    #[error("failed to start `{command}`: {source}")]
    Spawn {
        /// The command line, without the environment.
        command: String,
        /// The error from `fork` or `exec`, or from the child's setup before `exec`.
        source: io::Error,
    },
    /// The cgroup could not be prepared.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// Processes survived SIGKILL.
    #[error("processes of the execution were still running {} s after SIGKILL", KILL_TIMEOUT.as_secs())]
    StillRunning,
}

#[derive(Debug, Default)]
struct State {
    /// The process group of the step that runs now.
    group: Option<Arc<ProcessGroup>>,
    stop: Option<StopRecord>,
    /// Set once the execution reached its end; stops then return at once.
    finished: bool,
}

/// The processes of one execution.
#[derive(Debug)]
pub struct Workload {
    state: Mutex<State>,
    cgroup: Option<ExecutionCgroup>,
    /// `RLIMIT_AS` for the app's program, where memory is limited without a cgroup.
    address_space_limit: Option<u64>,
}

impl Workload {
    /// Creates the workload of an execution.
    pub fn new(cgroup: Option<ExecutionCgroup>, address_space_limit: Option<u64>) -> Self {
        Self { state: Mutex::new(State::default()), cgroup, address_space_limit }
    }

    /// Returns the execution's cgroup, if it has one.
    pub fn cgroup(&self) -> Option<&ExecutionCgroup> {
        self.cgroup.as_ref()
    }

    /// Starts a process in its own process group, inside the cgroup, unless a stop was requested,
    /// in which case it returns `None`. `is_program` applies the app's rlimit. The check and the
    /// start happen under one lock with stop requests, so no process starts after a stop began.
    pub fn spawn(&self, command: &CommandLine, environment: &Environment, is_program: bool) -> Result<Option<Spawned>, WorkloadError> {
        let mut state = self.lock();
        if state.stop.is_some() || state.finished {
            return Ok(None);
        }
        let setup = ChildSetup {
            cgroup_procs: match &self.cgroup {
                Some(cgroup) => cgroup.open_procs_files()?,
                None => Vec::new(),
            },
            address_space_limit: if is_program { self.address_space_limit } else { None },
        };
        let spawned = process::spawn(command, environment, setup)
            .map_err(|source| WorkloadError::Spawn { command: command.display(), source })?;
        state.group = Some(Arc::clone(&spawned.group));
        Ok(Some(spawned))
    }

    /// Returns the stop request, if any.
    pub fn stop_record(&self) -> Option<StopRecord> {
        self.lock().stop
    }

    /// Stops every process: SIGTERM to the process group and the cgroup, up to `grace` for them
    /// to exit, then SIGKILL. A zero grace sends SIGKILL at once. Returns once no process is
    /// left. Records `reason` unless an earlier stop did; marks the stop forced only if SIGKILL
    /// found processes still running. Idempotent, and returns at once after the end.
    pub async fn stop(&self, reason: StopReason, grace: Duration) -> Result<(), WorkloadError> {
        {
            let mut state = self.lock();
            if state.finished {
                return Ok(());
            }
            state.stop.get_or_insert(StopRecord { reason, forced: false });
        }

        if !grace.is_zero() {
            self.signal_all(libc::SIGTERM);
            if self.wait_until_empty(grace).await {
                return Ok(());
            }
        }

        // `forced` is set before SIGKILL goes out, so the driver, which reads it after the
        // processes died, never misses it.
        if !self.is_empty() {
            let mut state = self.lock();
            let finished = state.finished;
            if let Some(stop) = state.stop.as_mut() {
                stop.forced = !finished;
            }
        }
        self.kill_remaining().await
    }

    /// Sends SIGKILL to whatever is left of the process group and the cgroup, and waits until
    /// nothing is left.
    pub async fn kill_remaining(&self) -> Result<(), WorkloadError> {
        if let Some(group) = self.current_group() {
            group.signal(libc::SIGKILL);
        }
        if let Some(cgroup) = self.cgroup.clone() {
            // Freezing the cgroup may wait briefly, so it runs off the async worker threads.
            let _ = tokio::task::spawn_blocking(move || cgroup.kill_all()).await;
        }
        if self.wait_until_empty(KILL_TIMEOUT).await {
            Ok(())
        } else {
            Err(WorkloadError::StillRunning)
        }
    }

    /// Marks the execution as ended: later stops return at once and nothing more starts.
    pub fn finish(&self) {
        self.lock().finished = true;
    }

    /// Tells whether no process of the current group or of the cgroup runs.
    pub fn is_empty(&self) -> bool {
        let group_empty = self.current_group().is_none_or(|group| group.is_empty());
        group_empty && self.cgroup.as_ref().is_none_or(ExecutionCgroup::is_empty)
    }

    fn signal_all(&self, signal: i32) {
        if let Some(group) = self.current_group() {
            group.signal(signal);
        }
        if let Some(cgroup) = &self.cgroup {
            cgroup.signal_all(signal);
        }
    }

    /// Waits up to `timeout` for every process to exit. Returns whether they did.
    async fn wait_until_empty(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.is_empty() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(STOP_POLL_INTERVAL).await;
        }
    }

    fn current_group(&self) -> Option<Arc<ProcessGroup>> {
        self.lock().group.clone()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update under this lock is a single assignment, so a panic cannot leave it
        // half-done.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shell(script: &str) -> CommandLine {
        CommandLine { program: "/bin/bash".into(), args: vec!["-c".into(), script.into()], cwd: "/".into() }
    }

    fn environment() -> Environment {
        let mut environment = Environment::default();
        environment.set("PATH", "/usr/bin:/bin");
        environment
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stop_of_trapping_group_is_forced() {
        let workload = Workload::new(None, None);
        let script = "trap '' TERM; sleep 30 & wait";
        let mut spawned = workload.spawn(&shell(script), &environment(), true).unwrap().unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;

        workload.stop(StopReason::Cancel, Duration::from_millis(300)).await.unwrap();
        assert!(workload.is_empty());
        assert_eq!(workload.stop_record(), Some(StopRecord { reason: StopReason::Cancel, forced: true }));
        spawned.child.wait().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stop_of_obedient_group_is_not_forced() {
        let workload = Workload::new(None, None);
        let mut spawned = workload.spawn(&shell("sleep 30"), &environment(), true).unwrap().unwrap();

        workload.stop(StopReason::Timeout, Duration::from_secs(10)).await.unwrap();
        assert_eq!(workload.stop_record(), Some(StopRecord { reason: StopReason::Timeout, forced: false }));
        spawned.child.wait().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nothing_starts_after_a_stop() {
        let workload = Workload::new(None, None);
        workload.stop(StopReason::Cancel, Duration::ZERO).await.unwrap();
        assert!(workload.spawn(&shell("true"), &environment(), false).unwrap().is_none());
        assert_eq!(workload.stop_record(), Some(StopRecord { reason: StopReason::Cancel, forced: false }));
    }
}
