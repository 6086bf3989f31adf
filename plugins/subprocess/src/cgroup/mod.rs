//! Per-execution cgroups: memory, process count and CPU limits, and a kill that reaches every
//! process of the execution, including those that left its process group.
//!
//! Each execution gets one cgroup named after its folder, under a `tower-host` cgroup created
//! inside the host's own cgroup, so that the host's own limits still apply. cgroup v2 is used when
//! its memory and pids controllers can be enabled there. Otherwise the backend uses cgroup v1,
//! with one cgroup in each of the memory, pids, cpu and freezer hierarchies that is mounted and
//! writable.

mod mounts;
mod probe;

pub use probe::probe;

use std::fs::OpenOptions;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tower_plugin_api::ResourceLimits;

/// Name of the cgroup, inside the host's own cgroup, that contains the executions' cgroups.
pub const PARENT_NAME: &str = "tower-host";

/// How long to wait for the v1 freezer to report `FROZEN` before killing without it.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(1);

/// Pause between two reads of `freezer.state`, or between two kill rounds in `remove`.
const CGROUP_POLL_INTERVAL: Duration = Duration::from_millis(5);

/// How long `remove` keeps killing processes of a cgroup that is not yet empty.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(5);

/// CPU quota period for cgroup v2 `cpu.max`, and for v1 when `cpu.cfs_period_us` is unreadable:
/// 100 ms, the kernel's default.
const CPU_PERIOD_MICROS: u64 = 100_000;

/// Smallest CPU quota the kernel accepts: 1 ms per period.
const MIN_CPU_QUOTA_MICROS: u64 = 1_000;

/// Bytes in one MiB.
const MIB: u64 = 1024 * 1024;

/// A cgroup controller the backend uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Controller {
    /// Memory limit.
    Memory,
    /// Process and thread count limit.
    Pids,
    /// CPU quota.
    Cpu,
    /// cgroup v1 freezer, to stop every process before killing them, so none can fork meanwhile.
    Freezer,
}

impl Controller {
    /// Returns the kernel's name of the controller.
    pub fn name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Pids => "pids",
            Controller::Cpu => "cpu",
            Controller::Freezer => "freezer",
        }
    }
}

/// The cgroup version in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// One hierarchy per controller.
    V1,
    /// The unified hierarchy.
    V2,
}

/// A cgroup folder and the controllers that apply to it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hierarchy {
    dir: PathBuf,
    controllers: Vec<Controller>,
}

/// Creates execution cgroups under the `tower-host` parents found by [`probe`].
#[derive(Debug, Clone)]
pub struct CgroupManager {
    version: Version,
    /// The `tower-host` parent in each hierarchy.
    parents: Vec<Hierarchy>,
}

/// Errors of cgroup operations.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A cgroup folder or control file could not be created or written.
    #[error("failed to {operation} {}: {source}", path.display())]
    Io {
        /// The operation, such as "write".
        operation: &'static str,
        /// The cgroup folder or file.
        path: PathBuf,
        /// The file system error.
        source: io::Error,
    },
    /// Processes were still in the cgroup after every kill attempt.
    #[error("processes {pids:?} are still in cgroup {} after SIGKILL", path.display())]
    NotEmpty {
        /// The cgroup folder.
        path: PathBuf,
        /// The remaining processes.
        pids: Vec<i32>,
    },
}

