//! The on-disk journal: one folder per execution with its state, its status changes and its log.
//!
//! ```text
//! <state_dir>/executions/<id>/state.json     the execution: spec without secret values, phase
//! <state_dir>/executions/<id>/events.ndjson  status changes, one JSON object per line
//! <state_dir>/executions/<id>/logs.ndjson    log records, one JSON object per line
//! <state_dir>/executions/<id>/package.tar.gz the uploaded package, until the execution ends
//! ```
//!
//! Both `.ndjson` files are [`RecordLog`]s: append-only, numbered from 0 without gaps, and each
//! line is exactly what the API streams. A batch is written with one `write(2)` before its
//! records are published to readers, so a record that any reader has seen survives a crash of the
//! host process. `state.json` is replaced atomically (write, fsync, rename).

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;
use crate::json_log::LogJsonWriter;
use tower_plugin_api::{ExecutionStatus, LogBatch, LogLineRef, LogRecord, Timestamp};

/// File of the execution record inside an execution's folder.
pub const STATE_FILE: &str = "state.json";
/// File of the status changes.
pub const EVENTS_FILE: &str = "events.ndjson";
/// File of the log records.
pub const LOGS_FILE: &str = "logs.ndjson";
/// File of the uploaded package.
pub const PACKAGE_FILE: &str = "package.tar.gz";
/// Folder of the execution folders inside the state folder.
pub const EXECUTIONS_DIR: &str = "executions";
/// Folder of uploads in progress inside the state folder; emptied at start.
pub const UPLOADS_DIR: &str = "uploads";
/// Version of the `state.json` format.
pub const STATE_FORMAT: u32 = 1;
/// Every this many records, a log remembers the byte offset of one, so that a reader starting
/// at record N reads at most this many records before it.
const INDEX_STRIDE: u64 = 1024;
/// Size of the chunks a reader reads from a log file. Each read is a task on the blocking pool,
/// so a consumer that is behind costs two thread wake-ups per chunk. With 256 KiB, a followed
/// stream of a large log was about a fifth faster than with 64 KiB (docs/benchmarks.md).
pub const READ_CHUNK_BYTES: usize = 256 * 1024;

/// A failure of the journal, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// A file operation failed.
    #[error("failed to {action} {path}: {source}")]
    Io {
        /// The operation (`append to`, `read`).
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file does not have the expected content.
    #[error("{path} is corrupt: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The problem.
        message: String,
    },
    /// A blocking task of the journal panicked or was cancelled.
    #[error("a journal task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

fn io_error<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> JournalError + 'a {
    move |source| JournalError::Io { action, path: path.to_path_buf(), source }
}

/// Origin of an execution's package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PackageOrigin {
    /// Uploaded with the create request and staged in the execution's folder.
    Upload,
    /// Downloaded by the backend.
    Url,
}

/// The package of an execution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageInfo {
    /// Upload or URL.
    pub origin: PackageOrigin,
    /// Lowercase hex sha256 of the archive.
    pub sha256: String,
    /// Size of an uploaded archive in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// The URL the backend downloads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// How far the host got with an execution; decides what recovery does after a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Waiting for a slot; the backend has not seen it.
    Queued,
    /// `create` or `recover` was called and may have reached the backend.
    Submitted,
    /// The backend returned a handle.
    Attached,
    /// The terminal status is journalled.
    Finished,
}

/// Counts of a finished execution's logs, so that a restart need not read them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinishedInfo {
    /// When the terminal status was journalled.
    pub at: Timestamp,
    /// Number of log records.
    pub log_records: u64,
    /// Size of `logs.ndjson` in bytes.
    pub log_bytes: u64,
}

