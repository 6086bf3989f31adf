//! The exit status of `tower-host`.
//!
//! `run` exits with the app's own exit code, or 128 + N when signal N killed it, like a shell.
//! The host's own outcomes use codes that shells and `timeout(1)` use for the same meaning.

/// Bad command-line arguments, a bad config file or bad input (sysexits `EX_USAGE`).
pub const USAGE: u8 = 64;
/// The plugin could not be loaded or created, or the host failed (sysexits `EX_SOFTWARE`).
pub const HOST_FAILURE: u8 = 70;
/// The execution ran out of its timeout (as `timeout(1)`).
pub const TIMED_OUT: u8 = 124;
/// The execution failed before or around the app (setup, platform), or its outcome is lost.
pub const FAILED: u8 = 125;
/// The execution was cancelled on request (Ctrl-C), as a shell reports SIGINT.
pub const CANCELLED: u8 = 130;
/// The reader of the app's output went away (a broken pipe), so the host stopped the app, as a
/// shell reports SIGPIPE.
pub const OUTPUT_CLOSED: u8 = 141;
