//! One task per execution. It waits for a slot and hands the execution to the backend, or
//! reattaches to it after a restart. Then it journals the execution's events and acts on stop
//! requests and on the timeout. It publishes the terminal status once the logs are durable.

use super::capacity::Slot;
use super::context::ServeContext;
use super::journal::{EventRecord, FinishedInfo, JournalError, PackageOrigin, Phase, RecordWriter, PACKAGE_FILE};
use super::registry::{Entry, StopRequest};
use crate::plugin::backend::{EventStream, PluginCallError};
use crate::plugin::{Execution, ExecutionEvent};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::time::Sleep;
use tracing::Instrument;
use tower_plugin_api::{
    Channel, ErrorKind, ExecutionSpec, ExecutionState, ExecutionStatus, FailureStageKind, LogBatch, LogFlags, LogRecord, Stream, Timestamp,
};

/// Most log records gathered into one journal append (about 1 MiB of JSON for 100-byte lines).
const MAX_APPEND_RECORDS: usize = 8192;
/// Most bytes of line text gathered into one journal append. Gathered batches no longer count
/// against the host's buffer, so this bounds the memory they take, with long lines too.
const MAX_APPEND_TEXT_BYTES: usize = 1024 * 1024;

/// The journal writers of one execution and what the supervisor remembers between events.
pub struct Pump {
    ctx: Arc<ServeContext>,
    entry: Arc<Entry>,
    logs: RecordWriter,
    events: RecordWriter,
    replay: Option<ReplayFilter>,
    /// Set after a journal write failed: nothing more is written.
    broken: bool,
    /// Whether the log reached `serve.max_log_bytes`: every later record is dropped.
    limit_reached: bool,
    /// Log records dropped at `serve.max_log_bytes` by this host process.
    dropped_records: u64,
}

impl Pump {
    /// Creates the pump of an entry from its open writers.
    pub fn new(ctx: Arc<ServeContext>, entry: Arc<Entry>, logs: RecordWriter, events: RecordWriter) -> Self {
        let limit_reached = entry.state().stored.log_limit_reached;
        Self { ctx, entry, logs, events, replay: None, broken: false, limit_reached, dropped_records: 0 }
    }

    /// Journals a non-terminal status and makes it current.
    pub async fn record_status(&mut self, status: ExecutionStatus) {
        if self.broken {
            return;
        }
        let record = EventRecord { seq: 0, recorded_at: Timestamp::now(), status: status.clone() };
        if let Err(error) = self.events.append(vec![record]).await {
            self.journal_failed(&error);
            return;
        }
        let previous = self.entry.set_status(status.clone());
        self.ctx.metrics.transition(Some(previous), Some(status.name()));
        tracing::debug!(parent: &self.entry.span, state = status.name(), "status changed");
    }

    async fn record_logs(&mut self, records: LogBatch) {
        if self.broken {
            return;
        }
        let records = match &mut self.replay {
            Some(filter) => filter.apply(records, &self.entry).await,
            None => records,
        };
        if records.is_empty() {
            return;
        }
        self.ctx.metrics.log_records(&records);
        if self.limit_reached {
            self.count_dropped(records.len());
            return;
        }
        match self.logs.append_within(records, self.ctx.config.max_log_bytes).await {
            Ok(appended) if appended.dropped > 0 => {
                self.count_dropped(appended.dropped);
                self.reach_limit().await;
            }
            Ok(_) => {}
            Err(error) => self.journal_failed(&error),
        }
    }

    fn count_dropped(&mut self, dropped: usize) {
        self.ctx.metrics.log_records_dropped(dropped);
        self.dropped_records += dropped as u64;
    }

    /// Ends the journalling of the app's output at `serve.max_log_bytes`: records it in
    /// `state.json`, so that a restarted host goes on dropping, then notes it in the log. Later
    /// output, even output small enough to fit, is dropped too, so the log has no hole in its
    /// middle.
    async fn reach_limit(&mut self) {
        self.limit_reached = true;
        let max = self.ctx.config.max_log_bytes.unwrap_or_default();
        tracing::warn!(parent: &self.entry.span, max_log_bytes = max, "the execution's log reached serve.max_log_bytes; dropping its further output");
        self.entry.update(|state| state.stored.log_limit_reached = true);
        if let Err(error) = self.entry.persist().await {
            tracing::error!(parent: &self.entry.span, %error, "failed to record in the execution's state that its log reached serve.max_log_bytes");
        }
        self.note_limit().await;
    }

