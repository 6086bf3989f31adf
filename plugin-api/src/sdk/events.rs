//! The plugin side of the event sink: numbering, stamping and ordering of log records.

use crate::{ffi::EventSinkBox, Channel, ExecutionStatus, LogBatch, LogFlags, Stream, Timestamp};
use std::sync::{Arc, Mutex};

/// One line to deliver; the sink adds the sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Which stream.
    pub stream: Stream,
    /// Setup or program.
    pub channel: Channel,
    /// The text, without its newline.
    pub line: String,
    /// Flags.
    pub flags: LogFlags,
    /// When the line was read; `None` stamps it at delivery.
    pub timestamp: Option<Timestamp>,
}

impl LogLine {
    /// Creates a line with no flags, stamped at delivery.
    pub fn new(stream: Stream, channel: Channel, line: impl Into<String>) -> Self {
        Self { stream, channel, line: line.into(), flags: LogFlags::default(), timestamp: None }
    }
}

/// Where a plugin pushes the events of one execution.
///
/// Copies share one destination and one sequence counter. Log records are numbered from 0 in the
/// order they are delivered. Once a terminal status has been delivered, every later event is
/// dropped, so a backend cannot report two endings.
#[derive(Clone)]
pub struct EventSink {
    shared: Arc<Shared>,
}

struct Shared {
    ffi: EventSinkBox,
    /// The next sequence number and whether a terminal status went out; the lock is held while
    /// the host takes a batch, so that numbers reach the host in order.
    state: Mutex<SinkState>,
}

#[derive(Default)]
struct SinkState {
    next_seq: u64,
    ended: bool,
}

impl EventSink {
    /// Wraps the host's sink.
    pub fn new(ffi: EventSinkBox) -> Self {
        Self { shared: Arc::new(Shared { ffi, state: Mutex::new(SinkState::default()) }) }
    }

    /// Delivers lines in order. Blocks while the host's buffer is full; call it from a thread of
    /// your own or through [`EventSink::log`] in async code.
    pub fn log_blocking(&self, lines: Vec<LogLine>) {
        if lines.is_empty() {
            return;
        }
        let now = Timestamp::now();
        let text_bytes = lines.iter().map(|line| line.line.len()).sum();
        let mut batch = LogBatch::with_capacity(lines.len(), text_bytes);
        for line in &lines {
            batch.push(line.stream, line.channel, &line.line, line.flags, line.timestamp.unwrap_or(now));
        }
        self.log_batch_blocking(batch);
    }

    /// Delivers lines in order from async code. The wait for buffer space happens in
    /// `tokio::task::block_in_place`, so other tasks of the runtime keep running.
    ///
    /// # Panics
    ///
    /// On a current-thread tokio runtime, where `block_in_place` is not allowed. The SDK runs every
    /// backend on a multi-thread runtime; in-process tests need `#[tokio::test(flavor =
    /// "multi_thread")]`.
    pub async fn log(&self, lines: Vec<LogLine>) {
        tokio::task::block_in_place(|| self.log_blocking(lines));
    }

    /// Delivers a batch built with [`LogBatch::push`], numbering its records. It saves the
    /// allocation per line that [`LogLine`] costs. Blocks as [`EventSink::log_blocking`] does.
    pub fn log_batch_blocking(&self, mut batch: LogBatch) {
        if batch.is_empty() {
            return;
        }
        let mut state = self.lock();
        if state.ended {
            tracing::debug!(count = batch.len(), "dropped log lines delivered after the terminal status");
            return;
        }
        for entry in batch.entries_mut() {
            entry.seq = state.next_seq;
            state.next_seq += 1;
        }
        self.shared.ffi.log_batch(batch);
    }

    /// Delivers a batch from async code, as [`EventSink::log`] delivers lines.
    ///
    /// # Panics
    ///
    /// On a current-thread tokio runtime, as [`EventSink::log`].
    pub async fn log_batch(&self, batch: LogBatch) {
        tokio::task::block_in_place(|| self.log_batch_blocking(batch));
    }

    /// Delivers a status. Returns `false`, delivering nothing, when a terminal status was already
    /// delivered.
    pub fn status(&self, status: ExecutionStatus) -> bool {
        let mut state = self.lock();
        if state.ended {
            tracing::debug!(state = status.name(), "dropped a status delivered after the terminal status");
            return false;
        }
        state.ended = status.is_terminal();
        self.shared.ffi.status(status);
        true
    }

    /// Tells whether a terminal status has been delivered.
    pub fn has_ended(&self) -> bool {
        self.lock().ended
    }

    /// Returns the number of log records delivered so far.
    pub fn records_delivered(&self) -> u64 {
        self.lock().next_seq
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SinkState> {
        // A panic while the lock was held left the counters consistent: every step under the
        // lock either completed or changed nothing.
        self.shared.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl std::fmt::Debug for EventSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventSink").field("records_delivered", &self.records_delivered()).finish()
    }
}
