//! Support for the benchmarks of this crate: its sample apps under `apps/`, packed the way the
//! Tower CLI packs them, and the built host artifacts (through `tower-host-tests`).

use std::path::{Path, PathBuf};

/// A packed app: the archive, its sha256, and the temp folder that contains it.
pub struct PackedApp {
    /// The `.tar.gz` file.
    pub archive: PathBuf,
    /// Lowercase hex sha256 of the archive.
    pub sha256: String,
    _dir: tempfile::TempDir,
}

/// Returns the folder of a sample app of this crate, such as `noop` or `log-flood`.
pub fn app_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("apps").join(name)
}

/// Packs an app folder (with a Towerfile) into an archive in a new temp folder.
pub fn pack_app(app: &Path) -> PackedApp {
    let dir = tempfile::tempdir().expect("temp folder for the package");
    let archive = dir.path().join("package.tar.gz");
    tower_package::pack_dir(app, &archive).unwrap_or_else(|error| panic!("failed to pack {}: {error}", app.display()));
    let sha256 = tower_package::sha256_file(&archive).expect("hash the package");
    PackedApp { archive, sha256, _dir: dir }
}

/// Writes a bash app whose `main.sh` is `script` into a new temp folder and returns the folder.
pub fn bash_app(name: &str, script: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp folder for the app");
    let towerfile = format!("[app]\nname = {name:?}\nscript = \"./main.sh\"\n");
    std::fs::write(dir.path().join("Towerfile"), towerfile).expect("write Towerfile");
    std::fs::write(dir.path().join("main.sh"), script).expect("write main.sh");
    dir
}