    /// Appends the host's note that the log reached `serve.max_log_bytes`.
    async fn note_limit(&mut self) {
        let max = self.ctx.config.max_log_bytes.unwrap_or_default();
        let note = format!("{LIMIT_NOTE_START} ({max} bytes), so its further output is dropped");
        if let Err(error) = self.logs.append(vec![host_note(note)]).await {
            self.journal_failed(&error);
        }
    }

    /// Publishes the terminal status: flushes the logs to the disk, journals the status, records
    /// the end in `state.json`, then lets log and event readers reach the end.
    pub async fn finish(mut self, mut status: ExecutionStatus) {
        if status.ended_at.is_none() {
            status.ended_at = Some(Timestamp::now()).into();
        }
        if !self.broken {
            if let Err(error) = self.journal_end(&status).await {
                self.journal_failed(&error);
            }
        }

        let logs = self.entry.logs.committed();
        let at = Timestamp::now();
        let previous = self.entry.update(|state| {
            let previous = state.status.name();
            state.status = status.clone();
            state.updated_at = at;
            state.stored.phase = Phase::Finished;
            state.stored.finished = Some(FinishedInfo { at, log_records: logs.records, log_bytes: logs.bytes });
            previous
        });
        if !self.broken {
            if let Err(error) = self.entry.persist().await {
                tracing::error!(parent: &self.entry.span, %error, "failed to record the end in the execution's state");
            }
        }

        self.ctx.metrics.transition(Some(previous), Some(status.name()));
        self.ctx.metrics.finished(status.name());
        self.entry.logs.complete();
        self.entry.events.complete();

        if self.entry.state().stored.package.origin == PackageOrigin::Upload {
            let package = self.entry.dir.join(PACKAGE_FILE);
            let removed = tokio::task::spawn_blocking(move || std::fs::remove_file(&package)).await;
            if let Ok(Err(error)) = removed {
                if error.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(parent: &self.entry.span, %error, "failed to remove the staged package");
                }
            }
        }
        tracing::info!(parent: &self.entry.span, state = status.name(), log_records = logs.records, "execution ended");
    }

    /// Makes the logs durable, then journals the terminal status durably.
    async fn journal_end(&mut self, status: &ExecutionStatus) -> Result<(), JournalError> {
        if self.limit_reached {
            let max = self.ctx.config.max_log_bytes.unwrap_or_default();
            let note = if self.dropped_records > 0 {
                format!("tower-host: dropped {} log records over serve.max_log_bytes ({max} bytes)", self.dropped_records)
            } else {
                // The count lived in the memory of a host process that has since stopped.
                format!("tower-host: dropped log records over serve.max_log_bytes ({max} bytes); their number was lost when the host restarted")
            };
            self.logs.append(vec![host_note(note)]).await?;
        }
        self.logs.sync().await?;
        let record = EventRecord { seq: 0, recorded_at: Timestamp::now(), status: status.clone() };
        self.events.append(vec![record]).await?;
        self.events.sync().await
    }

    /// Stops journalling after a write failed. The execution is killed, because its output can no
    /// longer be kept, and it ends as failed in memory.
    fn journal_failed(&mut self, error: &JournalError) {
        if self.broken {
            return;
        }
        self.broken = true;
        tracing::error!(parent: &self.entry.span, %error, "the journal of this execution failed; killing the execution");
        self.entry.request_stop(StopRequest::Kill);
    }

    fn broken_status(&self, status: ExecutionStatus) -> ExecutionStatus {
        if !self.broken {
            return status;
        }
        let message = "the host could not write this execution's journal, so it killed the execution; see the host's log";
        ExecutionStatus::new(ExecutionState::failed(ErrorKind::Internal, FailureStageKind::Platform, message, true))
            .started(status.started_at.into_option())
            .ended(status.ended_at.into_option())
    }
}

/// Start of the host's note that an execution's log reached `serve.max_log_bytes`.
const LIMIT_NOTE_START: &str = "tower-host: this execution's log reached serve.max_log_bytes";

/// Returns a log record of the host's own, on the setup channel's stderr.
fn host_note(line: String) -> LogRecord {
    LogRecord { seq: 0, timestamp: Timestamp::now(), stream: Stream::Stderr, channel: Channel::Setup, line: line.into(), flags: LogFlags::default() }
}

