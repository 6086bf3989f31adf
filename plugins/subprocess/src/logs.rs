//! Reading a process's stdout and stderr into log records: bytes are read in chunks, split on
//! `\n`, and the lines of both streams go to the event sink in batches, in the order they were
//! read.

use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use tower_plugin_api::sdk::EventSink;
use tower_plugin_api::{Channel, LogBatch, LogFlags, Stream, Timestamp};

/// Size of one read from a pipe. Linux pipes hold 64 KiB by default, so one read can empty one.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Splits a byte stream into log lines of at most `max_line_bytes` bytes.
///
/// Memory stays bounded by `max_line_bytes` plus one chunk, however long a line is. A line
/// longer than the maximum becomes several records; every record but the last of that line is
/// flagged [`LogFlags::SPLIT`]. Pieces end at a UTF-8 character boundary where the bytes allow
/// it, so splitting alone never produces [`LogFlags::INVALID_UTF8`].
#[derive(Debug)]
pub struct LineSplitter {
    stream: Stream,
    channel: Channel,
    max_line_bytes: usize,
    /// Bytes of the current line not yet delivered.
    partial: Vec<u8>,
}

impl LineSplitter {
    /// Creates a splitter for one stream. `max_line_bytes` is at least 4, one UTF-8 character.
    pub fn new(stream: Stream, channel: Channel, max_line_bytes: usize) -> Self {
        Self { stream, channel, max_line_bytes: max_line_bytes.max(4), partial: Vec::new() }
    }

    /// Appends a chunk of output and moves every finished line or piece to `out`.
    ///
    /// The lines that the chunk completes are checked for UTF-8 in one pass. When they are valid,
    /// the common case, each short line becomes a record by one copy of its bytes.
    pub fn push(&mut self, chunk: &[u8], timestamp: Timestamp, out: &mut LogBatch) {
        let mut rest = chunk;
        if !self.partial.is_empty() {
            let Some(newline) = memchr::memchr(b'\n', rest) else {
                self.append(rest, timestamp, out);
                return;
            };
            self.append(&rest[..newline], timestamp, out);
            self.end_line(timestamp, out);
            rest = &rest[newline + 1..];
        }
        // Here `rest` starts a line, and the lines up to its last newline are complete.
        let Some(last_newline) = memchr::memrchr(b'\n', rest) else {
            self.append(rest, timestamp, out);
            return;
        };
        let complete = &rest[..=last_newline];
        match std::str::from_utf8(complete) {
            Ok(text) => {
                let mut start = 0;
                for newline in memchr::memchr_iter(b'\n', complete) {
                    let line = &text[start..newline];
                    start = newline + 1;
                    if line.len() <= self.max_line_bytes {
                        out.push(self.stream, self.channel, line, LogFlags::default(), timestamp);
                    } else {
                        self.append(line.as_bytes(), timestamp, out);
                        self.end_line(timestamp, out);
                    }
                }
            }
            Err(_) => {
                for line in complete[..last_newline].split(|&byte| byte == b'\n') {
                    self.append(line, timestamp, out);
                    self.end_line(timestamp, out);
                }
            }
        }
        self.append(&rest[last_newline + 1..], timestamp, out);
    }

    /// Delivers the unfinished line as a finished one: its newline arrived.
    fn end_line(&mut self, timestamp: Timestamp, out: &mut LogBatch) {
        let line = std::mem::take(&mut self.partial);
        self.record(&line, LogFlags::default(), timestamp, out);
    }

    /// Delivers what is left after end of file: a last line without a newline, flagged
    /// [`LogFlags::NO_NEWLINE`].
    pub fn finish(&mut self, timestamp: Timestamp, out: &mut LogBatch) {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.record(&line, LogFlags::NO_NEWLINE, timestamp, out);
        }
    }

    /// Adds bytes of an unfinished line, emitting pieces while it is over the maximum. A line of
    /// exactly the maximum stays whole: only a byte past it proves the line is longer.
    fn append(&mut self, bytes: &[u8], timestamp: Timestamp, out: &mut LogBatch) {
        self.partial.extend_from_slice(bytes);
        while self.partial.len() > self.max_line_bytes {
            let cut = utf8_boundary_before(&self.partial, self.max_line_bytes);
            let piece: Vec<u8> = self.partial.drain(..cut).collect();
            self.record(&piece, LogFlags::SPLIT, timestamp, out);
        }
    }

    /// Adds a record of bytes that may not be UTF-8 to `out`.
    fn record(&self, bytes: &[u8], mut flags: LogFlags, timestamp: Timestamp, out: &mut LogBatch) {
        let line = String::from_utf8_lossy(bytes);
        if let std::borrow::Cow::Owned(_) = line {
            flags |= LogFlags::INVALID_UTF8;
        }
        out.push(self.stream, self.channel, &line, flags, timestamp);
    }
}

