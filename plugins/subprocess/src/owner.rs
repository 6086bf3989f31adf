//! The owner marker: a file in each execution folder naming the host process that created it,
//! so that a later host can tell its own folders from those a dead host left behind.

use crate::procfs::ProcStat;
use std::io;
use std::path::Path;

/// Name of the marker file inside an execution folder.
pub const OWNER_FILE_NAME: &str = "owner";

/// A host process, named by its pid and its start time (see [`ProcStat::start_time`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    /// Process id of the host.
    pub pid: i32,
    /// Start time of that process, in clock ticks since boot.
    pub start_time: u64,
}

impl Owner {
    /// Returns the current process.
    pub fn current() -> io::Result<Self> {
        let pid = std::process::id() as i32;
        let stat = ProcStat::read(pid)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "cannot read /proc/self/stat"))?;
        Ok(Self { pid, start_time: stat.start_time })
    }

    /// Writes the marker into `dir`.
    pub fn write(&self, dir: &Path) -> io::Result<()> {
        std::fs::write(dir.join(OWNER_FILE_NAME), format!("pid={}\nstart_time={}\n", self.pid, self.start_time))
    }

    /// Reads the marker of `dir`; `None` when it is missing or malformed.
    pub fn read(dir: &Path) -> Option<Self> {
        Self::parse(&std::fs::read_to_string(dir.join(OWNER_FILE_NAME)).ok()?)
    }

    fn parse(text: &str) -> Option<Self> {
        let mut pid = None;
        let mut start_time = None;
        for line in text.lines() {
            match line.split_once('=') {
                Some(("pid", value)) => pid = value.parse().ok(),
                Some(("start_time", value)) => start_time = value.parse().ok(),
                _ => {}
            }
        }
        Some(Self { pid: pid?, start_time: start_time? })
    }

    /// Tells whether this process still runs: a process with the pid exists and started at
    /// the same time.
    pub fn is_alive(&self) -> bool {
        ProcStat::read(self.pid).is_some_and(|stat| stat.start_time == self.start_time && !stat.is_zombie())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_round_trips_and_current_is_alive() {
        let dir = tempfile::tempdir().unwrap();
        let owner = Owner::current().unwrap();
        owner.write(dir.path()).unwrap();
        let read = Owner::read(dir.path()).unwrap();
        assert_eq!(read, owner);
        assert!(read.is_alive());
    }

    #[test]
    fn owner_with_other_start_time_is_dead() {
        let mut owner = Owner::current().unwrap();
        owner.start_time += 1;
        assert!(!owner.is_alive());
    }

    #[test]
    fn malformed_marker_reads_as_none() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(OWNER_FILE_NAME), "pid=12\n").unwrap();
        assert_eq!(Owner::read(dir.path()), None);
    }
}
