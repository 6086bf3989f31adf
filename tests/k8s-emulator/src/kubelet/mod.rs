//! The fake kubelet: schedules each pod at once onto one node, runs its init containers in
//! order and then its app containers as local processes, and reports their real state in the
//! pod's `status`.
//!
//! Containers are never restarted: every pod behaves as with `restartPolicy: Never`.

pub mod environment;
pub mod image;
pub mod process;
pub mod status;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use futures_util::future::join_all;
use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::jiff::Timestamp;
use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::process::ChildStdin;
use tokio::sync::{broadcast, watch};

use crate::cluster::Cluster;
use crate::faults::Fault;
use crate::logs::ContainerLog;
use crate::store::Kind;
use environment::{Mounts, VolumeFolders};
use status::{ContainerPhase, StatusModel};

/// The one node every pod is scheduled to.
pub const NODE_NAME: &str = "k8s-emulator-node";

/// How long the kubelet waits for a container's output pipe to drain after its process exited.
const OUTPUT_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the kubelet stops a pod before its containers end by themselves.
#[derive(Clone, Debug, PartialEq)]
pub enum StopRequest {
    /// The pod was deleted with this grace period.
    Delete { grace: Duration },
    /// The kubelet evicts the pod; containers are killed at once.
    Evict { message: String },
    /// `activeDeadlineSeconds` ran out.
    DeadlineExceeded { grace: Duration },
    /// The emulator shuts down; containers are killed at once and no status is written.
    Shutdown,
}

impl StopRequest {
    fn kill_after(&self) -> Duration {
        match self {
            StopRequest::Delete { grace } | StopRequest::DeadlineExceeded { grace } => *grace,
            StopRequest::Evict { .. } | StopRequest::Shutdown => Duration::ZERO,
        }
    }
}

#[derive(Default)]
struct ProcessSlot {
    /// The container's process group while it runs.
    group: Option<i32>,
    /// Set once the pod is stopping, so a container that has not started never starts.
    blocked: bool,
    terminate_sent: bool,
    /// The terminated reason to report instead of the one the exit code gives (`OOMKilled`).
    forced_reason: Option<&'static str>,
}

/// Where a container is in its life, for log and attach requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    NotStarted,
    Running,
    Exited,
}

/// One container of a pod, as the kubelet runs it.
pub struct ContainerRuntime {
    pub name: String,
    pub spec: Container,
    pub log: ContainerLog,
    /// Raw output chunks as they arrive, for attached clients.
    pub output: broadcast::Sender<Bytes>,
    pub stdin: tokio::sync::Mutex<Option<ChildStdin>>,
    /// Set by the first attach that takes stdin; with `stdinOnce` stdin closes when it ends.
    pub stdin_claimed: AtomicBool,
    pub progress: watch::Sender<Progress>,
    process: Mutex<ProcessSlot>,
    terminated_at: Mutex<Option<SystemTime>>,
}

impl ContainerRuntime {
    fn new(spec: &Container) -> Self {
        Self {
            name: spec.name.clone(),
            spec: spec.clone(),
            log: ContainerLog::default(),
            output: broadcast::channel(1024).0,
            stdin: tokio::sync::Mutex::new(None),
            stdin_claimed: AtomicBool::new(false),
            progress: watch::channel(Progress::NotStarted).0,
            process: Mutex::default(),
            terminated_at: Mutex::default(),
        }
    }

    pub fn has_started(&self) -> bool {
        *self.progress.borrow() != Progress::NotStarted
    }

    /// When the kubelet marked the container terminated, with the host clock's full precision.
    pub fn terminated_at(&self) -> Option<SystemTime> {
        *self.terminated_at.lock().expect("terminated_at lock")
    }

    fn signal(&self, signal: i32) {
        let slot = self.process.lock().expect("process lock");
        if let Some(group) = slot.group {
            process::signal_group(group, signal);
        }
    }
}

/// One pod on the node.
pub struct PodRuntime {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub dir: PathBuf,
    pub containers: Vec<Arc<ContainerRuntime>>,
    pub status: Mutex<StatusModel>,
    /// The `activeDeadlineSeconds` a timer runs for, once the pod started.
    deadline: Mutex<Option<i64>>,
    stop: watch::Sender<Option<StopRequest>>,
    /// True once the pod's lifecycle ended and no process of it runs.
    done: watch::Sender<bool>,
}

