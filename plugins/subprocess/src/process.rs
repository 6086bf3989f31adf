//! Starting one process in its own session and process group, inside the execution's cgroup,
//! and signalling that group.

use crate::environment::Environment;
use crate::procfs;
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::process::{Child, ChildStderr, ChildStdout, Command};

/// A program to run: what, with which arguments, where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandLine {
    /// Path of the program, or a name looked up on the environment's `PATH`.
    pub program: PathBuf,
    /// Arguments after the program name.
    pub args: Vec<OsString>,
    /// Working folder.
    pub cwd: PathBuf,
}

impl CommandLine {
    /// Formats the program and arguments for messages. Arguments never hold secrets: those
    /// travel only in the environment.
    pub fn display(&self) -> String {
        let mut text = self.program.display().to_string();
        for arg in &self.args {
            text.push(' ');
            text.push_str(&arg.to_string_lossy());
        }
        text
    }
}

/// The setup the child performs between `fork` and `exec`, besides leaving the parent's session.
#[derive(Debug, Default)]
pub struct ChildSetup {
    /// Open `cgroup.procs` files, one per cgroup v1 hierarchy or one for v2. The child writes
    /// `0` to each, which moves it into the cgroup before it runs any code of the app.
    pub cgroup_procs: Vec<OwnedFd>,
    /// `RLIMIT_AS` in bytes, where memory is limited without a cgroup.
    pub address_space_limit: Option<u64>,
}

/// A started process: its handle, its process group and its output pipes.
#[derive(Debug)]
pub struct Spawned {
    /// The child, to await its exit.
    pub child: Child,
    /// The process group the child leads.
    pub group: Arc<ProcessGroup>,
    /// Standard output.
    pub stdout: ChildStdout,
    /// Standard error.
    pub stderr: ChildStderr,
}

