//! The state that every part of the server shares.

use super::capacity::Capacity;
use super::config::ServeConfig;
use super::journal::{EXECUTIONS_DIR, UPLOADS_DIR};
use super::metrics::Metrics;
use super::registry::Registry;
use crate::plugin::Backend;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::watch;
use tower_plugin_api::Capabilities;

/// The shared state of `tower-host serve`.
pub struct ServeContext {
    /// `[serve]`.
    pub config: ServeConfig,
    /// The state folder, absolute.
    pub state_dir: PathBuf,
    /// The backend.
    pub backend: Backend,
    /// The backend's capabilities, read at start.
    pub capabilities: Capabilities,
    /// The executions.
    pub registry: Registry,
    /// The cap on running executions.
    pub capacity: Capacity,
    /// The metrics.
    pub metrics: Metrics,
    accepting: AtomicBool,
    /// Set to `true` when open log and event streams must end, at shutdown.
    shutdown: watch::Sender<bool>,
}

impl ServeContext {
    /// Creates the context.
    pub fn new(config: ServeConfig, state_dir: PathBuf, backend: Backend, capabilities: Capabilities) -> Self {
        let capacity = Capacity::new(config.max_running as usize);
        Self {
            config,
            state_dir,
            backend,
            capabilities,
            registry: Registry::default(),
            capacity,
            metrics: Metrics::new(),
            accepting: AtomicBool::new(true),
            shutdown: watch::channel(false).0,
        }
    }

    /// Returns the folder of the execution folders.
    pub fn executions_dir(&self) -> PathBuf {
        self.state_dir.join(EXECUTIONS_DIR)
    }

    /// Returns the folder of uploads in progress.
    pub fn uploads_dir(&self) -> PathBuf {
        self.state_dir.join(UPLOADS_DIR)
    }

    /// Returns the folder of one execution.
    pub fn execution_dir(&self, id: &str) -> PathBuf {
        self.executions_dir().join(Path::new(id))
    }

    /// Tells whether creates are accepted.
    pub fn accepting(&self) -> bool {
        self.accepting.load(Ordering::SeqCst)
    }

    /// Stops accepting creates.
    pub fn stop_accepting(&self) {
        self.accepting.store(false, Ordering::SeqCst);
    }

    /// Ends every open stream.
    pub fn end_streams(&self) {
        self.shutdown.send_replace(true);
    }

    /// Subscribes to the end of streams.
    pub fn streams_ending(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }
}
