//! The Kubernetes backend: each execution runs as one pod, through kube-rs.
//!
//! The life of an execution: the package is checked locally, a Secret with the secret values is
//! created, then the pod, then the Secret is made owned by the pod (so deleting the pod deletes
//! it). The package reaches the pod's `unpack` init container over an attach stream; a `setup`
//! init container installs the dependencies; the `app` container runs the script. A watch on the
//! pod drives the status, the containers' logs are followed in order, and the terminal status
//! comes after the last log line.

mod api;
mod download;
mod execution;
mod logs;
mod naming;
mod pod_spec;
mod pod_view;
mod settings;
mod status_map;
mod transfer;
mod watcher;

pub use execution::KubernetesExecution;
pub use settings::Settings;

use api::{status_code, to_plugin_error, with_retries};
use execution::{DriverInputs, Shared, Transfer};
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use pod_spec::{Delivery, ObjectNames, PackageInfo};
use pod_view::PodView;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tower_plugin_api::sdk::{Backend, EventSink};
use tower_plugin_api::{
    Capabilities, ErrorKind, ExecutionSpec, ExecutionState, ExecutionStatus, Health, KeyValue, PackageSource, PluginError,
    SetupPhaseKind, Timestamp,
};

/// Longest wait for the API server's answer in the health probe.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for a pod of the same name, left by an earlier execution, to go away.
const OLD_POD_WAIT: Duration = Duration::from_secs(60);

/// The Kubernetes backend.
pub struct KubernetesBackend {
    client: Client,
    settings: Arc<Settings>,
    namespace: String,
    server: String,
}

impl Backend for KubernetesBackend {
    type Settings = Settings;
    type Execution = KubernetesExecution;

    async fn new(settings: Settings) -> Result<Self, PluginError> {
        settings.validate().map_err(PluginError::invalid_config)?;
        if settings.pod_template_patch.is_some() {
            check_template_patch(&settings)?;
        }
        let config = load_config(&settings).await?;
        let namespace = settings.namespace.clone().unwrap_or_else(|| config.default_namespace.clone());
        let server = config.cluster_url.to_string();
        let client = Client::try_from(config).map_err(|error| PluginError::invalid_config(format!("failed to create the Kubernetes client: {error}")))?;
        tracing::debug!(%server, %namespace, "kubernetes backend ready");
        Ok(Self { client, settings: Arc::new(settings), namespace, server })
    }

    fn capabilities(&self) -> Capabilities {
        let mut capabilities = Capabilities::new("kubernetes");
        capabilities.service_endpoints = true;
        capabilities.recovery = true;
        capabilities.merged_streams = true;
        let limits = &mut capabilities.enforced_limits;
        limits.cpu = true;
        limits.memory = true;
        limits.ephemeral_storage = true;
        limits.gpu = true;
        limits.timeout = true;
        capabilities.details.push(KeyValue::new("namespace", self.namespace.clone()));
        capabilities.details.push(KeyValue::new("image", self.settings.image.clone()));
        capabilities.details.push(KeyValue::new("server", self.server.clone()));
        capabilities
    }

    async fn health(&self) -> Health {
        match tokio::time::timeout(HEALTH_TIMEOUT, self.client.apiserver_version()).await {
            Ok(Ok(version)) => Health::healthy(format!("API server {} answers at {}", version.git_version, self.server)),
            Ok(Err(error)) => Health::unhealthy(format!("API server at {} failed: {error}", self.server)),
            Err(_) => Health::unhealthy(format!("API server at {} did not answer within {HEALTH_TIMEOUT:?}", self.server)),
        }
    }

