//! Log records: one line of output of an execution.

use crate::Timestamp;
use abi_stable::{
    std_types::{RString, RVec},
    StableAbi,
};
use serde::{Deserialize, Serialize};

/// The output stream a line was written to.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    /// Standard output. Backends that merge the streams (Kubernetes) report everything here.
    Stdout,
    /// Standard error.
    Stderr,
}

/// Whether a line comes from setting up the environment or from the app's own program.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    /// Package staging, virtual environment creation, dependency installs.
    Setup,
    /// The app's own program.
    Program,
}

/// Flags of a [`LogRecord`], as bits; a minor version may add bits.
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LogFlags(pub u32);

impl LogFlags {
    /// The line was longer than the backend's maximum; the next record of the same stream
    /// continues it.
    pub const SPLIT: LogFlags = LogFlags(1);
    /// Part of the line was dropped.
    pub const TRUNCATED: LogFlags = LogFlags(2);
    /// The line was not valid UTF-8; invalid bytes were replaced with U+FFFD.
    pub const INVALID_UTF8: LogFlags = LogFlags(4);
    /// The output ended without a final newline after this line.
    pub const NO_NEWLINE: LogFlags = LogFlags(8);

    /// Tells whether every bit of `other` is set.
    pub fn contains(self, other: LogFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for LogFlags {
    type Output = LogFlags;
    fn bitor(self, other: LogFlags) -> LogFlags {
        LogFlags(self.0 | other.0)
    }
}

impl std::ops::BitOrAssign for LogFlags {
    fn bitor_assign(&mut self, other: LogFlags) {
        self.0 |= other.0;
    }
}

/// One line (or one piece of a long line) of an execution's output, without its newline.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    /// Position in the execution's log, from 0, without gaps. The SDK's event sink assigns it.
    pub seq: u64,
    /// When the backend read the line (or when the platform stamped it).
    pub timestamp: Timestamp,
    /// Which stream.
    pub stream: Stream,
    /// Setup or program.
    pub channel: Channel,
    /// The text, valid UTF-8.
    pub line: RString,
    /// Flags.
    pub flags: LogFlags,
}

/// Log records of one delivery, their lines stored one after another in one buffer.
///
/// The host's sink takes batches since API 1.2: a batch costs two allocations however many
/// records it holds, where a vector of [`LogRecord`] costs one per record. Lines are added with
/// [`LogBatch::push`] and read back as [`LogLineRef`]s.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Default, PartialEq, Eq)]
pub struct LogBatch {
    /// The lines, one after another, without separators.
    text: RString,
    /// One entry per record, in order.
    entries: RVec<LogEntry>,
}

/// The fields of one record of a [`LogBatch`], besides its text.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogEntry {
    /// Position in the execution's log; the SDK's event sink assigns it.
    pub seq: u64,
    /// When the backend read the line.
    pub timestamp: Timestamp,
    /// Which stream.
    pub stream: Stream,
    /// Setup or program.
    pub channel: Channel,
    /// Flags.
    pub flags: LogFlags,
    /// Offset in the batch's text where this record's line ends; it starts where the previous
    /// one ends.
    end: u64,
}

/// One record of a [`LogBatch`], borrowing its line from the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLineRef<'a> {
    /// Position in the execution's log.
    pub seq: u64,
    /// When the backend read the line.
    pub timestamp: Timestamp,
    /// Which stream.
    pub stream: Stream,
    /// Setup or program.
    pub channel: Channel,
    /// The text, without its newline.
    pub line: &'a str,
    /// Flags.
    pub flags: LogFlags,
}

impl LogRecord {
    /// Borrows the record as a [`LogLineRef`], the form in which batches return records.
    pub fn as_line_ref(&self) -> LogLineRef<'_> {
        LogLineRef {
            seq: self.seq,
            timestamp: self.timestamp,
            stream: self.stream,
            channel: self.channel,
            line: self.line.as_str(),
            flags: self.flags,
        }
    }
}