/// Returns where to cut `bytes` so that the first piece has at most `max` bytes and does not end
/// inside a UTF-8 character. Invalid bytes are cut anywhere.
fn utf8_boundary_before(bytes: &[u8], max: usize) -> usize {
    // A character is at most 4 bytes, so its first byte is at most 3 bytes before the cut.
    for start in (max.saturating_sub(3)..max).rev() {
        let byte = bytes[start];
        if byte & 0b1100_0000 == 0b1000_0000 {
            continue; // a continuation byte: the character starts earlier
        }
        let length = match byte {
            0x00..=0x7f => 1,
            0xc0..=0xdf => 2,
            0xe0..=0xef => 3,
            0xf0..=0xf7 => 4,
            _ => return max,
        };
        // Cut before the character when it does not fit, unless the piece would be empty.
        return if start + length > max && start > 0 { start } else { max };
    }
    max
}

/// Size of finished lines at which a batch goes to the sink without waiting, counting
/// [`RECORD_COST_BYTES`] for each line besides its text.
const BATCH_BYTES: usize = 64 * 1024;
/// Bytes a line counts against [`BATCH_BYTES`] besides its text, so that empty lines fill a
/// batch too: 1,024 of them do.
const RECORD_COST_BYTES: usize = 64;
/// How long finished lines wait for more output before they go to the sink. Without the wait,
/// a program that writes a little at a time (a 4 KiB stdio buffer, say) costs one sink call
/// per write. With it, a flood of output costs one call per [`BATCH_BYTES`].
const BATCH_LINGER: Duration = Duration::from_millis(2);

/// One output pipe of a process and the state of its reading.
struct Pipe<R> {
    reader: R,
    splitter: LineSplitter,
    buffer: Vec<u8>,
    open: bool,
}

impl<R: AsyncRead + Unpin> Pipe<R> {
    fn new(reader: R, splitter: LineSplitter) -> Self {
        Self { reader, splitter, buffer: vec![0; READ_CHUNK_BYTES], open: true }
    }

    /// Reads once. Cancel safe: a read that did not finish consumed nothing.
    async fn read(&mut self) -> std::io::Result<usize> {
        self.reader.read(&mut self.buffer).await
    }

    /// Splits what the last read returned, or closes the pipe on end of file or an error.
    fn take(&mut self, read: std::io::Result<usize>, batch: &mut Batch) {
        match read {
            Ok(0) => self.close(batch),
            Ok(count) => {
                let before = batch.mark();
                self.splitter.push(&self.buffer[..count], Timestamp::now(), &mut batch.lines);
                batch.count_from(before);
            }
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => {
                tracing::warn!(stream = ?self.splitter.stream, %error, "failed to read process output; the rest of this stream is lost");
                self.close(batch);
            }
        }
    }

    fn close(&mut self, batch: &mut Batch) {
        self.open = false;
        let before = batch.mark();
        self.splitter.finish(Timestamp::now(), &mut batch.lines);
        batch.count_from(before);
    }
}

/// Finished lines of both pipes, in the order they were read, waiting for one sink call.
#[derive(Default)]
struct Batch {
    lines: LogBatch,
    bytes: usize,
    /// When the batch must go out even if it is small.
    deadline: Option<tokio::time::Instant>,
}

impl Batch {
    /// Returns the number of lines and of text bytes so far, for [`Batch::count_from`].
    fn mark(&self) -> (usize, usize) {
        (self.lines.len(), self.lines.text_len())
    }

