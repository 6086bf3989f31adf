//! The one error type that crosses the plugin boundary.

use abi_stable::{nonexhaustive_enum::NonExhaustive, std_types::RString, StableAbi};
use std::fmt;

/// What kind of failure a [`PluginError`] reports, for programs to act on.
///
/// Carried across the boundary as [`ErrorCode`], so a minor version may add kinds; a host that
/// does not know a kind shows it as `unknown`.
#[non_exhaustive]
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[sabi(kind(WithNonExhaustive(size = [u32; 1], traits(Debug, Clone, PartialEq, Eq))))]
pub enum ErrorKind {
    /// The plugin's settings or the host's configuration are wrong.
    InvalidConfig,
    /// The package is malformed, unsafe to unpack, or does not match its checksum.
    InvalidPackage,
    /// The execution, file or object does not exist.
    NotFound,
    /// The platform refused the operation.
    PermissionDenied,
    /// The substrate cannot take the request now (at capacity, API unreachable); a retry may work.
    Unavailable,
    /// An operation did not finish in time.
    TimedOut,
    /// The backend does not implement the operation.
    Unsupported,
    /// A bug or an unexpected state inside the plugin, including a caught panic.
    Internal,
    /// The execution spec is invalid (a bad parameter name, a limit out of range).
    InvalidSpec,
}

/// [`ErrorKind`] wrapped so that it can cross the boundary and grow in minor versions.
pub type ErrorCode = ErrorKind_NE;

impl ErrorKind {
    /// The machine-readable name, as used in JSON output: `invalid_package`, `not_found`, ….
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidConfig => "invalid_config",
            ErrorKind::InvalidPackage => "invalid_package",
            ErrorKind::NotFound => "not_found",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::TimedOut => "timed_out",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Internal => "internal",
            ErrorKind::InvalidSpec => "invalid_spec",
        }
    }

    /// Parses a machine-readable name back into a kind.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|kind| kind.as_str() == name)
    }

    const ALL: [ErrorKind; 9] = [
        ErrorKind::InvalidConfig,
        ErrorKind::InvalidPackage,
        ErrorKind::NotFound,
        ErrorKind::PermissionDenied,
        ErrorKind::Unavailable,
        ErrorKind::TimedOut,
        ErrorKind::Unsupported,
        ErrorKind::Internal,
        ErrorKind::InvalidSpec,
    ];

    /// Wraps the kind into its boundary form.
    pub fn code(self) -> ErrorCode {
        NonExhaustive::new(self)
    }
}

/// Returns the kind of a code, or `None` for a kind added in a newer contract version.
pub fn kind_of(code: &ErrorCode) -> Option<ErrorKind> {
    code.as_enum().ok().copied()
}

/// Returns the machine-readable name of a code; `unknown` for a kind this build does not know.
pub fn code_name(code: &ErrorCode) -> &'static str {
    kind_of(code).map_or("unknown", ErrorKind::as_str)
}

/// An error returned by a plugin, with a machine-readable code and a message that names the
/// operation and the value that failed.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct PluginError {
    /// What kind of failure this is.
    pub code: ErrorCode,
    /// A sentence naming what failed, on which value, and what to do next where that helps.
    pub message: RString,
}

impl PluginError {
    /// Creates an error of the given kind.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { code: kind.code(), message: RString::from(message.into()) }
    }

    /// Creates an [`ErrorKind::InvalidConfig`] error.
    pub fn invalid_config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidConfig, message)
    }

    /// Creates an [`ErrorKind::InvalidPackage`] error.
    pub fn invalid_package(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidPackage, message)
    }

    /// Creates an [`ErrorKind::InvalidSpec`] error.
    pub fn invalid_spec(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidSpec, message)
    }

    /// Creates an [`ErrorKind::NotFound`] error.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    /// Creates an [`ErrorKind::Unavailable`] error.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }

    /// Creates an [`ErrorKind::Unsupported`] error.
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unsupported, message)
    }

    /// Creates an [`ErrorKind::Internal`] error.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    /// Returns the kind, or `None` for a kind added in a newer contract version.
    pub fn kind(&self) -> Option<ErrorKind> {
        kind_of(&self.code)
    }

    /// Returns the machine-readable name of the code.
    pub fn code_name(&self) -> &'static str {
        code_name(&self.code)
    }
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.code_name())
    }
}

impl std::error::Error for PluginError {}

impl serde::Serialize for PluginError {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut state = serializer.serialize_struct("PluginError", 2)?;
        state.serialize_field("code", self.code_name())?;
        state.serialize_field("message", self.message.as_str())?;
        state.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_code_round_trips_through_boundary_form() {
        let error = PluginError::invalid_package("entry `../x` escapes the package folder");
        assert_eq!(error.kind(), Some(ErrorKind::InvalidPackage));
        assert_eq!(error.code_name(), "invalid_package");
        assert_eq!(error.clone(), error);
    }

    #[test]
    fn error_display_names_message_and_code() {
        let error = PluginError::not_found("no execution `run-1`");
        assert_eq!(error.to_string(), "no execution `run-1` (not_found)");
    }

    #[test]
    fn error_serializes_code_by_name() {
        let error = PluginError::unsupported("recover is not supported");
        let json = serde_json::to_value(&error).unwrap();
        assert_eq!(json["code"], "unsupported");
        assert_eq!(json["message"], "recover is not supported");
    }
}
