//! Wall-clock timestamps that cross the plugin boundary.

use abi_stable::StableAbi;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A point in time as nanoseconds since the Unix epoch (UTC).
///
/// Serialized as an RFC 3339 string with nanoseconds, for example `2026-12-04T20:07:08.123456789Z`.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    /// Nanoseconds since 1970-01-01T00:00:00Z; negative before it.
    pub unix_nanos: i64,
}

impl Timestamp {
    /// Reads the system clock.
    pub fn now() -> Self {
        Self::from(SystemTime::now())
    }

    /// Converts to a [`SystemTime`].
    pub fn to_system_time(self) -> SystemTime {
        if self.unix_nanos >= 0 {
            UNIX_EPOCH + Duration::from_nanos(self.unix_nanos as u64)
        } else {
            UNIX_EPOCH - Duration::from_nanos(self.unix_nanos.unsigned_abs())
        }
    }

    /// Parses an RFC 3339 timestamp such as `2026-12-04T20:07:08.5Z`.
    pub fn parse_rfc3339(text: &str) -> Option<Self> {
        humantime::parse_rfc3339_weak(text).ok().map(Self::from)
    }
}

impl From<SystemTime> for Timestamp {
    fn from(time: SystemTime) -> Self {
        let unix_nanos = match time.duration_since(UNIX_EPOCH) {
            Ok(after) => i64::try_from(after.as_nanos()).unwrap_or(i64::MAX),
            Err(before) => -i64::try_from(before.duration().as_nanos()).unwrap_or(i64::MAX),
        };
        Self { unix_nanos }
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_rfc3339_nanos(self.to_system_time()))
    }
}

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse_rfc3339(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("invalid RFC 3339 timestamp `{text}`")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_round_trips_through_rfc3339() {
        let stamp = Timestamp { unix_nanos: 1_796_414_828_123_456_789 };
        let text = stamp.to_string();
        assert!(text.ends_with(".123456789Z"), "{text}");
        assert_eq!(Timestamp::parse_rfc3339(&text), Some(stamp));
    }

    #[test]
    fn timestamp_serializes_as_string() {
        let stamp = Timestamp { unix_nanos: 0 };
        assert_eq!(serde_json::to_string(&stamp).unwrap(), "\"1970-01-01T00:00:00.000000000Z\"");
    }
}
