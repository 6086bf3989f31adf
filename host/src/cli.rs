//! Command-line arguments.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

/// Runs Tower apps on a backend loaded from a plugin.
#[derive(Debug, Parser)]
#[command(name = "tower-host", version, about)]
pub struct Cli {
    /// Configuration file (TOML). Without it, the embedded default selects the subprocess plugin.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs one execution to completion, streaming its logs.
    Run(RunArgs),
    /// Serves the HTTP API for a runner until SIGTERM or SIGINT; see `[serve]` in the config.
    Serve,
    /// Lists and inspects plugins.
    #[command(subcommand)]
    Plugins(PluginsCommand),
    /// Validates configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Runs the backend conformance checks against a plugin and prints a line per check.
    Conformance(ConformanceArgs),
}

/// Arguments of `conformance`.
#[derive(Debug, Args)]
pub struct ConformanceArgs {
    /// A plugin name, looked up in the search folders, or a plugin file.
    #[arg(long, value_name = "NAME|PATH")]
    pub plugin: String,

    /// A TOML file with the plugin's settings table. Default: `[backend.settings]` of the config
    /// when it selects this plugin, else no settings.
    #[arg(long, value_name = "FILE")]
    pub settings: Option<PathBuf>,

    /// Runs only this check; repeatable. Default: every check.
    #[arg(long = "check", value_name = "NAME")]
    pub checks: Vec<String>,
}

/// Arguments of `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// A Tower package (`.tar.gz`) or a folder with a `Towerfile`. Default: the current folder.
    #[arg(value_name = "PACKAGE|DIR")]
    pub input: Option<PathBuf>,

    /// An app parameter, `KEY=VALUE`; repeatable. Parameters not given take their Towerfile default.
    #[arg(long = "param", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub params: Vec<(String, String)>,

    /// Passes the host environment variable NAME to the app as a secret of the same name. The
    /// value never appears in arguments or logs.
    #[arg(long = "secret", value_name = "NAME")]
    pub secrets: Vec<String>,

    /// An extra environment variable for the app, `KEY=VALUE`; repeatable.
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub env: Vec<(String, String)>,

    /// The Tower environment name handed to the app.
    #[arg(long, value_name = "NAME", default_value = "default")]
    pub environment: String,

    /// Ends the app after this long, such as `90s` or `10m`; reported as timed out. Counted from
    /// the start of the app's program. Backends get it in whole seconds, rounded up.
    #[arg(long, value_name = "DURATION", value_parser = parse_timeout)]
    pub timeout: Option<Duration>,

    /// How long the app gets to stop after Ctrl-C or SIGTERM before it is killed. A backend that
    /// enforces `--timeout` itself stops the app with its own grace period (the subprocess
    /// plugin's `default_grace_seconds`).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "10s")]
    pub grace: Duration,

    /// The execution id. Default: a new UUID.
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,

    /// `text` for people, `json` for one event per line.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

/// Output of `run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// App output as is; setup lines and host messages marked, on stderr.
    Text,
    /// One JSON object per line on stdout: log records and status changes.
    Json,
}

/// `plugins` subcommands.
#[derive(Debug, Subcommand)]
pub enum PluginsCommand {
    /// Lists every plugin in the search folders, with its versions and whether it loads.
    List,
    /// Shows a plugin's capabilities and the reference of its settings.
    Inspect {
        /// A plugin name or a plugin file.
        #[arg(value_name = "NAME|PATH")]
        plugin: String,
    },
}

/// `config` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validates a config file and loads its plugin, without running anything.
    Check {
        /// The config file. Default: `--config`, else the embedded default.
        #[arg(value_name = "FILE")]
        file: Option<PathBuf>,
    },
}

fn parse_key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("expected KEY=VALUE, got `{text}`")),
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|error| format!("invalid duration `{text}` ({error}); use a form such as 30s, 5m or 1h"))
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        Duration::ZERO => Err(format!("invalid timeout `{text}`: it must be longer than zero; leave out --timeout for none")),
        timeout => Ok(timeout),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_value_keeps_equals_in_value() {
        assert_eq!(parse_key_value("query=a=b").unwrap(), ("query".to_string(), "a=b".to_string()));
    }

    #[test]
    fn key_value_without_equals_is_rejected() {
        assert!(parse_key_value("novalue").unwrap_err().contains("KEY=VALUE"));
        assert!(parse_key_value("=x").is_err());
    }

    #[test]
    fn duration_accepts_units() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert!(parse_duration("soon").unwrap_err().contains("30s"));
    }

    #[test]
    fn timeout_must_be_longer_than_zero() {
        assert_eq!(parse_timeout("500ms").unwrap(), Duration::from_millis(500));
        assert!(parse_timeout("0s").unwrap_err().contains("longer than zero"));
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
