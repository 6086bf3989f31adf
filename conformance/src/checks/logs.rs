//! Log delivery: volume, order, streams, channels, and lines that are not plain.

use crate::apps;
use crate::session::{describe, Observed, Session, Step, Verdict};
use std::time::Duration;
use tower_plugin_api::{Channel, ExecutionState, LogFlags, LogRecord, Stream};

const RUN_LIMIT: Duration = Duration::from_secs(120);

fn program_records(observed: &Observed) -> Vec<&LogRecord> {
    observed.records.iter().filter(|record| record.channel == Channel::Program).collect()
}

fn expect_exited(observed: &Observed) -> Step {
    match observed.terminal_state()? {
        ExecutionState::Exited => Ok(()),
        _ => Err(format!("expected exited, got {}", describe(observed.terminal().expect("terminal_state found it")))),
    }
}

/// Checks that 10,000 lines all arrive, in order, before the terminal status, with gapless sequence numbers.
pub async fn logs_many_lines(session: &Session) -> Step<Verdict> {
    const COUNT: usize = 10_000;
    let script = format!("for i in $(seq 1 {COUNT}); do echo \"line $i\"; done\n");
    let package = apps::bash(session.package_dir(), "logs_many_lines", &script)?;
    let observed = session.run_to_end(session.spec("logs_many_lines", package), RUN_LIMIT).await?;
    let lines = observed.program_lines();
    if lines.len() != COUNT {
        return Err(format!("{} of {COUNT} lines arrived before the terminal status", lines.len()));
    }
    if let Some((index, line)) = lines.iter().enumerate().find(|(index, line)| **line != format!("line {}", index + 1)) {
        return Err(format!("program record {index} is `{line}`, expected `line {}`", index + 1));
    }
    expect_exited(&observed)?;
    Ok(Verdict::Pass)
}

/// Checks that lines of stdout and stderr arrive on their streams, or all on stdout when the
/// capabilities report `merged_streams`.
pub async fn logs_stdout_and_stderr(session: &Session) -> Step<Verdict> {
    let script = "echo out-1\necho err-1 >&2\necho out-2\necho err-2 >&2\n";
    let package = apps::bash(session.package_dir(), "logs_stdout_and_stderr", script)?;
    let observed = session.run_to_end(session.spec("logs_stdout_and_stderr", package), RUN_LIMIT).await?;
    let records = program_records(&observed);
    let on = |stream: Stream, prefix: &str| -> Vec<String> {
        records.iter().filter(|r| r.stream == stream && r.line.starts_with(prefix)).map(|r| r.line.to_string()).collect()
    };
    let (err_stream, merged) = if session.capabilities.merged_streams { (Stream::Stdout, " (merged_streams)") } else { (Stream::Stderr, "") };
    let out = on(Stream::Stdout, "out-");
    let err = on(err_stream, "err-");
    if out != ["out-1", "out-2"] {
        return Err(format!("expected out-1 and out-2 on stdout, got {out:?}"));
    }
    if err != ["err-1", "err-2"] {
        return Err(format!("expected err-1 and err-2 on {err_stream:?}{merged}, got {err:?}"));
    }
    expect_exited(&observed)?;
    Ok(Verdict::Pass)
}

/// Checks that a Python app's setup output is on the setup channel, before its program's output, which is
/// on the program channel.
pub async fn logs_setup_and_program_channels(session: &Session) -> Step<Verdict> {
    let package = apps::python(session.package_dir(), "logs_channels", "print('program-line')\n", &[])?;
    let observed = session.run_to_end(session.spec("logs_setup_and_program_channels", package), Duration::from_secs(180)).await?;
    expect_exited(&observed)?;
    let Some(program) = observed.records.iter().find(|r| r.line == "program-line") else {
        return Err("the app's line `program-line` did not arrive".to_string());
    };
    if program.channel != Channel::Program {
        return Err(format!("the app's line is on the {:?} channel, expected Program", program.channel));
    }
    let setup: Vec<_> = observed.records.iter().filter(|r| r.channel == Channel::Setup).collect();
    if setup.is_empty() {
        return Err("no record on the setup channel, although setting up the Python app's environment ran".to_string());
    }
    if let Some(late) = setup.iter().find(|r| r.seq > program.seq) {
        return Err(format!("setup record `{}` came after the program's output", late.line));
    }
    Ok(Verdict::Pass)
}

