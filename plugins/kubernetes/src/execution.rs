//! One execution: the task that drives it from the pod's watch to one terminal status, and the
//! handle the host holds.

use crate::api::{status_code, to_plugin_error, with_retries};
use crate::naming::TIMEOUT_ANNOTATION;
use crate::logs::{LogFollower, Tails};
use crate::pod_spec::ObjectNames;
use crate::pod_view::PodView;
use crate::settings::Settings;
use crate::status_map::{observe, APP_CONTAINER, SETUP_CONTAINER, UNPACK_CONTAINER};
use crate::{transfer, watcher};
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tower_plugin_api::sdk::{EventSink, Execution};
use tower_plugin_api::{
    Channel, ErrorKind, ExecutionState, ExecutionStatus, FailureStageKind, PluginError, ServiceEndpoint, Timestamp,
};

/// Largest `activeDeadlineSeconds` the Kubernetes API accepts: a 32-bit signed integer.
pub const MAX_DEADLINE_SECONDS: i64 = i32::MAX as i64;

/// Time added to the grace period before a terminate forces the pod away.
const FORCE_MARGIN: Duration = Duration::from_secs(10);
/// How long to wait for a pod deleted with grace 0 to disappear.
const FORCED_DELETE_WAIT: Duration = Duration::from_secs(60);

/// The parts of an execution shared by its driver task and its handle.
pub struct Shared {
    /// The run id.
    pub run_id: String,
    /// The names of its objects.
    pub names: ObjectNames,
    /// The namespace.
    pub namespace: String,
    /// The pods API of the namespace.
    pub pods: Api<Pod>,
    /// The secrets API of the namespace.
    pub secrets: Api<Secret>,
    /// The services API of the namespace.
    pub services: Api<Service>,
    /// The backend's settings.
    pub settings: Arc<Settings>,
    /// The service port, when a service is exposed.
    pub service_port: Option<u16>,
    /// When the backend accepted the execution.
    pub started_at: Timestamp,
    /// The latest status reported.
    pub status: Mutex<ExecutionStatus>,
    /// The stop request, once terminate or kill was called.
    pub stop: Mutex<Option<StopRequest>>,
    /// The pod as the watch last saw it.
    pub view: watch::Receiver<PodView>,
    /// Whether the terminal status was delivered.
    pub done: watch::Receiver<bool>,
}

/// A request to stop the execution.
#[derive(Debug, Clone, Copy)]
pub struct StopRequest {
    /// Whether the pod had to be (or was asked to be) deleted without grace.
    pub forced: bool,
}

