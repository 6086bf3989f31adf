//! The pod as the watch last saw it, shared between the tasks of one execution.

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

/// The latest state of the pod.
#[derive(Debug, Clone, Default)]
pub struct PodView {
    /// The pod, once read.
    pub pod: Option<Pod>,
    /// Whether the pod was deleted.
    pub gone: bool,
}

/// How far a container got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerProgress {
    /// Not started yet, and it still may.
    NotStarted,
    /// Running now.
    Running,
    /// Started and ended.
    Ended,
    /// It will never start: the pod is gone or ended without it.
    NeverStarts,
}

impl PodView {
    /// Returns the status of a container, init or app.
    pub fn container(&self, name: &str) -> Option<&ContainerStatus> {
        let status = self.pod.as_ref()?.status.as_ref()?;
        let init = status.init_container_statuses.iter().flatten();
        let app = status.container_statuses.iter().flatten();
        init.chain(app).find(|container| container.name == name)
    }

    /// Returns how far a container got.
    pub fn progress(&self, name: &str) -> ContainerProgress {
        let state = self.container(name).and_then(|container| container.state.as_ref());
        if state.is_some_and(|state| state.running.is_some()) {
            return ContainerProgress::Running;
        }
        if state.is_some_and(|state| state.terminated.is_some()) {
            return ContainerProgress::Ended;
        }
        let pod_ended = self
            .pod
            .as_ref()
            .and_then(|pod| pod.status.as_ref())
            .and_then(|status| status.phase.as_deref())
            .is_some_and(|phase| phase == "Failed" || phase == "Succeeded");
        if self.gone || pod_ended || self.pod.as_ref().is_some_and(|pod| pod.metadata.deletion_timestamp.is_some()) {
            return ContainerProgress::NeverStarts;
        }
        ContainerProgress::NotStarted
    }

    /// Returns the pod's uid.
    pub fn uid(&self) -> Option<String> {
        self.pod.as_ref()?.metadata.uid.clone()
    }
}