impl PodRuntime {
    pub fn container(&self, name: &str) -> Option<&Arc<ContainerRuntime>> {
        self.containers
            .iter()
            .find(|container| container.name == name)
    }

    pub fn stop_request(&self) -> Option<StopRequest> {
        self.stop.borrow().clone()
    }

    pub fn is_done(&self) -> bool {
        *self.done.borrow()
    }

    /// Waits until no process of the pod runs, at most `timeout`; returns whether that happened.
    pub async fn wait_done(&self, timeout: Duration) -> bool {
        let mut done = self.done.subscribe();
        let finished = async move { done.wait_for(|done| *done).await.is_ok() };
        tokio::time::timeout(timeout, finished)
            .await
            .unwrap_or(false)
    }

    /// Sleeps for `duration` unless a stop request comes first; returns the request if one did.
    async fn sleep_or_stop(&self, duration: Duration) -> Option<StopRequest> {
        let mut stop = self.stop.subscribe();
        tokio::select! {
            () = tokio::time::sleep(duration) => None,
            request = stop.wait_for(Option::is_some) => request.ok().and_then(|r| r.clone()),
        }
    }

    async fn wait_stop(&self) -> StopRequest {
        let mut stop = self.stop.subscribe();
        let request = stop
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|request| request.clone());
        request.unwrap_or(StopRequest::Shutdown)
    }
}

/// The pods the kubelet runs, by uid.
#[derive(Default)]
pub struct Kubelet {
    pods: Mutex<HashMap<String, Arc<PodRuntime>>>,
}

impl Kubelet {
    pub fn pod(&self, uid: &str) -> Option<Arc<PodRuntime>> {
        self.pods.lock().expect("kubelet lock").get(uid).cloned()
    }

    pub fn all(&self) -> Vec<Arc<PodRuntime>> {
        self.pods
            .lock()
            .expect("kubelet lock")
            .values()
            .cloned()
            .collect()
    }
}

/// Finds a pod's container by pod uid and container name.
pub fn container(
    cluster: &Cluster,
    uid: &str,
    name: &str,
) -> Option<(Arc<PodRuntime>, Arc<ContainerRuntime>)> {
    let pod = cluster.kubelet.pod(uid)?;
    let container = pod.container(name)?.clone();
    Some((pod, container))
}

/// Takes a newly created pod onto the node and starts its lifecycle.
pub fn admit(cluster: &Arc<Cluster>, object: &Value) {
    let pod: Pod = match serde_json::from_value(object.clone()) {
        Ok(pod) => pod,
        Err(error) => {
            tracing::error!(%error, "a stored pod does not parse; the kubelet ignores it");
            return;
        }
    };
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let containers = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .map(|container| Arc::new(ContainerRuntime::new(container)))
        .collect();
    let qos_class = object["status"]["qosClass"]
        .as_str()
        .unwrap_or("BestEffort");
    let runtime = Arc::new(PodRuntime {
        uid: uid.clone(),
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        name: pod.metadata.name.clone().unwrap_or_default(),
        dir: cluster.pods_dir.join(&uid),
        containers,
        status: Mutex::new(StatusModel::new(&pod, qos_class)),
        deadline: Mutex::new(None),
        stop: watch::channel(None).0,
        done: watch::channel(false).0,
    });
    cluster
        .kubelet
        .pods
        .lock()
        .expect("kubelet lock")
        .insert(uid, runtime.clone());
    tracing::info!(namespace = %runtime.namespace, pod = %runtime.name, "admitted pod");
    let cluster = cluster.clone();
    tokio::spawn(async move {
        let outcome = lifecycle(&cluster, &runtime, &pod).await;
        finish(&cluster, &runtime, outcome).await;
        runtime.done.send_replace(true);
    });
}

