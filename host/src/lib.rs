//! The library behind the `tower-host` binary: configuration, plugin loading and the commands.
//!
//! The binary only parses arguments and prints the final error. Everything else lives here, so
//! other front ends (a service, a conformance runner) reuse the same pieces.

pub mod backend_setup;
pub mod cli;
pub mod commands;
pub mod conformance;
pub mod config;
pub mod exit_code;
pub mod failure;
pub mod json_log;
pub mod output;
pub mod plugin;
pub mod run;
pub mod serve;
