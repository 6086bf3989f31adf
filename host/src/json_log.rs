//! Log records as JSON text, written straight into a byte buffer.
//!
//! The text is what `serde_json` makes of a [`LogRecord`](tower_plugin_api::LogRecord), byte for byte (the tests compare the
//! two), at a fraction of the cost: every record of `run --output json` and of the serve
//! journal goes through here. Two things make the difference. Strings are scanned 8 bytes at a
//! time for the characters JSON escapes, and the records of one read share a timestamp, so its
//! text is formatted once.

use std::io::Write;
use tower_plugin_api::{Channel, LogLineRef, Stream, Timestamp};

/// Writes log records as JSON objects, reusing the text of the last timestamp.
#[derive(Debug, Default)]
pub struct LogJsonWriter {
    /// The last timestamp written and its JSON string, quotes included.
    last_timestamp: Option<(Timestamp, Vec<u8>)>,
}

impl LogJsonWriter {
    /// Appends `record` as one JSON object, without a newline. With `event`, the object starts
    /// with `"event":"log"`, the form of `run --output json`.
    pub fn write(&mut self, out: &mut Vec<u8>, record: &LogLineRef<'_>, event: bool) {
        out.extend_from_slice(if event { b"{\"event\":\"log\",\"seq\":" } else { b"{\"seq\":" });
        out.extend_from_slice(itoa::Buffer::new().format(record.seq).as_bytes());
        out.extend_from_slice(b",\"timestamp\":");
        out.extend_from_slice(self.timestamp(record.timestamp));
        out.extend_from_slice(match record.stream {
            Stream::Stdout => b",\"stream\":\"stdout\"",
            Stream::Stderr => b",\"stream\":\"stderr\"",
        });
        out.extend_from_slice(match record.channel {
            Channel::Setup => b",\"channel\":\"setup\",\"line\":",
            Channel::Program => b",\"channel\":\"program\",\"line\":",
        });
        write_string(out, record.line);
        out.extend_from_slice(b",\"flags\":");
        out.extend_from_slice(itoa::Buffer::new().format(record.flags.0).as_bytes());
        out.push(b'}');
    }

    fn timestamp(&mut self, timestamp: Timestamp) -> &[u8] {
        let reusable = matches!(&self.last_timestamp, Some((last, _)) if *last == timestamp);
        if !reusable {
            let mut text = Vec::with_capacity(32);
            // Writing into a `Vec` cannot fail.
            let _ = write!(text, "\"{timestamp}\"");
            self.last_timestamp = Some((timestamp, text));
        }
        self.last_timestamp.as_ref().map_or(b"", |(_, text)| text.as_slice())
    }
}

/// Appends `text` as a JSON string with its quotes, escaping what `serde_json` escapes: `"`,
/// `\` and the control characters below U+0020.
pub fn write_string(out: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut copied = 0;
    let mut index = 0;
    while index < bytes.len() {
        // Skip 8 bytes at a time while none of them needs escaping.
        if let Some(word) = bytes.get(index..index + 8) {
            let word = u64::from_le_bytes(word.try_into().expect("the slice has 8 bytes"));
            if !may_need_escape(word) {
                index += 8;
                continue;
            }
        }
        let byte = bytes[index];
        if let Some(escape) = escape_of(byte) {
            out.extend_from_slice(&bytes[copied..index]);
            match escape {
                Escape::Short(letter) => out.extend_from_slice(&[b'\\', letter]),
                Escape::Unicode => {
                    const HEX: &[u8; 16] = b"0123456789abcdef";
                    out.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[usize::from(byte >> 4)], HEX[usize::from(byte & 0xf)]]);
                }
            }
            copied = index + 1;
        }
        index += 1;
    }
    out.extend_from_slice(&bytes[copied..]);
    out.push(b'"');
}

/// The escape sequence of one byte in a JSON string.
enum Escape {
    /// A backslash and a letter (`\n`) or the character itself (`\"`).
    Short(u8),
    /// `\u00XX`.
    Unicode,
}