impl Shared {
    fn stop_request(&self) -> Option<StopRequest> {
        *self.stop.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn set_status(&self, status: ExecutionStatus) {
        *self.status.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = status;
    }

    fn status_with(&self, state: ExecutionState, ended: bool) -> ExecutionStatus {
        let mut status = ExecutionStatus::new(state)
            .started(Some(self.started_at))
            .with_metadata("pod", self.names.pod.clone())
            .with_metadata("namespace", self.namespace.clone());
        if ended {
            status = status.ended(Some(Timestamp::now()));
        }
        status
    }

    async fn delete_pod(&self, grace_seconds: u32) -> Result<(), PluginError> {
        let params = DeleteParams { grace_period_seconds: Some(grace_seconds), ..DeleteParams::default() };
        match with_retries("delete the pod", || self.pods.delete(&self.names.pod, &params)).await {
            Ok(_) => Ok(()),
            Err(error) if status_code(&error) == Some(404) => Ok(()),
            Err(error) => Err(to_plugin_error(&format!("delete pod `{}`", self.names.pod), &error)),
        }
    }

    /// Waits until the watch saw the pod disappear; returns `false` on timeout.
    async fn wait_gone(&self, limit: Duration) -> bool {
        let mut view = self.view.clone();
        tokio::time::timeout(limit, view.wait_for(|view| view.gone)).await.is_ok_and(|seen| seen.is_ok())
    }
}

/// The package to send to the pod.
pub struct Transfer {
    /// The archive: the temp file that keeps it, and its path.
    pub archive: (tempfile::TempPath, PathBuf),
    /// Whether the pod was adopted from an earlier create of the same execution. That create may
    /// have sent the package already, so a failed transfer is left to the pod's status to judge.
    pub adopted: bool,
}

/// The inputs of the driver task besides the shared parts.
pub struct DriverInputs {
    /// The sink of the execution's events.
    pub events: EventSink,
    /// The package to send, or `None` when the pod needs none (a URL package, a recovered pod).
    pub transfer: Option<Transfer>,
    /// Publishes the pod's changes.
    pub view_sender: watch::Sender<PodView>,
    /// Marks the terminal status as delivered.
    pub done_sender: watch::Sender<bool>,
    /// Whether the app is a Python app, which has a `setup` init container.
    pub python: bool,
}

/// Drives an execution to its terminal status: watches the pod, sends the package, follows the
/// logs, maps each change to a status, and delivers the terminal status after the last log line.
pub async fn drive(shared: Arc<Shared>, inputs: DriverInputs) {
    let DriverInputs { events, transfer, view_sender, done_sender, python } = inputs;
    let created = Instant::now();
    let pending_limit = Duration::from_secs(shared.settings.pending_timeout_seconds);
    let mut view = view_sender.subscribe();
    tokio::spawn(watcher::watch_pod(shared.pods.clone(), shared.names.pod.clone(), view_sender));

    // The logs of every container, in order.
    let mut containers = vec![(UNPACK_CONTAINER.to_string(), Channel::Setup)];
    if python {
        containers.push((SETUP_CONTAINER.to_string(), Channel::Setup));
    }
    containers.push((APP_CONTAINER.to_string(), Channel::Program));
    let tails = Tails::default();
    let follower = LogFollower {
        pods: shared.pods.clone(),
        pod: shared.names.pod.clone(),
        containers,
        view: view.clone(),
        events: events.clone(),
        tails: tails.clone(),
    };
    let mut logs = tokio::spawn(follower.run());

    // The package, once the unpack container runs.
    let adopted = transfer.as_ref().is_some_and(|transfer| transfer.adopted);
    let mut transfer = match transfer {
        Some(Transfer { archive: (temp, path), .. }) => {
            let (pods, pod, view) = (shared.pods.clone(), shared.names.pod.clone(), view.clone());
            tokio::spawn(async move {
                let result = transfer::send_package(pods, pod, &path, view).await;
                drop(temp);
                result
            })
        }
        None => tokio::spawn(async { Ok(0) }),
    };
    let mut transfer_done = false;

    // Status changes, until the terminal one.
    let mut deadline_in_place = false;
    let mut reported = None;
    let mut failed_init = None;
    let pending_deadline = tokio::time::sleep(pending_limit);
    tokio::pin!(pending_deadline);
    let terminal = loop {
        tokio::select! {
            changed = view.changed() => {
                if changed.is_err() {
                    break ExecutionState::lost("the watch on the pod stopped");
                }
            }
            result = &mut transfer, if !transfer_done => {
                transfer_done = true;
                match result {
                    Ok(Ok(bytes)) => tracing::debug!(execution.id = %shared.run_id, bytes, "package sent"),
                    // A pod that vanished is reported by its watch, as a deletion.
                    Ok(Err(error)) if shared.stop_request().is_none() && !error.pod_missing && !adopted => {
                        let _ = shared.delete_pod(0).await;
                        let message = format!("the package could not be sent to pod `{}`: {}", shared.names.pod, error.message);
                        break ExecutionState::failed(ErrorKind::Unavailable, FailureStageKind::Setup, message, true);
                    }
                    Ok(Err(error)) => tracing::debug!(execution.id = %shared.run_id, message = %error.message, "package not sent"),
                    Err(join_error) => tracing::warn!(%join_error, "the package transfer task failed"),
                }
                continue;
            }
            _ = &mut pending_deadline => {}
        }

        let current = view.borrow_and_update().clone();
        let stop = shared.stop_request();
        let observation = current.pod.as_ref().map(|pod| observe(pod, created.elapsed(), pending_limit));
        if let Some(observation) = &observation {
            if observation.state.is_terminal() {
                if let Some(stop) = stop {
                    break ExecutionState::Cancelled { forced: stop.forced || app_was_killed(&current) };
                }
                if current.pod.as_ref().is_some_and(deleted_before_app_ended) {
                    break deleted_outside(&shared);
                }
                if observation.delete_pod {
                    let _ = shared.delete_pod(0).await;
                }
                failed_init = observation.failed_init_container.clone();
                break observation.state.clone();
            }
        }
        if current.gone {
            break match stop {
                Some(stop) => ExecutionState::Cancelled { forced: stop.forced || app_was_killed(&current) },
                None => deleted_outside(&shared),
            };
        }
        if let Some(observation) = observation {
            if reported.as_ref() != Some(&observation.state) && stop.is_none() {
                let status = shared.status_with(observation.state.clone(), false);
                shared.set_status(status.clone());
                events.status(status);
                reported = Some(observation.state);
            }
        }
        if !deadline_in_place && stop.is_none() {
            match current.pod.as_ref().map(deadline_of).unwrap_or(Deadline::NotYet) {
                Deadline::NotYet => {}
                Deadline::InPlace => deadline_in_place = true,
                Deadline::Set(seconds) => match set_deadline(&shared, seconds).await {
                    Ok(()) => deadline_in_place = true,
                    Err(error) => {
                        tracing::error!(execution.id = %shared.run_id, pod = %shared.names.pod, %error, "failed to set the pod's deadline; deleting the pod");
                        let _ = shared.delete_pod(0).await;
                        let retryable = matches!(error.kind(), Some(ErrorKind::Unavailable | ErrorKind::TimedOut));
                        let kind = error.kind().unwrap_or(ErrorKind::Internal);
                        break ExecutionState::failed(kind, FailureStageKind::Platform, error.to_string(), retryable);
                    }
                },
            }
        }
    };

    // Every log line before the terminal status, within the drain limit.
    let drain = Duration::from_secs(shared.settings.log_drain_seconds);
    if tokio::time::timeout(drain, &mut logs).await.is_err() {
        tracing::warn!(execution.id = %shared.run_id, pod = %shared.names.pod, "log stream did not end within {drain:?} after the pod ended; stopped following it");
        logs.abort();
    }
    if !transfer_done {
        transfer.abort();
    }

    let terminal = match (terminal, failed_init) {
        (ExecutionState::Failed { code, stage, message, retryable }, Some(container)) => {
            let tail = tails.of(&container);
            let message = if tail.is_empty() { message.to_string() } else { format!("{message}; last lines of its log:\n{tail}") };
            ExecutionState::Failed { code, stage, message: message.into(), retryable }
        }
        (terminal, _) => terminal,
    };
    let status = shared.status_with(terminal, true);
    shared.set_status(status.clone());
    // Set before the terminal status goes out, so that a cleanup called right after it finds the
    // execution ended.
    let _ = done_sender.send(true);
    events.status(status);
}

/// The change the pod's `activeDeadlineSeconds` needs for the execution's timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Deadline {
    /// The app container has not started yet.
    NotYet,
    /// No timeout, or the pod already has a deadline at least as early.
    InPlace,
    /// The deadline to set, in seconds from the pod's start.
    Set(i64),
}

