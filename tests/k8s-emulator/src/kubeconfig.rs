//! The kubeconfig file that points a client at the emulator: plain HTTP on loopback, a dummy
//! bearer token (the emulator accepts any credentials), and a context with a default namespace.

use std::path::Path;

/// The name of the cluster, user and context in the generated file.
pub const CONTEXT_NAME: &str = "k8s-emulator";

pub fn render(server_url: &str, namespace: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: {CONTEXT_NAME}
  cluster:
    server: {server_url}
users:
- name: {CONTEXT_NAME}
  user:
    token: k8s-emulator-token
contexts:
- name: {CONTEXT_NAME}
  context:
    cluster: {CONTEXT_NAME}
    user: {CONTEXT_NAME}
    namespace: {namespace}
current-context: {CONTEXT_NAME}
preferences: {{}}
"
    )
}

pub fn write(path: &Path, server_url: &str, namespace: &str) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, render(server_url, namespace))
}
