//! The backend conformance kit of tower-host.
//!
//! It loads a backend plugin, creates a backend through the host's own wrappers
//! (`tower_host::plugin`), and runs small Tower apps it packs itself. It checks what the backend
//! reports against the plugin contract: the order of statuses, exit codes and signals, setup
//! failures, log delivery, terminate and kill in every phase, timeouts, concurrency, recovery and
//! settings validation. A check that needs a capability the backend lacks is skipped with the
//! reason, and a skip never counts as a pass.
//!
//! Plugin tests call [`run`] (or [`run_blocking`]) with a plugin file and its settings; operators
//! run `tower-host conformance --plugin NAME`.

mod apps;
mod checks;
mod local;
mod report;
mod session;

pub use report::{CapabilityCoverage, CheckResult, Outcome, Report, Requirement};

use std::path::Path;
use std::sync::Arc;
use tower_host::plugin::{loader, LoadedPlugin};

/// Returns the names of every check, in the order they run.
pub fn check_names() -> Vec<&'static str> {
    checks::all().iter().map(|check| check.name).collect()
}

/// Loads the plugin file at `path`, with the host's permission and version checks.
pub fn load_plugin(path: &Path) -> Result<Arc<LoadedPlugin>, String> {
    loader::load(path, None).map_err(|error| error.to_string())
}

/// Runs the checks named in `only` (every check when it is empty) against a backend created from
/// `settings_json`, a JSON object. Fails only when that backend cannot be created.
pub async fn run(plugin: Arc<LoadedPlugin>, settings_json: String, only: &[String]) -> Result<Report, String> {
    if let Some(unknown) = only.iter().find(|name| !check_names().contains(&name.as_str())) {
        return Err(format!("unknown check `{unknown}`; the checks are: {}", check_names().join(", ")));
    }
    let name = format!("{} {}", plugin.name, plugin.version);
    let session = session::Session::new(plugin, settings_json)
        .await
        .map_err(|error| format!("the backend could not be created from its settings: {error}"))?;
    let mut results = Vec::new();
    for check in checks::all() {
        if !only.is_empty() && !only.iter().any(|wanted| wanted == check.name) {
            continue;
        }
        results.push(checks::run(&session, &check).await);
    }
    let _ = session.backend.shutdown().await;
    Ok(Report { plugin: name, checks: results })
}

/// Loads the plugin at `path` and runs [`run`] on a tokio runtime of its own, for tests that
/// have none.
pub fn run_blocking(path: &Path, settings_json: &str, only: &[&str]) -> Result<Report, String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|error| format!("failed to start a tokio runtime: {error}"))?;
    let plugin = load_plugin(path)?;
    let only: Vec<String> = only.iter().map(|name| name.to_string()).collect();
    let report = runtime.block_on(run(plugin, settings_json.to_string(), &only));
    // Plugin threads may still block in calls that outlive the run; do not wait for them.
    runtime.shutdown_background();
    report
}