/// Returns the deadline that ends the pod the timeout (annotation [`TIMEOUT_ANNOTATION`]) after
/// its app container started. The kubelet counts `activeDeadlineSeconds` from the pod's
/// `startTime`, so the deadline is the setup time plus the timeout. Both times come from the
/// kubelet's clock but have whole seconds, so the measured setup can be up to 1 s short. One
/// second more makes the app get at least its timeout, and less than 2 s more. An earlier
/// deadline already on the pod (set by a pod template patch) stays, because Kubernetes allows
/// only lowering it.
fn deadline_of(pod: &Pod) -> Deadline {
    let annotation = pod.metadata.annotations.as_ref().and_then(|notes| notes.get(TIMEOUT_ANNOTATION));
    let Some(annotation) = annotation else { return Deadline::InPlace };
    // `create` rejects timeouts over the API's limit; a value edited by hand is capped.
    let timeout = annotation.parse::<u64>().map_or(MAX_DEADLINE_SECONDS, |seconds| i64::try_from(seconds).unwrap_or(MAX_DEADLINE_SECONDS));
    let status = pod.status.as_ref();
    let pod_started = status.and_then(|status| status.start_time.as_ref()).map(|time| time.0);
    let app = status.and_then(|status| status.container_statuses.as_ref()).and_then(|all| all.iter().find(|c| c.name == APP_CONTAINER));
    let app_started = app.and_then(|app| app.state.as_ref()).and_then(|state| state.running.as_ref()).and_then(|running| running.started_at.as_ref()).map(|time| time.0);
    let (Some(pod_started), Some(app_started)) = (pod_started, app_started) else { return Deadline::NotYet };
    let setup = app_started.duration_since(pod_started);
    let setup_seconds = setup.as_secs().max(0) + i64::from(setup.subsec_nanos() > 0);
    let deadline = setup_seconds.saturating_add(1).saturating_add(timeout).min(MAX_DEADLINE_SECONDS);
    match pod.spec.as_ref().and_then(|spec| spec.active_deadline_seconds) {
        Some(current) if current <= deadline => Deadline::InPlace,
        _ => Deadline::Set(deadline),
    }
}

