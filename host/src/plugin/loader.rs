//! Loading a plugin library: permission and checksum checks, the contract version check, then
//! abi_stable's layout check. Loaded libraries are never unloaded, because thread-local
//! destructors registered by their code may still run at thread exit.

use super::safety;
use abi_stable::abi_stability::abi_checking::check_layout_compatibility;
use abi_stable::library::{lib_header_from_raw_library, LibraryError, RawLibrary};
use abi_stable::StableAbi;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tower_plugin_api::{
    ffi::{PluginModuleRef, TraceEvent, TraceLevel, TracingSinkFfi, TracingSinkFfi_TO},
    ApiVersion, API_VERSION, API_VERSION_SYMBOL,
};

/// A failure to load a plugin file. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// No file at the path, or no plugin of that name in the search folders.
    #[error("plugin file {path} does not exist; {hint}")]
    NotFound {
        /// The file.
        path: PathBuf,
        /// The next step for the operator.
        hint: String,
    },
    /// The file or a folder above it can be changed by other users.
    #[error("refusing to load plugin {path}: {reason}")]
    Unsafe {
        /// The file.
        path: PathBuf,
        /// Why, and how to fix it.
        reason: String,
    },
    /// The file does not match the configured sha256 pin.
    #[error("refusing to load plugin {path}: its sha256 is {actual} but `backend.sha256` pins {expected}; check which file was installed, or update the pin")]
    ChecksumMismatch {
        /// The file.
        path: PathBuf,
        /// The pinned digest.
        expected: String,
        /// The file's digest.
        actual: String,
    },
    /// The file could not be read or is not a dynamic library.
    #[error("failed to load plugin {path}: {message}")]
    NotALibrary {
        /// The file.
        path: PathBuf,
        /// The dynamic loader's message.
        message: String,
    },
    /// The library does not export the tower-host plugin symbols.
    #[error("{path} is a library but not a tower-host plugin: it does not export `{symbol}`; build it with `tower_plugin_api::export_plugin!`")]
    NotAPlugin {
        /// The file.
        path: PathBuf,
        /// The missing symbol.
        symbol: String,
    },
    /// The plugin was built against a contract version this host does not accept.
    #[error("plugin {path} was built against plugin API {plugin}, but this host (plugin API {host}) accepts plugins built against {accepted}; rebuild the plugin against a matching tower-plugin-api")]
    IncompatibleVersion {
        /// The file.
        path: PathBuf,
        /// The plugin's contract version.
        plugin: ApiVersion,
        /// The host's contract version.
        host: ApiVersion,
        /// The accepted range.
        accepted: String,
    },
    /// abi_stable found that the plugin's types do not match the host's.
    #[error("plugin {path} does not match this host's plugin API layout; rebuild it against tower-plugin-api {host}:\n{details}")]
    Layout {
        /// The file.
        path: PathBuf,
        /// The host's contract version.
        host: ApiVersion,
        /// abi_stable's report.
        details: String,
    },
    /// The plugin's root module failed to initialize.
    #[error("plugin {path} failed to initialize: {message}")]
    Init {
        /// The file.
        path: PathBuf,
        /// abi_stable's report.
        message: String,
    },
}

/// A plugin library that passed every check.
pub struct LoadedPlugin {
    /// The file, with symlinks resolved.
    pub path: PathBuf,
    /// The name the plugin gives itself.
    pub name: String,
    /// The plugin's own version.
    pub version: String,
    /// The contract version it was built against.
    pub api_version: ApiVersion,
    pub(crate) module: PluginModuleRef,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("path", &self.path)
            .field("name", &self.name)
            .field("version", &self.version)
            .field("api_version", &self.api_version)
            .finish()
    }
}

impl LoadedPlugin {
    /// Returns the JSON Schema of the plugin's settings.
    pub fn settings_schema(&self) -> String {
        (self.module.settings_schema())().into_string()
    }
}