/// The content of `state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredExecution {
    /// [`STATE_FORMAT`].
    pub format: u32,
    /// The execution id.
    pub id: String,
    /// When the host accepted the create request.
    pub created_at: Timestamp,
    /// Digest of the create request, to tell a retry from a different request with the same id.
    pub fingerprint: String,
    /// The spec as the client sent it, every secret value replaced by `***`.
    pub spec: serde_json::Value,
    /// The package.
    pub package: PackageInfo,
    /// How far the host got.
    pub phase: Phase,
    /// How many times a restarted host reattached to it.
    #[serde(default)]
    pub recoveries: u32,
    /// Set once the terminal status is journalled.
    #[serde(default)]
    pub finished: Option<FinishedInfo>,
    /// Whether the backend's `cleanup` succeeded.
    #[serde(default)]
    pub cleaned_up: bool,
    /// Whether the log reached `serve.max_log_bytes`. The log then ends with the host's note
    /// about it, and nothing more of the app's output is journalled.
    #[serde(default)]
    pub log_limit_reached: bool,
}

/// One line of `events.ndjson`: a status change with its sequence number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    /// Position in the execution's events, from 0, without gaps.
    pub seq: u64,
    /// When the host journalled it.
    pub recorded_at: Timestamp,
    /// The status, its fields beside `seq`.
    #[serde(flatten)]
    pub status: ExecutionStatus,
}

/// Records to append to a [`RecordLog`] in one write: a vector of [`Numbered`] records, or a
/// [`LogBatch`].
pub trait Records: Send + 'static {
    /// Returns the number of records.
    fn count(&self) -> usize;

    /// Appends each record as a JSON line to `out`, numbered from `first_seq`. Before each one,
    /// calls `before` with its sequence number and the length of `out`.
    fn write_lines(&mut self, first_seq: u64, out: &mut Vec<u8>, before: &mut dyn FnMut(u64, usize));
}

impl<T: Numbered> Records for Vec<T> {
    fn count(&self) -> usize {
        self.len()
    }

    fn write_lines(&mut self, first_seq: u64, out: &mut Vec<u8>, before: &mut dyn FnMut(u64, usize)) {
        let mut writer = LogJsonWriter::default();
        for (seq, record) in (first_seq..).zip(self.iter_mut()) {
            before(seq, out.len());
            record.set_seq(seq);
            record.write_json(out, &mut writer);
            out.push(b'\n');
        }
    }
}

impl Records for LogBatch {
    fn count(&self) -> usize {
        self.len()
    }

    fn write_lines(&mut self, first_seq: u64, out: &mut Vec<u8>, before: &mut dyn FnMut(u64, usize)) {
        let mut writer = LogJsonWriter::default();
        for (seq, line) in (first_seq..).zip(self.iter()) {
            before(seq, out.len());
            writer.write(out, &LogLineRef { seq, ..line }, false);
            out.push(b'\n');
        }
    }
}

/// A record of a [`RecordLog`]: serializable, with `seq` as its first field.
pub trait Numbered: Serialize + Send + 'static {
    /// Sets the sequence number.
    fn set_seq(&mut self, seq: u64);

    /// Appends the record as one JSON object, without a newline.
    fn write_json(&self, out: &mut Vec<u8>, _writer: &mut LogJsonWriter) {
        serde_json::to_writer(out, self).expect("journal records serialize to JSON");
    }
}

impl Numbered for LogRecord {
    fn set_seq(&mut self, seq: u64) {
        self.seq = seq;
    }

    fn write_json(&self, out: &mut Vec<u8>, writer: &mut LogJsonWriter) {
        writer.write(out, &self.as_line_ref(), false);
    }
}

impl Numbered for EventRecord {
    fn set_seq(&mut self, seq: u64) {
        self.seq = seq;
    }
}

/// The part of a [`RecordLog`] that readers may read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Committed {
    /// Number of records written.
    pub records: u64,
    /// Bytes of the file that hold them; always ends after a newline.
    pub bytes: u64,
    /// Whether no record will follow.
    pub complete: bool,
}

/// An append-only NDJSON file of numbered records, shared by its writer and its readers.
#[derive(Debug)]
pub struct RecordLog {
    path: PathBuf,
    committed: watch::Sender<Committed>,
    /// `index[k]` is the byte offset of record `k * INDEX_STRIDE`; `None` until built.
    index: Mutex<Option<Vec<u64>>>,
}

