//! Log records: one line of output of an execution.

use crate::Timestamp;
use abi_stable::{std_types::RString, StableAbi};
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

#[cfg(test)]
mod tests {
    use super::*;

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
