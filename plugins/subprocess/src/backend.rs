//! The backend: probes the machine at startup, accepts executions, stages their packages and
//! hands them to a [`Driver`].

use crate::capabilities;
use crate::cgroup::{self, CgroupManager, Controller};
use crate::cleanup::{remove_execution_dir, sweep_leftovers};
use crate::driver::{Driver, Launch};
use crate::environment::{self, find_executable, Environment};
use crate::execution::SubprocessExecution;
use crate::owner::Owner;
use crate::report::{Reporter, StatusCell};
use crate::settings::{CgroupMode, Paths, Settings};
use crate::staging::{self, StagingError};
use crate::uv;
use crate::workload::Workload;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;
use tower_package::Package;
use tower_plugin_api::sdk::{Backend, EventSink};
use tower_plugin_api::{
    Capabilities, ExecutionSpec, ExecutionState, ExecutionStatus, Health, PluginError, ServiceEndpoint, SetupPhaseKind, Timestamp,
};

/// Bytes in one MiB.
const MIB: u64 = 1024 * 1024;

/// Address of the service endpoint of an execution: processes listen on the host itself.
const SERVICE_HOST: &str = "127.0.0.1";

/// The state every execution of a backend shares.
#[derive(Debug)]
pub struct BackendContext {
    /// The settings.
    pub settings: Settings,
    /// The folders derived from them.
    pub paths: Paths,
    /// The creator of execution cgroups, when cgroups are in use.
    pub cgroups: Option<CgroupManager>,
    /// The host process, written into each execution folder.
    pub owner: Owner,
    /// Held while one execution installs uv, so that the others wait for its result.
    pub uv_install_lock: tokio::sync::Mutex<()>,
}

/// Runs executions as local processes.
pub struct SubprocessBackend {
    context: Arc<BackendContext>,
    capabilities: Capabilities,
    /// One permit per execution that has not ended, when `max_concurrent_executions` is set.
    slots: Option<Arc<Semaphore>>,
    shut_down: AtomicBool,
}

impl Backend for SubprocessBackend {
    type Settings = Settings;
    type Execution = SubprocessExecution;

    async fn new(settings: Settings) -> Result<Self, PluginError> {
        settings.validate()?;
        let paths = settings.paths();
        paths.create_all()?;
        let owner = Owner::current().map_err(|error| PluginError::internal(format!("failed to identify the host process: {error}")))?;

        let (cgroups, cgroup_absence) = match settings.cgroups {
            CgroupMode::Off => (None, "disabled by the `cgroups` setting".to_string()),
            CgroupMode::Auto => match run_blocking(cgroup::probe).await? {
                Ok(manager) => (Some(manager), String::new()),
                Err(reason) => (None, reason),
            },
        };
        match &cgroups {
            Some(manager) => tracing::info!(controllers = %manager.controller_names(), version = ?manager.version(), "executions run in cgroups"),
            None => tracing::info!(reason = %cgroup_absence, "executions run without cgroups"),
        }

        let executions_dir = paths.executions_dir.clone();
        let sweep_cgroups = cgroups.clone();
        let summary = run_blocking(move || sweep_leftovers(&executions_dir, sweep_cgroups.as_ref())).await?;
        if summary.folders > 0 || summary.cgroups > 0 {
            tracing::info!(folders = summary.folders, cgroups = summary.cgroups, "removed executions left behind by hosts that are gone");
        }

        let capabilities = capabilities::describe(&settings, cgroups.as_ref(), &cgroup_absence);
        let slots = settings.max_concurrent_executions.map(|cap| Arc::new(Semaphore::new(cap as usize)));
        let context = BackendContext { settings, paths, cgroups, owner, uv_install_lock: tokio::sync::Mutex::new(()) };
        Ok(Self { context: Arc::new(context), capabilities, slots, shut_down: AtomicBool::new(false) })
    }

    fn capabilities(&self) -> Capabilities {
        self.capabilities.clone()
    }

    async fn health(&self) -> Health {
        let context = Arc::clone(&self.context);
        match run_blocking(move || check_health(&context)).await {
            Ok(Ok(message)) => Health::healthy(message),
            Ok(Err(reason)) => Health::unhealthy(reason),
            Err(error) => Health::unhealthy(error.message.to_string()),
        }
    }

    async fn create(&self, spec: ExecutionSpec, events: EventSink) -> Result<SubprocessExecution, PluginError> {
        let span = tracing::info_span!("execution", execution.id = %spec.run_id);
        self.create_in_span(spec, events).instrument(span).await
    }