impl RecordLog {
    /// Creates an empty log file, or truncates an existing one.
    pub fn create(path: PathBuf) -> Result<Arc<Self>, JournalError> {
        File::create(&path).map_err(io_error("create", &path))?;
        Ok(Arc::new(Self { path, committed: watch::channel(Committed::default()).0, index: Mutex::new(Some(Vec::new())) }))
    }

    /// Opens a log whose counts are known (a finished execution). The file is cut back to
    /// `bytes` if it is longer; the index is built on first need.
    pub fn open_known(path: PathBuf, records: u64, bytes: u64) -> Result<Arc<Self>, JournalError> {
        let file = std::fs::OpenOptions::new().write(true).open(&path).map_err(io_error("open", &path))?;
        let length = file.metadata().map_err(io_error("read the size of", &path))?.len();
        if length < bytes {
            return Err(JournalError::Corrupt { path, message: format!("it has {length} bytes, but its state records {bytes}") });
        }
        if length > bytes {
            file.set_len(bytes).map_err(io_error("truncate", &path))?;
        }
        let committed = Committed { records, bytes, complete: true };
        Ok(Arc::new(Self { path, committed: watch::channel(committed).0, index: Mutex::new(None) }))
    }

    /// Opens a log by reading it: counts its records, checks their numbering, builds the index,
    /// and cuts off a last line that a crash left without its newline.
    pub fn open_scan(path: PathBuf) -> Result<Arc<Self>, JournalError> {
        let (records, bytes, index) = scan(&path)?;
        let length = std::fs::metadata(&path).map_err(io_error("read the size of", &path))?.len();
        if length > bytes {
            tracing::warn!(path = %path.display(), cut_bytes = length - bytes, "cut off an incomplete last line");
            let file = std::fs::OpenOptions::new().write(true).open(&path).map_err(io_error("open", &path))?;
            file.set_len(bytes).map_err(io_error("truncate", &path))?;
        }
        let committed = Committed { records, bytes, complete: false };
        Ok(Arc::new(Self { path, committed: watch::channel(committed).0, index: Mutex::new(Some(index)) }))
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Returns the part that readers may read now.
    pub fn committed(&self) -> Committed {
        *self.committed.borrow()
    }

    /// Subscribes to changes of what readers may read.
    pub fn subscribe(&self) -> watch::Receiver<Committed> {
        self.committed.subscribe()
    }

    /// Marks the log complete: readers that reach its end stop there.
    pub fn complete(&self) {
        self.committed.send_modify(|committed| committed.complete = true);
    }

    /// Opens the writer. The log must not be complete, and there must be one writer at a time.
    pub fn writer(self: &Arc<Self>) -> Result<RecordWriter, JournalError> {
        let file = std::fs::OpenOptions::new().append(true).open(&self.path).map_err(io_error("open for appending", &self.path))?;
        Ok(RecordWriter { log: Arc::clone(self), file: Some(file), buffer: Vec::new() })
    }

    /// Returns where to start reading for record `seq`: the byte offset of an earlier record and
    /// how many lines to skip from there. Builds the index first if needed (blocking).
    fn start_of(&self, seq: u64) -> Result<(u64, u64), JournalError> {
        let mut index = self.index.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if index.is_none() && seq >= INDEX_STRIDE {
            let (_, _, built) = scan(&self.path)?;
            *index = Some(built);
        }
        let offsets = index.as_deref().unwrap_or(&[]);
        let slot = usize::try_from(seq / INDEX_STRIDE).unwrap_or(usize::MAX).min(offsets.len().saturating_sub(1));
        match offsets.get(slot) {
            Some(&offset) => Ok((offset, seq - slot as u64 * INDEX_STRIDE)),
            None => Ok((0, seq)),
        }
    }

    /// Reads one record (blocking); `None` when it is not committed.
    pub fn read_record<T: DeserializeOwned>(&self, seq: u64) -> Result<Option<T>, JournalError> {
        let committed = self.committed();
        if seq >= committed.records {
            return Ok(None);
        }
        let (offset, skip) = self.start_of(seq)?;
        let mut file = File::open(&self.path).map_err(io_error("open", &self.path))?;
        file.seek(SeekFrom::Start(offset)).map_err(io_error("seek in", &self.path))?;
        let mut reader = BufReader::new(file.take(committed.bytes - offset));
        let mut line = Vec::new();
        for _ in 0..=skip {
            line.clear();
            reader.read_until(b'\n', &mut line).map_err(io_error("read", &self.path))?;
        }
        let record = serde_json::from_slice(&line)
            .map_err(|error| JournalError::Corrupt { path: self.path.clone(), message: format!("record {seq}: {error}") })?;
        Ok(Some(record))
    }

    /// Reads every committed record (blocking). For small logs only, such as the events.
    pub fn read_all<T: DeserializeOwned>(&self) -> Result<Vec<T>, JournalError> {
        let committed = self.committed();
        let file = File::open(&self.path).map_err(io_error("open", &self.path))?;
        let reader = BufReader::new(file.take(committed.bytes));
        let mut records = Vec::new();
        for (seq, line) in reader.lines().enumerate() {
            let line = line.map_err(io_error("read", &self.path))?;
            let record = serde_json::from_str(&line)
                .map_err(|error| JournalError::Corrupt { path: self.path.clone(), message: format!("record {seq}: {error}") })?;
            records.push(record);
        }
        Ok(records)
    }
}

/// Reads a log file: returns its number of complete records, the bytes they take, and the index.
/// Every complete line must start with `{"seq":N` where N counts from 0.
fn scan(path: &Path) -> Result<(u64, u64, Vec<u64>), JournalError> {
    let file = File::open(path).map_err(io_error("open", path))?;
    let mut reader = BufReader::with_capacity(READ_CHUNK_BYTES, file);
    let mut records = 0u64;
    let mut bytes = 0u64;
    let mut index = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = reader.read_until(b'\n', &mut line).map_err(io_error("read", path))?;
        if read == 0 || line.last() != Some(&b'\n') {
            break;
        }
        let prefix = format!("{{\"seq\":{records},");
        if !line.starts_with(prefix.as_bytes()) {
            return Err(JournalError::Corrupt { path: path.to_path_buf(), message: format!("line {} is not record {records}", records + 1) });
        }
        if records % INDEX_STRIDE == 0 {
            index.push(bytes);
        }
        records += 1;
        bytes += read as u64;
    }
    Ok((records, bytes, index))
}

