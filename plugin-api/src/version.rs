//! The contract version that plugins export and the host checks.

use abi_stable::StableAbi;
use std::fmt;

/// A contract version: `major.minor.patch` of the `tower-plugin-api` crate.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ApiVersion {
    /// Incremented for changes that break plugins built against an older contract.
    pub major: u32,
    /// Incremented for additions that plugins built against an older contract survive.
    pub minor: u32,
    /// Incremented for fixes that change no type or method.
    pub patch: u32,
}

/// The contract version this copy of the crate implements.
pub const API_VERSION: ApiVersion = ApiVersion {
    major: parse_u32(env!("CARGO_PKG_VERSION_MAJOR")),
    minor: parse_u32(env!("CARGO_PKG_VERSION_MINOR")),
    patch: parse_u32(env!("CARGO_PKG_VERSION_PATCH")),
};

/// The name of the `extern "C" fn() -> ApiVersion` symbol that [`export_plugin!`] emits.
///
/// The host reads it before abi_stable's own checks, so a plugin built against another major
/// version gets an error that names both versions instead of a layout dump.
///
/// [`export_plugin!`]: crate::export_plugin
pub const API_VERSION_SYMBOL: &[u8] = b"tower_plugin_api_version\0";

impl ApiVersion {
    /// Tells whether a host implementing `self` can load a plugin built against `plugin`: the same
    /// major version and an older or equal minor version.
    pub fn accepts(&self, plugin: &ApiVersion) -> bool {
        plugin.major == self.major && plugin.minor <= self.minor
    }

    /// Describes the range of plugin versions that a host implementing `self` accepts.
    pub fn accepted_range(&self) -> String {
        format!("{}.0.0 up to {}.{}.x", self.major, self.major, self.minor)
    }
}

impl fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

const fn parse_u32(text: &str) -> u32 {
    let bytes = text.as_bytes();
    let mut value = 0u32;
    let mut i = 0;
    while i < bytes.len() {
        assert!(bytes[i].is_ascii_digit(), "version component is not a number");
        value = value * 10 + (bytes[i] - b'0') as u32;
        i += 1;
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_version_matches_crate_version() {
        assert_eq!(API_VERSION.to_string(), env!("CARGO_PKG_VERSION"));
    }

    #[test]
    fn host_accepts_same_major_and_older_minor() {
        let host = ApiVersion { major: 1, minor: 3, patch: 0 };
        assert!(host.accepts(&ApiVersion { major: 1, minor: 0, patch: 9 }));
        assert!(host.accepts(&ApiVersion { major: 1, minor: 3, patch: 2 }));
    }

    #[test]
    fn host_rejects_newer_minor_and_other_major() {
        let host = ApiVersion { major: 1, minor: 3, patch: 0 };
        assert!(!host.accepts(&ApiVersion { major: 1, minor: 4, patch: 0 }));
        assert!(!host.accepts(&ApiVersion { major: 2, minor: 0, patch: 0 }));
        assert!(!host.accepts(&ApiVersion { major: 0, minor: 3, patch: 0 }));
    }
}
