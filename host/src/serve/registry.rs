//! The executions of the server: their journal files, current status and backend handle.

use super::journal::{self, JournalError, PackageInfo, Phase, RecordLog, StoredExecution};
use crate::plugin::Execution;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::watch;
use tower_plugin_api::{ExecutionState, ExecutionStatus, Timestamp};

/// A stop that a client (or the shutdown) requested.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopRequest {
    /// None yet.
    None,
    /// Stop politely, forcing it after `grace`.
    Terminate {
        /// Time between the polite request and the forced stop.
        grace: Duration,
    },
    /// Stop at once.
    Kill,
}

/// One execution.
pub struct Entry {
    /// The execution id.
    pub id: String,
    /// Position in creation order, for listing.
    pub order: u64,
    /// The execution's journal folder.
    pub dir: PathBuf,
    /// Its log records.
    pub logs: Arc<RecordLog>,
    /// Its status changes.
    pub events: Arc<RecordLog>,
    /// The tracing span of everything done for this execution.
    pub span: tracing::Span,
    state: Mutex<EntryState>,
    /// Serializes writes of `state.json`, so that an older state never replaces a newer one.
    persist_lock: tokio::sync::Mutex<()>,
    stop: watch::Sender<StopRequest>,
    handle: Mutex<Option<Execution>>,
}

/// The changing part of an entry.
#[derive(Debug, Clone)]
pub struct EntryState {
    /// Content of `state.json`.
    pub stored: StoredExecution,
    /// The latest status.
    pub status: ExecutionStatus,
    /// When the status last changed.
    pub updated_at: Timestamp,
}

impl Entry {
    /// Creates an entry.
    pub fn new(order: u64, dir: PathBuf, logs: Arc<RecordLog>, events: Arc<RecordLog>, state: EntryState, span: tracing::Span) -> Self {
        Self {
            id: state.stored.id.clone(),
            order,
            dir,
            logs,
            events,
            span,
            state: Mutex::new(state),
            persist_lock: tokio::sync::Mutex::new(()),
            stop: watch::channel(StopRequest::None).0,
            handle: Mutex::new(None),
        }
    }

    fn lock(&self) -> MutexGuard<'_, EntryState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Returns a copy of the changing part.
    pub fn state(&self) -> EntryState {
        self.lock().clone()
    }

    /// Returns the latest status.
    pub fn status(&self) -> ExecutionStatus {
        self.lock().status.clone()
    }

    /// Tells whether the terminal status is journalled.
    pub fn is_finished(&self) -> bool {
        self.lock().stored.phase == Phase::Finished
    }

    /// Changes the state under its lock.
    pub fn update<T>(&self, change: impl FnOnce(&mut EntryState) -> T) -> T {
        change(&mut self.lock())
    }

    /// Replaces the status; returns the previous state name.
    pub fn set_status(&self, status: ExecutionStatus) -> &'static str {
        let mut state = self.lock();
        let previous = state.status.name();
        state.status = status;
        state.updated_at = Timestamp::now();
        previous
    }

    /// Writes `state.json` with the current state.
    pub async fn persist(&self) -> Result<(), JournalError> {
        let _order = self.persist_lock.lock().await;
        let stored = self.lock().stored.clone();
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || journal::write_state(&dir, &stored)).await?
    }

    /// Requests a stop. A terminate replaces only "none"; a kill replaces anything but a kill.
    /// Returns whether the request changed anything.
    pub fn request_stop(&self, request: StopRequest) -> bool {
        self.stop.send_if_modified(|current| {
            let replace = match request {
                StopRequest::None => false,
                StopRequest::Terminate { .. } => *current == StopRequest::None,
                StopRequest::Kill => *current != StopRequest::Kill,
            };
            if replace {
                *current = request;
            }
            replace
        })
    }

    /// Subscribes to stop requests.
    pub fn stop_requests(&self) -> watch::Receiver<StopRequest> {
        self.stop.subscribe()
    }

    /// Stores the backend's handle.
    pub fn attach(&self, execution: Execution) {
        *self.handle.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(execution);
    }

    /// Returns the backend's handle, if the backend returned one in this host process.
    pub fn handle(&self) -> Option<Execution> {
        self.handle.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Returns the API view of the execution.
    pub fn view(&self, retention: Duration) -> ExecutionView {
        let state = self.state();
        let stored = state.stored;
        let exit_code = match state.status.state() {
            Some(ExecutionState::Exited) => Some(0),
            Some(ExecutionState::Crashed { exit_code, .. }) => exit_code.into_option(),
            _ => None,
        };
        let expires_at = stored.finished.map(|finished| {
            let retention_nanos = i64::try_from(retention.as_nanos()).unwrap_or(i64::MAX);
            Timestamp { unix_nanos: finished.at.unix_nanos.saturating_add(retention_nanos) }
        });
        ExecutionView {
            id: stored.id,
            app_name: stored.spec.get("app_name").and_then(|name| name.as_str()).unwrap_or_default().to_string(),
            created_at: stored.created_at,
            updated_at: state.updated_at,
            status: state.status,
            exit_code,
            phase: stored.phase,
            log_records: self.logs.committed().records,
            event_records: self.events.committed().records,
            package: stored.package,
            recoveries: stored.recoveries,
            cleaned_up: stored.cleaned_up,
            expires_at,
            spec: stored.spec,
        }
    }
}

