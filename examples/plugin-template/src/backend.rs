//! The backend: settings, capabilities, health, and accepting executions.

use crate::driver::{self, Job};
use crate::execution::{BubblewrapExecution, Control};
use crate::sandbox::Spawner;
use crate::settings::{self, Settings};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tower_plugin_api::sdk::{Backend, EventSink};
use tower_plugin_api::{
    Capabilities, ExecutionSpec, ExecutionState, ExecutionStatus, Health, KeyValue, PackageSource, PluginError, SetupPhaseKind, Timestamp,
};

/// How long the probe that starts an empty sandbox may take.
const PROBE_LIMIT: Duration = Duration::from_secs(5);

/// Runs executions in bubblewrap sandboxes on this machine.
#[derive(Debug)]
pub struct BubblewrapBackend {
    settings: Settings,
    bwrap: PathBuf,
    uv: Option<PathBuf>,
    work_dir: PathBuf,
    spawner: Spawner,
}

/// Finds `program`: a path containing `/` as is, else the first match on the host's `PATH`.
fn find_program(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return program.is_file().then(|| program.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|folder| folder.join(program)).find(|candidate| candidate.is_file())
}

/// Starts `bwrap` with the sandbox's isolation flags around `true`; returns why it failed.
async fn probe(bwrap: &Path) -> Result<(), String> {
    let mut command = tokio::process::Command::new(bwrap);
    command.args(["--ro-bind", "/", "/", "--unshare-net", "--unshare-pid", "--die-with-parent", "--", "true"]);
    command.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).kill_on_drop(true);
    let output = tokio::time::timeout(PROBE_LIMIT, command.output()).await.map_err(|_| format!("it did not finish within {PROBE_LIMIT:?}"))?;
    let output = output.map_err(|error| error.to_string())?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!("{}: {}", output.status, String::from_utf8_lossy(&output.stderr).trim()))
    }
}

impl Backend for BubblewrapBackend {
    type Settings = Settings;
    type Execution = BubblewrapExecution;

    async fn new(settings: Settings) -> Result<Self, PluginError> {
        settings.validate()?;
        let bwrap = find_program(&settings.bwrap).ok_or_else(|| {
            PluginError::invalid_config(format!(
                "invalid setting `bwrap`: {} was not found; install bubblewrap (Debian package `bubblewrap`) or set `bwrap` to its path",
                settings.bwrap.display()
            ))
        })?;
        probe(&bwrap).await.map_err(|reason| {
            PluginError::unavailable(format!("{} cannot start a sandbox on this machine: {reason}", bwrap.display()))
        })?;
        let uv = match &settings.uv {
            None => None,
            Some(uv) => {
                let found = find_program(uv);
                if found.is_none() {
                    tracing::warn!(uv = %uv.display(), "uv was not found; Python apps will fail in setup");
                }
                found
            }
        };
        let work_dir = settings.work_dir();
        settings::prepare_work_dir(&work_dir)?;
        let spawner = Spawner::start().map_err(|error| PluginError::internal(format!("failed to start the bwrap spawner thread: {error}")))?;
        Ok(Self { settings, bwrap, uv, work_dir, spawner })
    }

    fn capabilities(&self) -> Capabilities {
        let mut capabilities = Capabilities::new("bubblewrap");
        capabilities.network_isolation = true;
        capabilities.enforced_limits.timeout = true;
        capabilities.details.push(KeyValue::new("python", if self.uv.is_some() { "uv" } else { "unsupported: no uv" }));
        capabilities
    }

    async fn health(&self) -> Health {
        match probe(&self.bwrap).await {
            Ok(()) => Health::healthy(format!("{} started an empty sandbox", self.bwrap.display())),
            Err(reason) => Health::unhealthy(format!("{} cannot start a sandbox: {reason}", self.bwrap.display())),
        }
    }

    async fn create(&self, spec: ExecutionSpec, events: EventSink) -> Result<BubblewrapExecution, PluginError> {
        let run_id = spec.run_id.to_string();
        if run_id.is_empty() || run_id == "." || run_id == ".." || run_id.contains('/') || run_id.contains('\0') {
            return Err(PluginError::invalid_spec(format!("invalid run id {run_id:?}: it is used as a folder name, so it must not be empty, `.`, `..` or contain `/`")));
        }
        let (archive, sha256) = match spec.package.as_enum() {
            Ok(PackageSource::File { path, sha256 }) => (PathBuf::from(path.as_str()), sha256.to_string()),
            _ => return Err(PluginError::unsupported("this backend runs only packages staged as local files; it has no network")),
        };
        let verify_archive = archive.clone();
        tokio::task::spawn_blocking(move || tower_package::verify_sha256(&verify_archive, &sha256))
            .await
            .map_err(|error| PluginError::internal(format!("verifying the package panicked: {error}")))?
            .map_err(|error| PluginError::invalid_package(error.to_string()))?;

        let folder = self.work_dir.join(&run_id);
        std::fs::DirBuilder::new().create(&folder).map_err(|error| match error.kind() {
            std::io::ErrorKind::AlreadyExists => PluginError::invalid_spec(format!("execution `{run_id}` already exists in {}", self.work_dir.display())),
            _ => PluginError::internal(format!("failed to create {}: {error}", folder.display())),
        })?;

        let started_at = Timestamp::now();
        let first = ExecutionStatus::new(ExecutionState::preparing(SetupPhaseKind::StagingPackage)).started(Some(started_at));
        let (control, ended) = Control::new(first.clone());
        events.status(first);
        let job = Job {
            bwrap: self.bwrap.clone(),
            spawner: self.spawner.clone(),
            uv: self.uv.clone(),
            uv_args: self.settings.uv_args.clone(),
            writable_paths: self.settings.writable_paths.clone(),
            max_line_bytes: self.settings.max_line_bytes,
            folder: folder.clone(),
            archive,
            started_at,
        };
        tokio::spawn(driver::drive(job, spec, std::sync::Arc::clone(&control), events, ended));
        Ok(BubblewrapExecution { control, folder })
    }
}