impl LogLineRef<'_> {
    /// Copies the record out of its batch.
    pub fn to_record(&self) -> LogRecord {
        LogRecord {
            seq: self.seq,
            timestamp: self.timestamp,
            stream: self.stream,
            channel: self.channel,
            line: self.line.into(),
            flags: self.flags,
        }
    }
}

impl LogBatch {
    /// Creates an empty batch with room for `records` records of `text_bytes` bytes in all.
    pub fn with_capacity(records: usize, text_bytes: usize) -> Self {
        Self { text: RString::with_capacity(text_bytes), entries: RVec::with_capacity(records) }
    }

    /// Appends a record. `seq` is 0 here: the SDK's event sink numbers records on delivery.
    pub fn push(&mut self, stream: Stream, channel: Channel, line: &str, flags: LogFlags, timestamp: Timestamp) {
        self.text.push_str(line);
        let end = self.text.len() as u64;
        self.entries.push(LogEntry { seq: 0, timestamp, stream, channel, flags, end });
    }

    /// Returns the number of records.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Tells whether the batch has no record.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Returns the bytes of text of all records.
    pub fn text_len(&self) -> usize {
        self.text.len()
    }

    /// Returns the records' entries, for numbering them.
    pub fn entries_mut(&mut self) -> &mut [LogEntry] {
        &mut self.entries
    }

    /// Returns the records in order.
    pub fn iter(&self) -> impl Iterator<Item = LogLineRef<'_>> + '_ {
        let text = self.text.as_str();
        let starts = std::iter::once(0).chain(self.entries.iter().map(|entry| entry.end));
        self.entries.iter().zip(starts).map(move |(entry, start)| LogLineRef {
            seq: entry.seq,
            timestamp: entry.timestamp,
            stream: entry.stream,
            channel: entry.channel,
            // `check` proves every slice valid for a batch from another library; `push` keeps
            // them valid for one built here. A bad batch that skipped `check` gets empty lines
            // instead of a panic.
            line: text.get(start as usize..entry.end as usize).unwrap_or_default(),
            flags: entry.flags,
        })
    }

    /// Checks that every record's line lies inside the text and starts and ends at character
    /// boundaries. A batch built with [`LogBatch::push`] always passes; the host checks batches
    /// that come from a plugin.
    pub fn check(&self) -> Result<(), String> {
        let text = self.text.as_str();
        let mut start = 0u64;
        for (index, entry) in self.entries.iter().enumerate() {
            let end = entry.end;
            let valid = start <= end && end <= text.len() as u64 && text.is_char_boundary(end as usize);
            if !valid {
                return Err(format!("record {index} of a log batch ends at byte {end}, outside the batch's {} bytes of text or inside a character", text.len()));
            }
            start = end;
        }
        Ok(())
    }

    /// Appends the records of `other`, keeping their sequence numbers.
    pub fn extend_from(&mut self, other: &LogBatch) {
        let base = self.text.len() as u64;
        self.text.push_str(&other.text);
        self.entries.extend(other.entries.iter().map(|entry| LogEntry { end: base + entry.end, ..*entry }));
    }

    /// Copies the records out of the batch.
    pub fn to_records(&self) -> Vec<LogRecord> {
        self.iter().map(|line| line.to_record()).collect()
    }