fn escape_of(byte: u8) -> Option<Escape> {
    match byte {
        b'"' => Some(Escape::Short(b'"')),
        b'\\' => Some(Escape::Short(b'\\')),
        b'\x08' => Some(Escape::Short(b'b')),
        b'\x0c' => Some(Escape::Short(b'f')),
        b'\n' => Some(Escape::Short(b'n')),
        b'\r' => Some(Escape::Short(b'r')),
        b'\t' => Some(Escape::Short(b't')),
        0x00..=0x1f => Some(Escape::Unicode),
        _ => None,
    }
}

/// Tells whether any of the 8 bytes of `word` may be `"`, `\` or below 0x20. False positives
/// are possible (the caller then looks byte by byte); a false negative is not.
fn may_need_escape(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // A byte below `n` (n <= 128) sets its high bit in `(x - n * ONES) & !x & HIGH`. A byte equal
    // to `c` becomes a zero byte of `x ^ (c * ONES)`, that is a byte below 1.
    let below_space = word.wrapping_sub(0x20 * ONES) & !word;
    let quote = word ^ (u64::from(b'"') * ONES);
    let backslash = word ^ (u64::from(b'\\') * ONES);
    let is_quote = quote.wrapping_sub(ONES) & !quote;
    let is_backslash = backslash.wrapping_sub(ONES) & !backslash;
    (below_space | is_quote | is_backslash) & HIGH != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower_plugin_api::{LogFlags, LogRecord};

    fn record(line: &str, timestamp: i64) -> LogRecord {
        LogRecord {
            seq: 42,
            timestamp: Timestamp { unix_nanos: timestamp },
            stream: Stream::Stderr,
            channel: Channel::Setup,
            line: line.into(),
            flags: LogFlags::SPLIT | LogFlags::INVALID_UTF8,
        }
    }

    #[test]
    fn record_matches_serde_json() {
        let mut writer = LogJsonWriter::default();
        for line in ["", "plain text", "quote \" backslash \\ tab \t", "unicode é € \u{1F600}", "\u{7f} del"] {
            let record = record(line, 1_796_414_828_123_456_789);
            let mut out = Vec::new();
            writer.write(&mut out, &record.as_line_ref(), false);
            assert_eq!(String::from_utf8(out).unwrap(), serde_json::to_string(&record).unwrap(), "line {line:?}");
        }
    }

    #[test]
    fn every_ascii_byte_escapes_like_serde_json() {
        // Each byte at every offset of a 16-byte word pair, so both the 8-byte scan and the
        // byte loop meet it.
        for byte in 0u8..0x80 {
            for offset in 0..17 {
                let mut text = "a".repeat(offset);
                text.push(char::from(byte));
                text.push_str("bcdefgh");
                let mut out = Vec::new();
                write_string(&mut out, &text);
                assert_eq!(String::from_utf8(out).unwrap(), serde_json::to_string(&text).unwrap(), "byte {byte:#04x} at {offset}");
            }
        }
    }

    #[test]
    fn timestamp_text_follows_the_record() {
        let mut writer = LogJsonWriter::default();
        let mut out = Vec::new();
        for timestamp in [5, 5, 1_000_000_000, 5] {
            out.clear();
            let record = record("x", timestamp);
            writer.write(&mut out, &record.as_line_ref(), true);
            let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(value["timestamp"], serde_json::to_value(record.timestamp).unwrap());
            assert_eq!(value["event"], "log");
        }
    }

    #[test]
    fn scan_finds_escapes_in_any_lane() {
        for lane in 0..8 {
            for byte in [0u8, 0x1f, b'"', b'\\'] {
                let mut word = [b'x'; 8];
                word[lane] = byte;
                assert!(may_need_escape(u64::from_le_bytes(word)), "byte {byte:#04x} in lane {lane}");
            }
        }
        assert!(!may_need_escape(u64::from_le_bytes(*b"plain ok")));
        assert!(!may_need_escape(u64::from_le_bytes([0xc3, 0xa9, 0x7f, 0x20, 0x21, 0x23, 0x5b, 0x5d])));
    }
}
