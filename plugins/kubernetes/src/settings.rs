//! Settings of the Kubernetes backend, read from `[backend.settings]`.

use schemars::JsonSchema;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The default runtime image: Python, bash and uv, published by the uv project.
pub const DEFAULT_IMAGE: &str = "ghcr.io/astral-sh/uv:python3.12-bookworm-slim";

/// Settings of the Kubernetes backend.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Kubeconfig file. Default: kube-rs inference (`KUBECONFIG`, `~/.kube/config`, then the
    /// in-cluster service account).
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context. Default: the current context.
    #[serde(default)]
    pub context: Option<String>,
    /// Namespace of the pods, secrets and services. Default: the kubeconfig context's namespace,
    /// else `default`.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Runtime image; needs `sh`, `head`, `sha256sum`, `tar`, `bash`, `python3` and `uv`.
    #[serde(default = "default_image")]
    pub image: String,
    /// `Always`, `IfNotPresent` or `Never`. Default: the cluster's default for the image.
    #[serde(default)]
    pub image_pull_policy: Option<String>,
    /// Service account of the pods.
    #[serde(default)]
    pub service_account: Option<String>,
    /// Node selector of the pods.
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations of the pods, as Kubernetes JSON objects.
    #[serde(default)]
    pub tolerations: Vec<serde_json::Value>,
    /// Extra labels on every object.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Extra annotations on every pod.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// A strategic merge patch applied to every pod, for anything the other settings do not cover
    /// (security contexts, volumes, sidecars). Checked at startup.
    #[serde(default)]
    pub pod_template_patch: Option<serde_json::Value>,
    /// Prefix of pod names; lowercase letters, digits and `-`.
    #[serde(default = "default_prefix")]
    pub pod_name_prefix: String,
    /// Grace period in seconds when cleanup deletes a pod.
    #[serde(default = "default_delete_grace")]
    pub delete_grace_seconds: u64,
    /// How long in seconds a pod may stay unscheduled before the execution fails.
    #[serde(default = "default_pending")]
    pub pending_timeout_seconds: u64,
    /// Keep finished pods (and their secrets and services) for debugging instead of deleting them
    /// at cleanup.
    #[serde(default)]
    pub keep_finished_pods: bool,
    /// Identifies this host instance in the `tower-host/instance` label, so that several hosts can
    /// share a namespace.
    #[serde(default = "default_instance")]
    pub instance: String,
    /// Extra arguments for every uv command inside the pod, such as `["--index-url", "…"]`.
    #[serde(default)]
    pub uv_args: Vec<String>,
    /// How long in seconds to wait for the end of the log stream after the pod ended.
    #[serde(default = "default_drain")]
    pub log_drain_seconds: u64,
}

fn default_image() -> String {
    DEFAULT_IMAGE.to_string()
}

fn default_prefix() -> String {
    "tower-".to_string()
}

fn default_delete_grace() -> u64 {
    30
}

fn default_pending() -> u64 {
    300
}

fn default_instance() -> String {
    "default".to_string()
}

fn default_drain() -> u64 {
    10
}

impl Settings {
    /// Checks what serde cannot: names that must be valid Kubernetes names.
    pub fn validate(&self) -> Result<(), String> {
        let prefix = &self.pod_name_prefix;
        let valid_prefix = prefix.len() <= 20
            && prefix.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && prefix.chars().next().is_none_or(|c| c.is_ascii_alphanumeric());
        if !valid_prefix {
            return Err(format!(
                "invalid setting `pod_name_prefix` `{prefix}`: use at most 20 lowercase letters, digits and `-`, starting with a letter or digit"
            ));
        }
        if !crate::naming::is_label_value(&self.instance) || self.instance.is_empty() {
            return Err(format!("invalid setting `instance` `{}`: use at most 63 letters, digits, `-`, `_` and `.`", self.instance));
        }
        if let Some(policy) = &self.image_pull_policy {
            if !matches!(policy.as_str(), "Always" | "IfNotPresent" | "Never") {
                return Err(format!("invalid setting `image_pull_policy` `{policy}`: use Always, IfNotPresent or Never"));
            }
        }
        Ok(())
    }
}
