//! The small Tower apps the checks run, packed with `tower_package::pack_dir`.
//!
//! Every app gets two environment variables from the kit: `TOWER_CONFORMANCE_DIR`, a folder the
//! kit reads on this machine, and `TOWER_CONFORMANCE_TOKEN`, unique per execution. Apps that
//! report their processes write `<dir>/<token>.pids`, one `ROLE PID` pair a line.

use std::path::Path;
use tower_plugin_api::{PackageRef, PackageSource};

/// The line apps print once their PID file is complete and they wait to be stopped.
pub const READY_LINE: &str = "conformance-ready";

/// Writes the app folder and packs it into `out_dir`; returns the package reference.
fn pack(app_dir: &Path, out_dir: &Path, name: &str) -> Result<PackageRef, String> {
    let archive = out_dir.join(format!("{name}.tar.gz"));
    tower_package::pack_dir(app_dir, &archive).map_err(|error| format!("failed to pack app `{name}`: {error}"))?;
    let sha256 = tower_package::sha256_file(&archive).map_err(|error| format!("failed to hash {}: {error}", archive.display()))?;
    Ok(PackageSource::file(archive.display().to_string(), sha256))
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|error| format!("failed to write {}: {error}", path.display()))
}

/// Packs a bash app whose `main.sh` is `script`.
pub fn bash(out_dir: &Path, name: &str, script: &str) -> Result<PackageRef, String> {
    let app = tempfile::tempdir().map_err(|error| format!("failed to create a temp folder: {error}"))?;
    write(&app.path().join("Towerfile"), &format!("[app]\nname = \"{name}\"\nscript = \"./main.sh\"\n"))?;
    write(&app.path().join("main.sh"), script)?;
    pack(app.path(), out_dir, name)
}

/// Packs a Python app: `main.py` and the extra files given as `(relative path, content)`.
pub fn python(out_dir: &Path, name: &str, main: &str, files: &[(&str, &str)]) -> Result<PackageRef, String> {
    let app = tempfile::tempdir().map_err(|error| format!("failed to create a temp folder: {error}"))?;
    write(&app.path().join("Towerfile"), &format!("[app]\nname = \"{name}\"\nscript = \"./main.py\"\n"))?;
    write(&app.path().join("main.py"), main)?;
    for (relative, content) in files {
        write(&app.path().join(relative), content)?;
    }
    pack(app.path(), out_dir, name)
}

/// Packs a bash app that records its PID and a grandchild's, prints the ready line and waits.
/// With `ignore_term`, the app itself ignores SIGTERM so that only a forced stop ends it.
pub fn waiting_bash(out_dir: &Path, name: &str, ignore_term: bool) -> Result<PackageRef, String> {
    let trap = if ignore_term { "trap '' TERM\n" } else { "" };
    let script = format!(
        "{trap}pids=\"$TOWER_CONFORMANCE_DIR/$TOWER_CONFORMANCE_TOKEN.pids\"\n\
         sleep 300 &\n\
         echo \"grandchild $!\" > \"$pids.tmp\"\n\
         echo \"app $$\" >> \"$pids.tmp\"\n\
         mv \"$pids.tmp\" \"$pids\"\n\
         echo {READY_LINE}\n\
         while true; do wait; sleep 1; done\n"
    );
    bash(out_dir, name, &script)
}

/// The `pyproject.toml` of an app whose dependency cannot be installed from any index.
pub const MISSING_DEPENDENCY_PYPROJECT: &str = "[project]\nname = \"conformance-missing-dependency\"\nversion = \"0.1.0\"\n\
requires-python = \">=3.8\"\ndependencies = [\"tower-conformance-missing-package-5d1e7a==1.0.0\"]\n";

/// The `pyproject.toml` of an app whose own build takes two minutes: its in-tree build backend
/// needs no download, so setup stays in `uv sync` without network.
pub const SLOW_SETUP_PYPROJECT: &str = "[project]\nname = \"conformance-slow-setup\"\nversion = \"0.1.0\"\n\
requires-python = \">=3.8\"\n\n[build-system]\nrequires = []\nbuild-backend = \"slow_backend\"\nbackend-path = [\".\"]\n";

/// The in-tree build backend of [`SLOW_SETUP_PYPROJECT`]: records its PID, then sleeps.
pub const SLOW_SETUP_BACKEND: &str = r#"import os
import time


def _wait():
    folder = os.environ.get("TOWER_CONFORMANCE_DIR")
    token = os.environ.get("TOWER_CONFORMANCE_TOKEN")
    if folder and token:
        path = os.path.join(folder, token + ".pids")
        with open(path + ".tmp", "w") as file:
            file.write("setup %d\n" % os.getpid())
        os.rename(path + ".tmp", path)
    time.sleep(120)
    raise SystemExit("the conformance kit's slow build ended without being stopped")


def get_requires_for_build_wheel(config_settings=None):
    return []


def get_requires_for_build_editable(config_settings=None):
    return []


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    _wait()


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    _wait()
"#;