/// Starts the supervisor of a new execution. `slot` is `None` when it must wait in the queue.
pub fn spawn_new(pump: Pump, spec: ExecutionSpec, slot: Option<Slot>) {
    let span = pump.entry.span.clone();
    tokio::spawn(
        async move {
            run_new(pump, spec, slot).await;
        }
        .instrument(span),
    );
}

async fn run_new(pump: Pump, spec: ExecutionSpec, slot: Option<Slot>) {
    let ctx = Arc::clone(&pump.ctx);
    let entry = Arc::clone(&pump.entry);
    let slot = match slot {
        Some(slot) => slot,
        None => {
            ctx.metrics.queued(1);
            let mut stop = entry.stop_requests();
            let acquired = tokio::select! {
                slot = ctx.capacity.acquire() => Some(slot),
                _ = stop.wait_for(|request| *request != StopRequest::None) => None,
            };
            ctx.metrics.queued(-1);
            match acquired {
                Some(slot) => slot,
                None => {
                    tracing::info!("cancelled while queued");
                    pump.finish(ExecutionStatus::new(ExecutionState::Cancelled { forced: false })).await;
                    return;
                }
            }
        }
    };

    set_phase(&entry, Phase::Submitted).await;
    ctx.metrics.active(1);
    let timeout = spec.limits.timeout_seconds.into_option().map(Duration::from_secs);
    let started = Instant::now();
    let created = ctx.backend.create(spec).await;
    ctx.metrics.backend_create(started.elapsed());
    match created {
        Ok((execution, events)) => {
            tracing::info!(took_ms = started.elapsed().as_millis() as u64, "backend accepted the execution");
            entry.attach(execution.clone());
            set_phase(&entry, Phase::Attached).await;
            drive(pump, execution, events, timeout, None).await;
        }
        Err(error) => {
            tracing::warn!(%error, "backend create failed");
            pump.finish(create_failure(&error)).await;
        }
    }
    ctx.metrics.active(-1);
    drop(slot);
}

/// Starts the supervisor of an execution that an earlier host process handed to the backend.
pub fn spawn_recovered(pump: Pump, timeout: Option<Duration>, running_since: Option<Timestamp>) {
    let span = pump.entry.span.clone();
    tokio::spawn(
        async move {
            run_recovered(pump, timeout, running_since).await;
        }
        .instrument(span),
    );
}

async fn run_recovered(mut pump: Pump, timeout: Option<Duration>, running_since: Option<Timestamp>) {
    let ctx = Arc::clone(&pump.ctx);
    let entry = Arc::clone(&pump.entry);
    let slot = ctx.capacity.force_acquire();
    ctx.metrics.active(1);
    entry.update(|state| state.stored.recoveries += 1);
    set_phase(&entry, Phase::Submitted).await;
    match ctx.backend.recover(&entry.id).await {
        Ok((execution, events)) => {
            ctx.metrics.recovery("recovered");
            tracing::info!(log_records = entry.logs.committed().records, "reattached to the execution");
            entry.attach(execution.clone());
            set_phase(&entry, Phase::Attached).await;
            // The backend numbers only its own records, so the host's note at the limit is not
            // among those it replays. A host that stopped between recording the limit in
            // `state.json` and writing the note leaves the note to this one.
            let mut app_records = entry.logs.committed().records;
            if pump.limit_reached {
                if last_record_is_limit_note(&entry).await {
                    app_records -= 1;
                } else {
                    pump.note_limit().await;
                }
            }
            pump.replay = Some(ReplayFilter::new(app_records, entry.status()));
            drive(pump, execution, events, timeout, running_since).await;
        }
        Err(error) => {
            ctx.metrics.recovery("lost");
            tracing::warn!(%error, "could not reattach to the execution; marking it lost");
            let previous = entry.status();
            let message = format!("the host restarted and could not reattach to the execution: {error}");
            let status = ExecutionStatus::new(ExecutionState::lost(message)).started(previous.started_at.into_option());
            pump.finish(status).await;
        }
    }
    ctx.metrics.active(-1);
    drop(slot);
}

