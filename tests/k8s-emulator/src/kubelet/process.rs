//! Container processes: each container runs as a local process in its own process group, with
//! stdout and stderr on one pipe so the log keeps the order in which the process wrote.

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};

use tokio::net::unix::pipe;
use tokio::process::{Child, ChildStdin, Command};

pub struct Spawned {
    pub child: Child,
    /// The process id, which is also the id of the process group the container runs in.
    pub pid: i32,
    pub output: pipe::Receiver,
    pub stdin: Option<ChildStdin>,
}

/// Starts `argv` with exactly `env`, in `working_dir`, in a new process group.
pub fn spawn(
    argv: &[String],
    env: &[(String, OsString)],
    working_dir: &Path,
    with_stdin: bool,
) -> std::io::Result<Spawned> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty command"))?;
    let (reader, writer) = std::io::pipe()?;
    let mut command = Command::new(program);
    command
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(name, value)| (name, value)))
        .current_dir(working_dir)
        .stdin(if with_stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::from(writer.try_clone()?))
        .stderr(Stdio::from(writer))
        .process_group(0);
    let mut child = command.spawn()?;
    // The command keeps the pipe's write end open; dropping it lets the reader see end of file
    // once the process group is gone.
    drop(command);
    let pid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .unwrap_or(0);
    let stdin = child.stdin.take();
    let output = pipe::Receiver::from_owned_fd(OwnedFd::from(reader))?;
    Ok(Spawned {
        child,
        pid,
        output,
        stdin,
    })
}

/// Sends `signal` to every process in the group `group`.
pub fn signal_group(group: i32, signal: i32) {
    if group <= 0 {
        return;
    }
    // SAFETY: kill has no memory effects; a negative pid addresses the process group.
    let result = unsafe { libc::kill(-group, signal) };
    if result != 0 {
        let error = std::io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::ESRCH) {
            tracing::warn!(group, signal, %error, "failed to signal a container's process group");
        }
    }
}

/// Returns the exit code the kubelet reports: the process's own, or 128 + N for signal N.
pub fn exit_code_and_signal(status: ExitStatus) -> (i32, Option<i32>) {
    match (status.code(), status.signal()) {
        (Some(code), _) => (code, None),
        (None, Some(signal)) => (128 + signal, Some(signal)),
        (None, None) => (255, None),
    }
}