/// Asks the kubelet to stop a pod: SIGTERM now and SIGKILL after the request's grace period
/// (at once for a zero grace period). The first request sets the reason that is reported; a
/// later one can only shorten the time to the kill.
pub fn request_stop(cluster: &Cluster, uid: &str, request: StopRequest) {
    let Some(pod) = cluster.kubelet.pod(uid) else {
        return;
    };
    pod.stop.send_if_modified(|current| {
        if current.is_none() {
            *current = Some(request.clone());
            true
        } else {
            false
        }
    });
    let kill_after = request.kill_after();
    for container in &pod.containers {
        let mut slot = container.process.lock().expect("process lock");
        slot.blocked = true;
        if let Some(group) = slot.group {
            if kill_after.is_zero() {
                process::signal_group(group, libc::SIGKILL);
            } else if !slot.terminate_sent {
                slot.terminate_sent = true;
                process::signal_group(group, libc::SIGTERM);
            }
        }
    }
    if !kill_after.is_zero() {
        let pod = pod.clone();
        tokio::spawn(async move {
            tokio::time::sleep(kill_after).await;
            for container in &pod.containers {
                container.signal(libc::SIGKILL);
            }
        });
    }
}

/// Kills one container with SIGKILL and reports it as `OOMKilled`; returns false when it does
/// not run.
pub fn oom_kill(cluster: &Cluster, uid: &str, container_name: Option<&str>) -> bool {
    let Some(pod) = cluster.kubelet.pod(uid) else {
        return false;
    };
    let target = match container_name {
        Some(name) => pod.container(name).cloned(),
        None => pod
            .containers
            .iter()
            .rev()
            .find(|c| c.process.lock().expect("process lock").group.is_some())
            .cloned(),
    };
    let Some(container) = target else {
        return false;
    };
    let mut slot = container.process.lock().expect("process lock");
    let Some(group) = slot.group else {
        return false;
    };
    slot.forced_reason = Some("OOMKilled");
    tracing::info!(pod = %pod.name, container = %container.name, "killing a container as out of memory");
    process::signal_group(group, libc::SIGKILL);
    true
}

/// Stops tracking a pod that left the store, once its processes are gone, and removes its
/// folder.
pub fn forget(cluster: &Arc<Cluster>, uid: &str) {
    let Some(pod) = cluster.kubelet.pod(uid) else {
        return;
    };
    if !pod.is_done() {
        request_stop(cluster, uid, StopRequest::Shutdown);
    }
    let cluster = cluster.clone();
    tokio::spawn(async move {
        pod.wait_done(Duration::from_secs(30)).await;
        cluster
            .kubelet
            .pods
            .lock()
            .expect("kubelet lock")
            .remove(&pod.uid);
        if let Err(error) = std::fs::remove_dir_all(&pod.dir) {
            if error.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(pod = %pod.name, %error, "failed to remove a pod's folder");
            }
        }
    });
}

/// Writes the kubelet's status of the pod into the store. A pod that left the store, or was
/// replaced by one with another uid, is not touched.
pub fn publish(cluster: &Cluster, pod: &PodRuntime) {
    let model = pod.status.lock().expect("status lock");
    let status = match serde_json::to_value(model.to_status()) {
        Ok(status) => status,
        Err(error) => {
            tracing::error!(%error, "failed to serialize a pod status");
            return;
        }
    };
    let mut store = cluster.store();
    let _ = store.update(Kind::Pod, &pod.namespace, &pod.name, |object| {
        if object["metadata"]["uid"].as_str() != Some(pod.uid.as_str()) {
            return Err(crate::api_error::ApiError::not_found("pods", &pod.name));
        }
        object["status"] = status;
        Ok(())
    });
}

fn update_status(cluster: &Cluster, pod: &PodRuntime, change: impl FnOnce(&mut StatusModel)) {
    change(&mut pod.status.lock().expect("status lock"));
    publish(cluster, pod);
}

fn set_waiting(
    cluster: &Cluster,
    pod: &PodRuntime,
    container: &str,
    reason: &str,
    message: Option<String>,
) {
    update_status(cluster, pod, |model| {
        if let Some(model) = model.container_mut(container) {
            model.phase = ContainerPhase::Waiting {
                reason: reason.to_owned(),
                message,
            };
        }
    });
}

enum Outcome {
    /// Every container ended by itself, or an init container failed.
    Completed,
    Stopped(StopRequest),
}

