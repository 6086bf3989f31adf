//! Rendering an execution's events for `run`: text for people, or JSON lines for programs.

use crate::cli::OutputFormat;
use std::io::Write;
use tower_plugin_api::{Channel, ExecutionState, ExecutionStatus, LogFlags, LogRecord, Stream};

/// Prints events of one execution. Write errors (a closed pipe) are ignored so that the execution
/// still runs to its end and is cleaned up.
pub struct Output {
    format: OutputFormat,
    /// Whether the next setup piece starts a new line, so it gets the `[setup]` mark.
    setup_line_start: bool,
}

impl Output {
    /// Creates a printer.
    pub fn new(format: OutputFormat) -> Self {
        Self { format, setup_line_start: true }
    }

    /// Prints log records.
    pub fn logs(&mut self, records: &[LogRecord]) {
        match self.format {
            OutputFormat::Json => {
                let mut out = std::io::stdout().lock();
                for record in records {
                    let _ = writeln!(out, "{}", json_event("log", record));
                }
                let _ = out.flush();
            }
            OutputFormat::Text => self.text_logs(records),
        }
    }

    fn text_logs(&mut self, records: &[LogRecord]) {
        let mut stdout = std::io::stdout().lock();
        let mut stderr = std::io::stderr().lock();
        for record in records {
            let ends_line = !record.flags.contains(LogFlags::SPLIT) && !record.flags.contains(LogFlags::NO_NEWLINE);
            let newline = if ends_line { "\n" } else { "" };
            match (record.channel, record.stream) {
                (Channel::Setup, _) => {
                    let mark = if self.setup_line_start { "[setup] " } else { "" };
                    let _ = write!(stderr, "{mark}{}{newline}", record.line);
                    self.setup_line_start = ends_line;
                }
                (Channel::Program, Stream::Stdout) => {
                    let _ = write!(stdout, "{}{newline}", record.line);
                }
                (Channel::Program, Stream::Stderr) => {
                    let _ = write!(stderr, "{}{newline}", record.line);
                }
            }
        }
        let _ = stdout.flush();
        let _ = stderr.flush();
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
        ExecutionState::Cancelled { forced: true } => "cancelled (killed after the grace period)".to_string(),
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
    fn json_event_puts_kind_and_fields_together() {
        let status = ExecutionStatus::new(ExecutionState::Exited);
        let value: serde_json::Value = serde_json::from_str(&json_event("status", &status)).unwrap();
        assert_eq!(value["event"], "status");
        assert_eq!(value["state"], "exited");
    }
}
