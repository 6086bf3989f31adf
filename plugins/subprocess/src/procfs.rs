//! Reading process facts from `/proc/<pid>/stat` (Linux `proc(5)`).

use std::path::Path;

/// The fields of `/proc/<pid>/stat` the backend uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// Field 3: `R`, `S`, `D`, `Z` (zombie), `X` (dead), ….
    pub state: char,
    /// Field 5: the process group id.
    pub pgrp: i32,
    /// Field 22: when the process started, in clock ticks since boot. Together with the pid it
    /// names one process, because pids are reused but start times of one pid are not.
    pub start_time: u64,
}

impl ProcStat {
    /// Reads the stat line of `pid`; `None` when the process does not exist.
    pub fn read(pid: i32) -> Option<Self> {
        Self::read_path(&Path::new("/proc").join(pid.to_string()).join("stat"))
    }

    fn read_path(path: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(path).ok()?;
        Self::parse(&text)
    }

    /// Parses a stat line. The command name (field 2) is in parentheses and may itself contain
    /// spaces and parentheses, so the fields after it are found from the last `)`.
    pub fn parse(line: &str) -> Option<Self> {
        let after_name = &line[line.rfind(')')? + 1..];
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        // `fields[0]` is field 3 of the line.
        let field = |number: usize| fields.get(number - 3).copied();
        Some(Self {
            state: field(3)?.chars().next()?,
            pgrp: field(5)?.parse().ok()?,
            start_time: field(22)?.parse().ok()?,
        })
    }

    /// Tells whether the process has exited and only its table entry is left.
    pub fn is_zombie(&self) -> bool {
        matches!(self.state, 'Z' | 'X')
    }
}

/// Tells whether a process that is not a zombie has process group `pgid`; scans `/proc`.
/// Returns `true` when `/proc` cannot be read, so that callers keep waiting instead of
/// declaring a group empty that they cannot see.
pub fn group_has_live_member(pgid: i32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else { return true };
    entries.flatten().any(|entry| {
        let is_pid = entry.file_name().to_str().is_some_and(|name| name.bytes().all(|byte| byte.is_ascii_digit()));
        is_pid
            && ProcStat::read_path(&entry.path().join("stat"))
                .is_some_and(|stat| stat.pgrp == pgid && !stat.is_zombie())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parses_name_with_parentheses_and_spaces() {
        let line = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 200";
        let stat = ProcStat::parse(line).unwrap();
        assert_eq!(stat.state, 'S');
        assert_eq!(stat.pgrp, 4242);
        assert_eq!(stat.start_time, 987654);
        assert!(!stat.is_zombie());
    }

    #[test]
    fn stat_of_current_process_is_readable() {
        let stat = ProcStat::read(std::process::id() as i32).unwrap();
        assert!(stat.start_time > 0);
    }

    #[test]
    fn truncated_stat_is_rejected() {
        assert_eq!(ProcStat::parse("1 (init) S 0"), None);
    }
}