/// The one writer of a [`RecordLog`].
#[derive(Debug)]
pub struct RecordWriter {
    log: Arc<RecordLog>,
    /// `None` only while a blocking write owns it.
    file: Option<File>,
    /// The buffer of the last append, kept for the next one so that a busy log reuses one
    /// allocation instead of making a new one of a few MiB each time.
    buffer: Vec<u8>,
}

/// The outcome of [`RecordWriter::append_within`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Sequence number of the first record written, or of the next record when none was.
    pub first_seq: u64,
    /// Number of records written.
    pub written: usize,
    /// Number of records dropped at the size limit.
    pub dropped: usize,
}

/// Largest buffer a [`RecordWriter`] keeps between appends. A buffer is also dropped once an
/// append fills less than a quarter of it, so a log that went quiet gives its memory back.
const KEPT_BUFFER_BYTES: usize = 4 * 1024 * 1024;

impl RecordWriter {
    /// Returns the log this writer appends to.
    pub fn log(&self) -> &Arc<RecordLog> {
        &self.log
    }

    /// Numbers the records from the log's next sequence number, appends them with one write, and
    /// then publishes them to readers. Returns the first sequence number given.
    pub async fn append<R: Records>(&mut self, records: R) -> Result<u64, JournalError> {
        Ok(self.append_within(records, None).await?.first_seq)
    }

