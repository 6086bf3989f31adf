//! The in-process API for tests: start an emulator, point a client at its kubeconfig, inject
//! faults, read pod snapshots and request counts, shut it down.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use serde_json::Value;

use crate::cluster::Cluster;
use crate::faults::{ActiveFault, Fault};
use crate::requests::RequestCounts;
use crate::store::Kind;
use crate::{control, kubeconfig, kubelet, meta, server};

/// Settings of an emulator; `EmulatorOptions::default()` suits most tests.
#[derive(Clone, Debug)]
pub struct EmulatorOptions {
    /// The loopback port to listen on; 0 picks a free one.
    pub port: u16,
    /// The namespace of the kubeconfig's context.
    pub namespace: String,
    /// Where to write the kubeconfig; a file in the emulator's temporary folder when unset.
    pub kubeconfig_path: Option<PathBuf>,
    /// How many change events the store keeps for watches; a watch from an older
    /// resourceVersion gets 410 Gone.
    pub history_limit: usize,
    /// How often a watch with `allowWatchBookmarks=true` gets a BOOKMARK event.
    pub bookmark_interval: Duration,
    /// Variables of the emulator's own environment that every container gets, standing in for
    /// the environment an image would set.
    pub pass_env: Vec<String>,
    /// Variables every container gets, after `pass_env` and before its own.
    pub extra_env: Vec<(String, String)>,
    /// How long a failing image pull stays `ErrImagePull` before `ImagePullBackOff`; the back-off
    /// starts at this and doubles up to 10 s.
    pub image_pull_backoff: Duration,
    /// How often the kubelet retries a container whose secret or key is missing, and volumes
    /// that cannot be set up yet.
    pub config_retry_interval: Duration,
}

impl Default for EmulatorOptions {
    fn default() -> Self {
        Self {
            port: 0,
            namespace: "default".to_owned(),
            kubeconfig_path: None,
            history_limit: 1000,
            bookmark_interval: Duration::from_secs(10),
            pass_env: [
                "PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "USER", "LOGNAME",
            ]
            .map(str::to_owned)
            .to_vec(),
            extra_env: Vec::new(),
            image_pull_backoff: Duration::from_millis(500),
            config_retry_interval: Duration::from_millis(200),
        }
    }
}

/// A running emulator: an API server on 127.0.0.1 and its fake kubelet, on a tokio runtime of
/// its own. Dropping it shuts it down.
pub struct Emulator {
    cluster: Arc<Cluster>,
    runtime: Option<tokio::runtime::Runtime>,
    url: String,
    kubeconfig_path: PathBuf,
    _root: tempfile::TempDir,
}

/// The id of an injected fault.
pub type FaultId = u64;

/// A handle to inject faults into an emulator and act on its pods behind the client's back.
#[derive(Clone)]
pub struct Faults {
    cluster: Arc<Cluster>,
    handle: tokio::runtime::Handle,
}

/// Runs `work` on the emulator's runtime and waits for it. Callers may be inside another
/// runtime, so this blocks the thread instead of entering the emulator's runtime.
fn run_on<T: Send + 'static>(
    handle: &tokio::runtime::Handle,
    work: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    let (sender, receiver) = std::sync::mpsc::channel();
    handle.spawn(async move {
        let _ = sender.send(work.await);
    });
    receiver
        .recv()
        .expect("the emulator runtime stopped before finishing the work")
}

impl Faults {
    /// Arms a fault until it is removed; see [`Fault`] for how often each kind fires.
    pub fn inject(&self, fault: Fault) -> FaultId {
        tracing::info!(?fault, "fault injected");
        self.cluster.faults().inject(fault, None)
    }

    /// Arms a fault that fires at most `times` times.
    pub fn inject_times(&self, fault: Fault, times: u32) -> FaultId {
        tracing::info!(?fault, times, "fault injected");
        self.cluster.faults().inject(fault, Some(times))
    }

    /// Removes a fault; pods it holds back (unschedulable, image pull) go on.
    pub fn remove(&self, id: FaultId) -> bool {
        self.cluster.faults().remove(id)
    }

    pub fn clear(&self) {
        self.cluster.faults().clear();
    }

    pub fn list(&self) -> Vec<ActiveFault> {
        self.cluster.faults().list()
    }

    /// Kills a running container of the pod (the last started one when `container` is unset)
    /// with SIGKILL and reports it `OOMKilled` with exit code 137. Returns false when no such
    /// container runs.
    pub fn oom_kill(&self, namespace: &str, pod: &str, container: Option<&str>) -> bool {
        let (cluster, namespace, pod) =
            (self.cluster.clone(), namespace.to_owned(), pod.to_owned());
        let container = container.map(str::to_owned);
        run_on(&self.handle, async move {
            control::oom_kill_pod(&cluster, &namespace, &pod, container.as_deref()).is_ok()
        })
    }

    /// Evicts the pod: every container is killed and the pod fails with reason `Evicted` and
    /// `message` (a memory-pressure message unless set). Returns false when it no longer runs.
    pub fn evict(&self, namespace: &str, pod: &str, message: Option<&str>) -> bool {
        let (cluster, namespace, pod) =
            (self.cluster.clone(), namespace.to_owned(), pod.to_owned());
        let message = message.map(str::to_owned);
        run_on(&self.handle, async move {
            control::evict_pod(&cluster, &namespace, &pod, message).is_ok()
        })
    }

    /// Deletes the pod as another client would, with `grace_seconds`. Returns false when the
    /// pod does not exist.
    pub fn delete_pod(&self, namespace: &str, pod: &str, grace_seconds: i64) -> bool {
        let (cluster, namespace, pod) =
            (self.cluster.clone(), namespace.to_owned(), pod.to_owned());
        run_on(&self.handle, async move {
            control::delete_pod_behind(&cluster, &namespace, &pod, grace_seconds)
                .await
                .is_ok()
        })
    }
}

