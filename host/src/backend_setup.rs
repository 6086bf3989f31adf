//! Loading the configured plugin and creating its backend, shared by every command.

use crate::config::{Config, PluginSelector};
use crate::failure::Failure;
use crate::plugin::{self, discovery, loader, Backend, LoadedPlugin};
use std::sync::Arc;

/// Finds, checks and loads the plugin the config selects, and routes its tracing to the host.
pub async fn load_configured_plugin(config: &Config) -> Result<Arc<LoadedPlugin>, Failure> {
    let selector = config.selector().map_err(Failure::usage)?;
    let folders = discovery::search_paths(config);
    if matches!(selector, PluginSelector::Name(_)) {
        for warning in discovery::folder_warnings(config, &folders, false) {
            tracing::warn!("{warning}");
        }
    }
    let path = discovery::resolve(&selector, &folders).map_err(|searched| {
        let PluginSelector::Name(name) = &selector else { unreachable!("a path selector always resolves") };
        let searched: Vec<_> = searched.iter().map(|folder| folder.display().to_string()).collect();
        Failure::host(anyhow::anyhow!(
            "plugin `{name}` not found: no {} in {}; build it with `cargo build --release`, or set `backend.path` or `plugins.search_paths` in the config",
            discovery::plugin_file_name(name),
            if searched.is_empty() { "any search folder".to_string() } else { searched.join(", ") }
        ))
    })?;
    let pin = config.backend.sha256.clone();
    let level = tracing::level_filters::LevelFilter::current();
    let loaded = tokio::task::spawn_blocking(move || {
        let loaded = loader::load(&path, pin.as_deref())?;
        loader::forward_tracing(&loaded, level);
        Ok::<_, loader::LoadError>(loaded)
    })
    .await
    .map_err(Failure::host)?
    .map_err(Failure::host)?;
    tracing::debug!(plugin = %loaded.name, version = %loaded.version, api = %loaded.api_version, path = %loaded.path.display(), "loaded plugin");
    Ok(loaded)
}

/// Loads the configured plugin and creates its backend from `[backend.settings]`.
pub async fn create_backend(config: &Config) -> Result<Backend, Failure> {
    let loaded = load_configured_plugin(config).await?;
    plugin::Backend::new(loaded, config.settings_json()).await.map_err(|error| {
        let invalid_settings = error.error.kind() == Some(tower_plugin_api::ErrorKind::InvalidConfig);
        let error = anyhow::anyhow!("{error} (settings from `[backend.settings]` of {})", config.source);
        if invalid_settings {
            Failure::usage(error)
        } else {
            Failure::host(error)
        }
    })
}