/// Checks that a last line without a newline arrives whole, not flagged as continued.
pub async fn logs_last_line_without_newline(session: &Session) -> Step<Verdict> {
    let package = apps::bash(session.package_dir(), "logs_no_newline", "printf 'first\\nlast-without-newline'\n")?;
    let observed = session.run_to_end(session.spec("logs_last_line_without_newline", package), RUN_LIMIT).await?;
    let records = program_records(&observed);
    let lines: Vec<_> = records.iter().map(|r| r.line.as_str()).collect();
    if lines != ["first", "last-without-newline"] {
        return Err(format!("expected the lines `first` and `last-without-newline`, got {lines:?}"));
    }
    let last = records[1];
    if last.flags.contains(LogFlags::SPLIT) || last.flags.contains(LogFlags::TRUNCATED) {
        return Err(format!("the last line is flagged {:#x}, but nothing continues it and nothing was dropped", last.flags.0));
    }
    expect_exited(&observed)?;
    Ok(Verdict::Pass)
}

/// Invalid UTF-8 is replaced with U+FFFD and flagged, and the text around it stays.
pub async fn logs_invalid_utf8(session: &Session) -> Step<Verdict> {
    let package = apps::bash(session.package_dir(), "logs_invalid_utf8", "printf 'bad \\377\\376 end\\n'\necho next\n")?;
    let observed = session.run_to_end(session.spec("logs_invalid_utf8", package), RUN_LIMIT).await?;
    let records = program_records(&observed);
    let Some(record) = records.iter().find(|r| r.line.starts_with("bad ")) else {
        return Err(format!("the line with invalid UTF-8 did not arrive; program lines: {:?}", observed.program_lines()));
    };
    if !record.line.ends_with(" end") || !record.line.contains('\u{FFFD}') {
        return Err(format!("expected `bad <U+FFFD…> end`, got {:?}", record.line.as_str()));
    }
    if !record.flags.contains(LogFlags::INVALID_UTF8) {
        return Err(format!("the line is not flagged INVALID_UTF8 (flags {:#x})", record.flags.0));
    }
    if !observed.printed("next") {
        return Err("the line after the invalid UTF-8 did not arrive".to_string());
    }
    expect_exited(&observed)?;
    Ok(Verdict::Pass)
}

/// The unit of the long line: ASCII and a three-byte character, so that a split on a byte count
/// that ignores characters shows as replaced or lost text.
const LONG_LINE_UNIT: &str = "0123456789\u{20AC}";
/// How often the unit is doubled: 13 bytes times 2^17 is 1,703,936 bytes, above 1 MiB.
const LONG_LINE_DOUBLINGS: u32 = 17;

/// Checks that a line longer than 1 MiB arrives whole: every piece but the last flagged SPLIT, none
/// truncated, nothing lost, and the next line after it.
pub async fn logs_long_line(session: &Session) -> Step<Verdict> {
    let script = format!(
        "s='{LONG_LINE_UNIT}'\nfor i in $(seq 1 {LONG_LINE_DOUBLINGS}); do s=\"$s$s\"; done\nprintf '%s\\n' \"$s\"\necho after-long-line\n"
    );
    let package = apps::bash(session.package_dir(), "logs_long_line", &script)?;
    let observed = session.run_to_end(session.spec("logs_long_line", package), RUN_LIMIT).await?;

    let expected = LONG_LINE_UNIT.repeat(1 << LONG_LINE_DOUBLINGS);
    let records = program_records(&observed);
    let Some(first) = records.iter().position(|r| r.line.starts_with("0123456789")) else {
        return Err("no piece of the long line arrived".to_string());
    };

    let mut joined = String::new();
    let mut pieces = 0;
    let mut ended = false;
    for record in &records[first..] {
        if record.flags.contains(LogFlags::TRUNCATED) {
            return Err(format!("piece {pieces} of the long line is flagged TRUNCATED"));
        }
        joined.push_str(&record.line);
        pieces += 1;
        if !record.flags.contains(LogFlags::SPLIT) {
            ended = true;
            break;
        }
    }
    if !ended {
        return Err(format!("the last of {pieces} pieces of the long line is flagged SPLIT, but no piece follows"));
    }
    if joined != expected {
        let differs_at = joined.bytes().zip(expected.bytes()).position(|(left, right)| left != right).unwrap_or(joined.len().min(expected.len()));
        return Err(format!(
            "the {pieces} pieces of the long line join to {} bytes, expected {}, first difference at byte {differs_at}",
            joined.len(),
            expected.len()
        ));
    }
    if records.get(first + pieces).map(|r| r.line.as_str()) != Some("after-long-line") {
        return Err("the line after the long line did not follow it".to_string());
    }
    expect_exited(&observed)?;
    Ok(Verdict::Pass)
}