async fn lifecycle(cluster: &Arc<Cluster>, runtime: &Arc<PodRuntime>, pod: &Pod) -> Outcome {
    let object = serde_json::to_value(pod).unwrap_or_default();
    if let Some(request) = schedule(cluster, runtime, &object).await {
        return Outcome::Stopped(request);
    }

    let spec = pod.spec.clone().unwrap_or_default();
    let has_init = spec
        .init_containers
        .as_ref()
        .is_some_and(|list| !list.is_empty());
    update_status(cluster, runtime, |model| {
        model.on_node = true;
        model.start_time = Some(crate::meta::now());
        model.set_condition("PodReadyToStartContainers", false, None, None);
        if has_init {
            let names: Vec<&str> = model
                .init_containers
                .iter()
                .map(|c| c.name.as_str())
                .collect();
            let message = format!("containers with incomplete status: [{}]", names.join(" "));
            model.set_condition(
                "Initialized",
                false,
                Some("ContainersNotInitialized"),
                Some(message),
            );
        } else {
            model.set_condition("Initialized", true, None, None);
        }
        model.update_readiness();
    });
    // The stored pod, not the admitted copy: an update may have set a deadline since.
    let stored_deadline = cluster
        .store()
        .get(Kind::Pod, &runtime.namespace, &runtime.name)
        .and_then(|stored| stored["spec"]["activeDeadlineSeconds"].as_i64());
    if let Some(seconds) = stored_deadline.or(spec.active_deadline_seconds) {
        arm_deadline(cluster, runtime, seconds, &spec);
    }

    let folders = loop {
        match environment::prepare_volumes(cluster, pod, &runtime.dir) {
            Ok(folders) => break folders,
            Err(message) => {
                tracing::info!(pod = %runtime.name, %message, "volumes not ready; retrying");
                if let Some(request) = runtime
                    .sleep_or_stop(cluster.options.config_retry_interval)
                    .await
                {
                    return Outcome::Stopped(request);
                }
            }
        }
    };
    update_status(cluster, runtime, |model| {
        model.set_condition("PodReadyToStartContainers", true, None, None);
    });

    for container in spec.init_containers.iter().flatten() {
        let runtime_container = runtime
            .container(&container.name)
            .expect("init container runtime")
            .clone();
        match run_container(
            cluster,
            runtime,
            &runtime_container,
            &object,
            &folders,
            true,
        )
        .await
        {
            ContainerEnd::Stopped(request) => return Outcome::Stopped(request),
            ContainerEnd::Exited(0) => {}
            ContainerEnd::Exited(_) => {
                update_status(cluster, runtime, |model| {
                    model.phase = "Failed";
                    let message =
                        format!("containers with incomplete status: [{}]", container.name);
                    model.set_condition(
                        "Initialized",
                        false,
                        Some("ContainersNotInitialized"),
                        Some(message),
                    );
                    model.update_readiness();
                });
                return match runtime.stop_request() {
                    Some(request) => Outcome::Stopped(request),
                    None => Outcome::Completed,
                };
            }
        }
    }
    if has_init {
        update_status(cluster, runtime, |model| {
            model.set_condition("Initialized", true, None, None);
            for container in &mut model.containers {
                container.phase = ContainerPhase::Waiting {
                    reason: "ContainerCreating".into(),
                    message: None,
                };
            }
        });
    }

    let runs =
        spec.containers.iter().map(|container| {
            let runtime_container = runtime
                .container(&container.name)
                .expect("container runtime")
                .clone();
            let object = &object;
            let folders = &folders;
            async move {
                run_container(cluster, runtime, &runtime_container, object, folders, false).await
            }
        });
    join_all(runs).await;
    match runtime.stop_request() {
        Some(request) => Outcome::Stopped(request),
        None => Outcome::Completed,
    }
}

