//! Execution status: setup, the app's own program, and how it ended.
//!
//! The rule every backend follows: [`ExecutionState::Exited`] only when the workload's own exit
//! code 0 was seen. When the outcome is unknown the state is [`ExecutionState::Lost`], never a
//! success.

use crate::{
    error::{code_name, ErrorKind},
    ErrorCode, KeyValue, Timestamp,
};
use abi_stable::{
    nonexhaustive_enum::NonExhaustive,
    std_types::{ROption, RString, RVec},
    StableAbi,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A step of setting up the environment before the app's own program starts.
#[non_exhaustive]
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[sabi(kind(WithNonExhaustive(size = [u32; 1], traits(Debug, Clone, PartialEq, Eq))))]
pub enum SetupPhaseKind {
    /// Waiting for a slot (a concurrency cap, a queue).
    Queued,
    /// Fetching, verifying and unpacking the package.
    StagingPackage,
    /// Creating the virtual environment and installing dependencies.
    InstallingDependencies,
    /// Waiting for the platform to place the workload (a Kubernetes scheduler).
    Scheduling,
    /// Pulling the container image.
    PullingImage,
    /// Starting the workload's containers or processes.
    Starting,
}

/// [`SetupPhaseKind`] in its boundary form; a minor version may add phases.
pub type SetupPhase = SetupPhaseKind_NE;

impl SetupPhaseKind {
    /// Returns the machine-readable name, for example `installing_dependencies`.
    pub fn as_str(self) -> &'static str {
        match self {
            SetupPhaseKind::Queued => "queued",
            SetupPhaseKind::StagingPackage => "staging_package",
            SetupPhaseKind::InstallingDependencies => "installing_dependencies",
            SetupPhaseKind::Scheduling => "scheduling",
            SetupPhaseKind::PullingImage => "pulling_image",
            SetupPhaseKind::Starting => "starting",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|phase| phase.as_str() == name)
    }

    const ALL: [SetupPhaseKind; 6] = [
        SetupPhaseKind::Queued,
        SetupPhaseKind::StagingPackage,
        SetupPhaseKind::InstallingDependencies,
        SetupPhaseKind::Scheduling,
        SetupPhaseKind::PullingImage,
        SetupPhaseKind::Starting,
    ];
}

/// The side of the execution a failure came from.
#[non_exhaustive]
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[sabi(kind(WithNonExhaustive(size = [u32; 1], traits(Debug, Clone, PartialEq, Eq))))]
pub enum FailureStageKind {
    /// Setting up the app failed: the package, the virtual environment, a dependency install.
    Setup,
    /// The platform failed around the app: an image pull, scheduling, an eviction, the plugin.
    Platform,
}

/// [`FailureStageKind`] in its boundary form.
pub type FailureStage = FailureStageKind_NE;

impl FailureStageKind {
    /// Returns the machine-readable name: `setup` or `platform`.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureStageKind::Setup => "setup",
            FailureStageKind::Platform => "platform",
        }
    }
}

/// The state of an execution.
#[non_exhaustive]
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
#[sabi(kind(WithNonExhaustive(size = [usize; 10], traits(Debug, Clone, PartialEq))))]
pub enum ExecutionState {
    /// Setting up: the app's own program has not started yet.
    Preparing {
        /// The current setup step.
        phase: SetupPhase,
    },
    /// The app's own program runs.
    Running,
    /// The app's program exited with code 0. Terminal.
    Exited,
    /// The app's program ended with a non-zero code, was killed by a signal, or was killed by the
    /// platform (`OOMKilled`). Terminal.
    Crashed {
        /// The exit code, when the program exited.
        exit_code: ROption<i32>,
        /// The signal that killed the program, when one did.
        signal: ROption<i32>,
        /// The platform's reason, such as `OOMKilled`.
        reason: ROption<RString>,
    },
    /// Stopped on request, whatever exit code the dying workload produced. Terminal.
    Cancelled {
        /// Whether it had to be killed because the grace period ran out (or kill was requested).
        forced: bool,
    },
    /// Stopped because the spec's timeout ran out. Terminal.
    TimedOut {
        /// Whether it had to be killed because the grace period ran out.
        forced: bool,
    },
    /// A failure before or around the app's program. Terminal.
    Failed {
        /// The kind of failure.
        code: ErrorCode,
        /// Whether setup or the platform failed.
        stage: FailureStage,
        /// The failure, with the platform's own message.
        message: RString,
        /// Whether running the same spec again could succeed.
        retryable: bool,
    },
    /// The backend can no longer see the workload; its outcome is unknown. Terminal.
    Lost {
        /// The reason the backend lost track of it.
        message: RString,
    },
}

impl ExecutionState {
    /// Creates [`ExecutionState::Preparing`].
    pub fn preparing(phase: SetupPhaseKind) -> Self {
        ExecutionState::Preparing { phase: NonExhaustive::new(phase) }
    }