    async fn create(&self, spec: ExecutionSpec, events: EventSink) -> Result<KubernetesExecution, PluginError> {
        let started_at = Timestamp::now();
        if let Some(seconds) = spec.limits.timeout_seconds.into_option() {
            if seconds > execution::MAX_DEADLINE_SECONDS as u64 {
                return Err(PluginError::invalid_spec(format!(
                    "invalid limits.timeout_seconds {seconds}: a pod's activeDeadlineSeconds takes at most {} seconds (about 68 years); give a smaller timeout or none",
                    execution::MAX_DEADLINE_SECONDS
                )));
            }
        }
        let (archive, package) = stage(&spec).await?;
        let names = ObjectNames::new(&self.settings, &spec);
        let span = tracing::debug_span!("create", execution.id = %spec.run_id, pod = %names.pod);
        let _entered = span.enter();
        events.status(ExecutionStatus::new(ExecutionState::preparing(SetupPhaseKind::StagingPackage)).started(Some(started_at)));

        // The Secret first, so the pod never starts without it.
        let with_secret = pod_spec::needs_secret(&spec, &package);
        if with_secret {
            self.create_secret(&spec, &names, &package).await?;
        }
        let pod = pod_spec::pod(&self.settings, &spec, &names, &package).map_err(PluginError::invalid_config)?;
        let (uid, adopted) = self.create_pod(&pod, &spec.run_id).await?;
        if with_secret {
            self.own_by_pod(&names, &uid).await?;
        }
        if let Some(service) = pod_spec::service(&self.settings, &spec, &names) {
            self.create_service(service, &names, &uid).await?;
        }

        let python = !package.manifest.is_bash();
        let archive = (package.delivery == Delivery::Attach).then_some(archive);
        let transfer = archive.map(|archive| Transfer { archive, adopted });
        Ok(self.start_driver(spec.run_id.to_string(), names, spec.network.port.into_option(), started_at, events, transfer, python))
    }

    async fn recover(&self, run_id: String, events: EventSink) -> Result<KubernetesExecution, PluginError> {
        let label = naming::execution_label(&run_id);
        let selector = format!("{}={label},{}={}", naming::EXECUTION_LABEL, naming::INSTANCE_LABEL, self.settings.instance);
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let params = ListParams::default().labels(&selector);
        let list = with_retries("list pods", || pods.list(&params))
            .await
            .map_err(|error| to_plugin_error(&format!("find the pod of execution `{run_id}`"), &error))?;
        let pod = list.items.into_iter().find(|pod| {
            pod.metadata.annotations.as_ref().and_then(|notes| notes.get(naming::RUN_ID_ANNOTATION)) == Some(&run_id)
        });
        let Some(pod) = pod else {
            return Err(PluginError::not_found(format!("no pod of execution `{run_id}` in namespace `{}`", self.namespace)));
        };
        let python = pod.spec.as_ref().is_some_and(|spec| {
            spec.init_containers.iter().flatten().any(|container| container.name == status_map::SETUP_CONTAINER)
        });
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        let names = ObjectNames { secret: format!("{pod_name}-secrets"), pod: pod_name, service: None, execution_label: label };
        // The pod's creation stands for the start that the earlier host recorded at `create`.
        let created_at = pod
            .metadata
            .creation_timestamp
            .as_ref()
            .and_then(|time| i64::try_from(time.0.as_nanosecond()).ok())
            .map_or_else(Timestamp::now, |unix_nanos| Timestamp { unix_nanos });
        Ok(self.start_driver(run_id, names, None, created_at, events, None, python))
    }
}

impl KubernetesBackend {
    #[allow(clippy::too_many_arguments)]
    fn start_driver(
        &self,
        run_id: String,
        names: ObjectNames,
        service_port: Option<u16>,
        started_at: Timestamp,
        events: EventSink,
        transfer: Option<Transfer>,
        python: bool,
    ) -> KubernetesExecution {
        let (view_sender, view) = watch::channel(PodView::default());
        let (done_sender, done) = watch::channel(false);
        let shared = Arc::new(Shared {
            run_id,
            status: Mutex::new(ExecutionStatus::new(ExecutionState::preparing(SetupPhaseKind::StagingPackage)).started(Some(started_at))),
            names,
            namespace: self.namespace.clone(),
            pods: Api::namespaced(self.client.clone(), &self.namespace),
            secrets: Api::namespaced(self.client.clone(), &self.namespace),
            services: Api::namespaced(self.client.clone(), &self.namespace),
            settings: Arc::clone(&self.settings),
            service_port,
            started_at,
            stop: Mutex::new(None),
            view,
            done,
        });
        let inputs = DriverInputs { events, transfer, view_sender, done_sender, python };
        tokio::spawn(execution::drive(Arc::clone(&shared), inputs));
        KubernetesExecution { shared }
    }

    async fn create_secret(&self, spec: &ExecutionSpec, names: &ObjectNames, package: &PackageInfo) -> Result<(), PluginError> {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        let secret = pod_spec::secret(&self.settings, spec, names, package);
        let post = PostParams::default();
        match with_retries("create the secret", || secrets.create(&post, &secret)).await {
            Ok(_) => Ok(()),
            // A retried create: replace the values with this spec's.
            Err(error) if status_code(&error) == Some(409) => {
                let patch = Patch::Merge(serde_json::json!({ "stringData": secret.string_data }));
                let params = PatchParams::default();
                with_retries("update the secret", || secrets.patch(&names.secret, &params, &patch))
                    .await
                    .map(|_| ())
                    .map_err(|error| to_plugin_error(&format!("update secret `{}`", names.secret), &error))
            }
            Err(error) => Err(to_plugin_error(&format!("create secret `{}`", names.secret), &error)),
        }
    }

