//! Rendering an execution's events for `run`: text for people, or JSON lines for programs.

use crate::cli::OutputFormat;
use crate::json_log::LogJsonWriter;
use std::io::Write;
use tower_plugin_api::{Channel, ExecutionState, ExecutionStatus, LogBatch, LogFlags, Stream};

/// Prints events of one execution. The first write error (a closed pipe, a full disk) is kept for
/// the caller, which stops the execution; later output is dropped.
pub struct Output {
    format: OutputFormat,
    json: LogJsonWriter,
    /// Whether the next setup piece starts a new line, so it gets the `[setup]` mark.
    setup_line_start: bool,
    /// The first error writing the app's output, until [`Output::take_write_error`] takes it.
    write_error: Option<std::io::Error>,
}

impl Output {
    /// Creates a printer.
    pub fn new(format: OutputFormat) -> Self {
        Self { format, json: LogJsonWriter::default(), setup_line_start: true, write_error: None }
    }

    /// Prints log records.
    ///
    /// A batch is formatted into memory and written with one call per run of records bound for
    /// the same stream. Rust's stdout is line-buffered, so writing record by record would cost
    /// one system call per line.
    pub fn logs(&mut self, records: &LogBatch) {
        let mut batch = Batch::default();
        match self.format {
            OutputFormat::Json => {
                for record in records.iter() {
                    let text = batch.text(Destination::Stdout);
                    self.json.write(text, &record, true);
                    text.push(b'\n');
                }
            }
            OutputFormat::Text => self.text_logs(records, &mut batch),
        }
        batch.write_out();
        if let Some(error) = batch.error {
            self.write_error.get_or_insert(error);
        }
    }

    fn text_logs(&mut self, records: &LogBatch, batch: &mut Batch) {
        for record in records.iter() {
            let ends_line = !record.flags.contains(LogFlags::SPLIT) && !record.flags.contains(LogFlags::NO_NEWLINE);
            let destination = match (record.channel, record.stream) {
                (Channel::Setup, _) | (Channel::Program, Stream::Stderr) => Destination::Stderr,
                (Channel::Program, Stream::Stdout) => Destination::Stdout,
            };
            let text = batch.text(destination);
            if record.channel == Channel::Setup {
                if self.setup_line_start {
                    text.extend_from_slice(b"[setup] ");
                }
                self.setup_line_start = ends_line;
            }
            text.extend_from_slice(record.line.as_bytes());
            if ends_line {
                text.push(b'\n');
            }
        }
    }

    /// Returns the first error writing the app's output, once.
    pub fn take_write_error(&mut self) -> Option<std::io::Error> {
        self.write_error.take()
    }

    /// Prints a status change.
    pub fn status(&mut self, status: &ExecutionStatus) {
        match self.format {
            OutputFormat::Json => {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{}", json_event("status", status));
                let _ = out.flush();
            }
            OutputFormat::Text => self.message(&describe(status)),
        }
    }

    /// Prints a message of the host itself: on stderr in text mode, as a `host` event in JSON.
    pub fn message(&mut self, text: &str) {
        match self.format {
            OutputFormat::Json => {
                let event = serde_json::json!({ "event": "host", "message": text });
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{event}");
                let _ = out.flush();
            }
            OutputFormat::Text => {
                let mut stderr = std::io::stderr().lock();
                let _ = writeln!(stderr, "tower-host: {text}");
            }
        }
    }
}

/// Where a piece of output goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Destination {
    Stdout,
    Stderr,
}

/// Formatted output of one batch of records, in order: each run of consecutive records for the
/// same destination is written when the destination changes, so the order across stdout and
/// stderr stays the order of the records.
#[derive(Default)]
struct Batch {
    destination: Option<Destination>,
    pending: Vec<u8>,
    /// The first write error.
    error: Option<std::io::Error>,
}

impl Batch {
    /// Returns the buffer to append to for `destination`, writing out what is pending for the
    /// other one first.
    fn text(&mut self, destination: Destination) -> &mut Vec<u8> {
        if self.destination != Some(destination) {
            self.write_out();
            self.destination = Some(destination);
        }
        &mut self.pending
    }

    /// Writes and flushes what is pending, keeping the first error.
    fn write_out(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let result = match self.destination {
            Some(Destination::Stdout) | None => write_flushed(&mut std::io::stdout().lock(), &self.pending),
            Some(Destination::Stderr) => write_flushed(&mut std::io::stderr().lock(), &self.pending),
        };
        if let Err(error) = result {
            self.error.get_or_insert(error);
        }
        self.pending.clear();
    }
}

