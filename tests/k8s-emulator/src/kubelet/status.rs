//! The kubelet's view of a pod's status, kept as plain fields and turned into the API's
//! `PodStatus` each time the kubelet publishes it.

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

/// The address reported as host and pod IP: containers are local processes that share the
/// host's network, so they are reachable on loopback.
pub const POD_IP: &str = "127.0.0.1";

#[derive(Clone, Debug, PartialEq)]
pub enum ContainerPhase {
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        started_at: Timestamp,
    },
    Terminated {
        exit_code: i32,
        signal: Option<i32>,
        reason: String,
        message: Option<String>,
        started_at: Option<Timestamp>,
        finished_at: Timestamp,
    },
}

#[derive(Clone, Debug)]
pub struct ContainerModel {
    pub name: String,
    pub image: String,
    pub phase: ContainerPhase,
    pub container_id: Option<String>,
}

impl ContainerModel {
    pub fn is_running(&self) -> bool {
        matches!(self.phase, ContainerPhase::Running { .. })
    }

    pub fn is_terminated(&self) -> bool {
        matches!(self.phase, ContainerPhase::Terminated { .. })
    }

    fn to_status(&self) -> ContainerStatus {
        let state = match &self.phase {
            ContainerPhase::Waiting { reason, message } => ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some(reason.clone()),
                    message: message.clone(),
                }),
                ..ContainerState::default()
            },
            ContainerPhase::Running { started_at } => ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: Some(Time(*started_at)),
                }),
                ..ContainerState::default()
            },
            ContainerPhase::Terminated {
                exit_code,
                signal,
                reason,
                message,
                started_at,
                finished_at,
            } => ContainerState {
                terminated: Some(ContainerStateTerminated {
                    container_id: self.container_id.clone(),
                    exit_code: *exit_code,
                    signal: *signal,
                    reason: Some(reason.clone()),
                    message: message.clone(),
                    started_at: started_at.map(Time),
                    finished_at: Some(Time(*finished_at)),
                }),
                ..ContainerState::default()
            },
        };
        ContainerStatus {
            name: self.name.clone(),
            image: self.image.clone(),
            image_id: if self.container_id.is_some() {
                self.image.clone()
            } else {
                String::new()
            },
            container_id: self.container_id.clone(),
            ready: self.is_running(),
            started: Some(self.is_running()),
            restart_count: 0,
            state: Some(state),
            last_state: Some(ContainerState::default()),
            ..ContainerStatus::default()
        }
    }
}

#[derive(Clone, Debug)]
struct Condition {
    type_: &'static str,
    status: bool,
    reason: Option<String>,
    message: Option<String>,
    last_transition: Timestamp,
}

/// A pod's status as the kubelet and scheduler set it.
#[derive(Clone, Debug)]
pub struct StatusModel {
    pub phase: &'static str,
    pub reason: Option<String>,
    pub message: Option<String>,
    pub start_time: Option<Timestamp>,
    /// Whether a node runs the pod, so host and pod IPs are reported.
    pub on_node: bool,
    pub qos_class: String,
    conditions: Vec<Condition>,
    pub init_containers: Vec<ContainerModel>,
    pub containers: Vec<ContainerModel>,
}

fn containers_of(
    list: &[k8s_openapi::api::core::v1::Container],
    reason: &str,
) -> Vec<ContainerModel> {
    list.iter()
        .map(|container| ContainerModel {
            name: container.name.clone(),
            image: container.image.clone().unwrap_or_default(),
            phase: ContainerPhase::Waiting {
                reason: reason.to_owned(),
                message: None,
            },
            container_id: None,
        })
        .collect()
}

impl StatusModel {
    /// Builds the status of a pod that no node has taken yet.
    pub fn new(pod: &Pod, qos_class: &str) -> Self {
        let spec = pod.spec.clone().unwrap_or_default();
        let init = spec.init_containers.unwrap_or_default();
        let app_reason = if init.is_empty() {
            "ContainerCreating"
        } else {
            "PodInitializing"
        };
        Self {
            phase: "Pending",
            reason: None,
            message: None,
            start_time: None,
            on_node: false,
            qos_class: qos_class.to_owned(),
            conditions: Vec::new(),
            init_containers: containers_of(&init, "PodInitializing"),
            containers: containers_of(&spec.containers, app_reason),
        }
    }

