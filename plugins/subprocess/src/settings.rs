//! Settings of the subprocess backend, read from `[backend.settings]`, and the folders derived
//! from them.

use schemars::JsonSchema;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tower_package::UnpackLimits;
use tower_plugin_api::PluginError;

/// Folder created under the system temporary folder when `work_dir` is not set.
const DEFAULT_WORK_DIR_NAME: &str = "tower-host-subprocess";

/// Default maximum size of one log record: 64 KiB.
const DEFAULT_MAX_LINE_BYTES: usize = 64 * 1024;

/// Smallest accepted `max_line_bytes`. A piece must hold the longest UTF-8 character (4 bytes),
/// so that splitting a long line at a character boundary always makes progress.
pub const MIN_MAX_LINE_BYTES: usize = 4;

/// Default time between SIGTERM and SIGKILL when a timeout stops an execution.
const DEFAULT_GRACE_SECONDS: u64 = 10;

/// Default time to wait for stdout and stderr to reach end of file after the program exited.
const DEFAULT_DRAIN_TIMEOUT_SECONDS: u64 = 5;

/// Host environment variables that reach apps by default.
const DEFAULT_ENV_ALLOWLIST: [&str; 6] = ["PATH", "HOME", "LANG", "LC_*", "TZ", "TMPDIR"];

/// Settings of the subprocess backend.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Folder that contains one folder per execution (`executions/`) and the caches (`cache/`).
    /// Default: `tower-host-subprocess-<uid>` under `$TMPDIR`, or under `/tmp` when `TMPDIR` is not
    /// set. The folder must be owned by the user running tower-host and writable by nobody else.
    pub work_dir: Option<PathBuf>,

    /// The uv binary: a path, or a name looked up on the host's `PATH`. Default: `uv`.
    pub uv: String,

    /// uv's cache folder, shared by the executions whose spec enables the cache. Executions with
    /// the cache disabled get a fresh cache inside their own folder. Default: `<work_dir>/cache/uv`.
    pub uv_cache_dir: Option<PathBuf>,

    /// Extra arguments appended to every uv command, for example
    /// `["--offline", "--find-links", "/srv/wheels"]` or `["--index-url", "https://…"]`.
    /// Default: none.
    pub uv_args: Vec<String>,

    /// Whether to install uv when it is not found, with
    /// `python3 -m pip install --target <work_dir>/cache/uv-install uv`. Default: `true`.
    pub install_uv: bool,

    /// The bash binary for apps whose script ends in `.sh`: a path, or a name looked up on the
    /// host's `PATH`. Default: `bash`.
    pub bash: String,

    /// Host environment variables passed to apps: exact names, or prefixes ending in `*`
    /// (`LC_*`). Nothing else of the host's environment reaches an app.
    /// Default: `["PATH", "HOME", "LANG", "LC_*", "TZ", "TMPDIR"]`.
    pub env_allowlist: Vec<String>,

    /// Maximum bytes of output in one log record; a longer line is split into records flagged
    /// `SPLIT`. An invalid UTF-8 byte counts once but becomes U+FFFD (3 bytes) in the record.
    /// Minimum 4. Default: 65536 (64 KiB).
    pub max_line_bytes: usize,

    /// Limits applied while unpacking a package.
    pub unpack: UnpackSettings,

    /// Maximum number of executions between `create` and their terminal status; `create` beyond
    /// it fails as unavailable. Default: no cap.
    pub max_concurrent_executions: Option<u32>,

    /// Seconds between SIGTERM and SIGKILL when `limits.timeout_seconds` stops an execution.
    /// Default: 10.
    pub default_grace_seconds: u64,

    /// Whether each execution gets its own cgroup: `auto` uses cgroups where the machine allows
    /// it, `off` never does. Default: `auto`.
    pub cgroups: CgroupMode,

    /// Seconds to wait, after the program exited and its remaining processes were killed, for
    /// stdout and stderr to reach end of file. A process outside the execution's process group
    /// and cgroup that keeps a pipe open is the only way to reach it. Default: 5.
    pub drain_timeout_seconds: u64,
}

/// Limits applied while unpacking a package; the defaults are those of `tower-package`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct UnpackSettings {
    /// Maximum total size of the unpacked files, in bytes. Default: 1073741824 (1 GiB).
    pub max_unpacked_bytes: u64,
    /// Maximum number of tar headers in a package. Default: 100000.
    pub max_entries: u64,
    /// Maximum length of an entry name or link target, in bytes. Default: 4096.
    pub max_path_len: usize,
}

