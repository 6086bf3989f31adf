//! `plugins list`, `plugins inspect` and `config check`.

use crate::backend_setup::{create_backend, load_configured_plugin};
use crate::config::{Config, PluginSelector};
use crate::exit_code;
use crate::failure::{CommandResult, Failure};
use crate::plugin::{discovery, loader, Backend};
use std::path::PathBuf;

/// Prints a line on stdout like `println!`. When the reader has gone away (`| head`), the
/// process ends quietly with the code a shell gives SIGPIPE, instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {
        print_line(format_args!($($arg)*))
    };
}

fn print_line(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    match writeln!(std::io::stdout().lock(), "{line}") {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(i32::from(exit_code::OUTPUT_CLOSED)),
        Err(error) => eprintln!("tower-host: failed to write to stdout: {error}"),
    }
}

/// Lists every plugin file in the search folders with its versions, or why it cannot be loaded.
/// Exits with the host-failure code when any plugin cannot be loaded.
pub async fn plugins_list(config: &Config) -> CommandResult {
    let folders = discovery::search_paths(config);
    for warning in discovery::folder_warnings(config, &folders, true) {
        eprintln!("warning: {warning}");
    }
    let candidates = discovery::find_all(&folders);
    if candidates.is_empty() {
        let searched: Vec<_> = folders.iter().map(|folder| folder.display().to_string()).collect();
        out!("no plugins found in {}", searched.join(", "));
        return Ok(0);
    }

    let mut problems = 0;
    out!("{:<16} {:<10} {:<10} {:<6} PATH", "NAME", "VERSION", "API", "STATUS");
    for candidate in candidates {
        let path = candidate.path.clone();
        let loaded = tokio::task::spawn_blocking(move || loader::load(&path, None)).await.map_err(Failure::host)?;
        match loaded {
            Ok(plugin) => {
                out!(
                    "{:<16} {:<10} {:<10} {:<6} {}",
                    plugin.name,
                    plugin.version,
                    plugin.api_version.to_string(),
                    "ok",
                    candidate.path.display()
                );
                if plugin.name != candidate.name {
                    out!(
                        "    note: the file name says `{}`, so `plugin = \"{}\"` loads this plugin, which calls itself `{}`",
                        candidate.name, candidate.name, plugin.name
                    );
                }
            }
            Err(error) => {
                problems += 1;
                out!("{:<16} {:<10} {:<10} {:<6} {}", candidate.name, "-", "-", "error", candidate.path.display());
                out!("    {error}");
            }
        }
    }
    Ok(if problems == 0 { 0 } else { exit_code::HOST_FAILURE })
}

/// Prints a plugin's versions, its capabilities and the JSON Schema of its settings.
pub async fn plugins_inspect(config: &Config, plugin: &str) -> CommandResult {
    let looks_like_path = plugin.contains('/') || plugin.ends_with(std::env::consts::DLL_SUFFIX);
    let selector = if looks_like_path { PluginSelector::Path(PathBuf::from(plugin)) } else { PluginSelector::Name(plugin.to_string()) };

    // The configured settings apply when the config selects this very plugin; else the defaults.
    let mut inspected = config.clone();
    if config.selector().ok().as_ref() != Some(&selector) {
        inspected.backend.settings = toml::Table::new();
        inspected.backend.sha256 = None;
    }
    match &selector {
        PluginSelector::Name(name) => {
            inspected.backend.plugin = Some(name.clone());
            inspected.backend.path = None;
        }
        PluginSelector::Path(path) => {
            inspected.backend.plugin = None;
            inspected.backend.path = Some(path.clone());
        }
    }

    let loaded = load_configured_plugin(&inspected).await?;
    out!("name:        {}", loaded.name);
    out!("version:     {}", loaded.version);
    out!("plugin API:  {}", loaded.api_version);
    out!("path:        {}", loaded.path.display());
    match Backend::new(loaded.clone(), inspected.settings_json()).await {
        Ok(backend) => {
            let capabilities = backend.capabilities().await.map_err(Failure::host)?;
            let json = serde_json::to_string_pretty(&capabilities).map_err(Failure::host)?;
            out!("capabilities:\n{json}");
        }
        Err(error) => out!("capabilities: not available, because the backend could not be created: {error}"),
    }
    let schema = tokio::task::spawn_blocking(move || loaded.settings_schema()).await.map_err(Failure::host)?;
    out!("settings (JSON Schema):\n{schema}");
    Ok(0)
}

/// Validates the config, loads its plugin, creates the backend and runs its health probe.
pub async fn config_check(config: &Config) -> CommandResult {
    let backend = create_backend(config).await?;
    let plugin = backend.plugin();
    out!("{}: valid", config.source);
    out!("plugin {} {} (plugin API {}) at {}", plugin.name, plugin.version, plugin.api_version, plugin.path.display());
    let health = backend.health().await;
    out!("health: {}: {}", if health.healthy { "healthy" } else { "unhealthy" }, health.message);
    backend.shutdown().await.map_err(Failure::host)?;
    Ok(if health.healthy { 0 } else { exit_code::HOST_FAILURE })
}