fn io_error(operation: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CgroupError {
    let path = path.to_path_buf();
    move |source| CgroupError::Io { operation, path, source }
}

impl CgroupManager {
    /// Returns the cgroup version in use.
    pub fn version(&self) -> Version {
        self.version
    }

    /// Tells whether execution cgroups get `controller`.
    pub fn has(&self, controller: Controller) -> bool {
        self.parents.iter().any(|parent| parent.controllers.contains(&controller))
    }

    /// Returns the names of the controllers in use, such as `memory,pids,cpu,freezer`.
    pub fn controller_names(&self) -> String {
        let names: Vec<&str> = self.parents.iter().flat_map(|parent| parent.controllers.iter().map(|c| c.name())).collect();
        names.join(",")
    }

    /// Creates the cgroup `name` and applies the memory and CPU limits of `limits`. The process
    /// limit is applied later by [`ExecutionCgroup::limit_processes`].
    pub fn create(&self, name: &str, limits: &ResourceLimits) -> Result<ExecutionCgroup, CgroupError> {
        let cgroup = self.execution_cgroup(name);
        for hierarchy in &cgroup.hierarchies {
            std::fs::create_dir(&hierarchy.dir).map_err(io_error("create cgroup", &hierarchy.dir))?;
        }
        if let Err(error) = cgroup.apply_creation_limits(limits) {
            let _ = cgroup.remove();
            return Err(error);
        }
        Ok(cgroup)
    }

    /// Returns the cgroup `name` if any of its folders exists, for removing leftovers.
    pub fn existing(&self, name: &str) -> Option<ExecutionCgroup> {
        let cgroup = self.execution_cgroup(name);
        cgroup.hierarchies.iter().any(|hierarchy| hierarchy.dir.is_dir()).then_some(cgroup)
    }

    fn execution_cgroup(&self, name: &str) -> ExecutionCgroup {
        let hierarchies = self
            .parents
            .iter()
            .map(|parent| Hierarchy { dir: parent.dir.join(name), controllers: parent.controllers.clone() })
            .collect();
        ExecutionCgroup { version: self.version, hierarchies }
    }
}

/// The cgroup of one execution: a folder in each hierarchy in use.
#[derive(Debug, Clone)]
pub struct ExecutionCgroup {
    version: Version,
    hierarchies: Vec<Hierarchy>,
}

impl ExecutionCgroup {
    /// Returns the first folder, shown in status metadata.
    pub fn path(&self) -> &Path {
        &self.hierarchies[0].dir
    }

    /// Returns the folder of the hierarchy that has `controller`, if the cgroup uses it.
    pub fn dir_of(&self, controller: Controller) -> Option<&Path> {
        self.hierarchies.iter().find(|hierarchy| hierarchy.controllers.contains(&controller)).map(|h| h.dir.as_path())
    }

    fn apply_creation_limits(&self, limits: &ResourceLimits) -> Result<(), CgroupError> {
        if let (Some(mib), Some(dir)) = (limits.memory_mib.into_option(), self.dir_of(Controller::Memory)) {
            let bytes = mib.saturating_mul(MIB).to_string();
            match self.version {
                Version::V1 => {
                    write_control(dir, "memory.limit_in_bytes", &bytes)?;
                    // Without swap accounting the file is absent and swap is not limited.
                    write_control_if_present(dir, "memory.memsw.limit_in_bytes", &bytes)?;
                }
                Version::V2 => {
                    write_control(dir, "memory.max", &bytes)?;
                    write_control_if_present(dir, "memory.swap.max", "0")?;
                }
            }
        }
        if let (Some(millicores), Some(dir)) = (limits.cpu_millicores.into_option(), self.dir_of(Controller::Cpu)) {
            match self.version {
                Version::V1 => {
                    let period = std::fs::read_to_string(dir.join("cpu.cfs_period_us"))
                        .ok()
                        .and_then(|text| text.trim().parse().ok())
                        .unwrap_or(CPU_PERIOD_MICROS);
                    write_control(dir, "cpu.cfs_quota_us", &cpu_quota(millicores, period).to_string())?;
                }
                Version::V2 => {
                    let value = format!("{} {CPU_PERIOD_MICROS}", cpu_quota(millicores, CPU_PERIOD_MICROS));
                    write_control(dir, "cpu.max", &value)?;
                }
            }
        }
        Ok(())
    }

    /// Sets the maximum number of processes and threads. Applied when the app's program starts,
    /// because uv, which runs before it, starts a thread per CPU core.
    pub fn limit_processes(&self, max_processes: u32) -> Result<(), CgroupError> {
        match self.dir_of(Controller::Pids) {
            Some(dir) => write_control(dir, "pids.max", &max_processes.to_string()),
            None => Ok(()),
        }
    }

    /// Opens the `cgroup.procs` file of every hierarchy for writing. A child that writes `0` to
    /// each moves itself into the cgroup.
    pub fn open_procs_files(&self) -> Result<Vec<OwnedFd>, CgroupError> {
        self.hierarchies
            .iter()
            .map(|hierarchy| {
                let path = hierarchy.dir.join("cgroup.procs");
                // std opens files with O_CLOEXEC, so the descriptors do not reach the app.
                let file = OpenOptions::new().write(true).open(&path).map_err(io_error("open", &path))?;
                Ok(OwnedFd::from(file))
            })
            .collect()
    }

    /// Lists the processes in the cgroup. Every hierarchy contains the same processes, so the
    /// first is read. A removed cgroup has none.
    pub fn pids(&self) -> Vec<i32> {
        let path = self.path().join("cgroup.procs");
        match std::fs::read_to_string(&path) {
            Ok(text) => text.lines().filter_map(|line| line.trim().parse().ok()).collect(),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "failed to list the processes of a cgroup");
                Vec::new()
            }
        }
    }

    /// Tells whether no process is in the cgroup. Exited processes leave `cgroup.procs` before
    /// they are reaped, so zombies do not count.
    pub fn is_empty(&self) -> bool {
        self.pids().is_empty()
    }

    /// Sends `signal` to every process in the cgroup. Returns whether there was any.
    pub fn signal_all(&self, signal: i32) -> bool {
        let pids = self.pids();
        for &pid in &pids {
            // SAFETY: `kill` has no memory-safety preconditions.
            unsafe { libc::kill(pid, signal) };
        }
        !pids.is_empty()
    }

    /// Sends SIGKILL to every process in the cgroup so that none can fork meanwhile: through
    /// `cgroup.kill` on cgroup v2, by freezing the cgroup first on v1 with a freezer, else by
    /// signalling the listed processes. Returns whether there was any process.
    pub fn kill_all(&self) -> bool {
        if self.is_empty() {
            return false;
        }
        if self.version == Version::V2 && write_control(self.path(), "cgroup.kill", "1").is_ok() {
            return true;
        }
        let freezer = self.dir_of(Controller::Freezer).filter(|dir| freeze(dir));
        self.signal_all(libc::SIGKILL);
        if let Some(dir) = freezer {
            // Frozen processes die of the pending SIGKILL as soon as they are thawed.
            if let Err(error) = write_control(dir, "freezer.state", "THAWED") {
                tracing::warn!(%error, "failed to thaw a cgroup after SIGKILL");
            }
        }
        true
    }

    /// Returns how many processes the kernel's OOM killer killed in this cgroup.
    pub fn oom_kills(&self) -> u64 {
        let Some(dir) = self.dir_of(Controller::Memory) else { return 0 };
        let file = match self.version {
            Version::V1 => "memory.oom_control",
            Version::V2 => "memory.events",
        };
        let text = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        text.lines()
            .find_map(|line| line.strip_prefix("oom_kill ").and_then(|count| count.trim().parse().ok()))
            .unwrap_or(0)
    }

    /// Kills what remains in the cgroup and removes its folders. Idempotent.
    pub fn remove(&self) -> Result<(), CgroupError> {
        let deadline = Instant::now() + REMOVE_TIMEOUT;
        while self.kill_all() {
            if Instant::now() >= deadline {
                return Err(CgroupError::NotEmpty { path: self.path().to_path_buf(), pids: self.pids() });
            }
            std::thread::sleep(CGROUP_POLL_INTERVAL);
        }
        for hierarchy in &self.hierarchies {
            match std::fs::remove_dir(&hierarchy.dir) {
                Err(error) if error.kind() != io::ErrorKind::NotFound => {
                    return Err(io_error("remove cgroup", &hierarchy.dir)(error));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Returns the CPU quota in microseconds per `period` for `millicores` thousandths of a core.
fn cpu_quota(millicores: u32, period: u64) -> u64 {
    (u64::from(millicores) * period / 1000).max(MIN_CPU_QUOTA_MICROS)
}

/// Freezes a v1 freezer cgroup and waits until it reports `FROZEN`. Returns whether it did.
fn freeze(dir: &Path) -> bool {
    if write_control(dir, "freezer.state", "FROZEN").is_err() {
        return false;
    }
    let deadline = Instant::now() + FREEZE_TIMEOUT;
    loop {
        let state = std::fs::read_to_string(dir.join("freezer.state")).unwrap_or_default();
        if state.trim() == "FROZEN" {
            return true;
        }
        if Instant::now() >= deadline {
            tracing::warn!(cgroup = %dir.display(), state = state.trim(), "the cgroup did not freeze in time; killing without freezing");
            return true;
        }
        std::thread::sleep(CGROUP_POLL_INTERVAL);
    }
}

fn write_control(dir: &Path, file: &str, value: &str) -> Result<(), CgroupError> {
    let path = dir.join(file);
    std::fs::write(&path, value).map_err(io_error("write", &path))
}

fn write_control_if_present(dir: &Path, file: &str, value: &str) -> Result<(), CgroupError> {
    if dir.join(file).exists() {
        write_control(dir, file, value)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_quota_scales_with_floor() {
        assert_eq!(cpu_quota(500, 100_000), 50_000);
        assert_eq!(cpu_quota(2000, 100_000), 200_000);
        assert_eq!(cpu_quota(1, 100_000), MIN_CPU_QUOTA_MICROS);
    }

    #[test]
    fn execution_cgroup_has_a_folder_per_hierarchy() {
        let manager = CgroupManager {
            version: Version::V1,
            parents: vec![
                Hierarchy { dir: "/cg/memory/tower-host".into(), controllers: vec![Controller::Memory] },
                Hierarchy { dir: "/cg/pids/tower-host".into(), controllers: vec![Controller::Pids] },
            ],
        };
        let cgroup = manager.execution_cgroup("run-1-abc");
        assert_eq!(cgroup.path(), Path::new("/cg/memory/tower-host/run-1-abc"));
        assert_eq!(cgroup.dir_of(Controller::Pids), Some(Path::new("/cg/pids/tower-host/run-1-abc")));
        assert_eq!(cgroup.dir_of(Controller::Cpu), None);
        assert_eq!(manager.controller_names(), "memory,pids");
    }
}