    /// Appends like [`append`](Self::append), but when `max_bytes` is set, only the leading
    /// records that keep the file within `max_bytes` are written and the others are dropped.
    pub async fn append_within<R: Records>(&mut self, mut records: R, max_bytes: Option<u64>) -> Result<Appended, JournalError> {
        let start = self.log.committed();
        let count = records.count();
        if count == 0 || max_bytes.is_some_and(|max| start.bytes >= max) {
            return Ok(Appended { first_seq: start.records, written: 0, dropped: count });
        }
        let mut file = self.file.take().ok_or_else(|| JournalError::Corrupt {
            path: self.log.path.clone(),
            message: "an earlier write failed, so the writer is closed".to_string(),
        })?;
        let path = self.log.path.clone();
        let mut buffer = std::mem::take(&mut self.buffer);
        let (file, buffer, result) = tokio::task::spawn_blocking(move || {
            buffer.clear();
            buffer.reserve(count * 128);
            let mut new_offsets = Vec::new();
            // Where each record starts in `buffer`, collected only when the append may be cut.
            let mut starts = Vec::new();
            records.write_lines(start.records, &mut buffer, &mut |seq, length| {
                if seq % INDEX_STRIDE == 0 {
                    new_offsets.push((seq, start.bytes + length as u64));
                }
                if max_bytes.is_some() {
                    starts.push(length);
                }
            });
            let mut records_written = count;
            if let Some(room) = max_bytes.map(|max| max - start.bytes) {
                if buffer.len() as u64 > room {
                    // `starts` rises, and a record fits when the next one starts within `room`.
                    records_written = starts.iter().rposition(|&offset| offset as u64 <= room).unwrap_or(0);
                    buffer.truncate(starts[records_written]);
                    new_offsets.retain(|&(seq, _)| seq < start.records + records_written as u64);
                }
            }
            let offsets: Vec<u64> = new_offsets.into_iter().map(|(_, offset)| offset).collect();
            let outcome = file.write_all(&buffer).map(|()| (records_written, buffer.len() as u64, offsets));
            (file, buffer, outcome)
        })
        .await?;
        if buffer.capacity() <= KEPT_BUFFER_BYTES && buffer.len() >= buffer.capacity() / 4 {
            self.buffer = buffer;
        }
        let (records_written, length, new_offsets) = result.map_err(io_error("append to", &path))?;
        self.file = Some(file);
        if let Some(index) = self.log.index.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).as_mut() {
            index.extend(new_offsets);
        }
        self.log.committed.send_modify(|committed| {
            committed.records += records_written as u64;
            committed.bytes += length;
        });
        Ok(Appended { first_seq: start.records, written: records_written, dropped: count - records_written })
    }

    /// Flushes the file's data to the disk (`fdatasync`).
    pub async fn sync(&mut self) -> Result<(), JournalError> {
        let Some(file) = self.file.take() else { return Ok(()) };
        let (file, result) = tokio::task::spawn_blocking(move || {
            let result = file.sync_data();
            (file, result)
        })
        .await?;
        self.file = Some(file);
        result.map_err(io_error("flush", &self.log.path))
    }
}

/// Reads a [`RecordLog`] from a sequence number on, as raw NDJSON bytes.
pub struct RecordReader {
    log: Arc<RecordLog>,
    file: Option<Arc<File>>,
    committed: watch::Receiver<Committed>,
    /// Byte offset of the next read.
    offset: u64,
    /// Lines still to drop before the first record to return.
    skip_lines: u64,
    /// Whether the start position has been looked up.
    positioned: bool,
    from: u64,
}

impl RecordReader {
    /// Creates a reader that starts at record `from`.
    pub fn new(log: Arc<RecordLog>, from: u64) -> Self {
        let committed = log.subscribe();
        Self { log, file: None, committed, offset: 0, skip_lines: 0, positioned: false, from }
    }

