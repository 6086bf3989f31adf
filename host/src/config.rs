//! The host's TOML configuration: which backend plugin to load, its settings, where to look for
//! plugins, logging, and the API of `tower-host serve`.

use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};

/// The configuration used when no `--config` is given: the subprocess plugin with its defaults.
pub const DEFAULT_CONFIG: &str = include_str!("../../config/default.toml");

/// A configuration error, naming the file and, for syntax and schema errors, the line and column.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("failed to read config file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML is malformed or does not match the schema.
    #[error("{location}: {message}")]
    Invalid {
        /// `FILE:LINE:COLUMN`.
        location: String,
        /// The problem, naming the key.
        message: String,
    },
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The backend plugin and its settings.
    pub backend: BackendConfig,
    /// The plugin search folders.
    #[serde(default)]
    pub plugins: PluginsConfig,
    /// The host's own log output.
    #[serde(default)]
    pub logging: LoggingConfig,
    /// The API of `tower-host serve`.
    #[serde(default)]
    pub serve: crate::serve::config::ServeConfig,
    /// The configuration's origin (a file path), for messages.
    #[serde(skip)]
    pub source: String,
}

/// `[backend]`: which plugin to load.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// A plugin name, looked up as `libtower_plugin_NAME.so` in the search folders.
    pub plugin: Option<String>,
    /// A plugin file, used as is.
    pub path: Option<PathBuf>,
    /// The sha256 the plugin file must have (lowercase or uppercase hex).
    pub sha256: Option<String>,
    /// Handed to the plugin as its settings.
    #[serde(default = "empty_table")]
    pub settings: toml::Table,
}

fn empty_table() -> toml::Table {
    toml::Table::new()
}

/// `[plugins]`: the plugin search folders.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginsConfig {
    /// Folders searched in order. Default: the folder of the `tower-host` executable, then
    /// `<prefix>/lib/tower-host/plugins` where the executable is `<prefix>/bin/tower-host`.
    pub search_paths: Option<Vec<PathBuf>>,
}

/// `[logging]`: the host's own diagnostics on stderr.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingConfig {
    /// A `tracing` filter: `error`, `warn`, `info`, `debug`, `trace`, or directives such as
    /// `tower_host=debug`. `RUST_LOG` overrides it.
    #[serde(default = "default_level")]
    pub level: String,
    /// `text` or `json`.
    #[serde(default)]
    pub format: LogFormat,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self { level: default_level(), format: LogFormat::Text }
    }
}

fn default_level() -> String {
    "warn".to_string()
}

/// Format of the host's diagnostics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The configured choice of backend plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginSelector {
    /// Looked up by name in the search folders.
    Name(String),
    /// A file.
    Path(PathBuf),
}

impl fmt::Display for PluginSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PluginSelector::Name(name) => write!(f, "plugin `{name}`"),
            PluginSelector::Path(path) => write!(f, "plugin file {}", path.display()),
        }
    }
}