/// Binds the pod to the node, or keeps it unschedulable while a matching fault is armed.
/// Returns a stop request that came first.
async fn schedule(
    cluster: &Arc<Cluster>,
    runtime: &Arc<PodRuntime>,
    object: &Value,
) -> Option<StopRequest> {
    let fired = cluster.fire_fault(
        |fault| matches!(fault, Fault::Unschedulable { pods, .. } if pods.matches(object)),
    );
    if let Some((id, Fault::Unschedulable { message, .. })) = fired {
        let message = message.unwrap_or_else(|| {
            "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector. preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling.".to_owned()
        });
        update_status(cluster, runtime, |model| {
            model.set_condition("PodScheduled", false, Some("Unschedulable"), Some(message));
        });
        while cluster.faults().is_active(id) {
            if let Some(request) = runtime.sleep_or_stop(Duration::from_millis(100)).await {
                return Some(request);
            }
        }
    }
    if let Some(request) = runtime.stop_request() {
        return Some(request);
    }
    let bound = cluster
        .store()
        .update(Kind::Pod, &runtime.namespace, &runtime.name, |object| {
            if object["metadata"]["uid"].as_str() != Some(runtime.uid.as_str()) {
                return Err(crate::api_error::ApiError::not_found("pods", &runtime.name));
            }
            object["spec"]["nodeName"] = Value::String(NODE_NAME.to_owned());
            Ok(())
        });
    if bound.is_err() {
        return Some(StopRequest::Shutdown);
    }
    update_status(cluster, runtime, |model| {
        model.set_condition("PodScheduled", true, None, None);
    });
    None
}

/// Re-arms the deadline of a pod after an update set its `activeDeadlineSeconds`. A pod that
/// has not started gets its deadline when it starts, from the stored pod.
pub fn deadline_updated(cluster: &Arc<Cluster>, uid: &str, object: &Value) {
    let Some(seconds) = object["spec"]["activeDeadlineSeconds"].as_i64() else { return };
    let Some(runtime) = cluster.kubelet.pod(uid) else { return };
    let started = runtime.status.lock().expect("status lock").start_time.is_some();
    if started && !runtime.is_done() {
        let spec = serde_json::from_value(object["spec"].clone()).unwrap_or_default();
        arm_deadline(cluster, &runtime, seconds, &spec);
    }
}

/// Starts the timer of `activeDeadlineSeconds`, counted from the pod's `startTime` as the
/// kubelet does, unless a timer for the same or an earlier deadline runs already.
fn arm_deadline(
    cluster: &Arc<Cluster>,
    runtime: &Arc<PodRuntime>,
    seconds: i64,
    spec: &k8s_openapi::api::core::v1::PodSpec,
) {
    {
        let mut armed = runtime.deadline.lock().expect("deadline lock");
        if armed.is_some_and(|armed| armed <= seconds) {
            return;
        }
        *armed = Some(seconds);
    }
    let started_at = runtime.status.lock().expect("status lock").start_time.unwrap_or_else(crate::meta::now);
    let ran = Duration::try_from(crate::meta::now().duration_since(started_at)).unwrap_or_default();
    let grace =
        Duration::from_secs(spec.termination_grace_period_seconds.unwrap_or(30).max(0) as u64);
    let cluster = cluster.clone();
    let runtime = runtime.clone();
    tokio::spawn(async move {
        let deadline = Duration::from_secs(seconds.max(0) as u64).saturating_sub(ran);
        if runtime.sleep_or_stop(deadline).await.is_none() && !runtime.is_done() {
            tracing::info!(pod = %runtime.name, seconds, "activeDeadlineSeconds ran out");
            request_stop(
                &cluster,
                &runtime.uid,
                StopRequest::DeadlineExceeded { grace },
            );
        }
    });
}

enum ContainerEnd {
    Exited(i32),
    Stopped(StopRequest),
}

