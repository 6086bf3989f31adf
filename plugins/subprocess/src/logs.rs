//! Reading a process's stdout or stderr into log records: bytes are read in chunks, split on
//! `\n`, and each chunk's complete lines go to the event sink in one call.

use tokio::io::{AsyncRead, AsyncReadExt};
use tower_plugin_api::sdk::{EventSink, LogLine};
use tower_plugin_api::{Channel, LogFlags, Stream, Timestamp};

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
    pub fn push(&mut self, chunk: &[u8], timestamp: Timestamp, out: &mut Vec<LogLine>) {
        let mut rest = chunk;
        while let Some(newline) = rest.iter().position(|&byte| byte == b'\n') {
            self.append(&rest[..newline], timestamp, out);
            let line = std::mem::take(&mut self.partial);
            out.push(self.record(&line, LogFlags::default(), timestamp));
            rest = &rest[newline + 1..];
        }
        self.append(rest, timestamp, out);
    }

    /// Delivers what is left after end of file: a last line without a newline, flagged
    /// [`LogFlags::NO_NEWLINE`].
    pub fn finish(&mut self, timestamp: Timestamp, out: &mut Vec<LogLine>) {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            out.push(self.record(&line, LogFlags::NO_NEWLINE, timestamp));
        }
    }

    /// Adds bytes of an unfinished line, emitting pieces while it is over the maximum. A line of
    /// exactly the maximum stays whole: only a byte past it proves the line is longer.
    fn append(&mut self, bytes: &[u8], timestamp: Timestamp, out: &mut Vec<LogLine>) {
        self.partial.extend_from_slice(bytes);
        while self.partial.len() > self.max_line_bytes {
            let cut = utf8_boundary_before(&self.partial, self.max_line_bytes);
            let piece: Vec<u8> = self.partial.drain(..cut).collect();
            out.push(self.record(&piece, LogFlags::SPLIT, timestamp));
        }
    }

    fn record(&self, bytes: &[u8], mut flags: LogFlags, timestamp: Timestamp) -> LogLine {
        let line = match String::from_utf8_lossy(bytes) {
            std::borrow::Cow::Borrowed(text) => text.to_string(),
            std::borrow::Cow::Owned(replaced) => {
                flags |= LogFlags::INVALID_UTF8;
                replaced
            }
        };
        LogLine { stream: self.stream, channel: self.channel, line, flags, timestamp: Some(timestamp) }
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

/// Reads `reader` until end of file or a read error and delivers its lines to `events`.
/// Lines of one read go to the sink in one call, which blocks while the host's buffer is full.
pub async fn forward_output<R: AsyncRead + Unpin>(mut reader: R, mut splitter: LineSplitter, events: EventSink) {
    let mut buffer = vec![0u8; READ_CHUNK_BYTES];
    let mut lines = Vec::new();
    loop {
        let read = match reader.read(&mut buffer).await {
            Ok(0) => break,
            Ok(read) => read,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => {
                tracing::warn!(stream = ?splitter.stream, %error, "failed to read process output; the rest of this stream is lost");
                break;
            }
        };
        splitter.push(&buffer[..read], Timestamp::now(), &mut lines);
        if !lines.is_empty() {
            events.log(std::mem::take(&mut lines)).await;
        }
    }
    splitter.finish(Timestamp::now(), &mut lines);
    events.log(lines).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Timestamp = Timestamp { unix_nanos: 0 };

    fn split(max: usize, chunks: &[&[u8]]) -> Vec<(String, LogFlags)> {
        let mut splitter = LineSplitter::new(Stream::Stdout, Channel::Program, max);
        let mut out = Vec::new();
        for chunk in chunks {
            splitter.push(chunk, NOW, &mut out);
        }
        splitter.finish(NOW, &mut out);
        out.into_iter().map(|line| (line.line, line.flags)).collect()
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
        let mut out = Vec::new();
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

    #[test]
    fn boundary_of_invalid_bytes_is_the_maximum() {
        assert_eq!(utf8_boundary_before(&[0xff; 8], 4), 4);
        assert_eq!(utf8_boundary_before("€€".as_bytes(), 4), 3);
        assert_eq!(utf8_boundary_before("\u{1F600}x".as_bytes(), 4), 4);
    }
}
