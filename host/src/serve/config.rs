//! `[serve]`: where `tower-host serve` listens, where it keeps its journal, and its limits.

use serde::{Deserialize, Deserializer};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Tower's own limit on the size of a package: 50 MiB.
pub const DEFAULT_MAX_PACKAGE_BYTES: u64 = tower_package::MAX_PACKAGE_BYTES;
/// Default limit on a JSON request body, and on the `spec` part of an upload: 1 MiB.
pub const DEFAULT_MAX_SPEC_BYTES: u64 = 1024 * 1024;
/// Default limit on the request line and headers of one request: 16 KiB.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 16 * 1024;
/// hyper's smallest accepted read buffer, which bounds the request line and headers.
pub const MIN_MAX_HEADER_BYTES: usize = 8 * 1024;
/// Default number of connections served at once; further clients wait in the listen backlog.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Default number of executions handed to the backend at once.
pub const DEFAULT_MAX_RUNNING: u32 = 64;
/// Default number of executions waiting for a slot when `when_full = "queue"`.
pub const DEFAULT_MAX_QUEUED: u32 = 1024;
/// Default time finished executions and their logs are kept.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);
/// Default grace period of `terminate` requests without one, and of the host-enforced timeout.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);
/// Default grace period when the shutdown policy terminates running executions.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Name of the socket file inside the state folder when `socket` is not set.
pub const DEFAULT_SOCKET_NAME: &str = "serve.sock";
/// Name of the state folder under `$XDG_STATE_HOME` (or `~/.local/state`) when `state_dir` is not set.
const DEFAULT_STATE_DIR_NAME: &str = "tower-host";

/// `[serve]`: the runner-facing HTTP API of `tower-host serve`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeConfig {
    /// Folder of the journal (`executions/`), staged uploads and the default socket.
    pub state_dir: Option<PathBuf>,
    /// Unix socket to listen on. Default: `<state_dir>/serve.sock`. Ignored when `tcp` is set.
    pub socket: Option<PathBuf>,
    /// TCP address to listen on instead of the socket, such as `127.0.0.1:8080`.
    pub tcp: Option<SocketAddr>,
    /// File with the bearer token every TCP request must carry. Required with `tcp`.
    pub token_file: Option<PathBuf>,
    /// Maximum size of an uploaded package in bytes.
    pub max_package_bytes: u64,
    /// Maximum size of a JSON request body, and of the `spec` part of an upload, in bytes.
    pub max_spec_bytes: u64,
    /// Maximum size of a request's line and headers in bytes; at least 8192.
    pub max_header_bytes: usize,
    /// Maximum number of connections served at once.
    pub max_connections: usize,
    /// Maximum number of executions handed to the backend and not yet ended.
    pub max_running: u32,
    /// Create behaviour at the `max_running` cap: wait in a queue, or fail with 429.
    pub when_full: WhenFull,
    /// Maximum number of queued executions; a create beyond it fails with 429.
    pub max_queued: u32,
    /// How long finished executions and their logs are kept.
    #[serde(deserialize_with = "duration")]
    pub retention: Duration,
    /// Shutdown policy for running executions on SIGTERM or SIGINT.
    pub shutdown: ShutdownPolicy,
    /// Grace period when the shutdown policy terminates executions.
    #[serde(deserialize_with = "duration")]
    pub shutdown_grace: Duration,
    /// Grace period of `terminate` requests that name none, and of the host-enforced timeout.
    #[serde(deserialize_with = "duration")]
    pub stop_grace: Duration,
    /// Maximum size of one execution's `logs.ndjson` in bytes; further output is dropped.
    /// Default: no limit.
    pub max_log_bytes: Option<u64>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            state_dir: None,
            socket: None,
            tcp: None,
            token_file: None,
            max_package_bytes: DEFAULT_MAX_PACKAGE_BYTES,
            max_spec_bytes: DEFAULT_MAX_SPEC_BYTES,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_running: DEFAULT_MAX_RUNNING,
            when_full: WhenFull::Queue,
            max_queued: DEFAULT_MAX_QUEUED,
            retention: DEFAULT_RETENTION,
            shutdown: ShutdownPolicy::Terminate,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            stop_grace: DEFAULT_STOP_GRACE,
            max_log_bytes: None,
        }
    }
}

/// Create behaviour at the `max_running` cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// The execution waits, in `preparing` with phase `queued`, for a slot.
    Queue,
    /// The create fails with 429.
    Reject,
}

/// Shutdown policy for running executions when the host receives SIGTERM or SIGINT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShutdownPolicy {
    /// Wait until every execution has ended.
    Wait,
    /// Terminate every execution with `shutdown_grace`, then wait for their ends.
    Terminate,
    /// Leave executions running for the next host process to recover.
    LeaveRunning,
}