    /// Creates [`ExecutionState::Crashed`] for a program that exited with `code`.
    pub fn crashed_with_code(code: i32) -> Self {
        ExecutionState::Crashed { exit_code: ROption::RSome(code), signal: ROption::RNone, reason: ROption::RNone }
    }

    /// Creates [`ExecutionState::Crashed`] for a program killed by `signal`.
    pub fn crashed_by_signal(signal: i32) -> Self {
        ExecutionState::Crashed { exit_code: ROption::RNone, signal: ROption::RSome(signal), reason: ROption::RNone }
    }

    /// Creates [`ExecutionState::Failed`].
    pub fn failed(kind: ErrorKind, stage: FailureStageKind, message: impl Into<String>, retryable: bool) -> Self {
        ExecutionState::Failed {
            code: kind.code(),
            stage: NonExhaustive::new(stage),
            message: message.into().into(),
            retryable,
        }
    }

    /// Creates [`ExecutionState::Lost`].
    pub fn lost(message: impl Into<String>) -> Self {
        ExecutionState::Lost { message: message.into().into() }
    }

    /// Tells whether no further state can follow.
    pub fn is_terminal(&self) -> bool {
        !matches!(self, ExecutionState::Preparing { .. } | ExecutionState::Running)
    }

    /// Returns the machine-readable name: `preparing`, `running`, `exited`, `crashed`, `cancelled`,
    /// `timed_out`, `failed` or `lost`.
    pub fn name(&self) -> &'static str {
        match self {
            ExecutionState::Preparing { .. } => "preparing",
            ExecutionState::Running => "running",
            ExecutionState::Exited => "exited",
            ExecutionState::Crashed { .. } => "crashed",
            ExecutionState::Cancelled { .. } => "cancelled",
            ExecutionState::TimedOut { .. } => "timed_out",
            ExecutionState::Failed { .. } => "failed",
            ExecutionState::Lost { .. } => "lost",
        }
    }
}

/// The status of an execution: its state, its times and backend-specific metadata.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct ExecutionStatus {
    /// The state, in its boundary form.
    pub state: ExecutionState_NE,
    /// When the backend accepted the execution.
    pub started_at: ROption<Timestamp>,
    /// When the execution reached a terminal state.
    pub ended_at: ROption<Timestamp>,
    /// Backend-specific details, such as the process id or the pod name.
    pub metadata: RVec<KeyValue>,
}

impl ExecutionStatus {
    /// Creates a status with no times and no metadata.
    pub fn new(state: ExecutionState) -> Self {
        Self { state: NonExhaustive::new(state), started_at: ROption::RNone, ended_at: ROption::RNone, metadata: RVec::new() }
    }

    /// Returns the state, or `None` for a state added in a newer contract version.
    pub fn state(&self) -> Option<&ExecutionState> {
        self.state.as_enum().ok()
    }

    /// Tells whether the execution has ended. A state this build does not know counts as ended,
    /// since only terminal states may be added in minor versions.
    pub fn is_terminal(&self) -> bool {
        self.state().is_none_or(ExecutionState::is_terminal)
    }

    /// Returns the machine-readable name of the state, or `unknown` for a state this build does
    /// not know.
    pub fn name(&self) -> &'static str {
        self.state().map_or("unknown", ExecutionState::name)
    }

    /// Sets the start time.
    pub fn started(mut self, at: Option<Timestamp>) -> Self {
        self.started_at = at.into();
        self
    }

    /// Sets the end time.
    pub fn ended(mut self, at: Option<Timestamp>) -> Self {
        self.ended_at = at.into();
        self
    }

    /// Adds a metadata entry.
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.push(KeyValue::new(key, value));
        self
    }
}

/// JSON form of [`ExecutionStatus`]: the state name under `state`, its fields beside it.
#[derive(Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum StateJson {
    Preparing { phase: String },
    Running,
    Exited,
    Crashed {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exit_code: Option<i32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signal: Option<i32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    Cancelled { forced: bool },
    TimedOut { forced: bool },
    Failed { code: String, stage: String, message: String, retryable: bool },
    Lost { message: String },
    Unknown,
}

#[derive(Serialize, Deserialize)]
struct StatusJson {
    #[serde(flatten)]
    state: StateJson,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    started_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ended_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    metadata: BTreeMap<String, String>,
}

