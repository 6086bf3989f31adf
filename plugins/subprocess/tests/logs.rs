//! Log records of a program: order, completeness, long lines, invalid UTF-8, last lines.

mod common;

use common::{state, Harness, PackageBuilder};
use tower_plugin_api::{Channel, ExecutionState, LogFlags, Stream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_lines_arrive_in_order_before_status() {
    let harness = Harness::new().await;
    let (status, recorder) = harness.run(&PackageBuilder::bash("seq 1 10000\nexit 0\n")).await;

    assert_eq!(state(&status), ExecutionState::Exited);
    let expected: Vec<String> = (1..=10_000).map(|number| number.to_string()).collect();
    assert_eq!(recorder.program_lines(Stream::Stdout), expected);
    recorder.assert_terminal_is_last();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_written_just_before_a_crash_arrives() {
    let harness = Harness::new().await;
    let (status, recorder) = harness.run(&PackageBuilder::bash("seq 1 500 >&2\nkill -KILL $$\n")).await;
    assert_eq!(state(&status), ExecutionState::crashed_by_signal(9));
    assert_eq!(recorder.program_lines(Stream::Stderr).len(), 500);
    recorder.assert_terminal_is_last();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_replaced_then_reading_continues() {
    let harness = Harness::new().await;
    let script = "printf 'bad \\xff\\xfe bytes\\n' >&2\necho after >&2\necho out\n";
    let (status, recorder) = harness.run(&PackageBuilder::bash(script)).await;

    assert_eq!(state(&status), ExecutionState::Exited);
    let stderr: Vec<_> = recorder.logs().into_iter().filter(|record| record.stream == Stream::Stderr).collect();
    assert_eq!(stderr.len(), 2);
    assert_eq!(stderr[0].line.as_str(), "bad \u{fffd}\u{fffd} bytes");
    assert!(stderr[0].flags.contains(LogFlags::INVALID_UTF8));
    assert_eq!(stderr[1].line.as_str(), "after");
    assert_eq!(stderr[1].flags, LogFlags::default());
    assert_eq!(recorder.program_lines(Stream::Stdout), ["out"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn printf_without_newline_is_flagged() {
    let harness = Harness::new().await;
    let (_, recorder) = harness.run(&PackageBuilder::bash("echo first\nprintf 'no newline'\n")).await;
    let stdout: Vec<_> = recorder.logs().into_iter().filter(|record| record.channel == Channel::Program).collect();
    assert_eq!(stdout.len(), 2);
    assert_eq!(stdout[0].flags, LogFlags::default());
    assert_eq!(stdout[1].line.as_str(), "no newline");
    assert_eq!(stdout[1].flags, LogFlags::NO_NEWLINE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_line_is_split_and_flagged() {
    let harness = Harness::with(|settings| settings.max_line_bytes = 100).await;
    let script = "head -c 250 /dev/zero | tr '\\0' a\necho\necho short\n";
    let (_, recorder) = harness.run(&PackageBuilder::bash(script)).await;

    let records: Vec<_> = recorder.logs().into_iter().filter(|record| record.stream == Stream::Stdout).collect();
    let shape: Vec<(usize, bool)> = records.iter().map(|record| (record.line.len(), record.flags.contains(LogFlags::SPLIT))).collect();
    assert_eq!(shape, [(100, true), (100, true), (50, false), (5, false)]);
    assert!(records[..3].iter().all(|record| record.line.chars().all(|c| c == 'a')));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_stamped_when_read() {
    let harness = Harness::new().await;
    let (status, recorder) = harness.run(&PackageBuilder::bash("echo one\nsleep 0.3\necho two\n")).await;
    let stamps: Vec<i64> = recorder.logs().iter().map(|record| record.timestamp.unix_nanos).collect();
    assert_eq!(stamps.len(), 2);
    assert!(stamps[1] - stamps[0] >= 200_000_000, "{stamps:?}");
    assert!(status.ended_at.unwrap().unix_nanos >= stamps[1]);
}
