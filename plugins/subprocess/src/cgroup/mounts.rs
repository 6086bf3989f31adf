//! Parsing of `/proc/self/mountinfo` and `/proc/self/cgroup`: the mount points of the cgroup
//! hierarchies and the cgroups of the current process in them.

use std::path::{Path, PathBuf};

/// One mounted cgroup hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupMount {
    /// The mount point, such as `/sys/fs/cgroup/memory`.
    pub mount_point: PathBuf,
    /// The cgroup path shown at the mount point; `/` unless a cgroup namespace or a bind mount
    /// shows a sub-tree.
    pub root: String,
    /// `true` for cgroup v2.
    pub unified: bool,
    /// The v1 controllers of the hierarchy (`memory`, `pids`, …); empty for v2.
    pub controllers: Vec<String>,
}

/// One line of `/proc/self/cgroup`: a hierarchy and the current process's cgroup in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// The v1 controllers, or empty for the v2 line `0::/path`.
    pub controllers: Vec<String>,
    /// The cgroup path, such as `/user.slice`.
    pub path: String,
}

/// Parses `/proc/self/mountinfo` and keeps the cgroup mounts.
pub fn parse_mountinfo(text: &str) -> Vec<CgroupMount> {
    text.lines().filter_map(parse_mount_line).collect()
}

fn parse_mount_line(line: &str) -> Option<CgroupMount> {
    // Fields: id parent major:minor root mount-point options [optional…] - fstype source super-options
    let (before, after) = line.split_once(" - ")?;
    let before: Vec<&str> = before.split(' ').collect();
    let after: Vec<&str> = after.split(' ').collect();
    let root = unescape(before.get(3)?);
    let mount_point = PathBuf::from(unescape(before.get(4)?));
    match *after.first()? {
        "cgroup2" => Some(CgroupMount { mount_point, root, unified: true, controllers: Vec::new() }),
        "cgroup" => {
            let known = ["memory", "pids", "cpu", "freezer", "cpuacct", "cpuset", "blkio", "devices", "hugetlb", "net_cls", "perf_event"];
            let controllers = after
                .get(2)?
                .split(',')
                .filter(|option| known.contains(option))
                .map(str::to_string)
                .collect();
            Some(CgroupMount { mount_point, root, unified: false, controllers })
        }
        _ => None,
    }
}

/// Decodes the octal escapes (`\040` for a space) that mountinfo uses in paths.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let escape = bytes.get(index + 1..index + 4).filter(|digits| bytes[index] == b'\\' && digits.iter().all(|d| (b'0'..=b'7').contains(d)));
        match escape {
            Some(digits) => {
                out.push(digits.iter().fold(0u8, |value, digit| value.wrapping_mul(8) + (digit - b'0')));
                index += 4;
            }
            None => {
                out.push(bytes[index]);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses `/proc/self/cgroup`.
pub fn parse_proc_cgroup(text: &str) -> Vec<Membership> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let _hierarchy_id = parts.next()?;
            let controllers = parts.next()?;
            let path = parts.next()?;
            Some(Membership {
                controllers: controllers.split(',').filter(|name| !name.is_empty()).map(str::to_string).collect(),
                path: path.to_string(),
            })
        })
        .collect()
}

/// Returns the folder of the current process's cgroup in `mount`, given its memberships.
pub fn own_cgroup_dir(mount: &CgroupMount, memberships: &[Membership]) -> Option<PathBuf> {
    let membership = memberships.iter().find(|membership| {
        if mount.unified {
            membership.controllers.is_empty()
        } else {
            mount.controllers.iter().any(|controller| membership.controllers.contains(controller))
        }
    })?;
    let relative = membership.path.strip_prefix(mount.root.trim_end_matches('/')).unwrap_or(&membership.path);
    Some(join_cgroup_path(&mount.mount_point, relative))
}

fn join_cgroup_path(mount_point: &Path, cgroup_path: &str) -> PathBuf {
    let mut dir = mount_point.to_path_buf();
    for component in cgroup_path.split('/').filter(|component| !component.is_empty()) {
        dir.push(component);
    }
    dir
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
25 20 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
27 25 0:24 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
28 25 0:25 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
29 25 0:26 /ns /sys/fs/cgroup/my\\040pids rw,relatime - cgroup cgroup rw,pids
30 20 8:1 / / rw - ext4 /dev/sda1 rw";

    const PROC_CGROUP: &str = "\
4:memory:/box/7
3:cpu,cpuacct:/
2:pids:/ns/app
0::/unified/x";

    #[test]
    fn mountinfo_lists_cgroup_mounts_with_controllers() {
        let mounts = parse_mountinfo(MOUNTINFO);
        assert_eq!(mounts.len(), 4);
        assert!(mounts[0].unified);
        assert_eq!(mounts[1].controllers, ["memory"]);
        assert_eq!(mounts[2].controllers, ["cpu", "cpuacct"]);
        assert_eq!(mounts[3].mount_point, Path::new("/sys/fs/cgroup/my pids"));
        assert_eq!(mounts[3].root, "/ns");
    }

    #[test]
    fn own_dir_joins_mount_and_membership() {
        let mounts = parse_mountinfo(MOUNTINFO);
        let memberships = parse_proc_cgroup(PROC_CGROUP);
        assert_eq!(own_cgroup_dir(&mounts[0], &memberships).unwrap(), Path::new("/sys/fs/cgroup/unified/unified/x"));
        assert_eq!(own_cgroup_dir(&mounts[1], &memberships).unwrap(), Path::new("/sys/fs/cgroup/memory/box/7"));
        assert_eq!(own_cgroup_dir(&mounts[2], &memberships).unwrap(), Path::new("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(own_cgroup_dir(&mounts[3], &memberships).unwrap(), Path::new("/sys/fs/cgroup/my pids/app"));
    }
}