    /// Creates the pod and returns its uid and whether it was adopted. A pod of the same name left
    /// by a retried create of the same execution is adopted; one of another execution is waited
    /// out.
    async fn create_pod(&self, pod: &Pod, run_id: &str) -> Result<(String, bool), PluginError> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let name = pod.metadata.name.clone().unwrap_or_default();
        let deadline = tokio::time::Instant::now() + OLD_POD_WAIT;
        let post = PostParams::default();
        loop {
            match with_retries("create the pod", || pods.create(&post, pod)).await {
                Ok(created) => return Ok((created.metadata.uid.unwrap_or_default(), false)),
                Err(error) if status_code(&error) == Some(409) => {
                    let existing = with_retries("read the pod", || pods.get_opt(&name))
                        .await
                        .map_err(|error| to_plugin_error(&format!("read pod `{name}`"), &error))?;
                    let Some(existing) = existing else { continue };
                    let same_run = existing.metadata.annotations.as_ref().and_then(|notes| notes.get(naming::RUN_ID_ANNOTATION)).map(String::as_str) == Some(run_id);
                    if same_run && existing.metadata.deletion_timestamp.is_none() {
                        tracing::info!(pod = %name, "adopted the pod of a retried create");
                        return Ok((existing.metadata.uid.unwrap_or_default(), true));
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return Err(PluginError::unavailable(format!(
                            "pod `{name}` of another execution still exists after {}s; delete it or use another run id",
                            OLD_POD_WAIT.as_secs()
                        )));
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(error) => return Err(to_plugin_error(&format!("create pod `{name}`"), &error)),
            }
        }
    }

    async fn own_by_pod(&self, names: &ObjectNames, uid: &str) -> Result<(), PluginError> {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        let patch = Patch::Merge(serde_json::json!({ "metadata": { "ownerReferences": [owner_reference(&names.pod, uid)] } }));
        let params = PatchParams::default();
        with_retries("own the secret by the pod", || secrets.patch(&names.secret, &params, &patch))
            .await
            .map(|_| ())
            .map_err(|error| to_plugin_error(&format!("set the owner of secret `{}`", names.secret), &error))
    }

    async fn create_service(&self, mut service: Service, names: &ObjectNames, uid: &str) -> Result<(), PluginError> {
        let services: Api<Service> = Api::namespaced(self.client.clone(), &self.namespace);
        service.metadata.owner_references = Some(vec![serde_json::from_value(owner_reference(&names.pod, uid)).expect("valid owner reference")]);
        let post = PostParams::default();
        match with_retries("create the service", || services.create(&post, &service)).await {
            Ok(_) => Ok(()),
            Err(error) if status_code(&error) == Some(409) => Ok(()),
            Err(error) => Err(to_plugin_error(&format!("create service `{}`", service.metadata.name.unwrap_or_default()), &error)),
        }
    }
}

fn owner_reference(pod: &str, uid: &str) -> serde_json::Value {
    serde_json::json!({ "apiVersion": "v1", "kind": "Pod", "name": pod, "uid": uid, "blockOwnerDeletion": true })
}

/// Loads the kubeconfig named by the settings, or infers the configuration as kube-rs does.
async fn load_config(settings: &Settings) -> Result<Config, PluginError> {
    let options = KubeConfigOptions { context: settings.context.clone(), ..KubeConfigOptions::default() };
    let result = match &settings.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .map_err(|error| PluginError::invalid_config(format!("invalid setting `kubeconfig`: cannot read {}: {error}", path.display())))?;
            Config::from_custom_kubeconfig(kubeconfig, &options).await
        }
        None if settings.context.is_some() => Config::from_kubeconfig(&options).await,
        None => return Config::infer().await.map_err(|error| PluginError::invalid_config(format!("no Kubernetes configuration found: {error}; set `kubeconfig`"))),
    };
    result.map_err(|error| PluginError::invalid_config(format!("invalid Kubernetes configuration: {error}")))
}

