//! The plugin's settings (`[backend.settings]`) and the checks of the work folder.

use schemars::JsonSchema;
use serde::Deserialize;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use tower_plugin_api::PluginError;

/// Settings of the bubblewrap backend. Every key is optional.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The bubblewrap program: a path, or a name looked up on `PATH`. Default: `bwrap`.
    #[serde(default = "default_bwrap")]
    pub bwrap: PathBuf,
    /// Folder that holds one folder per execution. Default: `$TMPDIR/tower-plugin-bubblewrap-<uid>`.
    /// It is created with mode 0700 and rejected when another user owns it or when group or
    /// others can write it.
    #[serde(default)]
    pub work_dir: Option<PathBuf>,
    /// Maximum bytes of one log record; a longer line arrives as several records flagged `SPLIT`.
    /// At least 4, so that every UTF-8 character fits. Default: 65536.
    #[serde(default = "default_max_line_bytes")]
    pub max_line_bytes: usize,
    /// uv, which sets up Python apps: a path, or a name looked up on `PATH`. Default: none, and
    /// Python apps then end as `failed` in setup.
    #[serde(default)]
    pub uv: Option<PathBuf>,
    /// Extra arguments for every uv command, such as `["--offline", "--find-links", "/srv/wheels"]`.
    /// Default: none.
    #[serde(default)]
    pub uv_args: Vec<String>,
    /// Host folders the app may write, bound read-write at the same path inside the sandbox.
    /// Each one widens what the app can change on the host. Default: none.
    #[serde(default)]
    pub writable_paths: Vec<PathBuf>,
}

fn default_bwrap() -> PathBuf {
    PathBuf::from("bwrap")
}

fn default_max_line_bytes() -> usize {
    64 * 1024
}

impl Settings {
    /// Returns the work folder, the configured one or the default.
    pub fn work_dir(&self) -> PathBuf {
        self.work_dir.clone().unwrap_or_else(|| {
            // SAFETY: geteuid has no preconditions and cannot fail.
            let uid = unsafe { libc::geteuid() };
            std::env::temp_dir().join(format!("tower-plugin-bubblewrap-{uid}"))
        })
    }

    /// Checks the values that serde cannot check.
    pub fn validate(&self) -> Result<(), PluginError> {
        if self.max_line_bytes < 4 {
            return Err(PluginError::invalid_config(format!(
                "invalid setting `max_line_bytes`: {} is below the minimum of 4 bytes",
                self.max_line_bytes
            )));
        }
        for path in &self.writable_paths {
            if !path.is_absolute() || !path.is_dir() {
                return Err(PluginError::invalid_config(format!(
                    "invalid setting `writable_paths`: {} is not an absolute path of an existing folder",
                    path.display()
                )));
            }
        }
        Ok(())
    }
}

/// Creates `dir` with mode 0700 when missing, then rejects it when it is not a real folder,
/// belongs to another user, or group or others can write it.
pub fn prepare_work_dir(dir: &Path) -> Result<(), PluginError> {
    let invalid = |reason: String| PluginError::invalid_config(format!("invalid setting `work_dir` {}: {reason}", dir.display()));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|error| invalid(format!("failed to create it: {error}")))?;
    let metadata = std::fs::symlink_metadata(dir).map_err(|error| invalid(format!("failed to read it: {error}")))?;
    if !metadata.is_dir() {
        return Err(invalid("it is not a folder (a symbolic link is not accepted)".to_string()));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    if metadata.uid() != uid {
        return Err(invalid(format!("it is owned by uid {}, not by this process's uid {uid}", metadata.uid())));
    }
    if metadata.mode() & 0o022 != 0 {
        return Err(invalid(format!("group or others can write it (mode {:o}); run `chmod go-w` on it", metadata.mode() & 0o7777)));
    }
    Ok(())
}