    /// Returns the next bytes of whole or partial lines, or `None` at the end: at once when
    /// nothing more is committed and `follow` is false, else once the log is complete and read.
    pub async fn next_chunk(&mut self, follow: bool) -> Result<Option<bytes::Bytes>, JournalError> {
        if !self.positioned {
            let log = Arc::clone(&self.log);
            let from = self.from;
            let (file, (offset, skip)) = tokio::task::spawn_blocking(move || {
                let file = File::open(&log.path).map_err(io_error("open", &log.path))?;
                Ok::<_, JournalError>((file, log.start_of(from)?))
            })
            .await??;
            self.file = Some(Arc::new(file));
            self.offset = offset;
            self.skip_lines = skip;
            self.positioned = true;
        }
        loop {
            let committed = *self.committed.borrow_and_update();
            if self.offset < committed.bytes {
                if let Some(chunk) = self.read_chunk(committed.bytes).await? {
                    return Ok(Some(chunk));
                }
                continue;
            }
            if committed.complete || !follow {
                return Ok(None);
            }
            if self.committed.changed().await.is_err() {
                // The log was dropped (its execution was deleted): nothing more will come.
                return Ok(None);
            }
        }
    }

    /// Reads up to [`READ_CHUNK_BYTES`] below `end`, dropping lines still to skip; returns `None`
    /// when everything read was skipped.
    async fn read_chunk(&mut self, end: u64) -> Result<Option<bytes::Bytes>, JournalError> {
        let file = Arc::clone(self.file.as_ref().expect("positioned before reading"));
        let offset = self.offset;
        let length = usize::try_from(end - offset).unwrap_or(usize::MAX).min(READ_CHUNK_BYTES);
        let path = self.log.path.clone();
        let buffer = tokio::task::spawn_blocking(move || {
            let mut buffer = vec![0u8; length];
            file.read_exact_at(&mut buffer, offset).map(|()| buffer)
        })
        .await?
        .map_err(io_error("read", &path))?;
        self.offset += buffer.len() as u64;
        let mut start = 0;
        while self.skip_lines > 0 {
            match buffer[start..].iter().position(|&byte| byte == b'\n') {
                Some(newline) => {
                    start += newline + 1;
                    self.skip_lines -= 1;
                }
                None => {
                    start = buffer.len();
                    break;
                }
            }
        }
        if start == buffer.len() {
            return Ok(None);
        }
        let mut chunk = bytes::Bytes::from(buffer);
        Ok(Some(chunk.split_off(start)))
    }
}

/// Writes `state.json` atomically: a temp file, fsync, rename, fsync of the folder (blocking).
pub fn write_state(dir: &Path, state: &StoredExecution) -> Result<(), JournalError> {
    let path = dir.join(STATE_FILE);
    let temp = dir.join(format!("{STATE_FILE}.tmp"));
    let text = serde_json::to_vec_pretty(state).expect("the execution state serializes to JSON");
    let mut file = File::create(&temp).map_err(io_error("create", &temp))?;
    file.write_all(&text).map_err(io_error("write", &temp))?;
    file.sync_all().map_err(io_error("flush", &temp))?;
    std::fs::rename(&temp, &path).map_err(io_error("replace", &path))?;
    sync_dir(dir)
}

/// Reads `state.json` of an execution folder (blocking).
pub fn read_state(dir: &Path) -> Result<StoredExecution, JournalError> {
    let path = dir.join(STATE_FILE);
    let text = std::fs::read(&path).map_err(io_error("read", &path))?;
    let state: StoredExecution =
        serde_json::from_slice(&text).map_err(|error| JournalError::Corrupt { path: path.clone(), message: error.to_string() })?;
    if state.format != STATE_FORMAT {
        return Err(JournalError::Corrupt { path, message: format!("format {} is not the supported {STATE_FORMAT}", state.format) });
    }
    Ok(state)
}

