//! Finding out which cgroups the backend can use on this machine.

use super::mounts::{own_cgroup_dir, parse_mountinfo, parse_proc_cgroup, CgroupMount, Membership};
use super::{CgroupManager, Controller, Hierarchy, Version, PARENT_NAME};
use std::path::{Path, PathBuf};

/// Controllers the backend looks for in cgroup v1, in order of use.
const V1_CONTROLLERS: [Controller; 4] = [Controller::Memory, Controller::Pids, Controller::Cpu, Controller::Freezer];

/// Finds where execution cgroups can be created: cgroup v2 when the memory and pids controllers
/// can be enabled for the `tower-host` cgroup, else the cgroup v1 hierarchies of
/// [`V1_CONTROLLERS`] that are mounted and writable. Creates the `tower-host` parents and checks
/// each with a short-lived probe cgroup. Returns why not when cgroups cannot be used.
pub fn probe() -> Result<CgroupManager, String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").map_err(|error| format!("cannot read /proc/self/mountinfo: {error}"))?;
    let proc_cgroup = std::fs::read_to_string("/proc/self/cgroup").map_err(|error| format!("cannot read /proc/self/cgroup: {error}"))?;
    let mounts = parse_mountinfo(&mountinfo);
    let memberships = parse_proc_cgroup(&proc_cgroup);

    let v2_reason = match probe_v2(&mounts, &memberships) {
        Ok(manager) => return Ok(manager),
        Err(reason) => reason,
    };
    match probe_v1(&mounts, &memberships) {
        Ok(manager) => Ok(manager),
        Err(v1_reason) => Err(format!("cgroup v2: {v2_reason}; cgroup v1: {v1_reason}")),
    }
}

// NOTE: the v2 path (this probe, `memory.max`, `pids.max`, `cpu.max`, `cgroup.kill`) has run only
// up to the controller check. The development machine's v2 hierarchy offers no memory or pids
// controller, so the tests exercise cgroup v1.
fn probe_v2(mounts: &[CgroupMount], memberships: &[Membership]) -> Result<CgroupManager, String> {
    let mount = mounts.iter().find(|mount| mount.unified).ok_or("not mounted")?;
    let own = own_cgroup_dir(mount, memberships).ok_or("the host is in no v2 cgroup")?;
    let available = std::fs::read_to_string(own.join("cgroup.controllers")).unwrap_or_default();
    let available: Vec<&str> = available.split_whitespace().collect();
    if !available.contains(&"memory") || !available.contains(&"pids") {
        return Err(format!("the memory and pids controllers are not available in {} (it offers: {})", own.display(), available.join(" ")));
    }

    let mut controllers = vec![Controller::Memory, Controller::Pids];
    if available.contains(&"cpu") {
        controllers.push(Controller::Cpu);
    }
    // A v2 cgroup can pass controllers to its children only if it has no processes of its own
    // (the root excepted), so enabling them where the host runs fails unless the host was
    // given a delegated sub-tree.
    enable_v2_controllers(&own, &controllers)?;
    let parent = own.join(PARENT_NAME);
    create_parent(&parent)?;
    enable_v2_controllers(&parent, &controllers)?;
    check_with_probe_cgroup(&parent, &["memory.max", "pids.max", "cgroup.procs"])?;
    Ok(CgroupManager { version: Version::V2, parents: vec![Hierarchy { dir: parent, controllers }] })
}

fn enable_v2_controllers(dir: &Path, controllers: &[Controller]) -> Result<(), String> {
    let path = dir.join("cgroup.subtree_control");
    let enabled = std::fs::read_to_string(&path).unwrap_or_default();
    let missing: Vec<String> = controllers
        .iter()
        .filter(|controller| !enabled.split_whitespace().any(|name| name == controller.name()))
        .map(|controller| format!("+{}", controller.name()))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    std::fs::write(&path, missing.join(" ")).map_err(|error| format!("cannot enable {} in {}: {error}", missing.join(" "), path.display()))
}

fn probe_v1(mounts: &[CgroupMount], memberships: &[Membership]) -> Result<CgroupManager, String> {
    let mut parents: Vec<Hierarchy> = Vec::new();
    let mut reasons = Vec::new();
    for controller in V1_CONTROLLERS {
        match probe_v1_controller(controller, mounts, memberships) {
            Ok(dir) => match parents.iter_mut().find(|parent| parent.dir == dir) {
                // Controllers mounted together (`cpu,cpuacct`) share one folder.
                Some(parent) => parent.controllers.push(controller),
                None => parents.push(Hierarchy { dir, controllers: vec![controller] }),
            },
            Err(reason) => reasons.push(format!("{}: {reason}", controller.name())),
        }
    }
    if !parents.iter().any(|parent| parent.controllers.iter().any(|c| matches!(c, Controller::Memory | Controller::Pids))) {
        return Err(format!("neither memory nor pids is usable ({})", reasons.join("; ")));
    }
    for reason in &reasons {
        tracing::debug!(reason = %reason, "a cgroup v1 controller is not used");
    }
    Ok(CgroupManager { version: Version::V1, parents })
}

fn probe_v1_controller(controller: Controller, mounts: &[CgroupMount], memberships: &[Membership]) -> Result<PathBuf, String> {
    let mount = mounts
        .iter()
        .find(|mount| !mount.unified && mount.controllers.iter().any(|name| name == controller.name()))
        .ok_or("not mounted")?;
    let own = own_cgroup_dir(mount, memberships).ok_or("the host is in no cgroup of this hierarchy")?;
    let parent = own.join(PARENT_NAME);
    create_parent(&parent)?;
    let control_file = match controller {
        Controller::Memory => "memory.limit_in_bytes",
        Controller::Pids => "pids.max",
        Controller::Cpu => "cpu.cfs_quota_us",
        Controller::Freezer => "freezer.state",
    };
    check_with_probe_cgroup(&parent, &[control_file, "cgroup.procs"])?;
    Ok(parent)
}

fn create_parent(parent: &Path) -> Result<(), String> {
    std::fs::create_dir_all(parent).map_err(|error| format!("cannot create {}: {error}", parent.display()))
}

/// Creates a child cgroup of `parent`, checks that `files` exist in it and removes it.
fn check_with_probe_cgroup(parent: &Path, files: &[&str]) -> Result<(), String> {
    let probe = parent.join(format!("probe-{}", std::process::id()));
    // A probe left by an earlier process with the same pid is empty and can go.
    let _ = std::fs::remove_dir(&probe);
    std::fs::create_dir(&probe).map_err(|error| format!("cannot create cgroup {}: {error}", probe.display()))?;
    let missing = files.iter().find(|file| !probe.join(file).exists());
    let _ = std::fs::remove_dir(&probe);
    match missing {
        Some(file) => Err(format!("cgroup {} has no {file}", probe.display())),
        None => Ok(()),
    }
}