/// Sets the pod's `activeDeadlineSeconds`. A pod that is gone needs none.
async fn set_deadline(shared: &Shared, seconds: i64) -> Result<(), PluginError> {
    let patch = Patch::Merge(serde_json::json!({ "spec": { "activeDeadlineSeconds": seconds } }));
    let params = PatchParams::default();
    match with_retries("set the pod's deadline", || shared.pods.patch(&shared.names.pod, &params, &patch)).await {
        Ok(_) => {
            tracing::debug!(execution.id = %shared.run_id, pod = %shared.names.pod, seconds, "set activeDeadlineSeconds for the timeout");
            Ok(())
        }
        Err(error) if status_code(&error) == Some(404) => Ok(()),
        Err(error) => {
            let operation = format!("set activeDeadlineSeconds = {seconds} on pod `{}` for the execution's timeout", shared.names.pod);
            let failure = to_plugin_error(&operation, &error);
            if status_code(&error) == Some(403) {
                let message = format!("{}; grant the plugin's service account the `patch` verb on pods (config/kubernetes/rbac.yaml)", failure.message);
                return Err(PluginError::new(ErrorKind::PermissionDenied, message));
            }
            Err(failure)
        }
    }
}

/// Tells whether the app container ended by SIGKILL (exit code 137 or signal 9): after a
/// terminate, that means the grace period ran out and the kubelet forced it.
fn app_was_killed(view: &PodView) -> bool {
    let terminated = view.container(APP_CONTAINER).and_then(|app| app.state.as_ref()).and_then(|state| state.terminated.as_ref());
    terminated.is_some_and(|terminated| terminated.exit_code == 137 || terminated.signal == Some(9))
}

fn deleted_outside(shared: &Shared) -> ExecutionState {
    let message = format!("pod `{}` was deleted outside tower-host", shared.names.pod);
    ExecutionState::failed(ErrorKind::Unavailable, FailureStageKind::Platform, message, true)
}

/// Tells whether someone deleted the pod before its app container ended on its own: the app's end
/// is then the deletion's doing. Timestamps have whole seconds, so a tie counts as the deletion.
fn deleted_before_app_ended(pod: &Pod) -> bool {
    let Some(deleted_at) = &pod.metadata.deletion_timestamp else { return false };
    let app = pod.status.as_ref().and_then(|status| status.container_statuses.as_ref()).and_then(|statuses| statuses.iter().find(|c| c.name == APP_CONTAINER));
    let finished_at = app.and_then(|app| app.state.as_ref()).and_then(|state| state.terminated.as_ref()).and_then(|terminated| terminated.finished_at.as_ref());
    finished_at.is_none_or(|finished| finished.0 >= deleted_at.0)
}

/// The handle of one execution.
pub struct KubernetesExecution {
    /// The parts shared with the driver task.
    pub shared: Arc<Shared>,
}

impl KubernetesExecution {
    async fn stop(&self, grace: Duration, forced: bool) -> Result<(), PluginError> {
        if *self.shared.done.borrow() {
            return Ok(());
        }
        {
            let mut stop = self.shared.stop.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let forced = forced || stop.is_some_and(|stop| stop.forced);
            *stop = Some(StopRequest { forced });
        }
        let grace_seconds = u32::try_from(grace.as_secs()).unwrap_or(u32::MAX);
        self.shared.delete_pod(grace_seconds).await?;
        if !self.shared.wait_gone(grace + FORCE_MARGIN).await {
            tracing::info!(execution.id = %self.shared.run_id, pod = %self.shared.names.pod, "the pod outlived its grace period; deleting it with grace 0");
            *self.shared.stop.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(StopRequest { forced: true });
            self.shared.delete_pod(0).await?;
            if !self.shared.wait_gone(FORCED_DELETE_WAIT).await {
                return Err(PluginError::new(
                    ErrorKind::TimedOut,
                    format!("pod `{}` still exists {}s after a delete with grace 0", self.shared.names.pod, FORCED_DELETE_WAIT.as_secs()),
                ));
            }
        }
        let mut done = self.shared.done.clone();
        let _ = tokio::time::timeout(FORCE_MARGIN, done.wait_for(|done| *done)).await;
        Ok(())
    }
}

