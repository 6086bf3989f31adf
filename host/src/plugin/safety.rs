//! Checks that make loading a plugin file safe enough: loading a library runs its code, so the
//! file and its folder must not be writable by anyone but root or the user running the host.

use sha2::{Digest, Sha256};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Permission bits: written by group, written by others, sticky.
const GROUP_WRITE: u32 = 0o020;
const OTHER_WRITE: u32 = 0o002;
const STICKY: u32 = 0o1000;

/// Checks the owner and mode of a plugin file and of every folder above it. Returns why the file
/// must not be loaded, with the command that fixes it.
pub fn check_permissions(path: &Path) -> Result<(), String> {
    let file = std::fs::metadata(path).map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    let me = unsafe { libc::geteuid() };
    check_owner(path, file.uid(), me)?;
    if file.mode() & (GROUP_WRITE | OTHER_WRITE) != 0 {
        return Err(format!(
            "{} is writable by group or others (mode {:o}), so anyone could replace the code the host runs; fix it with `chmod go-w {}`",
            path.display(),
            file.mode() & 0o7777,
            path.display()
        ));
    }

    // Every folder above the file: whoever can rename one of them can swap the file.
    for folder in path.ancestors().skip(1).filter(|folder| !folder.as_os_str().is_empty()) {
        check_folder(folder, me)?;
    }
    Ok(())
}

/// Checks one folder above a plugin file: owned by root or the current user, and writable by
/// nobody else unless it is a sticky folder owned by root (such as `/tmp`), where only owners can
/// rename or remove entries.
fn check_folder(folder: &Path, me: u32) -> Result<(), String> {
    let folder_meta = std::fs::metadata(folder).map_err(|error| format!("cannot read folder {}: {error}", folder.display()))?;
    let sticky_root_folder = folder_meta.mode() & STICKY != 0 && folder_meta.uid() == 0;
    if folder_meta.mode() & (GROUP_WRITE | OTHER_WRITE) != 0 && !sticky_root_folder {
        return Err(format!(
            "folder {} is writable by group or others (mode {:o}), so anyone could swap the plugin file; fix it with `chmod go-w {}`",
            folder.display(),
            folder_meta.mode() & 0o7777,
            folder.display()
        ));
    }
    check_owner(folder, folder_meta.uid(), me)
}

fn check_owner(path: &Path, owner: u32, me: u32) -> Result<(), String> {
    if owner == 0 || owner == me {
        return Ok(());
    }
    Err(format!(
        "{} is owned by user id {owner}, neither root nor the user running tower-host ({me}); fix it with `chown {me} {}`",
        path.display(),
        path.display()
    ))
}

/// Returns the lowercase hex sha256 of a file.
pub fn sha256_of(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn set_mode(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn private_file_in_private_folder_passes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("libtower_plugin_x.so");
        std::fs::write(&file, b"x").unwrap();
        set_mode(dir.path(), 0o755);
        set_mode(&file, 0o644);
        assert_eq!(check_permissions(&file), Ok(()));
    }

    #[test]
    fn world_writable_file_is_rejected_with_fix() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("libtower_plugin_x.so");
        std::fs::write(&file, b"x").unwrap();
        set_mode(dir.path(), 0o755);
        set_mode(&file, 0o666);
        let reason = check_permissions(&file).unwrap_err();
        assert!(reason.contains("writable by group or others"), "{reason}");
        assert!(reason.contains("chmod go-w"), "{reason}");
    }

    #[test]
    fn group_writable_folder_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("libtower_plugin_x.so");
        std::fs::write(&file, b"x").unwrap();
        set_mode(&file, 0o644);
        set_mode(dir.path(), 0o775);
        let reason = check_permissions(&file).unwrap_err();
        assert!(reason.starts_with("folder "), "{reason}");
    }

    #[test]
    fn sticky_root_folder_is_accepted() {
        // /tmp is owned by root, world-writable and sticky on every Linux system.
        let meta = std::fs::metadata("/tmp").unwrap();
        if meta.uid() != 0 || meta.mode() & STICKY == 0 {
            eprintln!("skipped: /tmp is not a sticky folder owned by root on this machine");
            return;
        }
        let file = tempfile::Builder::new().prefix("libtower_plugin_").tempfile_in("/tmp").unwrap();
        set_mode(file.path(), 0o644);
        assert_eq!(check_permissions(file.path()), Ok(()));
    }

    #[test]
    fn writable_ancestor_folder_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("plugins");
        std::fs::create_dir(&nested).unwrap();
        let file = nested.join("libtower_plugin_x.so");
        std::fs::write(&file, b"x").unwrap();
        set_mode(&file, 0o644);
        set_mode(&nested, 0o755);
        set_mode(dir.path(), 0o777);
        let reason = check_permissions(&file).unwrap_err();
        assert!(reason.starts_with(&format!("folder {} is writable", dir.path().display())), "{reason}");
    }

    #[test]
    fn file_owned_by_another_user_is_rejected() {
        assert!(check_owner(Path::new("/x"), 0, 1000).is_ok());
        assert!(check_owner(Path::new("/x"), 1000, 1000).is_ok());
        let reason = check_owner(Path::new("/x"), 1234, 1000).unwrap_err();
        assert!(reason.contains("user id 1234"), "{reason}");
    }

    #[test]
    fn sha256_of_known_content() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"abc").unwrap();
        assert_eq!(sha256_of(&file).unwrap(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