    /// Sets a condition; its lastTransitionTime changes only when its status does.
    pub fn set_condition(
        &mut self,
        type_: &'static str,
        status: bool,
        reason: Option<&str>,
        message: Option<String>,
    ) {
        let now = crate::meta::now();
        let reason = reason.map(str::to_owned);
        match self
            .conditions
            .iter_mut()
            .find(|condition| condition.type_ == type_)
        {
            Some(condition) => {
                if condition.status != status {
                    condition.last_transition = now;
                }
                condition.status = status;
                condition.reason = reason;
                condition.message = message;
            }
            None => self.conditions.push(Condition {
                type_,
                status,
                reason,
                message,
                last_transition: now,
            }),
        }
    }

    pub fn container_mut(&mut self, name: &str) -> Option<&mut ContainerModel> {
        self.init_containers
            .iter_mut()
            .chain(self.containers.iter_mut())
            .find(|container| container.name == name)
    }

    pub fn container(&self, name: &str) -> Option<&ContainerModel> {
        self.init_containers
            .iter()
            .chain(self.containers.iter())
            .find(|container| container.name == name)
    }

    /// Sets `ContainersReady` and `Ready` from the app containers' states.
    pub fn update_readiness(&mut self) {
        let terminal = self.phase == "Succeeded" || self.phase == "Failed";
        let unready: Vec<&str> = self
            .containers
            .iter()
            .filter(|container| !container.is_running())
            .map(|container| container.name.as_str())
            .collect();
        let (ready, reason, message) = if terminal {
            (false, Some("PodCompleted"), None)
        } else if unready.is_empty() {
            (true, None, None)
        } else {
            let message = format!("containers with unready status: [{}]", unready.join(" "));
            (false, Some("ContainersNotReady"), Some(message))
        };
        self.set_condition("ContainersReady", ready, reason, message.clone());
        self.set_condition("Ready", ready, reason, message);
    }

    /// Sets the phase from the app containers once all have terminated, as for
    /// `restartPolicy: Never`: Succeeded when every one exited 0, else Failed.
    pub fn settle_phase(&mut self) {
        let all_terminated = self.containers.iter().all(ContainerModel::is_terminated);
        if all_terminated {
            let all_succeeded = self.containers.iter().all(|container| {
                matches!(
                    container.phase,
                    ContainerPhase::Terminated { exit_code: 0, .. }
                )
            });
            self.phase = if all_succeeded { "Succeeded" } else { "Failed" };
        } else if self.containers.iter().any(ContainerModel::is_running) {
            self.phase = "Running";
        }
    }

    pub fn to_status(&self) -> PodStatus {
        let conditions = self
            .conditions
            .iter()
            .map(|condition| PodCondition {
                type_: condition.type_.to_owned(),
                status: if condition.status { "True" } else { "False" }.to_owned(),
                reason: condition.reason.clone(),
                message: condition.message.clone(),
                last_transition_time: Some(Time(condition.last_transition)),
                last_probe_time: None,
                observed_generation: None,
            })
            .collect::<Vec<_>>();
        let with_ip = |ip: &str| self.on_node.then(|| ip.to_owned());
        PodStatus {
            phase: Some(self.phase.to_owned()),
            reason: self.reason.clone(),
            message: self.message.clone(),
            start_time: self.start_time.map(Time),
            conditions: (!conditions.is_empty()).then_some(conditions),
            host_ip: with_ip(POD_IP),
            host_ips: self.on_node.then(|| {
                vec![HostIP {
                    ip: POD_IP.to_owned(),
                }]
            }),
            pod_ip: with_ip(POD_IP),
            pod_ips: self.on_node.then(|| {
                vec![PodIP {
                    ip: POD_IP.to_owned(),
                }]
            }),
            qos_class: Some(self.qos_class.clone()),
            init_container_statuses: (self.on_node && !self.init_containers.is_empty()).then(
                || {
                    self.init_containers
                        .iter()
                        .map(ContainerModel::to_status)
                        .collect()
                },
            ),
            container_statuses: self.on_node.then(|| {
                self.containers
                    .iter()
                    .map(ContainerModel::to_status)
                    .collect()
            }),
            ..PodStatus::default()
        }
    }
}