fn typed<T: serde::de::DeserializeOwned>(object: Option<Value>) -> Option<T> {
    object.and_then(|object| serde_json::from_value(object).ok())
}

impl Emulator {
    /// Starts an emulator with default options.
    ///
    /// # Panics
    /// When it cannot create its runtime, temporary folder or listening socket.
    pub fn start() -> Emulator {
        Self::start_with(EmulatorOptions::default()).expect("failed to start the k8s emulator")
    }

    /// Starts an emulator listening on 127.0.0.1.
    pub fn start_with(options: EmulatorOptions) -> std::io::Result<Emulator> {
        let root = tempfile::Builder::new().prefix("k8s-emulator-").tempdir()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("k8s-emulator")
            .enable_all()
            .build()?;
        let listener = std::net::TcpListener::bind(("127.0.0.1", options.port))?;
        listener.set_nonblocking(true)?;
        let address = listener.local_addr()?;
        let url = format!("http://{address}");
        let kubeconfig_path = options
            .kubeconfig_path
            .clone()
            .unwrap_or_else(|| root.path().join("kubeconfig"));
        kubeconfig::write(&kubeconfig_path, &url, &options.namespace)?;

        let pods_dir = root.path().join("pods");
        std::fs::create_dir_all(&pods_dir)?;
        let cluster = Arc::new(Cluster::new(options, pods_dir));
        let router = server::router(cluster.clone());
        let listener = {
            let _guard = runtime.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        runtime.spawn(async move {
            if let Err(error) = axum::serve(listener, router).await {
                tracing::error!(%error, "the k8s emulator's server stopped");
            }
        });
        tracing::info!(%url, kubeconfig = %kubeconfig_path.display(), "k8s emulator started");
        Ok(Emulator {
            cluster,
            runtime: Some(runtime),
            url,
            kubeconfig_path,
            _root: root,
        })
    }

    /// Returns the server URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Returns the path of the kubeconfig that points a client at this emulator.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig_path
    }

    pub fn faults(&self) -> Faults {
        Faults {
            cluster: self.cluster.clone(),
            handle: self
                .runtime
                .as_ref()
                .expect("the emulator is running")
                .handle()
                .clone(),
        }
    }

    /// Returns every stored pod, ordered by namespace and name.
    pub fn pods(&self) -> Vec<Pod> {
        let objects: Vec<Value> = self
            .cluster
            .store()
            .list(Kind::Pod, None)
            .into_iter()
            .cloned()
            .collect();
        objects
            .into_iter()
            .filter_map(|object| typed(Some(object)))
            .collect()
    }

    pub fn pod(&self, namespace: &str, name: &str) -> Option<Pod> {
        typed(
            self.cluster
                .store()
                .get(Kind::Pod, namespace, name)
                .cloned(),
        )
    }

    pub fn secret(&self, namespace: &str, name: &str) -> Option<Secret> {
        typed(
            self.cluster
                .store()
                .get(Kind::Secret, namespace, name)
                .cloned(),
        )
    }

    pub fn service(&self, namespace: &str, name: &str) -> Option<Service> {
        typed(
            self.cluster
                .store()
                .get(Kind::Service, namespace, name)
                .cloned(),
        )
    }

    /// Returns the current resourceVersion of the store.
    pub fn resource_version(&self) -> u64 {
        self.cluster.store().resource_version()
    }

    /// Returns a container's output so far, without timestamps.
    pub fn container_log(&self, namespace: &str, pod: &str, container: &str) -> Option<String> {
        let uid = self
            .cluster
            .store()
            .get(Kind::Pod, namespace, pod)
            .map(|p| meta::uid(p).to_owned())?;
        let (_, container) = kubelet::container(&self.cluster, &uid, container)?;
        Some(container.log.text())
    }

    /// Returns when the kubelet marked the container terminated, at full clock precision (the API's
    /// `finishedAt` has whole seconds).
    pub fn container_terminated_at(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
    ) -> Option<SystemTime> {
        let uid = self
            .cluster
            .store()
            .get(Kind::Pod, namespace, pod)
            .map(|p| meta::uid(p).to_owned())?;
        let (_, container) = kubelet::container(&self.cluster, &uid, container)?;
        container.terminated_at()
    }

    /// Returns the API requests so far by verb and resource.
    pub fn request_counts(&self) -> RequestCounts {
        self.cluster
            .requests
            .lock()
            .expect("request count lock")
            .clone()
    }

    pub fn reset_request_counts(&self) {
        *self.cluster.requests.lock().expect("request count lock") = RequestCounts::default();
    }

    /// Kills every container process, waits for them to be reaped, and stops the server.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let Some(runtime) = self.runtime.take() else {
            return;
        };
        let cluster = self.cluster.clone();
        run_on(runtime.handle(), async move {
            let pods = cluster.kubelet.all();
            for pod in &pods {
                kubelet::request_stop(&cluster, &pod.uid, kubelet::StopRequest::Shutdown);
            }
            for pod in &pods {
                if !pod.wait_done(Duration::from_secs(5)).await {
                    tracing::warn!(pod = %pod.name, "pod processes still running at shutdown");
                }
            }
        });
        // A runtime cannot be dropped inside an async context, and the caller may be in one.
        let stopper = std::thread::spawn(move || runtime.shutdown_timeout(Duration::from_secs(2)));
        let _ = stopper.join();
        tracing::info!(url = %self.url, "k8s emulator stopped");
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.stop();
    }
}
