//! Fault injection: failures a test arms before or during a run, and the registry that hands
//! them to the API routes and the fake kubelet.
//!
//! A fault stays armed until it is removed. `times` limits how often it fires (each request, or
//! each pod it is applied to, counts once); an exhausted fault stays listed but fires no more.
//! A pod-level fault that holds a pod back (unschedulable, image pull) releases that pod when
//! the fault is removed.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::selectors::LabelSelector;

/// Which pods a pod-level fault applies to; an empty target matches every pod.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PodTarget {
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub name_prefix: Option<String>,
    /// A label selector in the API's string form, such as `app=tower,run in (a,b)`.
    pub label_selector: Option<String>,
}

impl PodTarget {
    /// Matches every pod.
    pub fn any() -> Self {
        Self::default()
    }

    /// Matches the pod with this namespace and name.
    pub fn pod(namespace: &str, name: &str) -> Self {
        Self {
            namespace: Some(namespace.into()),
            name: Some(name.into()),
            ..Self::default()
        }
    }

    /// Matches pods whose labels satisfy `selector`.
    pub fn labels(selector: &str) -> Self {
        Self {
            label_selector: Some(selector.into()),
            ..Self::default()
        }
    }

    pub fn matches(&self, pod: &Value) -> bool {
        let metadata = &pod["metadata"];
        let name = metadata["name"].as_str().unwrap_or("");
        let namespace_matches = self
            .namespace
            .as_deref()
            .is_none_or(|ns| metadata["namespace"].as_str() == Some(ns));
        let name_matches = self.name.as_deref().is_none_or(|wanted| name == wanted);
        let prefix_matches = self
            .name_prefix
            .as_deref()
            .is_none_or(|p| name.starts_with(p));
        let labels_match = self.label_selector.as_deref().is_none_or(|selector| {
            LabelSelector::parse(selector).is_ok_and(|parsed| parsed.matches(pod))
        });
        namespace_matches && name_matches && prefix_matches && labels_match
    }
}

/// A failure to inject. Durations are in milliseconds. In JSON the variant is the `type` field
/// in camelCase (`imagePull`, `apiError`, ...) and the other fields are camelCase too.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum Fault {
    /// Pulling the image fails: the container waits with `ErrImagePull`, then
    /// `ImagePullBackOff`, retrying until the fault is removed.
    ImagePull {
        #[serde(default)]
        pods: PodTarget,
        /// Only this container; every container of the pod when unset.
        #[serde(default)]
        container: Option<String>,
        /// Replaces the registry error in the waiting message.
        #[serde(default)]
        message: Option<String>,
    },
    /// The scheduler finds no node: `PodScheduled` is False with reason `Unschedulable`.
    Unschedulable {
        #[serde(default)]
        pods: PodTarget,
        #[serde(default)]
        message: Option<String>,
    },
    /// The container is killed with SIGKILL this long after it starts, and reported as
    /// `OOMKilled` with exit code 137.
    OomKill {
        #[serde(default)]
        pods: PodTarget,
        #[serde(default)]
        container: Option<String>,
        #[serde(default)]
        after_millis: u64,
    },
    /// The kubelet evicts the pod this long after its first container starts: every container
    /// is killed and the pod fails with reason `Evicted`.
    Evict {
        #[serde(default)]
        pods: PodTarget,
        #[serde(default)]
        after_millis: u64,
        #[serde(default)]
        message: Option<String>,
    },
    /// The container waits in `ContainerCreating` this long before it starts.
    StartDelay {
        #[serde(default)]
        pods: PodTarget,
        #[serde(default)]
        container: Option<String>,
        delay_millis: u64,
    },
    /// A `follow=true` log stream ends after this many lines although the container still
    /// runs; with `abort` the connection is cut instead of ended cleanly. Fires once unless
    /// `times` says otherwise.
    BrokenLogStream {
        #[serde(default)]
        pods: PodTarget,
        #[serde(default)]
        container: Option<String>,
        after_lines: u64,
        #[serde(default)]
        abort: bool,
    },
    /// A watch request fails with 410 Gone: an `ERROR` event carrying an `Expired` Status (the
    /// API server's answer for a compacted resourceVersion), or with `http` an HTTP 410 response.
    /// Fires once unless `times` says otherwise.
    WatchGone {
        /// The plural resource, such as `pods`; any resource when unset.
        #[serde(default)]
        resource: Option<String>,
        #[serde(default)]
        http: bool,
    },
    /// Requests with this verb and resource fail with `code` (500 unless set). `*` matches any
    /// verb or resource; a subresource is written `pods/log`.
    ApiError {
        verb: String,
        resource: String,
        #[serde(default = "default_error_code")]
        code: u16,
        #[serde(default)]
        message: Option<String>,
    },
    /// Requests with this verb and resource fail with 403 Forbidden, naming `user`
    /// (`system:serviceaccount:default:tower-host` unless set).
    Forbidden {
        verb: String,
        resource: String,
        #[serde(default)]
        user: Option<String>,
    },
}