impl Execution for KubernetesExecution {
    async fn status(&self) -> Result<ExecutionStatus, PluginError> {
        Ok(self.shared.status.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone())
    }

    async fn terminate(&self, grace: Duration) -> Result<(), PluginError> {
        self.stop(grace, false).await
    }

    async fn kill(&self) -> Result<(), PluginError> {
        self.stop(Duration::ZERO, true).await
    }

    fn service_endpoint(&self) -> Result<Option<ServiceEndpoint>, PluginError> {
        let (Some(service), Some(port)) = (&self.shared.names.service, self.shared.service_port) else {
            return Ok(None);
        };
        let host = format!("{service}.{}.svc.cluster.local", self.shared.namespace);
        Ok(Some(ServiceEndpoint { host: host.into(), port }))
    }

    async fn cleanup(&self) -> Result<(), PluginError> {
        if !*self.shared.done.borrow() {
            self.stop(Duration::ZERO, true).await?;
        }
        if self.shared.settings.keep_finished_pods {
            return Ok(());
        }
        let grace = u32::try_from(self.shared.settings.delete_grace_seconds).unwrap_or(u32::MAX);
        self.shared.delete_pod(grace).await?;
        let params = DeleteParams::default();
        let secret = &self.shared.names.secret;
        match with_retries("delete the secret", || self.shared.secrets.delete(secret, &params)).await {
            Ok(_) => {}
            Err(error) if status_code(&error) == Some(404) => {}
            Err(error) => return Err(to_plugin_error(&format!("delete secret `{secret}`"), &error)),
        }
        if let Some(service) = &self.shared.names.service {
            match with_retries("delete the service", || self.shared.services.delete(service, &params)).await {
                Ok(_) => {}
                Err(error) if status_code(&error) == Some(404) => {}
                Err(error) => return Err(to_plugin_error(&format!("delete service `{service}`"), &error)),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(timeout: Option<&str>, pod_started: Option<&str>, app_started: Option<&str>, current: Option<i64>) -> Pod {
        let mut annotations = serde_json::Map::new();
        if let Some(timeout) = timeout {
            annotations.insert(TIMEOUT_ANNOTATION.to_string(), serde_json::json!(timeout));
        }
        let app_state = match app_started {
            Some(at) => serde_json::json!({ "running": { "startedAt": at } }),
            None => serde_json::json!({ "waiting": { "reason": "PodInitializing" } }),
        };
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": "p", "annotations": annotations },
            "spec": { "containers": [], "activeDeadlineSeconds": current },
            "status": {
                "startTime": pod_started,
                "containerStatuses": [{ "name": APP_CONTAINER, "image": "i", "imageID": "", "ready": true, "restartCount": 0, "state": app_state }],
            },
        }))
        .unwrap()
    }

    #[test]
    fn deadline_is_setup_time_plus_timeout() {
        // The API's times have whole seconds, so the setup may be up to 1 s longer than measured.
        let running = |timeout, current| pod(timeout, Some("2026-01-01T00:00:00Z"), Some("2026-01-01T00:00:42Z"), current);
        assert_eq!(deadline_of(&running(Some("60"), None)), Deadline::Set(103));
        assert_eq!(deadline_of(&running(None, None)), Deadline::InPlace, "no timeout");
        assert_eq!(deadline_of(&running(Some("60"), Some(90))), Deadline::InPlace, "an earlier deadline stays");
        assert_eq!(deadline_of(&running(Some("60"), Some(103))), Deadline::InPlace, "set by an earlier host");
        assert_eq!(deadline_of(&running(Some("60"), Some(300))), Deadline::Set(103), "a later deadline is lowered");
        assert_eq!(deadline_of(&running(Some("18446744073709551615"), None)), Deadline::Set(MAX_DEADLINE_SECONDS), "capped at the API's limit");
    }

    #[test]
    fn deadline_waits_for_the_app_container() {
        assert_eq!(deadline_of(&pod(Some("60"), Some("2026-01-01T00:00:00Z"), None, None)), Deadline::NotYet);
        assert_eq!(deadline_of(&pod(Some("60"), None, Some("2026-01-01T00:00:42Z"), None)), Deadline::NotYet);
    }

    #[test]
    fn deadline_rounds_setup_up_to_whole_seconds() {
        let running = pod(Some("5"), Some("2026-01-01T00:00:00Z"), Some("2026-01-01T00:00:03.200Z"), None);
        assert_eq!(deadline_of(&running), Deadline::Set(10));
    }
}