impl Config {
    /// Reads and validates a configuration file. Relative plugin paths are resolved against the
    /// file's folder.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let mut config = Self::parse(&text, &path.display().to_string())?;
        let base = path.parent().unwrap_or(Path::new("."));
        if let Some(plugin_path) = &config.backend.path {
            config.backend.path = Some(base.join(plugin_path));
        }
        if let Some(paths) = &mut config.plugins.search_paths {
            for search_path in paths.iter_mut() {
                *search_path = base.join(&*search_path);
            }
        }
        config.serve.resolve_paths(base);
        Ok(config)
    }

    /// Returns the embedded default configuration.
    pub fn embedded_default() -> Self {
        Self::parse(DEFAULT_CONFIG, "<embedded default config>").expect("the embedded default config is valid")
    }

    /// Parses configuration text; `source` names it in errors.
    pub fn parse(text: &str, source: &str) -> Result<Self, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|error| {
            let (line, column) = error.span().map_or((1, 1), |span| line_and_column(text, span.start));
            ConfigError::Invalid { location: format!("{source}:{line}:{column}"), message: error.message().to_string() }
        })?;
        config.source = source.to_string();
        config.selector()?;
        if let Some(sha256) = &config.backend.sha256 {
            if sha256.len() != 64 || !sha256.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(config.invalid(format!("`backend.sha256` must be 64 hex digits, got `{sha256}`")));
            }
        }
        if !matches!(config.logging.level.trim(), "") {
            tracing_subscriber::EnvFilter::try_new(&config.logging.level)
                .map_err(|error| config.invalid(format!("invalid `logging.level` `{}`: {error}", config.logging.level)))?;
        }
        config.serve.validate().map_err(|message| config.invalid(message))?;
        Ok(config)
    }

    /// Returns how the backend plugin is chosen.
    pub fn selector(&self) -> Result<PluginSelector, ConfigError> {
        match (&self.backend.plugin, &self.backend.path) {
            (Some(name), None) => {
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                    return Err(self.invalid(format!(
                        "invalid `backend.plugin` `{name}`: use letters, digits, `-` and `_`, or set `backend.path` to a file"
                    )));
                }
                Ok(PluginSelector::Name(name.clone()))
            }
            (None, Some(path)) => Ok(PluginSelector::Path(path.clone())),
            (Some(_), Some(_)) => Err(self.invalid("set either `backend.plugin` or `backend.path`, not both".to_string())),
            (None, None) => Err(self.invalid("missing `backend.plugin` (a plugin name) or `backend.path` (a plugin file)".to_string())),
        }
    }

    /// Returns the plugin settings as a JSON object, the form plugins receive.
    pub fn settings_json(&self) -> String {
        serde_json::to_string(&self.backend.settings).expect("a TOML table converts to JSON")
    }

    fn invalid(&self, message: String) -> ConfigError {
        ConfigError::Invalid { location: self.source.clone(), message }
    }
}

/// Converts a byte offset into a 1-based line and column (columns count characters).
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |at| at + 1);
    (line, before[line_start..].chars().count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_selects_subprocess() {
        let config = Config::embedded_default();
        assert_eq!(config.selector().unwrap(), PluginSelector::Name("subprocess".to_string()));
        assert_eq!(config.settings_json(), "{}");
    }

    #[test]
    fn misspelled_key_names_key_line_and_column() {
        let text = "[backend]\nplugin = \"subprocess\"\n\n[logging]\nlevl = \"info\"\n";
        let error = Config::parse(text, "host.toml").unwrap_err().to_string();
        assert!(error.starts_with("host.toml:5:1: "), "{error}");
        assert!(error.contains("unknown field `levl`"), "{error}");
    }

    #[test]
    fn wrong_type_names_line_and_column() {
        let text = "[backend]\nplugin = 3\n";
        let error = Config::parse(text, "host.toml").unwrap_err().to_string();
        assert!(error.starts_with("host.toml:2:10: "), "{error}");
        assert!(error.contains("invalid type"), "{error}");
    }

    #[test]
    fn plugin_and_path_together_are_rejected() {
        let text = "[backend]\nplugin = \"a\"\npath = \"/x.so\"\n";
        let error = Config::parse(text, "host.toml").unwrap_err().to_string();
        assert!(error.contains("either `backend.plugin` or `backend.path`"), "{error}");
    }

    #[test]
    fn settings_table_becomes_json() {
        let text = "[backend]\nplugin = \"a\"\n[backend.settings]\nwork_dir = \"/w\"\n[backend.settings.limits]\nmax = 3\n";
        let config = Config::parse(text, "host.toml").unwrap();
        let json: serde_json::Value = serde_json::from_str(&config.settings_json()).unwrap();
        assert_eq!(json["work_dir"], "/w");
        assert_eq!(json["limits"]["max"], 3);
    }

    #[test]
    fn malformed_sha256_pin_is_rejected() {
        let text = "[backend]\nplugin = \"a\"\nsha256 = \"abc\"\n";
        let error = Config::parse(text, "host.toml").unwrap_err().to_string();
        assert!(error.contains("64 hex digits"), "{error}");
    }

    #[test]
    fn relative_plugin_path_is_resolved_against_config_folder() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("host.toml");
        std::fs::write(&file, "[backend]\npath = \"plugins/libx.so\"\n").unwrap();
        let config = Config::load(&file).unwrap();
        assert_eq!(config.selector().unwrap(), PluginSelector::Path(dir.path().join("plugins/libx.so")));
    }
}