/// Checks and loads a plugin file. `sha256_pin`, when given, must match the file's digest.
/// Blocks for file I/O and the dynamic loader: call it off the async runtime.
pub fn load(path: &Path, sha256_pin: Option<&str>) -> Result<Arc<LoadedPlugin>, LoadError> {
    match std::fs::metadata(path) {
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(LoadError::NotFound {
                path: path.to_path_buf(),
                hint: "check `backend.path` in the config, or build the plugin (`cargo build --release`)".to_string(),
            });
        }
        Err(error) => {
            let message = format!("{error}; check the permissions of the file and of the folders above it");
            return Err(LoadError::NotALibrary { path: path.to_path_buf(), message });
        }
    }
    let path = path.canonicalize().map_err(|error| LoadError::NotALibrary { path: path.to_path_buf(), message: error.to_string() })?;

    // Checks that need no code of the plugin to run.
    safety::check_permissions(&path).map_err(|reason| LoadError::Unsafe { path: path.clone(), reason })?;
    if let Some(expected) = sha256_pin {
        let actual = safety::sha256_of(&path).map_err(|error| LoadError::NotALibrary { path: path.clone(), message: error.to_string() })?;
        if !actual.eq_ignore_ascii_case(expected) {
            return Err(LoadError::ChecksumMismatch { path, expected: expected.to_ascii_lowercase(), actual });
        }
    }

    // The dynamic loader (which runs the library's static constructors, if it has any), then the
    // contract version before any other function of the plugin.
    let library = RawLibrary::load_at(&path).map_err(|error| LoadError::NotALibrary { path: path.clone(), message: library_message(error) })?;
    let api_version = {
        let symbol = unsafe { library.get::<extern "C" fn() -> ApiVersion>(API_VERSION_SYMBOL) };
        let version_fn = symbol.map_err(|_| not_a_plugin(&path, API_VERSION_SYMBOL))?;
        (*version_fn)()
    };
    if !API_VERSION.accepts(&api_version) {
        return Err(LoadError::IncompatibleVersion {
            path,
            plugin: api_version,
            host: API_VERSION,
            accepted: API_VERSION.accepted_range(),
        });
    }

    // abi_stable's root module: its version string and the layout of every type.
    let header = unsafe { lib_header_from_raw_library(&library) }.map_err(|_| {
        not_a_plugin(&path, abi_stable::library::ROOT_MODULE_LOADER_NAME_WITH_NUL.as_bytes())
    })?;
    let layout_error = |details: String| LoadError::Layout { path: path.clone(), host: API_VERSION, details };
    let init_error = |error: LibraryError| match error {
        LibraryError::AbiInstability(details) => layout_error(details.to_string()),
        other => LoadError::Init { path: path.clone(), message: other.to_string() },
    };
    let module = if api_version.minor == API_VERSION.minor {
        header.init_root_module::<PluginModuleRef>().map_err(init_error)?
    } else {
        // abi_stable accepts a library whose prefix types (vtables, the root module) have more
        // fields than the host's, not fewer, so it refuses a plugin of an older minor version,
        // whose types lack what later minors appended. The same check with the two sides swapped
        // accepts exactly that difference and still compares every field both sides have.
        let library_layout = header.layout().ok_or_else(|| layout_error("the library does not carry its layout".to_string()))?;
        check_layout_compatibility(library_layout, <PluginModuleRef as StableAbi>::LAYOUT)
            .map_err(|errors| layout_error(errors.to_string()))?;
        // SAFETY: the layouts were compared just above: every field of the plugin's types matches
        // the host's, and the host's extra trailing fields are reached only through accessors
        // that check the plugin's field count first.
        unsafe { header.init_root_module_with_unchecked_layout::<PluginModuleRef>() }.map_err(init_error)?
    };
    std::mem::forget(library);

    Ok(Arc::new(LoadedPlugin {
        name: module.name().to_string(),
        version: module.version().to_string(),
        api_version: module.api_version(),
        path,
        module,
    }))
}

/// Routes the plugin's tracing events to the host's subscriber, at the host's level and above.
/// Call it off the async runtime: it runs plugin code.
pub fn forward_tracing(plugin: &LoadedPlugin, host_level: tracing::level_filters::LevelFilter) {
    let level = match host_level.into_level() {
        Some(tracing::Level::TRACE) => TraceLevel::Trace,
        Some(tracing::Level::DEBUG) => TraceLevel::Debug,
        Some(tracing::Level::INFO) => TraceLevel::Info,
        Some(tracing::Level::WARN) => TraceLevel::Warn,
        Some(tracing::Level::ERROR) | None => TraceLevel::Error,
    };
    let sink = HostTracingSink { plugin: plugin.name.clone() };
    (plugin.module.init_tracing())(TracingSinkFfi_TO::from_value(sink, abi_stable::sabi_trait::TD_Opaque), level);
}

fn not_a_plugin(path: &Path, symbol: &[u8]) -> LoadError {
    let symbol = String::from_utf8_lossy(symbol.strip_suffix(b"\0").unwrap_or(symbol)).into_owned();
    LoadError::NotAPlugin { path: path.to_path_buf(), symbol }
}

fn library_message(error: LibraryError) -> String {
    match error {
        LibraryError::OpenError { err, .. } => err.to_string(),
        other => other.to_string(),
    }
}

/// Re-emits plugin tracing events in the host, tagged with the plugin name.
struct HostTracingSink {
    plugin: String,
}

impl TracingSinkFfi for HostTracingSink {
    fn event(&self, event: TraceEvent) {
        // The execution id gets a field of its own, as in the host's spans; the rest are joined.
        let execution_id = event.fields.iter().rev().find(|pair| pair.key == "execution.id").map(|pair| pair.value.to_string());
        let execution_id = execution_id.as_deref().unwrap_or("");
        let fields = event
            .fields
            .iter()
            .filter(|pair| pair.key != "execution.id")
            .map(|pair| format!("{}={}", pair.key, pair.value))
            .collect::<Vec<_>>()
            .join(" ");
        let plugin = self.plugin.as_str();
        let target = event.target.as_str();
        let message = event.message.as_str();
        macro_rules! emit {
            ($level:expr) => {
                tracing::event!(target: "tower_host::plugin", $level, plugin, execution.id = execution_id, plugin.target = target, plugin.fields = fields.as_str(), "{message}")
            };
        }
        match event.level {
            TraceLevel::Trace => emit!(tracing::Level::TRACE),
            TraceLevel::Debug => emit!(tracing::Level::DEBUG),
            TraceLevel::Info => emit!(tracing::Level::INFO),
            TraceLevel::Warn => emit!(tracing::Level::WARN),
            TraceLevel::Error => emit!(tracing::Level::ERROR),
        }
    }
}