    /// Counts the lines added since `mark` returned `before`, and starts the linger clock of a
    /// new batch.
    fn count_from(&mut self, before: (usize, usize)) {
        let (lines, text) = self.mark();
        self.bytes += (text - before.1) + (lines - before.0) * RECORD_COST_BYTES;
        if self.deadline.is_none() && !self.lines.is_empty() {
            self.deadline = Some(tokio::time::Instant::now() + BATCH_LINGER);
        }
    }

    /// Tells whether the batch must go out now: it is full, or its linger time has passed.
    fn is_due(&self) -> bool {
        self.bytes >= BATCH_BYTES || self.deadline.is_some_and(|deadline| tokio::time::Instant::now() >= deadline)
    }

    async fn deliver(&mut self, events: &EventSink) {
        self.bytes = 0;
        self.deadline = None;
        if !self.lines.is_empty() {
            // The next batch is likely as long as this one: reserving it up front saves the
            // reallocations of a growing vector.
            let next = LogBatch::with_capacity(self.lines.len(), self.lines.text_len());
            events.log_batch(std::mem::replace(&mut self.lines, next)).await;
        }
    }
}

/// Reads a process's stdout and stderr until both reach end of file, or until `stop` fires,
/// and delivers their lines to `events` in the order they were read.
///
/// Lines go to the sink in batches: at [`BATCH_BYTES`], [`BATCH_LINGER`] after the first line
/// of a batch was read, at end of file and at `stop`. A sink call blocks while the host's
/// buffer is full, which stops the reading and, once the pipes fill, the program.
pub async fn forward_output<O, E>(
    stdout: (O, LineSplitter),
    stderr: (E, LineSplitter),
    events: EventSink,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) where
    O: AsyncRead + Unpin,
    E: AsyncRead + Unpin,
{
    let mut stdout = Pipe::new(stdout.0, stdout.1);
    let mut stderr = Pipe::new(stderr.0, stderr.1);
    let mut batch = Batch::default();
    let mut stopping = false;
    let mut stop_dropped = false;
    while (stdout.open || stderr.open) && !stopping {
        // Unbiased: tokio polls the branches in a random order, so a flood on one pipe cannot
        // hold back the other.
        tokio::select! {
            read = stdout.read(), if stdout.open => stdout.take(read, &mut batch),
            read = stderr.read(), if stderr.open => stderr.take(read, &mut batch),
            () = sleep_until(batch.deadline), if batch.deadline.is_some() => batch.deliver(&events).await,
            // A dropped sender is no request to stop; the pipes still end the reading.
            sent = &mut stop, if !stop_dropped => match sent {
                Ok(()) => stopping = true,
                Err(_) => stop_dropped = true,
            },
        }
        // Checked after every read as well: while a pipe stays readable, the timer branch
        // above may not get its turn.
        if batch.is_due() {
            batch.deliver(&events).await;
        }
    }
    for pipe in [&mut stdout.splitter, &mut stderr.splitter] {
        let before = batch.mark();
        pipe.finish(Timestamp::now(), &mut batch.lines);
        batch.count_from(before);
    }
    batch.deliver(&events).await;
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Timestamp = Timestamp { unix_nanos: 0 };

    fn split(max: usize, chunks: &[&[u8]]) -> Vec<(String, LogFlags)> {
        let mut splitter = LineSplitter::new(Stream::Stdout, Channel::Program, max);
        let mut out = LogBatch::default();
        for chunk in chunks {
            splitter.push(chunk, NOW, &mut out);
        }
        splitter.finish(NOW, &mut out);
        out.iter().map(|line| (line.line.to_string(), line.flags)).collect()
    }

    fn plain(text: &str) -> (String, LogFlags) {
        (text.to_string(), LogFlags::default())
    }

    #[test]
    fn lines_split_on_newline_across_chunks() {
        let lines = split(64, &[b"one\ntw", b"o\n\nthree\n"]);
        assert_eq!(lines, vec![plain("one"), plain("two"), plain(""), plain("three")]);
    }

    #[test]
    fn last_line_without_newline_is_flagged() {
        let lines = split(64, &[b"done\npartial"]);
        assert_eq!(lines, vec![plain("done"), ("partial".to_string(), LogFlags::NO_NEWLINE)]);
    }

    #[test]
    fn long_line_splits_into_flagged_pieces() {
        let lines = split(4, &[b"abcdefghij\nxy\n"]);
        assert_eq!(
            lines,
            vec![
                ("abcd".to_string(), LogFlags::SPLIT),
                ("efgh".to_string(), LogFlags::SPLIT),
                plain("ij"),
                plain("xy"),
            ]
        );
    }

    #[test]
    fn line_of_exactly_max_bytes_stays_whole() {
        assert_eq!(split(4, &[b"abcd\n"]), vec![plain("abcd")]);
        assert_eq!(split(4, &[b"ab", b"cd", b"\n"]), vec![plain("abcd")]);
    }

    #[test]
    fn split_never_cuts_a_character() {
        // "é" is 2 bytes and "€" is 3: a cut at 4 bytes would land inside "€".
        let lines = split(4, &["aé€b\n".as_bytes()]);
        assert_eq!(lines, vec![("aé".to_string(), LogFlags::SPLIT), plain("€b")]);
        assert!(lines.iter().all(|(_, flags)| !flags.contains(LogFlags::INVALID_UTF8)));
    }

    #[test]
    fn invalid_utf8_is_replaced_and_flagged() {
        let lines = split(64, &[b"ok\n\xff\xfebad\nafter\n"]);
        assert_eq!(lines[0], plain("ok"));
        assert_eq!(lines[1], ("\u{fffd}\u{fffd}bad".to_string(), LogFlags::INVALID_UTF8));
        assert_eq!(lines[2], plain("after"));
    }

    #[test]
    fn memory_stays_bounded_for_endless_line() {
        let mut splitter = LineSplitter::new(Stream::Stderr, Channel::Setup, 16);
        let mut out = LogBatch::default();
        let chunk = [b'x'; 1000];
        for _ in 0..100 {
            splitter.push(&chunk, NOW, &mut out);
            assert!(splitter.partial.len() <= 16);
        }
        // A piece leaves only when a byte past the maximum arrives, so the last 16 bytes wait.
        assert_eq!(out.len() * 16 + splitter.partial.len(), 100_000);
        assert_eq!(splitter.partial.len(), 16);
        assert!(out.iter().all(|line| line.flags == LogFlags::SPLIT && line.line.len() == 16));
    }

    /// Splits `input` byte by byte, with none of the splitter's shortcuts.
    fn split_byte_by_byte(max: usize, input: &[u8]) -> Vec<(String, LogFlags)> {
        let mut splitter = LineSplitter::new(Stream::Stdout, Channel::Program, max);
        let mut out = LogBatch::default();
        for &byte in input {
            if byte == b'\n' {
                splitter.end_line(NOW, &mut out);
            } else {
                splitter.append(&[byte], NOW, &mut out);
            }
        }
        splitter.finish(NOW, &mut out);
        out.iter().map(|line| (line.line.to_string(), line.flags)).collect()
    }

    #[test]
    fn chunking_keeps_records() {
        // Short and long lines, multi-byte characters, invalid bytes and empty lines, cut into
        // chunks at pseudo-random places (xorshift, fixed seed).
        let pieces: [&[u8]; 7] = [b"short", "d\u{e9}j\u{e0} \u{20ac}".as_bytes(), b"\xff\xfe", b"", b"a line longer than sixteen bytes", b"\xe2\x82", b"x"];
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |bound: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % bound as u64) as usize
        };
        for round in 0..200 {
            let mut input = Vec::new();
            for _ in 0..next(40) {
                input.extend_from_slice(pieces[next(pieces.len())]);
                if next(3) > 0 {
                    input.push(b'\n');
                }
            }
            let max = 4 + next(20);
            let expected = split_byte_by_byte(max, &input);
            let mut chunks = Vec::new();
            let mut rest = &input[..];
            while !rest.is_empty() {
                let (chunk, after) = rest.split_at(1 + next(rest.len().min(50)));
                chunks.push(chunk);
                rest = after;
            }
            assert_eq!(split(max, &chunks), expected, "round {round}, max {max}, input {input:?}");
            assert_eq!(split(max, &[&input]), expected, "round {round}, max {max}, one chunk");
        }
    }

    #[test]
    fn boundary_of_invalid_bytes_is_the_maximum() {
        assert_eq!(utf8_boundary_before(&[0xff; 8], 4), 4);
        assert_eq!(utf8_boundary_before("€€".as_bytes(), 4), 3);
        assert_eq!(utf8_boundary_before("\u{1F600}x".as_bytes(), 4), 4);
    }
}