    async fn shutdown(&self) -> Result<(), PluginError> {
        self.shut_down.store(true, Ordering::Release);
        Ok(())
    }
}

impl SubprocessBackend {
    /// Returns where executions get their cgroups, or `None` when they get none. The folders are
    /// the ones found when the backend started, whatever cgroup the host process is in now.
    pub fn cgroups(&self) -> Option<&CgroupManager> {
        self.context.cgroups.as_ref()
    }

    async fn create_in_span(&self, spec: ExecutionSpec, events: EventSink) -> Result<SubprocessExecution, PluginError> {
        let status = Arc::new(StatusCell::new(ExecutionStatus::new(ExecutionState::preparing(SetupPhaseKind::Queued))));
        let reporter = Reporter::new(events, Arc::clone(&status), Timestamp::now());

        self.check_accepting().map_err(|error| reporter.fail_setup(error))?;
        check_spec(&spec).map_err(|error| reporter.fail_setup(error))?;
        let permit = self.take_slot().map_err(|error| reporter.fail_setup(error))?;
        reporter.report(ExecutionState::preparing(SetupPhaseKind::StagingPackage));

        let (execution_dir, package) = self.stage(&spec).await.map_err(|error| reporter.fail_setup(error))?;
        let folder_name = execution_dir.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
        reporter.set_metadata("execution_dir", execution_dir.display().to_string());

        let cgroup = match self.create_cgroup(&folder_name, &spec).await {
            Ok(cgroup) => cgroup,
            Err(error) => {
                remove_after_failure(&execution_dir).await;
                return Err(reporter.fail_setup(error));
            }
        };
        if let Some(cgroup) = &cgroup {
            reporter.set_metadata("cgroup", cgroup.path().display().to_string());
        }

        let memory_in_cgroup = cgroup.is_some() && self.context.cgroups.as_ref().is_some_and(|m| m.has(Controller::Memory));
        let address_space_limit = match spec.limits.memory_mib.into_option() {
            Some(mib) if !memory_in_cgroup => Some(mib.saturating_mul(MIB)),
            _ => None,
        };
        let workload = Arc::new(Workload::new(cgroup, address_space_limit));
        let launch = self.launch(&spec, package, execution_dir.clone());
        tracing::info!(variables = ?launch.environment.names(), folder = %execution_dir.display(), "execution staged");

        let (done_sender, done) = watch::channel(false);
        let driver = Driver { backend: Arc::clone(&self.context), launch, workload: Arc::clone(&workload), reporter, done: done_sender, permit };
        tokio::spawn(driver.run().in_current_span());

        let endpoint = service_endpoint(&spec);
        Ok(SubprocessExecution::new(spec.run_id.to_string(), status, workload, execution_dir, endpoint, done, self.context.settings.drain_timeout()))
    }

    fn check_accepting(&self) -> Result<(), PluginError> {
        if self.shut_down.load(Ordering::Acquire) {
            return Err(PluginError::unavailable("the subprocess backend is shut down and accepts no executions"));
        }
        Ok(())
    }

    fn take_slot(&self) -> Result<Option<OwnedSemaphorePermit>, PluginError> {
        let Some(slots) = &self.slots else { return Ok(None) };
        Arc::clone(slots).try_acquire_owned().map(Some).map_err(|_| {
            let cap = self.context.settings.max_concurrent_executions.unwrap_or_default();
            PluginError::unavailable(format!(
                "{cap} executions are already running, the cap set by `max_concurrent_executions`; retry when one ends"
            ))
        })
    }

    /// Creates the execution folder, then checks, unpacks and opens the package in it. On
    /// failure the folder is removed, since no handle exists to clean it up later.
    async fn stage(&self, spec: &ExecutionSpec) -> Result<(std::path::PathBuf, Package), PluginError> {
        let (archive, sha256) = staging::local_archive(&spec.package).map_err(|error| error.to_plugin_error())?;
        let context = Arc::clone(&self.context);
        let run_id = spec.run_id.to_string();
        let created = run_blocking(move || -> Result<_, StagingError> {
            let dir = staging::create_execution_dir(&context.paths.executions_dir, &run_id, &context.owner)?;
            let staged = staging::stage(&archive, &sha256, &dir, &context.settings.unpack.limits());
            Ok((dir, staged))
        })
        .await?
        .map_err(|error| error.to_plugin_error())?;

        match created {
            (dir, Ok(package)) => Ok((dir, package)),
            (dir, Err(error)) => {
                remove_after_failure(&dir).await;
                Err(error.to_plugin_error())
            }
        }
    }