fn state_to_json(state: Option<&ExecutionState>) -> StateJson {
    let Some(state) = state else { return StateJson::Unknown };
    match state {
        ExecutionState::Preparing { phase } => {
            StateJson::Preparing { phase: phase.as_enum().map_or("unknown", |phase| phase.as_str()).to_string() }
        }
        ExecutionState::Running => StateJson::Running,
        ExecutionState::Exited => StateJson::Exited,
        ExecutionState::Crashed { exit_code, signal, reason } => StateJson::Crashed {
            exit_code: exit_code.into_option(),
            signal: signal.into_option(),
            reason: reason.as_ref().map(|reason| reason.to_string()).into_option(),
        },
        ExecutionState::Cancelled { forced } => StateJson::Cancelled { forced: *forced },
        ExecutionState::TimedOut { forced } => StateJson::TimedOut { forced: *forced },
        ExecutionState::Failed { code, stage, message, retryable } => StateJson::Failed {
            code: code_name(code).to_string(),
            stage: stage.as_enum().map_or("unknown", |stage| stage.as_str()).to_string(),
            message: message.to_string(),
            retryable: *retryable,
        },
        ExecutionState::Lost { message } => StateJson::Lost { message: message.to_string() },
    }
}

fn state_from_json(state: StateJson) -> Result<ExecutionState, String> {
    Ok(match state {
        StateJson::Preparing { phase } => ExecutionState::preparing(
            SetupPhaseKind::parse(&phase).ok_or_else(|| format!("unknown setup phase `{phase}`"))?,
        ),
        StateJson::Running => ExecutionState::Running,
        StateJson::Exited => ExecutionState::Exited,
        StateJson::Crashed { exit_code, signal, reason } => ExecutionState::Crashed {
            exit_code: exit_code.into(),
            signal: signal.into(),
            reason: reason.map(RString::from).into(),
        },
        StateJson::Cancelled { forced } => ExecutionState::Cancelled { forced },
        StateJson::TimedOut { forced } => ExecutionState::TimedOut { forced },
        StateJson::Failed { code, stage, message, retryable } => {
            let kind = ErrorKind::parse(&code).ok_or_else(|| format!("unknown error code `{code}`"))?;
            let stage = match stage.as_str() {
                "setup" => FailureStageKind::Setup,
                "platform" => FailureStageKind::Platform,
                other => return Err(format!("unknown failure stage `{other}`")),
            };
            ExecutionState::failed(kind, stage, message, retryable)
        }
        StateJson::Lost { message } => ExecutionState::lost(message),
        StateJson::Unknown => return Err("state `unknown` cannot be read back".to_string()),
    })
}

impl Serialize for ExecutionStatus {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        StatusJson {
            state: state_to_json(self.state()),
            started_at: self.started_at.into_option(),
            ended_at: self.ended_at.into_option(),
            metadata: self.metadata.iter().map(|pair| (pair.key.to_string(), pair.value.to_string())).collect(),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for ExecutionStatus {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let json = StatusJson::deserialize(deserializer)?;
        let state = state_from_json(json.state).map_err(serde::de::Error::custom)?;
        let mut status = ExecutionStatus::new(state).started(json.started_at).ended(json.ended_at);
        for (key, value) in json.metadata {
            status.metadata.push(KeyValue::new(key, value));
        }
        Ok(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_state() -> Vec<ExecutionState> {
        vec![
            ExecutionState::preparing(SetupPhaseKind::InstallingDependencies),
            ExecutionState::Running,
            ExecutionState::Exited,
            ExecutionState::crashed_with_code(138),
            ExecutionState::crashed_by_signal(11),
            ExecutionState::Crashed {
                exit_code: ROption::RSome(0),
                signal: ROption::RNone,
                reason: ROption::RSome("OOMKilled".into()),
            },
            ExecutionState::Cancelled { forced: true },
            ExecutionState::TimedOut { forced: false },
            ExecutionState::failed(ErrorKind::InvalidPackage, FailureStageKind::Setup, "bad", false),
            ExecutionState::lost("pod vanished"),
        ]
    }

    #[test]
    fn status_round_trips_through_json() {
        for state in every_state() {
            let status = ExecutionStatus::new(state)
                .started(Some(Timestamp { unix_nanos: 1 }))
                .ended(Some(Timestamp { unix_nanos: 2 }))
                .with_metadata("pid", "42");
            let json = serde_json::to_string(&status).unwrap();
            let back: ExecutionStatus = serde_json::from_str(&json).unwrap();
            assert_eq!(back, status, "{json}");
        }
    }

    #[test]
    fn only_preparing_and_running_are_not_terminal() {
        let open: Vec<_> = every_state().into_iter().filter(|state| !state.is_terminal()).map(|s| s.name()).collect();
        assert_eq!(open, ["preparing", "running"]);
    }

    #[test]
    fn crashed_json_names_signal() {
        let json = serde_json::to_value(ExecutionStatus::new(ExecutionState::crashed_by_signal(9))).unwrap();
        assert_eq!(json["state"], "crashed");
        assert_eq!(json["signal"], 9);
        assert!(json.get("exit_code").is_none(), "{json}");
    }
}