/// Checks the package locally before anything is created: its sha256, a safe unpack and its
/// MANIFEST. A URL package is downloaded for the check, and the pod downloads it again. Returns the
/// archive (kept until it is sent) and what the pod needs to know.
async fn stage(spec: &ExecutionSpec) -> Result<((tempfile::TempPath, std::path::PathBuf), PackageInfo), PluginError> {
    let (path, sha256, delivery, _download) = match spec.package.as_enum() {
        Ok(PackageSource::File { path, sha256 }) => (std::path::PathBuf::from(path.as_str()), sha256.to_string(), Delivery::Attach, None),
        Ok(PackageSource::Url { url, sha256 }) => {
            let download = download::fetch(url.as_str()).await?;
            let path = download.to_path_buf();
            (path, sha256.to_string(), Delivery::Url(url.to_string()), Some(download))
        }
        _ => return Err(PluginError::unsupported("a package source of a newer plugin API")),
    };
    tokio::task::spawn_blocking(move || stage_blocking(&path, &sha256, delivery))
        .await
        .map_err(|error| PluginError::internal(format!("package check failed: {error}")))?
}

fn stage_blocking(path: &Path, sha256: &str, delivery: Delivery) -> Result<((tempfile::TempPath, std::path::PathBuf), PackageInfo), PluginError> {
    let invalid = |error: tower_package::PackageError| match error.kind() {
        tower_package::ErrorKind::InvalidPackage => PluginError::invalid_package(error.to_string()),
        _ => PluginError::new(ErrorKind::NotFound, error.to_string()),
    };
    tower_package::verify_sha256(path, sha256).map_err(invalid)?;
    // A private copy: the host may remove its staged file before the pod has read it.
    let copy = tempfile::Builder::new().prefix("tower-k8s-package-").suffix(".tar.gz").tempfile().map_err(|error| PluginError::internal(format!("failed to create a temp file: {error}")))?;
    std::fs::copy(path, copy.path()).map_err(|error| PluginError::internal(format!("failed to copy {}: {error}", path.display())))?;
    let unpacked = tempfile::tempdir().map_err(|error| PluginError::internal(format!("failed to create a temp folder: {error}")))?;
    tower_package::unpack(copy.path(), unpacked.path(), &tower_package::UnpackLimits::default()).map_err(invalid)?;
    let package = tower_package::Package::open(unpacked.path()).map_err(invalid)?;
    let workdir = package.working_dir();
    let info = PackageInfo {
        delivery,
        size: std::fs::metadata(copy.path()).map_err(|error| PluginError::internal(error.to_string()))?.len(),
        sha256: sha256.to_ascii_lowercase(),
        has_pyproject: workdir.join("pyproject.toml").is_file(),
        has_requirements: workdir.join("requirements.txt").is_file(),
        manifest: package.manifest().clone(),
    };
    let temp_path = copy.into_temp_path();
    let path = temp_path.to_path_buf();
    Ok(((temp_path, path), info))
}

/// Builds a pod from a made-up spec with the template patch applied, so that a bad patch fails at
/// startup instead of at the first execution.
fn check_template_patch(settings: &Settings) -> Result<(), PluginError> {
    let spec = ExecutionSpec::new("template-check", PackageSource::file("/dev/null", "0".repeat(64)));
    let names = ObjectNames::new(settings, &spec);
    let manifest: tower_package::Manifest = serde_json::from_value(serde_json::json!({"version": 3, "invoke": "main.py", "app_dir_name": "app", "modules_dir_name": "modules"}))
        .map_err(|error| PluginError::internal(error.to_string()))?;
    let package = PackageInfo { delivery: Delivery::Attach, size: 0, sha256: "0".repeat(64), manifest, has_pyproject: false, has_requirements: false };
    pod_spec::pod(settings, &spec, &names, &package).map(|_| ()).map_err(|error| PluginError::invalid_config(format!("invalid setting `pod_template_patch`: {error}")))
}

tower_plugin_api::export_plugin!(name: "kubernetes", backend: KubernetesBackend);

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(patch: serde_json::Value) -> Settings {
        tower_plugin_api::sdk::parse_settings(&serde_json::json!({ "pod_template_patch": patch }).to_string()).unwrap()
    }

    #[test]
    fn valid_template_patch_is_accepted() {
        let patch = serde_json::json!({"spec": {"securityContext": {"runAsNonRoot": true}, "containers": [{"name": "app", "env": [{"name": "X", "value": "1"}]}]}});
        assert!(check_template_patch(&settings(patch)).is_ok());
    }

    #[test]
    fn invalid_template_patch_fails_naming_setting() {
        let error = check_template_patch(&settings(serde_json::json!({"spec": {"containers": "not a list"}}))).unwrap_err();
        assert_eq!(error.kind(), Some(ErrorKind::InvalidConfig));
        assert!(error.message.contains("pod_template_patch"), "{error}");
    }
}