/// Flushes a folder's entries (new and renamed files) to the disk (blocking).
pub fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir).and_then(|folder| folder.sync_all()).map_err(io_error("flush the folder", dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower_plugin_api::{Channel, LogFlags, Stream};

    fn record(line: &str) -> LogRecord {
        LogRecord {
            seq: 999,
            timestamp: Timestamp { unix_nanos: 1 },
            stream: Stream::Stdout,
            channel: Channel::Program,
            line: line.into(),
            flags: LogFlags::default(),
        }
    }

    async fn read_to_end(log: &Arc<RecordLog>, from: u64) -> Vec<LogRecord> {
        let mut reader = RecordReader::new(Arc::clone(log), from);
        let mut bytes = Vec::new();
        while let Some(chunk) = reader.next_chunk(false).await.unwrap() {
            bytes.extend_from_slice(&chunk);
        }
        bytes.split(|&byte| byte == b'\n').filter(|line| !line.is_empty()).map(|line| serde_json::from_slice(line).unwrap()).collect()
    }

    #[tokio::test]
    async fn records_readable_from_any_seq() {
        let dir = tempfile::tempdir().unwrap();
        let log = RecordLog::create(dir.path().join(LOGS_FILE)).unwrap();
        let mut writer = log.writer().unwrap();
        for batch in 0..5 {
            let records: Vec<LogRecord> = (0..1000).map(|n| record(&format!("line {}", batch * 1000 + n))).collect();
            writer.append(records).await.unwrap();
        }
        assert_eq!(log.committed().records, 5000);
        for from in [0, 1, 1023, 1024, 1025, 4999] {
            let records = read_to_end(&log, from).await;
            assert_eq!(records.len() as u64, 5000 - from, "from {from}");
            assert_eq!(records[0].seq, from);
            assert_eq!(records[0].line, format!("line {from}"));
        }
        assert!(read_to_end(&log, 5000).await.is_empty());
        assert!(read_to_end(&log, 7000).await.is_empty());
    }

    #[tokio::test]
    async fn batch_appends_like_records() {
        let dir = tempfile::tempdir().unwrap();
        let from_records = RecordLog::create(dir.path().join("records.ndjson")).unwrap();
        let from_batches = RecordLog::create(dir.path().join("batches.ndjson")).unwrap();
        let lines: Vec<LogRecord> = ["first", "", "quote \" and \u{e9}", "last"].map(record).into();
        let (mut records_writer, mut batches_writer) = (from_records.writer().unwrap(), from_batches.writer().unwrap());
        records_writer.append(lines[..1].to_vec()).await.unwrap();
        records_writer.append(lines[1..].to_vec()).await.unwrap();
        batches_writer.append(LogBatch::from_records(&lines[..1])).await.unwrap();
        assert_eq!(batches_writer.append(LogBatch::from_records(&lines[1..])).await.unwrap(), 1);

        let read = read_to_end(&from_batches, 0).await;
        assert_eq!(read.iter().map(|record| record.seq).collect::<Vec<_>>(), [0, 1, 2, 3]);
        assert_eq!(read.iter().map(|record| record.line.to_string()).collect::<Vec<_>>(), lines.iter().map(|record| record.line.to_string()).collect::<Vec<_>>());
        let text = |log: &RecordLog| std::fs::read(&log.path).unwrap();
        assert_eq!(text(&from_batches), text(&from_records));
    }

    #[tokio::test]
    async fn append_within_stops_at_size_limit() {
        let dir = tempfile::tempdir().unwrap();
        let log = RecordLog::create(dir.path().join(LOGS_FILE)).unwrap();
        let mut writer = log.writer().unwrap();
        let records: Vec<LogRecord> = (0..2000).map(|n| record(&format!("line {n:04}"))).collect();
        let mut starts = Vec::new();
        records.clone().write_lines(0, &mut Vec::new(), &mut |_, length| starts.push(length as u64));
        // Room for 1500 records and half of the next one: the index gets its entry for record 1024.
        let max = starts[1500] + (starts[1501] - starts[1500]) / 2;
        let appended = writer.append_within(records, Some(max)).await.unwrap();
        assert_eq!(appended, Appended { first_seq: 0, written: 1500, dropped: 500 });
        assert_eq!(log.committed().records, 1500);
        assert_eq!(log.committed().bytes, starts[1500]);
        assert_eq!(std::fs::metadata(log.path()).unwrap().len(), starts[1500]);

        let full = writer.append_within(vec![record("late")], Some(max)).await.unwrap();
        assert_eq!(full, Appended { first_seq: 1500, written: 0, dropped: 1 });
        let read = read_to_end(&log, 1024).await;
        assert_eq!(read.len(), 476);
        assert_eq!(read[0].line, "line 1024");
        assert_eq!(read.last().unwrap().line, "line 1499");

        // Without a limit the log goes on, numbered without a gap.
        assert_eq!(writer.append(vec![record("note")]).await.unwrap(), 1500);
        assert_eq!(read_to_end(&log, 1500).await[0].line, "note");
    }

    #[tokio::test]
    async fn scan_cuts_incomplete_last_line_and_continues_numbering() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOGS_FILE);
        let log = RecordLog::create(path.clone()).unwrap();
        let mut writer = log.writer().unwrap();
        writer.append((0..3).map(|n| record(&format!("line {n}"))).collect::<Vec<_>>()).await.unwrap();
        drop(writer);
        let mut file = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"seq\":3,\"timest").unwrap();

        let reopened = RecordLog::open_scan(path.clone()).unwrap();
        assert_eq!(reopened.committed().records, 3);
        let mut writer = reopened.writer().unwrap();
        assert_eq!(writer.append(vec![record("line 3")]).await.unwrap(), 3);
        let records = read_to_end(&reopened, 0).await;
        let seqs: Vec<_> = records.iter().map(|record| record.seq).collect();
        assert_eq!(seqs, [0, 1, 2, 3]);
    }

    #[tokio::test]
    async fn scan_rejects_misnumbered_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOGS_FILE);
        std::fs::write(&path, "{\"seq\":0,\"x\":1}\n{\"seq\":2,\"x\":1}\n").unwrap();
        let error = RecordLog::open_scan(path).unwrap_err().to_string();
        assert!(error.contains("line 2 is not record 1"), "{error}");
    }

    #[tokio::test]
    async fn follower_wakes_on_append_and_ends_on_complete() {
        let dir = tempfile::tempdir().unwrap();
        let log = RecordLog::create(dir.path().join(LOGS_FILE)).unwrap();
        let mut writer = log.writer().unwrap();
        let mut reader = RecordReader::new(Arc::clone(&log), 0);
        let follower = tokio::spawn(async move {
            let mut bytes = Vec::new();
            while let Some(chunk) = reader.next_chunk(true).await.unwrap() {
                bytes.extend_from_slice(&chunk);
            }
            bytes
        });
        writer.append(vec![record("a")]).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        writer.append(vec![record("b")]).await.unwrap();
        log.complete();
        let bytes = follower.await.unwrap();
        assert_eq!(bytes.iter().filter(|&&byte| byte == b'\n').count(), 2);
    }

    #[test]
    fn event_record_flattens_status() {
        let status = ExecutionStatus::new(tower_plugin_api::ExecutionState::crashed_with_code(3)).with_metadata("pid", "7");
        let event = EventRecord { seq: 4, recorded_at: Timestamp { unix_nanos: 0 }, status };
        let text = serde_json::to_string(&event).unwrap();
        assert!(text.starts_with("{\"seq\":4,"), "{text}");
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["state"], "crashed");
        assert_eq!(json["exit_code"], 3);
        assert_eq!(serde_json::from_str::<EventRecord>(&text).unwrap(), event);
    }

    #[tokio::test]
    async fn state_file_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let state = StoredExecution {
            format: STATE_FORMAT,
            id: "run-1".into(),
            created_at: Timestamp::now(),
            fingerprint: "ab".into(),
            spec: serde_json::json!({"run_id": "run-1"}),
            package: PackageInfo { origin: PackageOrigin::Upload, sha256: "00".into(), size_bytes: Some(3), url: None },
            phase: Phase::Attached,
            recoveries: 1,
            finished: None,
            cleaned_up: false,
            log_limit_reached: false,
        };
        write_state(dir.path(), &state).unwrap();
        let back = read_state(dir.path()).unwrap();
        assert_eq!(back.phase, Phase::Attached);
        assert_eq!(back.package, state.package);
    }
}