/// Pulls, configures, starts and waits for one container, reporting each step in the status.
async fn run_container(
    cluster: &Arc<Cluster>,
    pod: &Arc<PodRuntime>,
    container: &Arc<ContainerRuntime>,
    object: &Value,
    folders: &VolumeFolders,
    init: bool,
) -> ContainerEnd {
    let name = container.name.as_str();
    if let Some(request) = pull_image(cluster, pod, container, object).await {
        return ContainerEnd::Stopped(request);
    }

    let delay = cluster.fire_fault(|fault| match fault {
        Fault::StartDelay {
            pods,
            container: only,
            ..
        } => pods.matches(object) && only.as_deref().is_none_or(|c| c == name),
        _ => false,
    });
    if let Some((_, Fault::StartDelay { delay_millis, .. })) = delay {
        set_waiting(cluster, pod, name, "ContainerCreating", None);
        if let Some(request) = pod.sleep_or_stop(Duration::from_millis(delay_millis)).await {
            return ContainerEnd::Stopped(request);
        }
    }

    let mounts = Mounts::new(&container.spec, folders);
    let env = loop {
        match environment::container_env(cluster, object, &container.spec, &mounts) {
            Ok(env) => break env,
            Err(message) => {
                set_waiting(
                    cluster,
                    pod,
                    name,
                    "CreateContainerConfigError",
                    Some(message),
                );
                if let Some(request) = pod
                    .sleep_or_stop(cluster.options.config_retry_interval)
                    .await
                {
                    return ContainerEnd::Stopped(request);
                }
            }
        }
    };
    let argv: Vec<String> = container
        .spec
        .command
        .iter()
        .flatten()
        .chain(container.spec.args.iter().flatten())
        .map(|part| mounts.rewrite(&environment::expand_references(part, &env)))
        .collect();
    let working_dir = match container
        .spec
        .working_dir
        .as_deref()
        .filter(|d| !d.is_empty())
    {
        Some(dir) => PathBuf::from(mounts.rewrite(dir)),
        None => {
            let dir = pod.dir.join("containers").join(name);
            let _ = std::fs::create_dir_all(&dir);
            dir
        }
    };

    let with_stdin = container.spec.stdin.unwrap_or(false);
    let spawned = {
        let mut slot = container.process.lock().expect("process lock");
        if slot.blocked {
            drop(slot);
            return ContainerEnd::Stopped(pod.stop_request().unwrap_or(StopRequest::Shutdown));
        }
        let spawned = process::spawn(&argv, &env, &working_dir, with_stdin);
        if let Ok(spawned) = &spawned {
            slot.group = Some(spawned.pid);
        }
        spawned
    };
    let started_at = crate::meta::now();
    let container_id = format!("emulator://{}", uuid::Uuid::new_v4().simple());
    let mut spawned = match spawned {
        Ok(spawned) => spawned,
        Err(error) => {
            let message = format!(
                "failed to create containerd task: failed to create shim task: OCI runtime create failed: exec: {:?}: {error}",
                argv.first().cloned().unwrap_or_default()
            );
            tracing::info!(pod = %pod.name, container = name, %message, "container failed to start");
            container.progress.send_replace(Progress::Exited);
            container.log.close();
            finish_container(
                cluster,
                pod,
                container,
                init,
                128,
                None,
                "StartError",
                Some(message),
                None,
                container_id,
            );
            return ContainerEnd::Exited(128);
        }
    };
    *container
        .stdin
        .try_lock()
        .expect("stdin is not shared before start") = spawned.stdin.take();
    container.progress.send_replace(Progress::Running);
    tracing::info!(pod = %pod.name, container = name, pid = spawned.pid, "container started");
    update_status(cluster, pod, |model| {
        if let Some(model) = model.container_mut(name) {
            model.phase = ContainerPhase::Running { started_at };
            model.container_id = Some(container_id.clone());
        }
        if !init {
            model.settle_phase();
            model.update_readiness();
        }
    });
    arm_container_faults(cluster, pod, container, object);

    let reader = {
        let container = container.clone();
        let mut output = spawned.output;
        tokio::spawn(async move {
            let mut buffer = vec![0u8; 8192];
            loop {
                match output.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(count) => {
                        container.log.append(&buffer[..count]);
                        let _ = container
                            .output
                            .send(Bytes::copy_from_slice(&buffer[..count]));
                    }
                }
            }
        })
    };
    let exit = spawned.child.wait().await;
    // The container ends with its main process: whatever else it started in its group goes too.
    process::signal_group(spawned.pid, libc::SIGKILL);
    let forced_reason = {
        let mut slot = container.process.lock().expect("process lock");
        slot.group = None;
        slot.forced_reason.take()
    };
    if tokio::time::timeout(OUTPUT_DRAIN_TIMEOUT, reader)
        .await
        .is_err()
    {
        tracing::warn!(pod = %pod.name, container = name, "output pipe still open after the process exited");
    }
    container.log.close();
    *container.stdin.lock().await = None;
    container.progress.send_replace(Progress::Exited);

    let (exit_code, signal) = match exit {
        Ok(status) => process::exit_code_and_signal(status),
        Err(error) => {
            tracing::error!(pod = %pod.name, container = name, %error, "failed to wait for a container");
            (255, None)
        }
    };
    let reason = match (forced_reason, exit_code) {
        (Some(reason), _) => reason,
        (None, 0) => "Completed",
        (None, _) => "Error",
    };
    tracing::info!(pod = %pod.name, container = name, exit_code, reason, "container terminated");
    finish_container(
        cluster,
        pod,
        container,
        init,
        exit_code,
        signal,
        reason,
        None,
        Some(started_at),
        container_id,
    );
    ContainerEnd::Exited(exit_code)
}

