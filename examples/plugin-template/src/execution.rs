//! The execution handle and the state it shares with the task that drives the execution.

use crate::sandbox;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::watch;
use tower_plugin_api::sdk::Execution;
use tower_plugin_api::{ExecutionStatus, PluginError};

/// Why the execution was stopped before it ended on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// `terminate` or `kill` was called.
    Cancelled,
    /// `limits.timeout_seconds` ran out.
    TimedOut,
}

/// State shared by the handle and the driver task.
#[derive(Debug)]
pub struct Control {
    state: Mutex<ControlState>,
    /// Becomes `true` once the terminal status went out and nothing of the execution runs. A
    /// dropped sender (the driver task died) counts as ended too.
    ended: watch::Receiver<bool>,
}

/// The fields behind [`Control`]'s lock.
#[derive(Debug)]
pub struct ControlState {
    /// The latest status, stored before it is delivered.
    pub status: ExecutionStatus,
    /// Set by the first stop request; the driver starts no further step once it is set.
    pub stop: Option<StopReason>,
    /// Whether SIGKILL was needed.
    pub forced: bool,
    /// PIDs of the running sandbox: the `bwrap` process, and its init once found.
    pub sandbox: Option<(u32, Option<u32>)>,
}

impl Control {
    /// Creates the shared state and the sender the driver marks the end with.
    pub fn new(status: ExecutionStatus) -> (Arc<Self>, watch::Sender<bool>) {
        let (sender, ended) = watch::channel(false);
        let state = ControlState { status, stop: None, forced: false, sandbox: None };
        (Arc::new(Self { state: Mutex::new(state), ended }), sender)
    }

    /// Locks the shared fields.
    pub fn lock(&self) -> MutexGuard<'_, ControlState> {
        // Every update under the lock is a plain assignment, so a poisoned lock holds valid data.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn has_ended(&self) -> bool {
        self.ended.has_changed().is_err() || *self.ended.borrow()
    }

    /// Waits up to `limit` (forever when `None`) for the end; returns whether it came.
    async fn wait_end(&self, limit: Option<Duration>) -> bool {
        let mut ended = self.ended.clone();
        let wait = async move { ended.wait_for(|done| *done).await.map(|_| ()).unwrap_or(()) };
        match limit {
            Some(limit) => tokio::time::timeout(limit, wait).await.is_ok(),
            None => {
                wait.await;
                true
            }
        }
    }

    /// Stops the execution for `reason`: SIGTERM to the app, up to `grace` for it to end, then
    /// SIGKILL to the whole sandbox. Returns once the execution ended.
    pub async fn stop(&self, reason: StopReason, grace: Duration) {
        if self.has_ended() {
            return;
        }
        let init = {
            let mut state = self.lock();
            state.stop.get_or_insert(reason);
            state.sandbox.and_then(|(_, init)| init)
        };
        if let Some(init) = init {
            sandbox::terminate_app(init);
        }
        if self.wait_end(Some(grace)).await {
            return;
        }
        self.force();
        self.wait_end(None).await;
    }

    /// Sends SIGKILL to the running sandbox, if any, and records that the stop was forced.
    pub fn force(&self) {
        let mut state = self.lock();
        state.forced = true;
        match state.sandbox {
            Some((_, Some(init))) => sandbox::kill_init(init),
            Some((bwrap, None)) => sandbox::kill_bwrap(bwrap),
            None => {}
        }
    }
}

/// The handle of one execution, which the host keeps until after `cleanup`.
#[derive(Debug)]
pub struct BubblewrapExecution {
    pub(crate) control: Arc<Control>,
    pub(crate) folder: PathBuf,
}

impl Execution for BubblewrapExecution {
    async fn status(&self) -> Result<ExecutionStatus, PluginError> {
        Ok(self.control.lock().status.clone())
    }

    async fn terminate(&self, grace: Duration) -> Result<(), PluginError> {
        self.control.stop(StopReason::Cancelled, grace).await;
        Ok(())
    }

    async fn kill(&self) -> Result<(), PluginError> {
        if !self.control.has_ended() {
            self.control.lock().stop.get_or_insert(StopReason::Cancelled);
            self.control.force();
            self.control.wait_end(None).await;
        }
        Ok(())
    }

    async fn cleanup(&self) -> Result<(), PluginError> {
        if !self.control.has_ended() {
            return Err(PluginError::invalid_spec(format!(
                "cannot clean up {}: the execution has not ended; terminate it first",
                self.folder.display()
            )));
        }
        match tokio::fs::remove_dir_all(&self.folder).await {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(PluginError::internal(format!("failed to remove {}: {error}", self.folder.display()))),
        }
    }
}