fn default_error_code() -> u16 {
    500
}

/// The user a Forbidden fault names unless it sets one.
pub const DEFAULT_FORBIDDEN_USER: &str = "system:serviceaccount:default:tower-host";

impl Fault {
    /// How often the fault fires unless the request says: once for broken streams, else always.
    fn default_times(&self) -> Option<u32> {
        match self {
            Fault::BrokenLogStream { .. } | Fault::WatchGone { .. } => Some(1),
            _ => None,
        }
    }
}

/// An armed fault as the control API lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActiveFault {
    pub id: u64,
    #[serde(flatten)]
    pub fault: Fault,
    /// How many more times it fires; unlimited when unset.
    pub remaining: Option<u32>,
    /// How many times it fired.
    pub fired: u32,
}

/// The JSON body of `POST /_emulator/faults`: a fault plus an optional `times`.
#[derive(Clone, Debug, Deserialize)]
pub struct FaultRequest {
    #[serde(flatten)]
    pub fault: Fault,
    #[serde(default)]
    pub times: Option<u32>,
}

#[derive(Default)]
pub struct FaultRegistry {
    next_id: u64,
    active: Vec<ActiveFault>,
}

impl FaultRegistry {
    pub fn inject(&mut self, fault: Fault, times: Option<u32>) -> u64 {
        self.next_id += 1;
        let remaining = times.or_else(|| fault.default_times());
        self.active.push(ActiveFault {
            id: self.next_id,
            fault,
            remaining,
            fired: 0,
        });
        self.next_id
    }

    pub fn remove(&mut self, id: u64) -> bool {
        let before = self.active.len();
        self.active.retain(|fault| fault.id != id);
        self.active.len() != before
    }

    pub fn clear(&mut self) {
        self.active.clear();
    }

    pub fn list(&self) -> Vec<ActiveFault> {
        self.active.clone()
    }

    pub fn is_active(&self, id: u64) -> bool {
        self.active.iter().any(|fault| fault.id == id)
    }

    /// Fires the first armed fault that `matches` accepts and returns it with its id.
    pub fn fire(&mut self, matches: impl Fn(&Fault) -> bool) -> Option<(u64, Fault)> {
        let entry = self
            .active
            .iter_mut()
            .find(|entry| entry.remaining != Some(0) && matches(&entry.fault))?;
        entry.fired += 1;
        if let Some(remaining) = entry.remaining.as_mut() {
            *remaining -= 1;
        }
        Some((entry.id, entry.fault.clone()))
    }
}

/// Whether a fault's verb or resource pattern accepts a request's.
pub fn pattern_matches(pattern: &str, value: &str) -> bool {
    pattern == "*" || pattern == value
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fault_json_round_trip() {
        let request: FaultRequest = serde_json::from_value(json!({
            "type": "apiError", "verb": "create", "resource": "pods", "code": 503, "times": 2
        }))
        .unwrap();
        assert_eq!(request.times, Some(2));
        assert_eq!(
            request.fault,
            Fault::ApiError {
                verb: "create".into(),
                resource: "pods".into(),
                code: 503,
                message: None
            }
        );
        let request: FaultRequest = serde_json::from_value(json!({
            "type": "oomKill", "pods": {"labelSelector": "app=x"}, "afterMillis": 20
        }))
        .unwrap();
        assert!(matches!(
            request.fault,
            Fault::OomKill {
                after_millis: 20,
                ..
            }
        ));
    }

    #[test]
    fn exhausted_fault_stays_listed_but_does_not_fire() {
        let mut registry = FaultRegistry::default();
        let id = registry.inject(
            Fault::WatchGone {
                resource: None,
                http: false,
            },
            None,
        );
        assert!(registry.fire(|_| true).is_some());
        assert!(registry.fire(|_| true).is_none());
        assert!(registry.is_active(id));
        assert!(registry.remove(id));
        assert!(!registry.is_active(id));
    }
}