    /// Builds a batch from records, keeping their sequence numbers.
    pub fn from_records(records: &[LogRecord]) -> Self {
        let text_bytes = records.iter().map(|record| record.line.len()).sum();
        let mut batch = Self::with_capacity(records.len(), text_bytes);
        for record in records {
            batch.push(record.stream, record.channel, &record.line, record.flags, record.timestamp);
        }
        for (entry, record) in batch.entries.iter_mut().zip(records) {
            entry.seq = record.seq;
        }
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_returns_lines_in_order() {
        let mut batch = LogBatch::default();
        batch.push(Stream::Stdout, Channel::Program, "first", LogFlags::default(), Timestamp { unix_nanos: 1 });
        batch.push(Stream::Stderr, Channel::Setup, "", LogFlags::NO_NEWLINE, Timestamp { unix_nanos: 2 });
        batch.push(Stream::Stdout, Channel::Program, "d\u{e9}j\u{e0}", LogFlags::SPLIT, Timestamp { unix_nanos: 3 });
        for (seq, entry) in batch.entries_mut().iter_mut().enumerate() {
            entry.seq = 10 + seq as u64;
        }
        let lines: Vec<(u64, &str, LogFlags)> = batch.iter().map(|line| (line.seq, line.line, line.flags)).collect();
        assert_eq!(lines, [(10, "first", LogFlags::default()), (11, "", LogFlags::NO_NEWLINE), (12, "d\u{e9}j\u{e0}", LogFlags::SPLIT)]);
        assert_eq!(batch.len(), 3);
        assert_eq!(batch.text_len(), "firstd\u{e9}j\u{e0}".len());
        assert!(batch.check().is_ok());
    }

    #[test]
    fn extend_from_keeps_lines_and_numbers() {
        let records = |lines: &[(u64, &str)]| -> Vec<LogRecord> {
            lines
                .iter()
                .map(|(seq, line)| LogRecord { seq: *seq, timestamp: Timestamp { unix_nanos: 1 }, stream: Stream::Stdout, channel: Channel::Program, line: (*line).into(), flags: LogFlags::default() })
                .collect()
        };
        let mut batch = LogBatch::from_records(&records(&[(0, "ab"), (1, "")]));
        batch.extend_from(&LogBatch::from_records(&records(&[(2, "c\u{e9}"), (3, "d")])));
        assert_eq!(batch.to_records(), records(&[(0, "ab"), (1, ""), (2, "c\u{e9}"), (3, "d")]));
        assert!(batch.check().is_ok());
    }

    #[test]
    fn batch_round_trips_records() {
        let records = vec![
            LogRecord { seq: 4, timestamp: Timestamp { unix_nanos: 9 }, stream: Stream::Stderr, channel: Channel::Setup, line: "a".into(), flags: LogFlags::TRUNCATED },
            LogRecord { seq: 5, timestamp: Timestamp { unix_nanos: 9 }, stream: Stream::Stdout, channel: Channel::Program, line: "\u{1F600}".into(), flags: LogFlags::default() },
        ];
        assert_eq!(LogBatch::from_records(&records).to_records(), records);
    }

    #[test]
    fn check_rejects_bad_offsets() {
        let mut batch = LogBatch::default();
        batch.push(Stream::Stdout, Channel::Program, "\u{e9}t\u{e9}", LogFlags::default(), Timestamp { unix_nanos: 0 });
        let mut inside_character = batch.clone();
        inside_character.entries[0].end = 1;
        assert!(inside_character.check().unwrap_err().contains("record 0"));
        let mut past_the_end = batch.clone();
        past_the_end.entries[0].end = 99;
        assert!(past_the_end.check().is_err());
        // A bad batch still reads without a panic.
        assert_eq!(past_the_end.iter().next().map(|line| line.line), Some(""));
    }

    #[test]
    fn log_record_round_trips_through_json() {
        let record = LogRecord {
            seq: 7,
            timestamp: Timestamp { unix_nanos: 5 },
            stream: Stream::Stderr,
            channel: Channel::Setup,
            line: "Resolved 3 packages".into(),
            flags: LogFlags::SPLIT | LogFlags::INVALID_UTF8,
        };
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(json["stream"], "stderr");
        assert_eq!(json["channel"], "setup");
        assert_eq!(json["flags"], 5);
        assert_eq!(serde_json::from_value::<LogRecord>(json).unwrap(), record);
    }

    #[test]
    fn flags_contains_checks_every_bit() {
        let flags = LogFlags::SPLIT | LogFlags::NO_NEWLINE;
        assert!(flags.contains(LogFlags::SPLIT));
        assert!(!flags.contains(LogFlags::TRUNCATED));
        assert!(!flags.contains(LogFlags::SPLIT | LogFlags::TRUNCATED));
    }
}
