//! Startup: reloads the journal, then reattaches to every execution an earlier host process left
//! unfinished. The ones the backend cannot recover end as `lost`; their logs stay readable, and
//! new records continue the journalled numbering.

use super::context::ServeContext;
use super::journal::{
    self, EventRecord, FinishedInfo, JournalError, Phase, RecordLog, StoredExecution, EVENTS_FILE, LOGS_FILE,
};
use super::registry::{Entry, EntryState};
use super::supervisor::{self, Pump};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tower_plugin_api::{ExecutionState, ExecutionStatus, SetupPhaseKind, Timestamp};

/// Summary of the journal at startup.
#[derive(Debug, Default, Clone, Copy)]
pub struct LoadReport {
    /// Finished executions, kept for their retention.
    pub finished: usize,
    /// Unfinished executions handed to the backend's `recover`.
    pub reattaching: usize,
    /// Queued executions that never reached the backend; they end as failed.
    pub unsubmitted: usize,
    /// Folders that could not be read; left in place.
    pub unreadable: usize,
}

/// An execution folder as read from the disk.
struct LoadedExecution {
    dir: PathBuf,
    stored: StoredExecution,
    logs: Arc<RecordLog>,
    events: Arc<RecordLog>,
    status: ExecutionStatus,
    updated_at: Timestamp,
    running_since: Option<Timestamp>,
}

/// Prepares the state folder, loads every execution folder into the registry and starts the
/// supervisors of unfinished executions.
pub async fn load(ctx: &Arc<ServeContext>) -> Result<LoadReport, JournalError> {
    let executions_dir = ctx.executions_dir();
    let uploads_dir = ctx.uploads_dir();
    let loaded = tokio::task::spawn_blocking(move || read_all(&executions_dir, &uploads_dir)).await??;

    let mut report = LoadReport::default();
    for result in loaded {
        let loaded = match result {
            Ok(loaded) => loaded,
            Err(error) => {
                report.unreadable += 1;
                tracing::error!(%error, "skipping an execution folder that cannot be read; fix or remove it");
                continue;
            }
        };
        let id = loaded.stored.id.clone();
        let span = tracing::info_span!(
            "execution",
            execution.id = %id,
            backend = %ctx.capabilities.backend,
            plugin = %ctx.backend.plugin().name
        );
        let phase = loaded.stored.phase;
        let timeout = loaded.stored.spec.pointer("/limits/timeout_seconds").and_then(|value| value.as_u64()).map(Duration::from_secs);
        let state = EntryState { stored: loaded.stored, status: loaded.status, updated_at: loaded.updated_at };
        let state_name = state.status.name();
        let entry = Arc::new(Entry::new(
            ctx.registry.next_order(),
            loaded.dir,
            Arc::clone(&loaded.logs),
            Arc::clone(&loaded.events),
            state,
            span,
        ));
        ctx.registry.insert(Arc::clone(&entry));
        ctx.metrics.transition(None, Some(state_name));
        if phase == Phase::Finished {
            report.finished += 1;
            continue;
        }

        let writers = loaded.logs.writer().and_then(|logs| Ok((logs, loaded.events.writer()?)));
        let (logs, events) = match writers {
            Ok(writers) => writers,
            Err(error) => {
                tracing::error!(parent: &entry.span, %error, "cannot append to the journal of an unfinished execution; leaving it as it is");
                continue;
            }
        };
        let pump = Pump::new(Arc::clone(ctx), Arc::clone(&entry), logs, events);
        if phase == Phase::Queued {
            report.unsubmitted += 1;
            supervisor::spawn_unsubmitted(pump);
        } else {
            report.reattaching += 1;
            supervisor::spawn_recovered(pump, timeout, loaded.running_since);
        }
    }
    Ok(report)
}

/// Creates the state folders, empties `uploads/`, and reads every execution folder in creation
/// order (blocking).
fn read_all(executions_dir: &Path, uploads_dir: &Path) -> Result<Vec<Result<LoadedExecution, JournalError>>, JournalError> {
    let io_error = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| JournalError::Io { action, path, source }
    };
    std::fs::create_dir_all(executions_dir).map_err(io_error("create", executions_dir))?;
    if uploads_dir.exists() {
        std::fs::remove_dir_all(uploads_dir).map_err(io_error("empty", uploads_dir))?;
    }
    std::fs::create_dir_all(uploads_dir).map_err(io_error("create", uploads_dir))?;

    let mut loaded = Vec::new();
    for folder in std::fs::read_dir(executions_dir).map_err(io_error("list", executions_dir))? {
        let folder = folder.map_err(io_error("list", executions_dir))?;
        if folder.file_type().map(|kind| kind.is_dir()).unwrap_or(false) {
            loaded.push(read_one(&folder.path()));
        }
    }
    loaded.sort_by_key(|result| result.as_ref().map(|loaded| loaded.stored.created_at).ok());
    Ok(loaded)
}

/// Reads one execution folder. A terminal status that was journalled without its mark in
/// `state.json` (a crash in between) is completed here.
fn read_one(dir: &Path) -> Result<LoadedExecution, JournalError> {
    let mut stored = journal::read_state(dir)?;
    let folder_name = dir.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
    if stored.id != folder_name {
        return Err(JournalError::Corrupt { path: dir.to_path_buf(), message: format!("its state names execution `{}`, not the folder's name", stored.id) });
    }
    let events = RecordLog::open_scan(dir.join(EVENTS_FILE))?;
    let records: Vec<EventRecord> = events.read_all()?;
    let status = records
        .last()
        .map(|record| record.status.clone())
        .unwrap_or_else(|| ExecutionStatus::new(ExecutionState::preparing(SetupPhaseKind::Queued)));
    let updated_at = records.last().map_or(stored.created_at, |record| record.recorded_at);
    let running_since = records.iter().find(|record| matches!(record.status.state(), Some(ExecutionState::Running))).map(|record| record.recorded_at);

    let logs = match (stored.phase, stored.finished) {
        (Phase::Finished, Some(finished)) => RecordLog::open_known(dir.join(LOGS_FILE), finished.log_records, finished.log_bytes)?,
        _ => RecordLog::open_scan(dir.join(LOGS_FILE))?,
    };
    if stored.phase != Phase::Finished && status.is_terminal() {
        let committed = logs.committed();
        stored.phase = Phase::Finished;
        stored.finished = Some(FinishedInfo { at: updated_at, log_records: committed.records, log_bytes: committed.bytes });
        journal::write_state(dir, &stored)?;
    }
    if stored.phase == Phase::Finished {
        logs.complete();
        events.complete();
    }
    Ok(LoadedExecution { dir: dir.to_path_buf(), stored, logs, events, status, updated_at, running_since })
}
