//! Reading one output stream of a sandboxed process into log lines of at most `max_line_bytes`.

use tokio::io::{AsyncRead, AsyncReadExt};
use tower_plugin_api::sdk::{EventSink, LogLine};
use tower_plugin_api::{Channel, LogFlags, Stream};

/// Bytes read from the pipe at a time; the lines completed by one read go out as one batch.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Reads `pipe` to its end and delivers its lines to `sink`.
///
/// A line longer than `max_line_bytes` is cut into records flagged `SPLIT`, each cut placed
/// before a UTF-8 character so that the pieces join back into the line. Invalid UTF-8 is replaced
/// with U+FFFD and flagged `INVALID_UTF8`. Output that ends without a newline is flagged
/// `NO_NEWLINE`. A read error ends the stream like its end.
pub async fn forward(mut pipe: impl AsyncRead + Unpin, stream: Stream, channel: Channel, max_line_bytes: usize, sink: EventSink) {
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    loop {
        let read = match pipe.read(&mut chunk).await {
            Ok(0) => break,
            Ok(read) => read,
            Err(error) => {
                tracing::warn!(?stream, %error, "failed to read the output of a sandboxed process; its remaining output is lost");
                break;
            }
        };
        pending.extend_from_slice(&chunk[..read]);
        let lines = take_complete_lines(&mut pending, stream, channel, max_line_bytes);
        sink.log(lines).await;
    }
    if !pending.is_empty() {
        let mut line = decode(&pending, stream, channel);
        line.flags |= LogFlags::NO_NEWLINE;
        sink.log(vec![line]).await;
    }
}

/// Removes every complete line, and every full `max_line_bytes` piece of a longer one, from the
/// front of `pending`. What stays is shorter than `max_line_bytes` and has no newline.
fn take_complete_lines(pending: &mut Vec<u8>, stream: Stream, channel: Channel, max_line_bytes: usize) -> Vec<LogLine> {
    let mut lines = Vec::new();
    let mut start = 0;
    loop {
        let rest = &pending[start..];
        let window = &rest[..rest.len().min(max_line_bytes + 1)];
        if let Some(newline) = window.iter().position(|byte| *byte == b'\n') {
            lines.push(decode(&rest[..newline], stream, channel));
            start += newline + 1;
        } else if rest.len() > max_line_bytes {
            let cut = char_boundary_before(rest, max_line_bytes);
            let mut piece = decode(&rest[..cut], stream, channel);
            piece.flags |= LogFlags::SPLIT;
            lines.push(piece);
            start += cut;
        } else {
            break;
        }
    }
    pending.drain(..start);
    lines
}

/// Returns `limit`, moved back by up to 3 bytes so that it does not fall inside a UTF-8
/// character. Bytes that are not valid UTF-8 are cut at `limit`.
fn char_boundary_before(bytes: &[u8], limit: usize) -> usize {
    let is_continuation = |index: usize| bytes[index] & 0b1100_0000 == 0b1000_0000;
    let mut cut = limit;
    while cut > limit.saturating_sub(3) && cut > 0 && is_continuation(cut) {
        cut -= 1;
    }
    if is_continuation(cut) || cut == 0 {
        limit
    } else {
        cut
    }
}

fn decode(bytes: &[u8], stream: Stream, channel: Channel) -> LogLine {
    let text = String::from_utf8_lossy(bytes);
    let invalid = matches!(text, std::borrow::Cow::Owned(_));
    let mut line = LogLine::new(stream, channel, text.into_owned());
    if invalid {
        line.flags |= LogFlags::INVALID_UTF8;
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(input: &[u8], max: usize) -> (Vec<(String, bool)>, Vec<u8>) {
        let mut pending = input.to_vec();
        let lines = take_complete_lines(&mut pending, Stream::Stdout, Channel::Program, max);
        (lines.into_iter().map(|line| (line.line, line.flags.contains(LogFlags::SPLIT))).collect(), pending)
    }

    #[test]
    fn lines_split_at_newlines() {
        let (lines, rest) = split(b"one\ntwo\nthr", 16);
        assert_eq!(lines, [("one".to_string(), false), ("two".to_string(), false)]);
        assert_eq!(rest, b"thr");
    }

    #[test]
    fn long_line_splits_before_character() {
        // "é" is two bytes; a cut at 5 would fall inside the third one.
        let (lines, rest) = split("ééé\n".as_bytes(), 5);
        assert_eq!(lines, [("éé".to_string(), true), ("é".to_string(), false)]);
        assert!(rest.is_empty());
    }

    #[test]
    fn line_of_exactly_max_bytes_is_whole() {
        let (lines, _) = split(b"abcd\n", 4);
        assert_eq!(lines, [("abcd".to_string(), false)]);
    }

    #[test]
    fn invalid_utf8_is_flagged() {
        let line = decode(b"a\xffb", Stream::Stderr, Channel::Program);
        assert_eq!(line.line, "a\u{fffd}b");
        assert!(line.flags.contains(LogFlags::INVALID_UTF8));
    }
}