/// Ends an execution that was still queued when an earlier host process stopped. Its secrets
/// were never journalled, so it cannot be started now.
pub fn spawn_unsubmitted(pump: Pump) {
    let span = pump.entry.span.clone();
    tokio::spawn(
        async move {
            pump.ctx.metrics.recovery("not_submitted");
            tracing::info!("the host restarted before this execution reached the backend; marking it failed");
            let message = "the host restarted before the execution was handed to the backend; create it again";
            let state = ExecutionState::failed(ErrorKind::Unavailable, FailureStageKind::Platform, message, true);
            pump.finish(ExecutionStatus::new(state)).await;
        }
        .instrument(span),
    );
}

async fn set_phase(entry: &Entry, phase: Phase) {
    entry.update(|state| state.stored.phase = phase);
    if let Err(error) = entry.persist().await {
        tracing::error!(parent: &entry.span, %error, phase = ?phase, "failed to journal the execution's phase");
    }
}

/// Maps a failed `create` to the terminal status.
fn create_failure(error: &PluginCallError) -> ExecutionStatus {
    let kind = error.error.kind().unwrap_or(ErrorKind::Internal);
    let (stage, retryable) = match kind {
        ErrorKind::InvalidPackage | ErrorKind::InvalidSpec => (FailureStageKind::Setup, false),
        ErrorKind::Unavailable | ErrorKind::TimedOut => (FailureStageKind::Platform, true),
        _ => (FailureStageKind::Platform, false),
    };
    ExecutionStatus::new(ExecutionState::failed(kind, stage, error.to_string(), retryable))
}

/// Journals the events of an attached execution until its terminal status, acting on stop
/// requests and on the timeout when the backend does not enforce it.
async fn drive(mut pump: Pump, execution: Execution, mut events: EventStream, timeout: Option<Duration>, running_since: Option<Timestamp>) {
    let ctx = Arc::clone(&pump.ctx);
    let host_timeout = timeout.filter(|_| !ctx.capabilities.enforced_limits.timeout);
    let mut stop = pump.entry.stop_requests();
    // Acts on a request that arrived before the backend returned its handle.
    stop.mark_changed();
    let mut deadline: Option<Pin<Box<Sleep>>> = host_timeout.zip(running_since).map(|(limit, since)| {
        let ran = since.to_system_time().elapsed().unwrap_or_default();
        Box::pin(tokio::time::sleep(limit.saturating_sub(ran)))
    });
    let mut timed_out = false;
    let mut stop_requested = false;

    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(ExecutionEvent::Logs(records)) => {
                    // Batches that arrived while the last append ran go into this one, so a
                    // busy execution costs one journal write per gathered batch.
                    let mut records = records;
                    while records.len() < MAX_APPEND_RECORDS && records.text_len() < MAX_APPEND_TEXT_BYTES {
                        let Some(more) = events.ready_logs() else { break };
                        records.extend_from(&more);
                    }
                    pump.record_logs(records).await;
                }
                Some(ExecutionEvent::Status(status)) => {
                    let status = rewrite_host_timeout(status, timed_out && !stop_requested);
                    if status.is_terminal() {
                        let status = pump.broken_status(status);
                        pump.finish(status).await;
                        return;
                    }
                    if let (Some(limit), None, Some(ExecutionState::Running)) = (host_timeout, &deadline, status.state()) {
                        deadline = Some(Box::pin(tokio::time::sleep(limit)));
                    }
                    if pump.replay.as_mut().is_some_and(|filter| filter.repeats_status(&status)) {
                        continue;
                    }
                    pump.record_status(status).await;
                }
                None => unreachable!("the event stream ends only after a terminal status"),
            },
            changed = stop.changed() => {
                if changed.is_err() {
                    continue;
                }
                let request = *stop.borrow_and_update();
                if request != StopRequest::None {
                    stop_requested = true;
                    send_stop(&execution, request);
                }
            }
            _ = async { deadline.as_mut().expect("guarded by the condition").await }, if deadline.is_some() && !timed_out => {
                timed_out = true;
                tracing::info!(grace_ms = ctx.config.stop_grace.as_millis() as u64, "timeout reached; terminating the execution");
                send_stop(&execution, StopRequest::Terminate { grace: ctx.config.stop_grace });
            }
        }
    }
}

/// Calls `terminate` or `kill` in its own task: both return only once nothing of the execution
/// runs, and the execution's events must keep flowing meanwhile.
fn send_stop(execution: &Execution, request: StopRequest) {
    let execution = execution.clone();
    tokio::spawn(
        async move {
            let result = match request {
                StopRequest::None => return,
                StopRequest::Terminate { grace } => execution.terminate(grace).await,
                StopRequest::Kill => execution.kill().await,
            };
            if let Err(error) = result {
                tracing::warn!(%error, "stopping the execution failed");
            }
        }
        .in_current_span(),
    );
}

