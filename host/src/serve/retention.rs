//! Removing finished executions: on `DELETE`, and by the retention sweep once they are older
//! than `serve.retention`.

use super::context::ServeContext;
use super::journal::JournalError;
use super::registry::Entry;
use crate::plugin::backend::PluginCallError;
use std::sync::Arc;
use std::time::Duration;
use tower_plugin_api::Timestamp;

/// Maximum time between two retention sweeps.
const MAX_SWEEP_INTERVAL: Duration = Duration::from_secs(60);
/// Minimum time between two retention sweeps.
const MIN_SWEEP_INTERVAL: Duration = Duration::from_millis(200);

/// Reason an execution was not removed.
#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    /// It has not ended.
    #[error("the execution has not ended")]
    NotFinished,
    /// The backend's cleanup failed.
    #[error(transparent)]
    Cleanup(PluginCallError),
    /// Its folder could not be removed.
    #[error(transparent)]
    Journal(JournalError),
}

/// Cleans a finished execution up on the backend (when this host process has its handle and
/// has not cleaned it up yet), then forgets it and removes its folder. Open streams keep
/// reading the removed files until they end.
pub async fn remove(ctx: &ServeContext, entry: &Arc<Entry>) -> Result<(), RemoveError> {
    if !entry.is_finished() {
        return Err(RemoveError::NotFinished);
    }
    if !entry.state().stored.cleaned_up {
        match entry.handle() {
            Some(handle) => {
                handle.cleanup().await.map_err(RemoveError::Cleanup)?;
                entry.update(|state| state.stored.cleaned_up = true);
            }
            None => {
                // NOTE: the handle of an execution that ended in an earlier host process is gone.
                // So the backend's own resources for it are left to the backend.
                tracing::debug!(parent: &entry.span, "no backend handle in this host process; skipping the backend's cleanup");
            }
        }
    }
    if ctx.registry.remove(&entry.id).is_none() {
        // A concurrent removal won.
        return Ok(());
    }
    ctx.metrics.transition(Some(entry.status().name()), None);
    let dir = entry.dir.clone();
    tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&dir).map_err(|source| JournalError::Io { action: "remove", path: dir, source }))
        .await
        .map_err(|error| RemoveError::Journal(JournalError::Task(error)))?
        .map_err(RemoveError::Journal)?;
    tracing::info!(parent: &entry.span, "execution removed");
    Ok(())
}

/// Removes finished executions older than the retention, forever; run it as a task.
pub async fn sweep_forever(ctx: Arc<ServeContext>) {
    let interval = (ctx.config.retention / 4).clamp(MIN_SWEEP_INTERVAL, MAX_SWEEP_INTERVAL);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        sweep(&ctx).await;
    }
}

async fn sweep(ctx: &ServeContext) {
    let retention_nanos = i64::try_from(ctx.config.retention.as_nanos()).unwrap_or(i64::MAX);
    let now = Timestamp::now();
    for entry in ctx.registry.list() {
        let Some(finished) = entry.state().stored.finished else { continue };
        if finished.at.unix_nanos.saturating_add(retention_nanos) > now.unix_nanos {
            continue;
        }
        match remove(ctx, &entry).await {
            Ok(()) | Err(RemoveError::NotFinished) => {}
            Err(RemoveError::Cleanup(error)) => {
                // Without this, one execution whose cleanup keeps failing would stay forever.
                tracing::warn!(parent: &entry.span, %error, "backend cleanup failed at retention; removing the journal anyway");
                entry.update(|state| state.stored.cleaned_up = true);
                if let Err(error) = remove(ctx, &entry).await {
                    tracing::error!(parent: &entry.span, %error, "failed to remove an expired execution");
                }
            }
            Err(error) => tracing::error!(parent: &entry.span, %error, "failed to remove an expired execution"),
        }
    }
}
