//! The bubblewrap sandbox: the `bwrap` command line, and signals to the processes inside it.
//!
//! `bwrap` with `--unshare-pid` runs as three processes: the `bwrap` that this plugin starts,
//! its child, which is PID 1 (init) of a new PID namespace, and the app under that init. Neither
//! `bwrap` process forwards signals, and `--new-session` puts the init and the app in a session
//! and process group of their own. So a polite stop sends SIGTERM to that process group, and a
//! forced stop sends SIGKILL to the init: when PID 1 of a namespace dies, the kernel kills every
//! other process in it.
//!
//! `--die-with-parent` kills the sandbox when the thread that started `bwrap` exits, because
//! Linux ties `PR_SET_PDEATHSIG` to the parent thread, not to the parent process. A tokio worker
//! thread can leave its runtime and exit after 10 s idle, so every `bwrap` is started by the one
//! [`Spawner`] thread, which lives while the backend or a running execution needs it.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

/// One command to run in the sandbox.
#[derive(Debug, Clone)]
pub struct SandboxCommand {
    /// The program and its arguments, as seen inside the sandbox.
    pub argv: Vec<String>,
    /// The working folder inside the sandbox.
    pub cwd: PathBuf,
    /// The complete environment; nothing of the host's environment is passed.
    pub env: Vec<(String, String)>,
}

/// Builds the `bwrap` command for `command`. The host's root is read-only, `/tmp` is an empty
/// tmpfs, `execution_dir` and `writable` are bound read-write at their own paths, and the
/// sandbox has its own network namespace (loopback only) and PID namespace.
pub fn bwrap_command(bwrap: &Path, execution_dir: &Path, writable: &[PathBuf], command: &SandboxCommand) -> tokio::process::Command {
    let mut bwrap_command = tokio::process::Command::new(bwrap);
    bwrap_command.args(["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]);
    for folder in std::iter::once(&execution_dir.to_path_buf()).chain(writable) {
        bwrap_command.arg("--bind").arg(folder).arg(folder);
    }
    bwrap_command.args(["--unshare-net", "--unshare-pid", "--die-with-parent", "--new-session"]);
    bwrap_command.arg("--chdir").arg(&command.cwd);
    bwrap_command.arg("--clearenv");
    for (key, value) in &command.env {
        bwrap_command.args(["--setenv", key, value]);
    }
    bwrap_command.arg("--").args(&command.argv);
    bwrap_command
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group keeps terminal signals meant for the host (Ctrl-C) away from it.
        .process_group(0)
        .kill_on_drop(true);
    bwrap_command
}

/// A handle to the thread that starts every `bwrap` process. The thread ends when the last
/// handle is dropped, and `--die-with-parent` then kills the sandboxes it started, so each
/// execution keeps a handle until its sandbox is gone.
#[derive(Debug, Clone)]
pub struct Spawner {
    requests: mpsc::Sender<SpawnRequest>,
}

/// A command for the spawner thread, and where its result goes.
struct SpawnRequest {
    command: tokio::process::Command,
    reply: mpsc::SyncSender<io::Result<tokio::process::Child>>,
}

impl Spawner {
    /// Starts the spawner thread. Must run inside the tokio runtime that will wait for the
    /// children, because the thread spawns them in that runtime's context.
    pub fn start() -> io::Result<Self> {
        let runtime = tokio::runtime::Handle::current();
        let (requests, receiver) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new().name("bwrap-spawner".to_string()).spawn(move || {
            let _context = runtime.enter();
            for mut request in receiver {
                // The requester waits for the reply, unless it was cancelled meanwhile.
                let _ = request.reply.send(request.command.spawn());
            }
        })?;
        Ok(Self { requests })
    }

    /// Starts `command` on the spawner thread. Blocks the caller for as long as the fork and
    /// exec take.
    pub fn spawn(&self, command: tokio::process::Command) -> io::Result<tokio::process::Child> {
        let (reply, result) = mpsc::sync_channel(1);
        self.requests.send(SpawnRequest { command, reply }).map_err(|_| io::Error::other("the bwrap spawner thread has exited"))?;
        result.recv().map_err(|_| io::Error::other("the bwrap spawner thread exited before it started the sandbox"))?
    }
}

/// Returns the children of process `pid`, from `/proc/<pid>/task/<pid>/children`.
pub fn children(pid: u32) -> Vec<u32> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    std::fs::read_to_string(path).unwrap_or_default().split_whitespace().filter_map(|text| text.parse().ok()).collect()
}

/// Returns the host PID of the sandbox's init (PID 1 of its namespace), the only child of the
/// `bwrap` process `bwrap_pid`, once it exists.
pub fn find_init(bwrap_pid: u32) -> Option<u32> {
    children(bwrap_pid).first().copied()
}

/// Sends SIGTERM to the sandbox's process group. `--new-session` makes the init a session and
/// group leader, and the app starts in that group. The init itself ignores the signal, because
/// PID 1 of a namespace receives only the signals it installed a handler for, and `bwrap`
/// (version 0.8) installs none for SIGTERM.
pub fn terminate_app(init_pid: u32) {
    // SAFETY: kill takes plain integers; a group that is already gone yields ESRCH.
    unsafe { libc::kill(-(init_pid as i32), libc::SIGTERM) };
}

/// Sends SIGKILL to the sandbox's init, which makes the kernel kill every process of the sandbox.
pub fn kill_init(init_pid: u32) {
    // SAFETY: kill takes plain integers; a process that is already gone yields ESRCH.
    unsafe { libc::kill(init_pid as i32, libc::SIGKILL) };
}

/// Sends SIGKILL to the `bwrap` process group, for a sandbox whose init does not exist yet.
pub fn kill_bwrap(bwrap_pid: u32) {
    // SAFETY: kill takes plain integers; a group that is already gone yields ESRCH.
    unsafe { libc::kill(-(bwrap_pid as i32), libc::SIGKILL) };
}

/// Waits up to `limit` until the sandbox's init is gone or a zombie. The kernel makes PID 1 of a
/// namespace a zombie only after every other process of the namespace exited, so then nothing of
/// the sandbox runs. Returns whether that was seen.
pub async fn wait_init_gone(init_pid: u32, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{init_pid}/stat")).unwrap_or_default();
        // The state follows the command name, which is in parentheses.
        let state = stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next());
        if matches!(state, None | Some('Z') | Some('X')) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