/// Rewrites the cancellation that follows the host's own timeout stop into a timeout.
fn rewrite_host_timeout(status: ExecutionStatus, host_timed_out: bool) -> ExecutionStatus {
    match status.state() {
        Some(ExecutionState::Cancelled { forced }) if host_timed_out => {
            let mut rewritten = ExecutionStatus::new(ExecutionState::TimedOut { forced: *forced });
            rewritten.started_at = status.started_at;
            rewritten.ended_at = status.ended_at;
            rewritten.metadata = status.metadata;
            rewritten
        }
        _ => status,
    }
}

/// Drops what a reattached backend delivers again.
///
/// A backend's `recover` delivers the logs it can still read, numbered from 0 by the plugin SDK.
/// When its first record equals the first journalled record, the backend replays the log from
/// its start, so records numbered below the journalled count are dropped. Otherwise it delivers
/// only new output, and every record is kept. A repeat of the current status is dropped too.
pub struct ReplayFilter {
    journalled: u64,
    skip_journalled: Option<bool>,
    last_status: Option<ExecutionStatus>,
}

impl ReplayFilter {
    /// Creates the filter for a log of `journalled` records whose current status is `status`.
    pub fn new(journalled: u64, status: ExecutionStatus) -> Self {
        Self { journalled, skip_journalled: None, last_status: Some(status) }
    }

    async fn apply(&mut self, records: LogBatch, entry: &Entry) -> LogBatch {
        let Some(first) = records.iter().next().map(|line| line.to_record()) else { return records };
        let skip = match self.skip_journalled {
            Some(skip) => skip,
            None => {
                let skip = self.journalled > 0 && first.seq == 0 && first_record_matches(entry, &first).await;
                tracing::info!(replays_from_start = skip, journalled = self.journalled, "first log records after reattaching");
                self.skip_journalled = Some(skip);
                skip
            }
        };
        if skip && first.seq < self.journalled {
            let kept: Vec<LogRecord> = records.iter().filter(|record| record.seq >= self.journalled).map(|record| record.to_record()).collect();
            return LogBatch::from_records(&kept);
        }
        records
    }

    /// Tells whether `status` repeats the current status; only the first status after
    /// reattaching is compared.
    fn repeats_status(&mut self, status: &ExecutionStatus) -> bool {
        let Some(last) = self.last_status.take() else { return false };
        last.state() == status.state()
    }
}

/// Compares a replayed record with the first journalled one, ignoring the sequence number and
/// the timestamp (a backend may stamp replayed lines anew).
/// Tells whether the journal's last log record is the host's note at `serve.max_log_bytes`.
async fn last_record_is_limit_note(entry: &Entry) -> bool {
    let Some(last) = entry.logs.committed().records.checked_sub(1) else { return false };
    let logs = Arc::clone(&entry.logs);
    match tokio::task::spawn_blocking(move || logs.read_record::<LogRecord>(last)).await {
        Ok(Ok(Some(record))) => record.channel == Channel::Setup && record.line.starts_with(LIMIT_NOTE_START),
        Ok(Ok(None)) => false,
        Ok(Err(error)) => {
            tracing::warn!(parent: &entry.span, %error, "failed to read the last journalled log record");
            false
        }
        Err(error) => {
            tracing::warn!(parent: &entry.span, %error, "failed to read the last journalled log record");
            false
        }
    }
}

async fn first_record_matches(entry: &Entry, replayed: &LogRecord) -> bool {
    let logs = Arc::clone(&entry.logs);
    let journalled = tokio::task::spawn_blocking(move || logs.read_record::<LogRecord>(0)).await;
    match journalled {
        Ok(Ok(Some(first))) => {
            first.stream == replayed.stream && first.channel == replayed.channel && first.line == replayed.line && first.flags == replayed.flags
        }
        Ok(Ok(None)) => false,
        Ok(Err(error)) => {
            tracing::warn!(%error, "failed to read the first journalled log record; keeping every replayed record");
            false
        }
        Err(error) => {
            tracing::warn!(%error, "failed to read the first journalled log record; keeping every replayed record");
            false
        }
    }
}