impl ShutdownPolicy {
    /// Returns the name used in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            ShutdownPolicy::Wait => "wait",
            ShutdownPolicy::Terminate => "terminate",
            ShutdownPolicy::LeaveRunning => "leave_running",
        }
    }
}

fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    humantime::parse_duration(&text)
        .map_err(|error| serde::de::Error::custom(format!("invalid duration `{text}` ({error}); use a form such as 30s, 5m or 24h")))
}

impl ServeConfig {
    /// Checks the values that serde cannot check alone; returns the problem, naming the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.tcp.is_some() && self.token_file.is_none() {
            return Err("`serve.tcp` is set but `serve.token_file` is not: a TCP listener needs a bearer token file".to_string());
        }
        if self.tcp.is_some() && self.socket.is_some() {
            return Err("set either `serve.socket` or `serve.tcp`, not both".to_string());
        }
        if self.max_running == 0 {
            return Err("`serve.max_running` must be at least 1".to_string());
        }
        if self.max_header_bytes < MIN_MAX_HEADER_BYTES {
            return Err(format!("`serve.max_header_bytes` must be at least {MIN_MAX_HEADER_BYTES}, got {}", self.max_header_bytes));
        }
        if self.max_log_bytes == Some(0) {
            return Err("`serve.max_log_bytes` must be at least 1; leave it out for no limit".to_string());
        }
        if self.max_package_bytes == 0 || self.max_spec_bytes == 0 || self.max_connections == 0 {
            return Err("`serve.max_package_bytes`, `serve.max_spec_bytes` and `serve.max_connections` must be at least 1".to_string());
        }
        Ok(())
    }

    /// Resolves relative paths against `base`, the config file's folder.
    pub fn resolve_paths(&mut self, base: &Path) {
        for path in [&mut self.state_dir, &mut self.socket, &mut self.token_file].into_iter().flatten() {
            *path = base.join(&*path);
        }
    }

    /// Returns the state folder: `state_dir`, else `$XDG_STATE_HOME/tower-host`, else
    /// `$HOME/.local/state/tower-host`.
    pub fn state_dir(&self) -> Result<PathBuf, String> {
        if let Some(dir) = &self.state_dir {
            return Ok(dir.clone());
        }
        let from_env = |name: &str| std::env::var_os(name).filter(|value| !value.is_empty()).map(PathBuf::from);
        if let Some(state_home) = from_env("XDG_STATE_HOME") {
            return Ok(state_home.join(DEFAULT_STATE_DIR_NAME));
        }
        if let Some(home) = from_env("HOME") {
            return Ok(home.join(".local/state").join(DEFAULT_STATE_DIR_NAME));
        }
        Err("set `serve.state_dir`: neither XDG_STATE_HOME nor HOME is set".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ServeConfig, String> {
        let config: ServeConfig = toml::from_str(text).map_err(|error| error.to_string())?;
        config.validate()?;
        Ok(config)
    }

    #[test]
    fn defaults_apply_to_empty_section() {
        let config = parse("").unwrap();
        assert_eq!(config.max_package_bytes, 50 * 1024 * 1024);
        assert_eq!(config.when_full, WhenFull::Queue);
        assert_eq!(config.shutdown, ShutdownPolicy::Terminate);
        assert_eq!(config.retention, Duration::from_secs(86_400));
    }

    #[test]
    fn tcp_without_token_file_is_rejected() {
        let error = parse("tcp = \"127.0.0.1:8080\"\n").unwrap_err();
        assert!(error.contains("serve.token_file"), "{error}");
    }

    #[test]
    fn durations_and_policies_parse() {
        let config = parse("retention = \"90s\"\nshutdown = \"leave_running\"\nwhen_full = \"reject\"\n").unwrap();
        assert_eq!(config.retention, Duration::from_secs(90));
        assert_eq!(config.shutdown, ShutdownPolicy::LeaveRunning);
        assert_eq!(config.when_full, WhenFull::Reject);
    }

    #[test]
    fn bad_duration_names_the_value() {
        let error = parse("retention = \"soon\"\n").unwrap_err();
        assert!(error.contains("invalid duration `soon`"), "{error}");
    }

    #[test]
    fn log_limit_parses_and_rejects_zero() {
        assert_eq!(parse("").unwrap().max_log_bytes, None);
        assert_eq!(parse("max_log_bytes = 1048576\n").unwrap().max_log_bytes, Some(1_048_576));
        let error = parse("max_log_bytes = 0\n").unwrap_err();
        assert!(error.contains("serve.max_log_bytes"), "{error}");
    }

    #[test]
    fn small_header_limit_is_rejected() {
        let error = parse("max_header_bytes = 100\n").unwrap_err();
        assert!(error.contains("at least 8192"), "{error}");
    }
}
