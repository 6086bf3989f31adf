//! Mapping a pod to an execution state, precisely: setup apart from the app, and every way a pod
//! can end apart from the others.
//!
//! Success is reported only when the app container's terminated state says exit code 0. The
//! mapping is a pure function of the pod, so each rule has a unit test.

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use std::time::Duration;
use tower_plugin_api::{ErrorKind, ExecutionState, FailureStageKind, SetupPhaseKind};

/// Name of the init container that receives and unpacks the package.
pub const UNPACK_CONTAINER: &str = "unpack";
/// Name of the init container that creates the virtual environment and installs dependencies.
pub const SETUP_CONTAINER: &str = "setup";
/// Name of the container that runs the app.
pub const APP_CONTAINER: &str = "app";

/// Waiting reasons after which the pod cannot start: the execution fails and the pod is deleted.
const FATAL_WAITING_REASONS: [&str; 4] = ["ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError"];

/// What the pod says about the execution.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// The state to report.
    pub state: ExecutionState,
    /// Whether the pod must be deleted because it cannot make progress.
    pub delete_pod: bool,
    /// The init container that failed, whose log tail belongs in the message.
    pub failed_init_container: Option<String>,
}

impl Observation {
    fn state(state: ExecutionState) -> Self {
        Self { state, delete_pod: false, failed_init_container: None }
    }

    fn fatal(state: ExecutionState) -> Self {
        Self { state, delete_pod: true, failed_init_container: None }
    }
}

/// Maps a pod to an observation. `pending_for` is how long the pod has existed without running,
/// compared with `pending_limit` for unschedulable pods.
pub fn observe(pod: &Pod, pending_for: Duration, pending_limit: Duration) -> Observation {
    let Some(status) = &pod.status else {
        return Observation::state(ExecutionState::preparing(SetupPhaseKind::Scheduling));
    };
    let init_statuses = status.init_container_statuses.as_deref().unwrap_or_default();
    let app_status = status.container_statuses.as_deref().unwrap_or_default().iter().find(|c| c.name == APP_CONTAINER);

    // Endings decided by the pod as a whole.
    let pod_reason = status.reason.as_deref().unwrap_or_default();
    let pod_message = status.message.as_deref().unwrap_or_default();
    if pod_reason == "DeadlineExceeded" {
        // The kubelet stops the containers with the grace period: the app ended on its own
        // (SIGTERM, or before the kill) unless SIGKILL ended it. An app not seen ended counts as
        // forced.
        let terminated = app_status.and_then(|app| app.state.as_ref()).and_then(|state| state.terminated.as_ref());
        let forced = terminated.is_none_or(|terminated| terminated.exit_code == 137 || terminated.signal == Some(9));
        return Observation::state(ExecutionState::TimedOut { forced });
    }
    if pod_reason == "Evicted" {
        let message = format!("the pod was evicted: {pod_message}");
        return Observation::state(ExecutionState::failed(ErrorKind::Unavailable, FailureStageKind::Platform, message, true));
    }

    // Containers that cannot start.
    for container in init_statuses.iter().chain(app_status) {
        if let Some(waiting) = container.state.as_ref().and_then(|state| state.waiting.as_ref()) {
            let reason = waiting.reason.as_deref().unwrap_or_default();
            if FATAL_WAITING_REASONS.contains(&reason) {
                let kind = match reason {
                    "ErrImagePull" | "ImagePullBackOff" => ErrorKind::Unavailable,
                    _ => ErrorKind::InvalidConfig,
                };
                let message = format!(
                    "container `{}` cannot start: {reason}: {}",
                    container.name,
                    waiting.message.as_deref().unwrap_or("no message from the kubelet")
                );
                return Observation::fatal(ExecutionState::failed(kind, FailureStageKind::Platform, message, kind == ErrorKind::Unavailable));
            }
        }
    }

    // A failed init container fails setup.
    for container in init_statuses {
        if let Some(terminated) = container.state.as_ref().and_then(|state| state.terminated.as_ref()) {
            if terminated.exit_code != 0 {
                let what = if container.name == UNPACK_CONTAINER {
                    "the package did not arrive whole or could not be unpacked"
                } else {
                    "dependency installation failed"
                };
                let message = format!("{what}: init container `{}` exited with code {}", container.name, terminated.exit_code);
                let mut observation = Observation::state(ExecutionState::failed(ErrorKind::InvalidPackage, FailureStageKind::Setup, message, false));
                observation.failed_init_container = Some(container.name.clone());
                return observation;
            }
        }
    }

    // The app container.
    if let Some(app) = app_status {
        if let Some(state) = app_ended(app) {
            return Observation::state(state);
        }
        if app.state.as_ref().is_some_and(|state| state.running.is_some()) {
            return Observation::state(ExecutionState::Running);
        }
    }
    if status.phase.as_deref() == Some("Failed") {
        let message = format!("the pod failed: {} {pod_message}", if pod_reason.is_empty() { "no reason given" } else { pod_reason });
        return Observation::state(ExecutionState::failed(ErrorKind::Unavailable, FailureStageKind::Platform, message.trim_end(), true));
    }

    match setup_phase(pod, init_statuses, pending_for, pending_limit) {
        Ok(state) => Observation::state(state),
        Err(failure) => failure,
    }
}

