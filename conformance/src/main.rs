//! `tower-conformance`: runs the conformance kit against one plugin and prints a line per check.
//!
//! `tower-host conformance` runs this binary, found next to its own executable, with the same
//! arguments, because the kit depends on the host's library and the host cannot depend back on
//! the kit.

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use tower_host::backend_setup::load_configured_plugin;
use tower_host::config::{Config, PluginSelector};
use tower_host::exit_code;

/// Runs the backend conformance checks against a plugin.
#[derive(Debug, Parser)]
#[command(name = "tower-conformance", version, about)]
struct Cli {
    /// A plugin name, looked up in the search folders, or a plugin file.
    #[arg(long, value_name = "NAME|PATH")]
    plugin: String,

    /// A TOML file with the plugin's settings table. Default: `[backend.settings]` of the config
    /// when it selects this plugin, else no settings.
    #[arg(long, value_name = "FILE")]
    settings: Option<PathBuf>,

    /// Configuration file, for the plugin search folders, the sha256 pin and logging.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Runs only this check; repeatable. Default: every check.
    #[arg(long = "check", value_name = "NAME")]
    checks: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match &cli.config {
        Some(path) => match Config::load(path) {
            Ok(config) => config,
            Err(error) => return fail(exit_code::USAGE, &error.to_string()),
        },
        None => Config::embedded_default(),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.logging.level));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();

    let config = match select_plugin(config, &cli) {
        Ok(config) => config,
        Err(message) => return fail(exit_code::USAGE, &message),
    };
    if let Some(unknown) = cli.checks.iter().find(|name| !tower_conformance::check_names().contains(&name.as_str())) {
        let known = tower_conformance::check_names().join(", ");
        return fail(exit_code::USAGE, &format!("unknown check `{unknown}`; the checks are: {known}"));
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => return fail(exit_code::HOST_FAILURE, &format!("failed to start the async runtime: {error}")),
    };
    let result = runtime.block_on(async {
        let plugin = load_configured_plugin(&config).await.map_err(|failure| (failure.code, format!("{:#}", failure.error)))?;
        tower_conformance::run(plugin, config.settings_json(), &cli.checks).await.map_err(|message| (exit_code::HOST_FAILURE, message))
    });
    // Plugin threads may still block in calls that outlive the run; do not wait for them.
    runtime.shutdown_background();
    match result {
        Ok(report) => {
            print!("{report}");
            if report.success() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err((code, message)) => fail(code, &message),
    }
}

/// Points the config at the requested plugin and its settings, as `plugins inspect` does.
fn select_plugin(mut config: Config, cli: &Cli) -> Result<Config, String> {
    let looks_like_path = cli.plugin.contains('/') || cli.plugin.ends_with(std::env::consts::DLL_SUFFIX);
    let selector =
        if looks_like_path { PluginSelector::Path(PathBuf::from(&cli.plugin)) } else { PluginSelector::Name(cli.plugin.clone()) };
    if config.selector().ok().as_ref() != Some(&selector) {
        config.backend.settings = toml::Table::new();
        config.backend.sha256 = None;
    }
    match &selector {
        PluginSelector::Name(name) => {
            config.backend.plugin = Some(name.clone());
            config.backend.path = None;
        }
        PluginSelector::Path(path) => {
            config.backend.plugin = None;
            config.backend.path = Some(path.clone());
        }
    }
    if let Some(file) = &cli.settings {
        let text = std::fs::read_to_string(file).map_err(|error| format!("failed to read settings file {}: {error}", file.display()))?;
        config.backend.settings =
            toml::from_str(&text).map_err(|error| format!("settings file {} is not valid TOML: {error}", file.display()))?;
    }
    Ok(config)
}

fn fail(code: u8, message: &str) -> ExitCode {
    eprintln!("tower-conformance: error: {message}");
    ExitCode::from(code)
}