#[allow(clippy::too_many_arguments)]
fn finish_container(
    cluster: &Cluster,
    pod: &PodRuntime,
    container: &ContainerRuntime,
    init: bool,
    exit_code: i32,
    signal: Option<i32>,
    reason: &str,
    message: Option<String>,
    started_at: Option<Timestamp>,
    container_id: String,
) {
    *container.terminated_at.lock().expect("terminated_at lock") = Some(SystemTime::now());
    let stop = pod.stop_request();
    update_status(cluster, pod, |model| {
        if let Some(model) = model.container_mut(&container.name) {
            model.phase = ContainerPhase::Terminated {
                exit_code,
                signal,
                reason: reason.to_owned(),
                message,
                started_at,
                finished_at: crate::meta::now(),
            };
            model.container_id = Some(container_id);
        }
        if !init {
            model.settle_phase();
        }
        if let Some(request) = &stop {
            apply_stop_reason(model, request);
        }
        if !init {
            model.update_readiness();
        }
    });
}

/// Sets the pod-level outcome of an eviction or an expired deadline, so it appears in the same
/// status update as the container's end.
fn apply_stop_reason(model: &mut StatusModel, request: &StopRequest) {
    match request {
        StopRequest::Evict { message } => {
            model.phase = "Failed";
            model.reason = Some("Evicted".to_owned());
            model.message = Some(message.clone());
            model.set_condition(
                "DisruptionTarget",
                true,
                Some("TerminationByKubelet"),
                Some(message.clone()),
            );
        }
        StopRequest::DeadlineExceeded { .. } => {
            model.phase = "Failed";
            model.reason = Some("DeadlineExceeded".to_owned());
            model.message =
                Some("Pod was active on the node longer than the specified deadline".to_owned());
        }
        StopRequest::Delete { .. } | StopRequest::Shutdown => {}
    }
}

/// Pulls the container's image: an invalid reference waits forever with `InvalidImageName`,
/// and an `ImagePull` fault alternates `ErrImagePull` and `ImagePullBackOff` until removed.
async fn pull_image(
    cluster: &Arc<Cluster>,
    pod: &Arc<PodRuntime>,
    container: &Arc<ContainerRuntime>,
    object: &Value,
) -> Option<StopRequest> {
    let name = container.name.as_str();
    let image = container.spec.image.clone().unwrap_or_default();
    if let Err(message) = image::check_reference(&image) {
        set_waiting(cluster, pod, name, "InvalidImageName", Some(message));
        return Some(pod.wait_stop().await);
    }
    let fired = cluster.fire_fault(|fault| match fault {
        Fault::ImagePull {
            pods,
            container: only,
            ..
        } => pods.matches(object) && only.as_deref().is_none_or(|c| c == name),
        _ => false,
    });
    let Some((id, Fault::ImagePull { message, .. })) = fired else {
        return None;
    };
    let error = message.unwrap_or_else(|| {
        format!("rpc error: code = NotFound desc = failed to pull and unpack image \"{image}\": failed to resolve reference \"{image}\": not found")
    });
    let mut backoff = cluster.options.image_pull_backoff;
    while cluster.faults().is_active(id) {
        let message = format!("Failed to pull image \"{image}\": {error}");
        set_waiting(cluster, pod, name, "ErrImagePull", Some(message));
        if let Some(request) = pod.sleep_or_stop(cluster.options.image_pull_backoff).await {
            return Some(request);
        }
        let message = format!("Back-off pulling image \"{image}\"");
        set_waiting(cluster, pod, name, "ImagePullBackOff", Some(message));
        if let Some(request) = pod.sleep_or_stop(backoff).await {
            return Some(request);
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
    set_waiting(cluster, pod, name, "ContainerCreating", None);
    None
}

/// Starts the timers of `OomKill` and `Evict` faults that match this container's pod.
fn arm_container_faults(
    cluster: &Arc<Cluster>,
    pod: &Arc<PodRuntime>,
    container: &Arc<ContainerRuntime>,
    object: &Value,
) {
    let name = container.name.clone();
    let oom = cluster.fire_fault(|fault| match fault {
        Fault::OomKill {
            pods,
            container: only,
            ..
        } => pods.matches(object) && only.as_deref().is_none_or(|c| c == name),
        _ => false,
    });
    if let Some((_, Fault::OomKill { after_millis, .. })) = oom {
        let cluster = cluster.clone();
        let uid = pod.uid.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(after_millis)).await;
            oom_kill(&cluster, &uid, Some(&name));
        });
    }
    // An eviction applies to the pod, so only its first started container arms it.
    let first_started = pod.containers.iter().filter(|c| c.has_started()).count() == 1;
    if !first_started {
        return;
    }
    let eviction = cluster
        .fire_fault(|fault| matches!(fault, Fault::Evict { pods, .. } if pods.matches(object)));
    if let Some((
        _,
        Fault::Evict {
            after_millis,
            message,
            ..
        },
    )) = eviction
    {
        let cluster = cluster.clone();
        let uid = pod.uid.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(after_millis)).await;
            evict(&cluster, &uid, message);
        });
    }
}

