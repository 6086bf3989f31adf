//! Command failures: the message printed once at the edge, and the exit code.

use crate::exit_code;

/// A command's failure.
#[derive(Debug)]
pub struct Failure {
    /// The exit code.
    pub code: u8,
    /// The error, with its causes.
    pub error: anyhow::Error,
}

impl Failure {
    /// Bad arguments, config or input.
    pub fn usage(error: impl Into<anyhow::Error>) -> Self {
        Self { code: exit_code::USAGE, error: error.into() }
    }

    /// Creates a failure of the plugin or the host.
    pub fn host(error: impl Into<anyhow::Error>) -> Self {
        Self { code: exit_code::HOST_FAILURE, error: error.into() }
    }
}

/// The result of a command: the exit code on success.
pub type CommandResult = Result<u8, Failure>;