/// Whether executions run in cgroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CgroupMode {
    /// Use cgroup v2 when its memory and pids controllers can be delegated, else cgroup v1, else
    /// none.
    Auto,
    /// Never use cgroups; memory falls back to `RLIMIT_AS`.
    Off,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            work_dir: None,
            uv: "uv".to_string(),
            uv_cache_dir: None,
            uv_args: Vec::new(),
            install_uv: true,
            bash: "bash".to_string(),
            env_allowlist: DEFAULT_ENV_ALLOWLIST.iter().map(|name| name.to_string()).collect(),
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
            unpack: UnpackSettings::default(),
            max_concurrent_executions: None,
            default_grace_seconds: DEFAULT_GRACE_SECONDS,
            cgroups: CgroupMode::Auto,
            drain_timeout_seconds: DEFAULT_DRAIN_TIMEOUT_SECONDS,
        }
    }
}

impl Default for UnpackSettings {
    fn default() -> Self {
        let limits = UnpackLimits::default();
        Self {
            max_unpacked_bytes: limits.max_unpacked_bytes,
            max_entries: limits.max_entries,
            max_path_len: limits.max_path_len,
        }
    }
}

impl UnpackSettings {
    /// Converts to the limits that `tower_package::unpack` takes.
    pub fn limits(&self) -> UnpackLimits {
        UnpackLimits {
            max_unpacked_bytes: self.max_unpacked_bytes,
            max_entries: self.max_entries,
            max_path_len: self.max_path_len,
        }
    }
}

impl Settings {
    /// Checks the values that deserialization cannot check, naming the setting that is wrong.
    pub fn validate(&self) -> Result<(), PluginError> {
        if self.max_line_bytes < MIN_MAX_LINE_BYTES {
            return Err(PluginError::invalid_config(format!(
                "invalid setting `max_line_bytes`: {} is below the minimum of {MIN_MAX_LINE_BYTES} bytes",
                self.max_line_bytes
            )));
        }
        if self.max_concurrent_executions == Some(0) {
            return Err(PluginError::invalid_config(
                "invalid setting `max_concurrent_executions`: 0 would reject every execution; remove the setting for no cap",
            ));
        }
        if self.uv.is_empty() {
            return Err(PluginError::invalid_config("invalid setting `uv`: the value is empty"));
        }
        if self.bash.is_empty() {
            return Err(PluginError::invalid_config("invalid setting `bash`: the value is empty"));
        }
        if let Some(pattern) = self.env_allowlist.iter().find(|pattern| pattern.is_empty() || pattern.as_str() == "*") {
            return Err(PluginError::invalid_config(format!(
                "invalid setting `env_allowlist`: pattern {pattern:?} would pass every host variable, secrets included; list names or prefixes such as `LC_*`"
            )));
        }
        Ok(())
    }

    /// Returns the time between SIGTERM and SIGKILL for a timeout stop.
    pub fn default_grace(&self) -> Duration {
        Duration::from_secs(self.default_grace_seconds)
    }

    /// Returns the time to wait for stdout and stderr to close after the program exited.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.drain_timeout_seconds)
    }

    /// Resolves the folders the backend uses.
    pub fn paths(&self) -> Paths {
        // The user id in the default name keeps users of one machine out of each other's folders.
        // SAFETY: geteuid has no preconditions and cannot fail.
        let uid = unsafe { libc::geteuid() };
        let work_dir = self.work_dir.clone().unwrap_or_else(|| std::env::temp_dir().join(format!("{DEFAULT_WORK_DIR_NAME}-{uid}")));
        let cache_dir = work_dir.join("cache");
        let uv_cache_dir = self.uv_cache_dir.clone().unwrap_or_else(|| cache_dir.join("uv"));
        Paths { executions_dir: work_dir.join("executions"), uv_cache_dir, cache_dir, work_dir }
    }
}

/// The folders of one backend instance.
#[derive(Debug, Clone)]
pub struct Paths {
    /// The `work_dir` setting, resolved.
    pub work_dir: PathBuf,
    /// One folder per execution.
    pub executions_dir: PathBuf,
    /// The plugin's cache folder: the uv cache (by default) and the uv installed by the plugin.
    pub cache_dir: PathBuf,
    /// uv's shared cache.
    pub uv_cache_dir: PathBuf,
}