/// Starts `command` with exactly the variables of `environment`, stdin from `/dev/null` and
/// piped stdout and stderr. The child calls `setsid`, so it leads a new session and process
/// group whose id is its pid, then joins the cgroup and applies the rlimit of `setup`.
pub fn spawn(command: &CommandLine, environment: &Environment, setup: ChildSetup) -> io::Result<Spawned> {
    let mut builder = Command::new(&command.program);
    builder
        .args(&command.args)
        .current_dir(&command.cwd)
        .env_clear()
        .envs(environment.iter())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Kills the direct child if the task that owns it is dropped before it was awaited.
        .kill_on_drop(true);

    let procs_fds: Vec<i32> = setup.cgroup_procs.iter().map(AsRawFd::as_raw_fd).collect();
    let address_space_limit = setup.address_space_limit.map(clamp_to_hard_address_space_limit);
    // SAFETY: the closure runs in the forked child, where only async-signal-safe calls are
    // allowed. It calls `setsid`, `write` and `setrlimit`, which are system calls, reads values
    // captured before the fork, and allocates nothing.
    unsafe {
        builder.pre_exec(move || {
            if libc::setsid() == -1 {
                return Err(io::Error::last_os_error());
            }
            for &fd in &procs_fds {
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            if let Some(bytes) = address_space_limit {
                let limit = libc::rlimit { rlim_cur: bytes, rlim_max: bytes };
                if libc::setrlimit(libc::RLIMIT_AS, &limit) == -1 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }

    let mut child = builder.spawn()?;
    // The cgroup files stay open until `spawn` has returned, so the child could write to them.
    drop(setup);

    let pid = child.id().ok_or_else(|| io::Error::other("the child exited before its pid was read"))?;
    let stdout = child.stdout.take().ok_or_else(|| io::Error::other("the child has no stdout pipe"))?;
    let stderr = child.stderr.take().ok_or_else(|| io::Error::other("the child has no stderr pipe"))?;
    let group = Arc::new(ProcessGroup::new(pid as i32));
    Ok(Spawned { child, group, stdout, stderr })
}

/// Lowers `bytes` to the host's own hard `RLIMIT_AS`, which an unprivileged process cannot raise.
fn clamp_to_hard_address_space_limit(bytes: u64) -> u64 {
    let mut current = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `getrlimit` writes only into `current`, a valid `rlimit`.
    if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut current) } == 0 {
        bytes.min(current.rlim_max)
    } else {
        bytes
    }
}

/// The process group of one started process. Its id is the pid of the process that leads it.
#[derive(Debug)]
pub struct ProcessGroup {
    pgid: i32,
    /// Set once `kill` reported that no process has this group id. From then on the group is
    /// never signalled again, because the id could be reused by an unrelated group.
    gone: AtomicBool,
}

impl ProcessGroup {
    /// Wraps a process group id.
    pub fn new(pgid: i32) -> Self {
        Self { pgid, gone: AtomicBool::new(false) }
    }

    /// Returns the process group id.
    pub fn id(&self) -> i32 {
        self.pgid
    }

    /// Sends `signal` to every process of the group. Returns whether the group still existed.
    pub fn signal(&self, signal: i32) -> bool {
        if self.gone.load(Ordering::Acquire) {
            return false;
        }
        // SAFETY: `kill` has no memory-safety preconditions.
        let result = unsafe { libc::kill(-self.pgid, signal) };
        if result == -1 && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
            self.gone.store(true, Ordering::Release);
            return false;
        }
        true
    }

    /// Tells whether no process of the group runs any more. Zombies do not count: they have
    /// exited and wait only for their parent (or init) to reap them.
    pub fn is_empty(&self) -> bool {
        // Signal 0 checks existence without sending anything.
        if !self.signal(0) {
            return true;
        }
        !procfs::group_has_live_member(self.pgid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;
    use tokio::io::AsyncReadExt;

    fn shell(script: &str) -> CommandLine {
        CommandLine { program: "/bin/sh".into(), args: vec!["-c".into(), script.into()], cwd: "/".into() }
    }

    fn environment() -> Environment {
        let mut environment = Environment::default();
        environment.set("PATH", "/usr/bin:/bin");
        environment.set("ONLY_THIS", "1");
        environment
    }

    #[tokio::test]
    async fn child_leads_its_own_session_and_group() {
        let mut spawned = spawn(&shell("ps -o sid=,pgid= -p $$; env"), &environment(), ChildSetup::default()).unwrap();
        let mut output = String::new();
        spawned.stdout.read_to_string(&mut output).await.unwrap();
        let status = spawned.child.wait().await.unwrap();
        assert!(status.success());

        let pid = spawned.group.id().to_string();
        let ids: Vec<&str> = output.lines().next().unwrap().split_whitespace().collect();
        assert_eq!(ids, [pid.as_str(), pid.as_str()], "{output}");
        assert!(output.contains("ONLY_THIS=1"), "{output}");
        assert!(!output.contains("CARGO"), "host variables leaked: {output}");
    }

    #[tokio::test]
    async fn group_is_empty_after_its_processes_exit() {
        let mut spawned = spawn(&shell("sleep 30 & wait"), &environment(), ChildSetup::default()).unwrap();
        assert!(!spawned.group.is_empty());
        assert!(spawned.group.signal(libc::SIGKILL));
        spawned.child.wait().await.unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !spawned.group.is_empty() {
            assert!(std::time::Instant::now() < deadline, "group {} still has processes", spawned.group.id());
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn missing_program_fails_to_spawn() {
        let command = CommandLine { program: "/nonexistent/program".into(), args: vec![], cwd: "/".into() };
        let error = spawn(&command, &environment(), ChildSetup::default()).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn display_joins_program_and_args() {
        let command = CommandLine { program: "/usr/bin/uv".into(), args: vec![OsStr::new("venv").into()], cwd: "/".into() };
        assert_eq!(command.display(), "/usr/bin/uv venv");
    }
}
