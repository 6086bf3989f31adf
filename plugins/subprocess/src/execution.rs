//! The handle of one execution: status, terminate, kill, service endpoint and cleanup.

use crate::backend::run_blocking;
use crate::cleanup::remove_execution_dir;
use crate::report::StatusCell;
use crate::workload::{StopReason, Workload, WorkloadError};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tower_plugin_api::sdk::Execution;
use tower_plugin_api::{ErrorKind, ExecutionStatus, PluginError, ServiceEndpoint};

/// Extra time, beyond the drain timeout, that `cleanup` of a running execution waits for its
/// terminal status after killing it.
const CLEANUP_END_MARGIN: Duration = Duration::from_secs(15);

/// A handle to one execution. Only the task that drives the execution owns the event sink, so
/// the handle reads the status and stops or removes the execution but delivers no events.
pub struct SubprocessExecution {
    run_id: String,
    status: Arc<StatusCell>,
    workload: Arc<Workload>,
    execution_dir: PathBuf,
    endpoint: Option<ServiceEndpoint>,
    /// Becomes `true` once the terminal status was delivered.
    done: watch::Receiver<bool>,
    drain_timeout: Duration,
}

impl SubprocessExecution {
    /// Creates the handle.
    pub(crate) fn new(
        run_id: String,
        status: Arc<StatusCell>,
        workload: Arc<Workload>,
        execution_dir: PathBuf,
        endpoint: Option<ServiceEndpoint>,
        done: watch::Receiver<bool>,
        drain_timeout: Duration,
    ) -> Self {
        Self { run_id, status, workload, execution_dir, endpoint, done, drain_timeout }
    }

    /// Returns the execution folder.
    pub fn execution_dir(&self) -> &std::path::Path {
        &self.execution_dir
    }

    async fn stop(&self, grace: Duration) -> Result<(), PluginError> {
        tracing::info!(execution.id = %self.run_id, grace_millis = grace.as_millis() as u64, "stop requested");
        self.workload.stop(StopReason::Cancel, grace).await.map_err(|error| self.stop_error(error))
    }

    fn stop_error(&self, error: WorkloadError) -> PluginError {
        tracing::error!(execution.id = %self.run_id, %error, "failed to stop the execution");
        let kind = match error {
            WorkloadError::StillRunning => ErrorKind::TimedOut,
            _ => ErrorKind::Internal,
        };
        PluginError::new(kind, format!("failed to stop execution `{}`: {error}", self.run_id))
    }

    /// Waits up to `timeout` for the terminal status. Returns whether it was delivered; a driver
    /// that died counts as ended.
    async fn wait_for_end(&self, timeout: Duration) -> bool {
        let mut done = self.done.clone();
        let waited = tokio::time::timeout(timeout, done.wait_for(|ended| *ended)).await;
        waited.is_ok()
    }
}

impl Execution for SubprocessExecution {
    async fn status(&self) -> Result<ExecutionStatus, PluginError> {
        Ok(self.status.get())
    }

    async fn terminate(&self, grace: Duration) -> Result<(), PluginError> {
        self.stop(grace).await
    }

    async fn kill(&self) -> Result<(), PluginError> {
        self.stop(Duration::ZERO).await
    }

    fn service_endpoint(&self) -> Result<Option<ServiceEndpoint>, PluginError> {
        Ok(self.endpoint.clone())
    }

    /// Removes the cgroup and the execution folder (package, virtual environment, private uv
    /// cache). An execution that has not ended is killed first.
    async fn cleanup(&self) -> Result<(), PluginError> {
        if !*self.done.borrow() {
            self.kill().await?;
            if !self.wait_for_end(self.drain_timeout + CLEANUP_END_MARGIN).await {
                tracing::warn!(execution.id = %self.run_id, "the execution did not report its end after being killed; removing its files anyway");
            }
        }

        if let Some(cgroup) = self.workload.cgroup().cloned() {
            run_blocking(move || cgroup.remove())
                .await?
                .map_err(|error| PluginError::internal(format!("failed to clean up execution `{}`: {error}", self.run_id)))?;
        }
        let dir = self.execution_dir.clone();
        run_blocking(move || remove_execution_dir(&dir)).await?.map_err(|error| {
            PluginError::internal(format!(
                "failed to clean up execution `{}`: cannot remove {}: {error}",
                self.run_id,
                self.execution_dir.display()
            ))
        })?;
        tracing::info!(execution.id = %self.run_id, "execution cleaned up");
        Ok(())
    }
}