impl Paths {
    /// Creates every folder that must exist before the first execution.
    pub fn create_all(&self) -> Result<(), PluginError> {
        for dir in [&self.work_dir, &self.executions_dir, &self.cache_dir, &self.uv_cache_dir] {
            create_dir(dir)?;
        }
        Ok(())
    }
}

/// Creates a folder (private to the current user when it is new) and checks that nobody else can
/// change it: the plugin unpacks packages and runs programs (uv) from these folders, so a folder
/// that another user owns or can write would let that user run code as the host's user.
fn create_dir(dir: &Path) -> Result<(), PluginError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|error| {
        PluginError::invalid_config(format!(
            "failed to create folder {}: {error}; set `work_dir` to a writable folder",
            dir.display()
        ))
    })?;
    let metadata = std::fs::metadata(dir)
        .map_err(|error| PluginError::invalid_config(format!("cannot read folder {}: {error}", dir.display())))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if metadata.uid() != me {
        return Err(PluginError::invalid_config(format!(
            "folder {} is owned by user id {}, not by the user running tower-host ({me}), who would run code from it; \
             set `work_dir` to a folder of your own, or `chown {me} {}`",
            dir.display(),
            metadata.uid(),
            dir.display()
        )));
    }
    if metadata.mode() & 0o022 != 0 {
        return Err(PluginError::invalid_config(format!(
            "folder {} is writable by group or others (mode {:o}), so they could change what the plugin runs; \
             fix it with `chmod go-w {}` or set `work_dir` to a private folder",
            dir.display(),
            metadata.mode() & 0o7777,
            dir.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower_plugin_api::sdk::parse_settings;

    #[test]
    fn empty_settings_use_defaults() {
        let settings: Settings = parse_settings("{}").unwrap();
        assert_eq!(settings.uv, "uv");
        assert_eq!(settings.bash, "bash");
        assert!(settings.install_uv);
        assert_eq!(settings.max_line_bytes, 64 * 1024);
        assert_eq!(settings.cgroups, CgroupMode::Auto);
        assert_eq!(settings.unpack.limits(), UnpackLimits::default());
        assert!(settings.env_allowlist.iter().any(|name| name == "LC_*"));
        settings.validate().unwrap();
    }

    #[test]
    fn unknown_nested_setting_is_named() {
        let error = parse_settings::<Settings>(r#"{"unpack":{"max_entris":3}}"#).unwrap_err();
        assert!(error.message.contains("unpack.max_entris"), "{error}");
    }

    #[test]
    fn work_dir_writable_by_others_is_rejected() {
        use std::os::unix::fs::PermissionsExt;
        let parent = tempfile::tempdir().unwrap();
        let shared = parent.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
        let error = create_dir(&shared).unwrap_err();
        assert!(error.message.contains("writable by group or others"), "{error}");
        assert!(error.message.contains("chmod go-w"), "{error}");
    }

    #[test]
    fn new_work_dir_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let parent = tempfile::tempdir().unwrap();
        let fresh = parent.path().join("a/b");
        create_dir(&fresh).unwrap();
        assert_eq!(std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777, 0o700);
    }

    #[test]
    fn cgroups_setting_reads_off() {
        let settings: Settings = parse_settings(r#"{"cgroups":"off"}"#).unwrap();
        assert_eq!(settings.cgroups, CgroupMode::Off);
    }

    #[test]
    fn tiny_max_line_bytes_is_rejected() {
        let settings: Settings = parse_settings(r#"{"max_line_bytes":3}"#).unwrap();
        let error = settings.validate().unwrap_err();
        assert!(error.message.contains("max_line_bytes"), "{error}");
    }

    #[test]
    fn allowlist_star_is_rejected() {
        let settings: Settings = parse_settings(r#"{"env_allowlist":["PATH","*"]}"#).unwrap();
        let error = settings.validate().unwrap_err();
        assert!(error.message.contains("env_allowlist"), "{error}");
    }

    #[test]
    fn paths_derive_from_work_dir() {
        let settings: Settings = parse_settings(r#"{"work_dir":"/srv/w"}"#).unwrap();
        let paths = settings.paths();
        assert_eq!(paths.executions_dir, Path::new("/srv/w/executions"));
        assert_eq!(paths.uv_cache_dir, Path::new("/srv/w/cache/uv"));
    }
}