/// Returns the terminal state of a terminated app container.
fn app_ended(app: &ContainerStatus) -> Option<ExecutionState> {
    let terminated = app.state.as_ref()?.terminated.as_ref()?;
    let reason = terminated.reason.clone();
    let code = terminated.exit_code;
    if reason.as_deref() == Some("OOMKilled") {
        return Some(ExecutionState::Crashed { exit_code: Some(code).into(), signal: None.into(), reason: reason.map(Into::into).into() });
    }
    if code == 0 {
        return Some(ExecutionState::Exited);
    }
    // The runtime reports a signal death as 128 + N; the kubelet's `signal` field is rarely set.
    let signal = terminated.signal.or(match (code, reason.as_deref()) {
        (137, Some("Error")) => Some(9),
        (143, Some("Error")) => Some(15),
        _ => None,
    });
    Some(ExecutionState::Crashed { exit_code: Some(code).into(), signal: signal.into(), reason: reason.map(Into::into).into() })
}

/// Returns the setup phase of a pod whose app has not started, or a failure when the pod has been
/// unschedulable for longer than the limit.
fn setup_phase(pod: &Pod, init_statuses: &[ContainerStatus], pending_for: Duration, pending_limit: Duration) -> Result<ExecutionState, Observation> {
    let status = pod.status.as_ref().expect("checked by the caller");
    let unschedulable = status.conditions.as_deref().unwrap_or_default().iter().find(|condition| {
        condition.type_ == "PodScheduled" && condition.status == "False" && condition.reason.as_deref() == Some("Unschedulable")
    });
    if let Some(condition) = unschedulable {
        if pending_for >= pending_limit {
            let message = format!(
                "the pod was unschedulable for {}s: {}",
                pending_for.as_secs(),
                condition.message.as_deref().unwrap_or("no message from the scheduler")
            );
            return Err(Observation::fatal(ExecutionState::failed(ErrorKind::Unavailable, FailureStageKind::Platform, message, true)));
        }
        return Ok(ExecutionState::preparing(SetupPhaseKind::Scheduling));
    }
    let scheduled = status.conditions.as_deref().unwrap_or_default().iter().any(|c| c.type_ == "PodScheduled" && c.status == "True");
    let running_init = init_statuses.iter().find(|c| c.state.as_ref().is_some_and(|state| state.running.is_some()));
    Ok(match running_init.map(|c| c.name.as_str()) {
        Some(UNPACK_CONTAINER) => ExecutionState::preparing(SetupPhaseKind::StagingPackage),
        Some(_) => ExecutionState::preparing(SetupPhaseKind::InstallingDependencies),
        None if init_statuses.iter().any(|c| c.state.as_ref().is_some_and(|s| s.terminated.is_some())) => {
            ExecutionState::preparing(SetupPhaseKind::Starting)
        }
        None if scheduled => ExecutionState::preparing(SetupPhaseKind::PullingImage),
        None => ExecutionState::preparing(SetupPhaseKind::Scheduling),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LIMIT: Duration = Duration::from_secs(300);

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "status": status})).unwrap()
    }

    fn state_of(status: serde_json::Value) -> ExecutionState {
        observe(&pod(status), Duration::ZERO, LIMIT).state
    }

    fn app(state: serde_json::Value) -> serde_json::Value {
        json!({"phase": "Running", "containerStatuses": [{"name": "app", "ready": false, "restartCount": 0, "image": "i", "imageID": "", "state": state}]})
    }

    #[test]
    fn pod_without_status_is_scheduling() {
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "p"}})).unwrap();
        assert_eq!(observe(&pod, Duration::ZERO, LIMIT).state, ExecutionState::preparing(SetupPhaseKind::Scheduling));
    }

    #[test]
    fn running_unpack_container_is_staging() {
        let status = json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True"}],
            "initContainerStatuses": [{"name": "unpack", "ready": false, "restartCount": 0, "image": "i", "imageID": "", "state": {"running": {}}}]});
        assert_eq!(state_of(status), ExecutionState::preparing(SetupPhaseKind::StagingPackage));
    }

    #[test]
    fn running_setup_container_is_installing() {
        let status = json!({"phase": "Pending", "initContainerStatuses": [
            {"name": "unpack", "ready": false, "restartCount": 0, "image": "i", "imageID": "", "state": {"terminated": {"exitCode": 0}}},
            {"name": "setup", "ready": false, "restartCount": 0, "image": "i", "imageID": "", "state": {"running": {}}}]});
        assert_eq!(state_of(status), ExecutionState::preparing(SetupPhaseKind::InstallingDependencies));
    }

    #[test]
    fn scheduled_pod_without_containers_is_pulling() {
        let status = json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True"}]});
        assert_eq!(state_of(status), ExecutionState::preparing(SetupPhaseKind::PullingImage));
    }

    #[test]
    fn running_app_is_running() {
        assert_eq!(state_of(app(json!({"running": {}}))), ExecutionState::Running);
    }

    #[test]
    fn app_exit_zero_is_exited() {
        assert_eq!(state_of(app(json!({"terminated": {"exitCode": 0, "reason": "Completed"}}))), ExecutionState::Exited);
    }

    #[test]
    fn app_exit_nonzero_is_crashed_with_code() {
        let state = state_of(app(json!({"terminated": {"exitCode": 3, "reason": "Error"}})));
        assert_eq!(state, ExecutionState::Crashed { exit_code: Some(3).into(), signal: None.into(), reason: Some("Error".into()).into() });
    }

    #[test]
    fn oom_killed_is_crashed_even_with_exit_zero() {
        let state = state_of(app(json!({"terminated": {"exitCode": 0, "reason": "OOMKilled"}})));
        assert_eq!(state, ExecutionState::Crashed { exit_code: Some(0).into(), signal: None.into(), reason: Some("OOMKilled".into()).into() });
    }

    #[test]
    fn exit_137_with_error_notes_sigkill() {
        let state = state_of(app(json!({"terminated": {"exitCode": 137, "reason": "Error"}})));
        assert_eq!(state, ExecutionState::Crashed { exit_code: Some(137).into(), signal: Some(9).into(), reason: Some("Error".into()).into() });
        let state = state_of(app(json!({"terminated": {"exitCode": 143, "reason": "Error"}})));
        assert!(matches!(state, ExecutionState::Crashed { signal: abi_stable::std_types::ROption::RSome(15), .. }), "{state:?}");
    }

    #[test]
    fn failed_init_container_fails_setup() {
        let status = json!({"phase": "Failed", "initContainerStatuses": [
            {"name": "unpack", "ready": false, "restartCount": 0, "image": "i", "imageID": "", "state": {"terminated": {"exitCode": 0}}},
            {"name": "setup", "ready": false, "restartCount": 0, "image": "i", "imageID": "", "state": {"terminated": {"exitCode": 2, "reason": "Error"}}}]});
        let observation = observe(&pod(status), Duration::ZERO, LIMIT);
        assert_eq!(observation.failed_init_container.as_deref(), Some("setup"));
        let ExecutionState::Failed { stage, message, .. } = observation.state else { panic!("not failed") };
        assert_eq!(stage.as_enum().ok(), Some(&FailureStageKind::Setup));
        assert!(message.contains("dependency installation failed"), "{message}");
        assert!(message.contains("exited with code 2"), "{message}");
    }

    #[test]
    fn image_pull_errors_fail_platform_and_delete_pod() {
        for reason in ["ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError"] {
            let status = json!({"phase": "Pending", "initContainerStatuses": [{"name": "unpack", "ready": false, "restartCount": 0,
                "image": "i", "imageID": "", "state": {"waiting": {"reason": reason, "message": "kubelet says no"}}}]});
            let observation = observe(&pod(status), Duration::ZERO, LIMIT);
            assert!(observation.delete_pod, "{reason}");
            let ExecutionState::Failed { stage, message, .. } = observation.state else { panic!("{reason} not failed") };
            assert_eq!(stage.as_enum().ok(), Some(&FailureStageKind::Platform));
            assert!(message.contains(reason) && message.contains("kubelet says no"), "{message}");
        }
    }

    #[test]
    fn unschedulable_fails_only_after_limit() {
        let status = json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes are available"}]});
        let early = observe(&pod(status.clone()), Duration::from_secs(10), LIMIT);
        assert_eq!(early.state, ExecutionState::preparing(SetupPhaseKind::Scheduling));
        let late = observe(&pod(status), LIMIT, LIMIT);
        assert!(late.delete_pod);
        let ExecutionState::Failed { message, .. } = late.state else { panic!("not failed") };
        assert!(message.contains("0/3 nodes are available"), "{message}");
    }

    #[test]
    fn deadline_exceeded_is_timed_out() {
        assert_eq!(state_of(json!({"phase": "Failed", "reason": "DeadlineExceeded"})), ExecutionState::TimedOut { forced: true });
        let ended = |exit_code: i32| {
            let mut status = app(json!({"terminated": {"exitCode": exit_code, "reason": "Error"}}));
            status["phase"] = json!("Failed");
            status["reason"] = json!("DeadlineExceeded");
            state_of(status)
        };
        assert_eq!(ended(143), ExecutionState::TimedOut { forced: false }, "ended on SIGTERM");
        assert_eq!(ended(137), ExecutionState::TimedOut { forced: true }, "killed after the grace period");
    }

    #[test]
    fn eviction_is_failed_with_message() {
        let state = state_of(json!({"phase": "Failed", "reason": "Evicted", "message": "low on ephemeral storage"}));
        let ExecutionState::Failed { message, .. } = state else { panic!("not failed") };
        assert!(message.contains("low on ephemeral storage"), "{message}");
    }
}
