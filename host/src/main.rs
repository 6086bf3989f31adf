//! `tower-host`: runs Tower apps on a backend loaded from a plugin.
//!
//! The binary is glue: it parses the command line, reads the config, sets up logging, and hands
//! over to one command module. Errors are printed once, here, and mapped to the exit codes in
//! `tower_host::exit_code`.

use clap::Parser;
use std::process::ExitCode;
use tower_host::cli::{Cli, Command, ConfigCommand, PluginsCommand};
use tower_host::config::{Config, LogFormat};
use tower_host::failure::{CommandResult, Failure};
use tower_host::{commands, conformance, run, serve};

fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Help and version go to stdout with code 0; argument errors get the usage code.
        Err(error) if !error.use_stderr() => {
            let _ = error.print();
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            let _ = error.print();
            return ExitCode::from(tower_host::exit_code::USAGE);
        }
    };
    let config = match load_config(&cli) {
        Ok(config) => config,
        Err(failure) => return report(failure),
    };
    init_logging(&config);

    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => return report(Failure::host(anyhow::anyhow!("failed to start the async runtime: {error}"))),
    };
    let result = runtime.block_on(dispatch(cli, config));
    // Plugin threads may still be blocked in calls that outlive the command; do not wait for them.
    runtime.shutdown_background();
    match result {
        Ok(code) => ExitCode::from(code),
        Err(failure) => report(failure),
    }
}

async fn dispatch(cli: Cli, config: Config) -> CommandResult {
    match cli.command {
        Command::Run(args) => run::run(&config, args).await,
        Command::Serve => serve::serve(&config).await,
        Command::Plugins(PluginsCommand::List) => commands::plugins_list(&config).await,
        Command::Plugins(PluginsCommand::Inspect { plugin }) => commands::plugins_inspect(&config, &plugin).await,
        Command::Config(ConfigCommand::Check { .. }) => commands::config_check(&config).await,
        Command::Conformance(args) => conformance::conformance(cli.config.as_deref(), &args),
    }
}

/// Reads the config: `config check FILE`, else `--config FILE`, else the embedded default.
/// Number of glibc malloc arenas the host uses unless `MALLOC_ARENA_MAX` is set.
///
/// Log records are allocated on plugin threads and freed on host threads. With glibc's default
/// of up to 8 arenas per core, the freed memory stayed spread over many arenas. `serve` used
/// about 120 MiB while it streamed a flood of logs, and 45 MiB with 2 arenas, at the same
/// throughput (docs/benchmarks.md).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MALLOC_ARENAS: libc::c_int = 2;

/// Caps glibc's malloc arenas at [`MALLOC_ARENAS`], before any thread starts. An operator's
/// `MALLOC_ARENA_MAX`, or `glibc.malloc.arena_max` in `GLIBC_TUNABLES`, wins.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if operator_sets_arenas(std::env::var_os("MALLOC_ARENA_MAX"), std::env::var_os("GLIBC_TUNABLES")) {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes an allocator setting, and no other thread runs yet. A
        // failure (a return of 0) leaves glibc's default in place.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS);
        }
    }
}

/// Tells whether the environment sets the number of malloc arenas itself: `MALLOC_ARENA_MAX`, or
/// `glibc.malloc.arena_max` among the colon-separated `GLIBC_TUNABLES`.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn operator_sets_arenas(arena_max: Option<std::ffi::OsString>, tunables: Option<std::ffi::OsString>) -> bool {
    let in_tunables = tunables.is_some_and(|tunables| tunables.to_string_lossy().split(':').any(|tunable| tunable.starts_with("glibc.malloc.arena_max=")));
    arena_max.is_some() || in_tunables
}

fn load_config(cli: &Cli) -> Result<Config, Failure> {
    let file = match &cli.command {
        Command::Config(ConfigCommand::Check { file: Some(file) }) => Some(file),
        _ => cli.config.as_ref(),
    };
    match file {
        Some(file) => Config::load(file).map_err(Failure::usage),
        None => Ok(Config::embedded_default()),
    }
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.logging.level));
    let colors = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(colors);
    match config.logging.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn report(failure: Failure) -> ExitCode {
    eprintln!("tower-host: error: {:#}", failure.error);
    ExitCode::from(failure.code)
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    #[test]
    fn operator_settings_of_arenas_win() {
        let text = |value: &str| Some(std::ffi::OsString::from(value));
        assert!(!operator_sets_arenas(None, None));
        assert!(operator_sets_arenas(text("8"), None));
        assert!(operator_sets_arenas(None, text("glibc.malloc.arena_max=4")));
        assert!(operator_sets_arenas(None, text("glibc.malloc.trim_threshold=0:glibc.malloc.arena_max=4")));
        assert!(!operator_sets_arenas(None, text("glibc.malloc.trim_threshold=0")));
    }
}