fn write_flushed(out: &mut impl Write, bytes: &[u8]) -> std::io::Result<()> {
    out.write_all(bytes)?;
    out.flush()
}

/// Serializes `value` as a JSON object with `"event": kind` first.
fn json_event(kind: &str, value: &impl serde::Serialize) -> String {
    let mut object = serde_json::Map::new();
    object.insert("event".to_string(), kind.into());
    if let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(value) {
        object.extend(fields);
    }
    serde_json::Value::Object(object).to_string()
}

/// Describes a status in one line for people.
pub fn describe(status: &ExecutionStatus) -> String {
    let Some(state) = status.state() else {
        return "the plugin reported a state this host does not know".to_string();
    };
    match state {
        ExecutionState::Preparing { phase } => {
            let phase = phase.as_enum().map_or("setting up", |phase| phase.as_str());
            format!("preparing ({})", phase.replace('_', " "))
        }
        ExecutionState::Running => "running".to_string(),
        ExecutionState::Exited => "exited with code 0".to_string(),
        ExecutionState::Crashed { exit_code, signal, reason } => {
            let mut text = match (exit_code.into_option(), signal.into_option()) {
                (_, Some(signal)) => format!("crashed: killed by signal {signal}{}", signal_name(signal)),
                (Some(code), None) => format!("crashed with exit code {code}"),
                (None, None) => "crashed".to_string(),
            };
            if let Some(reason) = reason.as_ref().into_option() {
                text.push_str(&format!(" ({reason})"));
            }
            text
        }
        ExecutionState::Cancelled { forced: true } => "cancelled (killed)".to_string(),
        ExecutionState::Cancelled { forced: false } => "cancelled".to_string(),
        ExecutionState::TimedOut { forced: true } => "timed out (killed after the grace period)".to_string(),
        ExecutionState::TimedOut { forced: false } => "timed out".to_string(),
        ExecutionState::Failed { code, stage, message, .. } => {
            let stage = stage.as_enum().map_or("unknown", |stage| stage.as_str());
            let where_ = if stage == "setup" { "during setup" } else { "in the platform" };
            format!("failed {where_}: {message} ({})", tower_plugin_api::error::code_name(code))
        }
        ExecutionState::Lost { message } => format!("lost: {message}"),
        _ => format!("in state {}", state.name()),
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGHUP => " (SIGHUP)",
        libc::SIGINT => " (SIGINT)",
        libc::SIGQUIT => " (SIGQUIT)",
        libc::SIGILL => " (SIGILL)",
        libc::SIGABRT => " (SIGABRT)",
        libc::SIGBUS => " (SIGBUS)",
        libc::SIGFPE => " (SIGFPE)",
        libc::SIGKILL => " (SIGKILL)",
        libc::SIGSEGV => " (SIGSEGV)",
        libc::SIGPIPE => " (SIGPIPE)",
        libc::SIGTERM => " (SIGTERM)",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower_plugin_api::LogRecord;

    #[test]
    fn describe_names_signal() {
        let status = ExecutionStatus::new(ExecutionState::crashed_by_signal(libc::SIGSEGV));
        assert_eq!(describe(&status), "crashed: killed by signal 11 (SIGSEGV)");
    }

    #[test]
    fn describe_names_exit_code() {
        assert_eq!(describe(&ExecutionStatus::new(ExecutionState::crashed_with_code(138))), "crashed with exit code 138");
    }

    #[test]
    fn log_json_matches_generic_event() {
        let record = LogRecord {
            seq: 3,
            timestamp: tower_plugin_api::Timestamp { unix_nanos: 1_700_000_000_123_456_789 },
            stream: Stream::Stderr,
            channel: Channel::Program,
            line: "quote \" tab \t unicode é".into(),
            flags: LogFlags::SPLIT,
        };
        let mut direct = Vec::new();
        LogJsonWriter::default().write(&mut direct, &record.as_line_ref(), true);
        assert_eq!(String::from_utf8(direct).unwrap(), json_event("log", &record));
    }

    #[test]
    fn json_event_puts_kind_and_fields_together() {
        let status = ExecutionStatus::new(ExecutionState::Exited);
        let value: serde_json::Value = serde_json::from_str(&json_event("status", &status)).unwrap();
        assert_eq!(value["event"], "status");
        assert_eq!(value["state"], "exited");
    }
}
