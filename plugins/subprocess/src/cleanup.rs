//! Removing what executions leave behind: their folders and cgroups, after each execution and,
//! at startup, for executions of host processes that are gone.

use crate::cgroup::CgroupManager;
use crate::owner::Owner;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// Age after which an execution folder without a readable owner marker counts as left behind.
/// A folder gets its marker right after it is created, so only a host that died in between
/// leaves one without, and this age keeps a folder that another host is creating right now.
const UNMARKED_FOLDER_MIN_AGE: Duration = Duration::from_secs(60);

/// Removes an execution folder and everything in it. A folder that does not exist counts as
/// removed. Folders without write permission, which a package or a tool may create, get it first.
pub fn remove_execution_dir(dir: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::PermissionDenied => {
            make_writable(dir);
            match std::fs::remove_dir_all(dir) {
                Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
                result => result,
            }
        }
        Err(error) => Err(error),
    }
}

/// Adds owner write and execute permission to every folder under `dir`, without following
/// symbolic links.
fn make_writable(dir: &Path) {
    let Ok(metadata) = std::fs::symlink_metadata(dir) else { return };
    if !metadata.is_dir() {
        return;
    }
    let mode = metadata.permissions().mode() | 0o700;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode));
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            make_writable(&entry.path());
        }
    }
}

/// Counts of what [`sweep_leftovers`] removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SweepSummary {
    /// Execution folders removed.
    pub folders: usize,
    /// Execution cgroups removed, with any process still in them.
    pub cgroups: usize,
}

/// Removes the execution folders under `executions_dir` whose owner marker names a host process
/// that is gone, and the cgroups of the same name after killing what runs in them. Folders of
/// running hosts, the current one included, stay. Errors are logged and the sweep goes on.
pub fn sweep_leftovers(executions_dir: &Path, cgroups: Option<&CgroupManager>) -> SweepSummary {
    let mut summary = SweepSummary::default();
    let Ok(entries) = std::fs::read_dir(executions_dir) else { return summary };
    for entry in entries.flatten() {
        let dir = entry.path();
        if !dir.is_dir() || !is_left_behind(&dir) {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(cgroup) = cgroups.and_then(|manager| manager.existing(&name)) {
            match cgroup.remove() {
                Ok(()) => summary.cgroups += 1,
                Err(error) => tracing::warn!(folder = %name, %error, "failed to remove the cgroup of a left-behind execution"),
            }
        }
        match remove_execution_dir(&dir) {
            Ok(()) => summary.folders += 1,
            Err(error) => tracing::warn!(folder = %dir.display(), %error, "failed to remove a left-behind execution folder"),
        }
    }
    summary
}

fn is_left_behind(dir: &Path) -> bool {
    match Owner::read(dir) {
        Some(owner) => !owner.is_alive(),
        None => {
            let modified = std::fs::metadata(dir).and_then(|metadata| metadata.modified());
            let age = modified.ok().and_then(|time| SystemTime::now().duration_since(time).ok());
            age.is_some_and(|age| age >= UNMARKED_FOLDER_MIN_AGE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remove_twice_succeeds_and_handles_read_only_folders() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("exec");
        std::fs::create_dir_all(dir.join("locked/inner")).unwrap();
        std::fs::write(dir.join("locked/inner/file"), "x").unwrap();
        std::fs::set_permissions(dir.join("locked"), std::fs::Permissions::from_mode(0o500)).unwrap();

        remove_execution_dir(&dir).unwrap();
        assert!(!dir.exists());
        remove_execution_dir(&dir).unwrap();
    }

    #[test]
    fn sweep_removes_only_folders_of_dead_owners() {
        let root = tempfile::tempdir().unwrap();
        let current = Owner::current().unwrap();
        let dead = Owner { pid: current.pid, start_time: current.start_time + 1 };

        let mine = root.path().join("mine");
        let left = root.path().join("left");
        let fresh_unmarked = root.path().join("fresh");
        for dir in [&mine, &left, &fresh_unmarked] {
            std::fs::create_dir(dir).unwrap();
        }
        current.write(&mine).unwrap();
        dead.write(&left).unwrap();

        let summary = sweep_leftovers(root.path(), None);
        assert_eq!(summary, SweepSummary { folders: 1, cgroups: 0 });
        assert!(mine.exists());
        assert!(!left.exists());
        assert!(fresh_unmarked.exists());
    }
}