    async fn create_cgroup(&self, name: &str, spec: &ExecutionSpec) -> Result<Option<cgroup::ExecutionCgroup>, PluginError> {
        let Some(manager) = self.context.cgroups.clone() else { return Ok(None) };
        let (name, limits) = (name.to_string(), spec.limits.clone());
        let created = run_blocking(move || manager.create(&name, &limits)).await?;
        created.map(Some).map_err(|error| PluginError::unavailable(format!("failed to create the execution's cgroup: {error}")))
    }

    fn launch(&self, spec: &ExecutionSpec, package: Package, execution_dir: std::path::PathBuf) -> Launch {
        let environment = Environment::for_app(
            std::env::vars_os(),
            &self.context.settings.env_allowlist,
            spec,
            &package.import_paths(),
            &package.working_dir(),
        );
        Launch {
            environment,
            execution_dir,
            entrypoint: spec.runtime.entrypoint.iter().map(|arg| arg.to_string()).collect(),
            command: spec.runtime.command.iter().map(|arg| arg.to_string()).collect(),
            python_version: spec.runtime.version.as_ref().map(|version| version.to_string()).into_option(),
            timeout: spec.limits.timeout_seconds.into_option().map(Duration::from_secs),
            max_processes: spec.limits.max_processes.into_option(),
            shared_cache: spec.cache.enabled,
            package,
        }
    }
}

/// Rejects specs this backend cannot honour: invalid variable names, GPUs, and a service
/// without a port.
fn check_spec(spec: &ExecutionSpec) -> Result<(), PluginError> {
    environment::validate_spec(spec).map_err(|error| PluginError::invalid_spec(error.to_string()))?;
    if spec.limits.gpu_count.into_option().is_some_and(|count| count > 0) {
        return Err(PluginError::unsupported("`limits.gpu_count` is set, but the subprocess backend cannot assign GPUs"));
    }
    if spec.network.expose_service && spec.network.port.is_none() {
        return Err(PluginError::invalid_spec("`network.expose_service` is set without `network.port`"));
    }
    if spec.runtime.image.is_some() {
        tracing::warn!("`runtime.image` is ignored: the subprocess backend runs packages on the host, not images");
    }
    Ok(())
}

fn service_endpoint(spec: &ExecutionSpec) -> Option<ServiceEndpoint> {
    let port = spec.network.port.into_option()?;
    spec.network.expose_service.then(|| ServiceEndpoint { host: SERVICE_HOST.into(), port })
}

/// Checks that the work folder is writable and that bash and uv are found or uv installable.
fn check_health(context: &BackendContext) -> Result<String, String> {
    tempfile::tempfile_in(&context.paths.work_dir)
        .map_err(|error| format!("the work folder {} is not writable: {error}", context.paths.work_dir.display()))?;

    let settings = &context.settings;
    let host_path = std::env::var_os("PATH");
    let bash = find_executable(&settings.bash, host_path.as_deref())
        .ok_or_else(|| format!("bash was not found (setting `bash` = {:?}); install bash or set `bash` to its path", settings.bash))?;
    let uv_state = match uv::locate(&settings.uv, host_path.as_deref(), &context.paths.cache_dir) {
        Some(found) => format!("uv at {}", found.display()),
        None if settings.install_uv && find_executable(uv::PYTHON_FOR_PIP, host_path.as_deref()).is_some() => {
            "uv not found yet, installed with pip on first use".to_string()
        }
        None => return Err(uv::missing_uv_help(&settings.uv)),
    };
    Ok(format!("work folder {} is writable; bash at {}; {uv_state}", context.paths.work_dir.display(), bash.display()))
}

async fn remove_after_failure(dir: &Path) {
    let dir = dir.to_path_buf();
    let result = run_blocking({
        let dir = dir.clone();
        move || remove_execution_dir(&dir)
    })
    .await;
    if let Ok(Err(error)) = result {
        tracing::warn!(folder = %dir.display(), %error, "failed to remove the folder of a rejected execution");
    }
}

/// Runs blocking file system work off the async worker threads.
pub(crate) async fn run_blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, PluginError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| PluginError::internal(format!("a blocking task of the plugin failed: {error}")))
}