/// The kubelet's message for an eviction under memory pressure.
pub const DEFAULT_EVICTION_MESSAGE: &str =
    "The node was low on resource: memory. Threshold quantity: 100Mi, available: 50Mi. ";

/// Evicts a pod: its containers are killed at once and it fails with reason `Evicted`.
pub fn evict(cluster: &Cluster, uid: &str, message: Option<String>) -> bool {
    let Some(pod) = cluster.kubelet.pod(uid) else {
        return false;
    };
    if pod.is_done() {
        return false;
    }
    let message = message.unwrap_or_else(|| DEFAULT_EVICTION_MESSAGE.to_owned());
    tracing::info!(pod = %pod.name, %message, "evicting pod");
    request_stop(cluster, uid, StopRequest::Evict { message });
    true
}

/// Reports a container that never ran in a pod that stopped, as the kubelet does.
fn mark_never_started(model: &mut StatusModel) {
    for container in model
        .init_containers
        .iter_mut()
        .chain(model.containers.iter_mut())
    {
        if matches!(container.phase, ContainerPhase::Waiting { .. }) && model.on_node {
            container.phase = ContainerPhase::Terminated {
                exit_code: 137,
                signal: None,
                reason: "ContainerStatusUnknown".to_owned(),
                message: Some(
                    "The container could not be located when the pod was terminated".to_owned(),
                ),
                started_at: None,
                finished_at: crate::meta::now(),
            };
        }
    }
}

async fn finish(cluster: &Arc<Cluster>, pod: &Arc<PodRuntime>, outcome: Outcome) {
    match outcome {
        Outcome::Completed => {
            update_status(cluster, pod, |model| {
                model.settle_phase();
                model.update_readiness();
            });
        }
        Outcome::Stopped(StopRequest::Shutdown) => {}
        Outcome::Stopped(StopRequest::Delete { .. }) => {
            update_status(cluster, pod, |model| {
                mark_never_started(model);
                if model.on_node {
                    model.settle_phase();
                    if model.phase != "Succeeded" {
                        model.phase = "Failed";
                    }
                    model.update_readiness();
                }
            });
            crate::resources::finish_pod_deletion(cluster, &pod.namespace, &pod.name, &pod.uid);
        }
        Outcome::Stopped(
            request @ (StopRequest::Evict { .. } | StopRequest::DeadlineExceeded { .. }),
        ) => {
            update_status(cluster, pod, |model| {
                mark_never_started(model);
                apply_stop_reason(model, &request);
                model.update_readiness();
            });
        }
    }
    tracing::info!(namespace = %pod.namespace, pod = %pod.name, "pod lifecycle ended");
}