/// An execution as the API returns it.
#[derive(Debug, Serialize)]
pub struct ExecutionView {
    /// The execution id.
    pub id: String,
    /// The app's name from the spec.
    pub app_name: String,
    /// When the host accepted it.
    pub created_at: Timestamp,
    /// When its status last changed.
    pub updated_at: Timestamp,
    /// The latest status: state, its fields, times, metadata.
    pub status: ExecutionStatus,
    /// The app's exit code, once it exited.
    pub exit_code: Option<i32>,
    /// How far the host got.
    pub phase: Phase,
    /// Number of log records so far; the next one gets this sequence number.
    pub log_records: u64,
    /// Number of status changes so far.
    pub event_records: u64,
    /// The package.
    pub package: PackageInfo,
    /// How many times a restarted host reattached to it.
    pub recoveries: u32,
    /// Whether the backend cleaned it up.
    pub cleaned_up: bool,
    /// When retention removes it, once finished.
    pub expires_at: Option<Timestamp>,
    /// The spec, every secret value replaced by `***`.
    pub spec: serde_json::Value,
}

/// The outcome of [`Registry::reserve`].
pub enum Reservation {
    /// An execution with this id exists.
    Existing(Arc<Entry>),
    /// Another request is creating an execution with this id.
    Busy,
    /// The id is reserved for this request until the guard is committed or dropped.
    Reserved(ReservedId),
}

/// An id reserved for one create request.
pub struct ReservedId {
    inner: Arc<Mutex<Inner>>,
    id: String,
    committed: bool,
}

impl ReservedId {
    /// Returns the reserved id.
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl Drop for ReservedId {
    fn drop(&mut self) {
        if !self.committed {
            lock(&self.inner).creating.remove(&self.id);
        }
    }
}

/// Every known execution by id.
#[derive(Clone, Default)]
pub struct Registry {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Arc<Entry>>,
    creating: HashSet<String>,
    next_order: u64,
}

fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Registry {
    /// Looks an execution up.
    pub fn get(&self, id: &str) -> Option<Arc<Entry>> {
        lock(&self.inner).entries.get(id).cloned()
    }

    /// Reserves `id` for a create request, or returns why it cannot be.
    pub fn reserve(&self, id: &str) -> Reservation {
        let mut inner = lock(&self.inner);
        if let Some(entry) = inner.entries.get(id) {
            return Reservation::Existing(Arc::clone(entry));
        }
        if !inner.creating.insert(id.to_string()) {
            return Reservation::Busy;
        }
        Reservation::Reserved(ReservedId { inner: Arc::clone(&self.inner), id: id.to_string(), committed: false })
    }

    /// Returns the next creation-order number.
    pub fn next_order(&self) -> u64 {
        let mut inner = lock(&self.inner);
        inner.next_order += 1;
        inner.next_order
    }

    /// Adds the entry of a reserved id.
    pub fn commit(&self, mut reserved: ReservedId, entry: Arc<Entry>) {
        let mut inner = lock(&self.inner);
        inner.creating.remove(&reserved.id);
        inner.entries.insert(reserved.id.clone(), entry);
        reserved.committed = true;
    }

    /// Adds an entry loaded from the journal.
    pub fn insert(&self, entry: Arc<Entry>) {
        lock(&self.inner).entries.insert(entry.id.clone(), entry);
    }

    /// Removes an entry.
    pub fn remove(&self, id: &str) -> Option<Arc<Entry>> {
        lock(&self.inner).entries.remove(id)
    }

    /// Returns every entry in creation order.
    pub fn list(&self) -> Vec<Arc<Entry>> {
        let mut entries: Vec<_> = lock(&self.inner).entries.values().cloned().collect();
        entries.sort_by_key(|entry| entry.order);
        entries
    }
}