#[cfg(test)]
mod forward_tests {
    use super::*;
    use abi_stable::{sabi_trait::TD_Opaque, std_types::RVec};
    use std::sync::{Arc, Mutex};
    use tokio::io::AsyncWriteExt;
    use tower_plugin_api::ffi::{EventSinkFfi, EventSinkFfi_TO};
    use tower_plugin_api::{ExecutionStatus, LogRecord};

    /// Records each sink call's batch of records.
    #[derive(Clone, Default)]
    struct Batches(Arc<Mutex<Vec<Vec<LogRecord>>>>);

    impl EventSinkFfi for Batches {
        fn logs(&self, records: RVec<LogRecord>) {
            self.0.lock().unwrap().push(records.into_vec());
        }

        fn status(&self, _status: ExecutionStatus) {}
    }

    impl Batches {
        fn sink(&self) -> EventSink {
            EventSink::new(EventSinkFfi_TO::from_value(self.clone(), TD_Opaque))
        }

        fn lines(&self) -> Vec<(Stream, String)> {
            let batches = self.0.lock().unwrap();
            batches.iter().flatten().map(|record| (record.stream, record.line.to_string())).collect()
        }

        fn calls(&self) -> usize {
            self.0.lock().unwrap().len()
        }

        async fn wait_for_lines(&self, count: usize) {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while self.lines().len() < count {
                assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {count} lines; got {:?}", self.lines());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }

    fn splitters() -> (LineSplitter, LineSplitter) {
        (LineSplitter::new(Stream::Stdout, Channel::Program, 1024), LineSplitter::new(Stream::Stderr, Channel::Program, 1024))
    }

    /// A reader of two in-memory pipes, and the ends the test holds.
    struct Reading {
        batches: Batches,
        out_writer: tokio::io::DuplexStream,
        err_writer: tokio::io::DuplexStream,
        task: tokio::task::JoinHandle<()>,
        stop: tokio::sync::oneshot::Sender<()>,
    }

    fn start_reading() -> Reading {
        let batches = Batches::default();
        let (out_writer, out_reader) = tokio::io::duplex(1024);
        let (err_writer, err_reader) = tokio::io::duplex(1024);
        let (out_splitter, err_splitter) = splitters();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(forward_output((out_reader, out_splitter), (err_reader, err_splitter), batches.sink(), stopped));
        Reading { batches, out_writer, err_writer, task, stop }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn both_pipes_keep_read_order() {
        let Reading { batches, mut out_writer, mut err_writer, task, stop: _stop } = start_reading();

        out_writer.write_all(b"out 1\n").await.unwrap();
        batches.wait_for_lines(1).await;
        err_writer.write_all(b"err 1\n").await.unwrap();
        batches.wait_for_lines(2).await;
        out_writer.write_all(b"out 2\nout 3 without newline").await.unwrap();
        batches.wait_for_lines(3).await;
        drop(out_writer);
        drop(err_writer);
        task.await.unwrap();

        let expected = [(Stream::Stdout, "out 1"), (Stream::Stderr, "err 1"), (Stream::Stdout, "out 2"), (Stream::Stdout, "out 3 without newline")];
        let expected: Vec<(Stream, String)> = expected.iter().map(|(stream, line)| (*stream, line.to_string())).collect();
        assert_eq!(batches.lines(), expected);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn lone_line_delivered_before_eof() {
        let Reading { batches, mut out_writer, err_writer: _err_writer, task, .. } = start_reading();

        out_writer.write_all(b"ready\n").await.unwrap();
        batches.wait_for_lines(1).await;
        assert_eq!(batches.calls(), 1);
        assert!(!task.is_finished(), "the reader ended while both pipes were open");
        task.abort();
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn small_writes_share_batches() {
        // bash's printf writes each line with a system call of its own, the way unbuffered
        // output does, so the reader sees thousands of small reads.
        let batches = Batches::default();
        forward_script("for ((i = 0; i < 20000; i++)); do printf '%099d\\n' $i; done", batches.sink()).await;

        let lines = batches.lines();
        assert_eq!(lines.len(), 20_000);
        assert_eq!(lines[19_999].1, format!("{:099}", 19_999));
        // 2 MB in batches of 64 KiB are 31 calls. A batch also leaves after 2 ms, so a slow
        // machine makes more of them, but far fewer than one per write.
        let calls = batches.calls();
        assert!(calls <= 1000, "{calls} sink calls for 20,000 lines written one by one");
    }

    /// Keeps each sink call's number of records, and the delay of each non-empty line from its
    /// read to its delivery. Empty lines cost no memory here.
    #[derive(Clone, Default)]
    struct Arrivals(Arc<Mutex<(Vec<usize>, Vec<(String, Duration)>)>>);

    impl EventSinkFfi for Arrivals {
        fn logs(&self, records: RVec<LogRecord>) {
            let now = Timestamp::now();
            let mut state = self.0.lock().unwrap();
            state.0.push(records.len());
            for record in records.iter().filter(|record| !record.line.is_empty()) {
                let delay = Duration::from_nanos((now.unix_nanos - record.timestamp.unix_nanos).max(0) as u64);
                state.1.push((record.line.to_string(), delay));
            }
        }

        fn status(&self, _status: ExecutionStatus) {}
    }

    /// Runs `script` with bash and forwards its output to `sink` until both pipes close.
    async fn forward_script(script: &str, sink: EventSink) {
        let mut child = tokio::process::Command::new("bash")
            .args(["-c", script])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("bash starts");
        let (out_splitter, err_splitter) = splitters();
        let (_stop, stopped) = tokio::sync::oneshot::channel();
        let stdout = (child.stdout.take().unwrap(), out_splitter);
        let stderr = (child.stderr.take().unwrap(), err_splitter);
        forward_output(stdout, stderr, sink, stopped).await;
        assert!(child.wait().await.unwrap().success());
    }

    /// Runs `script` with bash and forwards its output to an [`Arrivals`] recorder.
    async fn arrivals_of(script: &str) -> Arrivals {
        let arrivals = Arrivals::default();
        forward_script(script, EventSink::new(EventSinkFfi_TO::from_value(arrivals.clone(), TD_Opaque))).await;
        arrivals
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn empty_lines_make_bounded_batches() {
        let arrivals = arrivals_of("head -c 300000 /dev/zero | tr '\\0' '\\n'").await;
        let batches = arrivals.0.lock().unwrap().0.clone();
        assert_eq!(batches.iter().sum::<usize>(), 300_000);
        // A batch is checked after each read, so it contains at most the lines of a full batch
        // and of one read: 1,024 + 65,536 here, a few MiB of records at most.
        let longest = batches.iter().max().copied().unwrap_or(0);
        assert!(longest <= BATCH_BYTES / RECORD_COST_BYTES + READ_CHUNK_BYTES, "a batch of {longest} empty lines");
        assert!(batches.len() >= 300_000 / (BATCH_BYTES / RECORD_COST_BYTES + READ_CHUNK_BYTES), "{} batches", batches.len());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn busy_pipe_does_not_delay_lines() {
        // The marker on stderr comes first, then stdout stays readable for a while with empty
        // lines. The marker must not wait for the flood to end.
        let arrivals = arrivals_of("echo marker >&2; head -c 5000000 /dev/zero | tr '\\0' '\\n'").await;
        let state = arrivals.0.lock().unwrap();
        let (line, delay) = state.1.first().cloned().expect("the marker arrived");
        assert_eq!(line, "marker");
        assert!(delay < Duration::from_millis(500), "the marker arrived {delay:?} after it was read");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn stop_delivers_read_lines() {
        let Reading { batches, mut out_writer, err_writer: _err_writer, task, stop } = start_reading();

        out_writer.write_all(b"whole\nhalf a li").await.unwrap();
        batches.wait_for_lines(1).await;
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), task).await.expect("the reader did not stop").unwrap();

        let records: Vec<LogRecord> = batches.0.lock().unwrap().iter().flatten().cloned().collect();
        assert_eq!(records.len(), 2);
        assert_eq!(records[1].line.as_str(), "half a li");
        assert!(records[1].flags.contains(LogFlags::NO_NEWLINE));
    }
}
