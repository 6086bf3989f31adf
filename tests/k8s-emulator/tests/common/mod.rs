//! Helpers the emulator's tests share: a kube client for an emulator, pod manifests, and waits
//! on watch streams with bounded time.

#![allow(dead_code)]

use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ContainerState, ContainerStateTerminated, Pod};
use kube::api::{Api, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::{json, Value};
use tower_k8s_emulator::Emulator;

pub const NAMESPACE: &str = "tests";

/// How long a test waits for one expected state before it fails.
pub const WAIT: Duration = Duration::from_secs(20);

/// Builds a client from the emulator's kubeconfig, loaded the way a plugin loads one.
pub async fn client(emulator: &Emulator) -> Client {
    let kubeconfig = Kubeconfig::read_from(emulator.kubeconfig_path()).expect("kubeconfig parses");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig loads");
    Client::try_from(config).expect("client builds")
}

pub async fn pods(emulator: &Emulator) -> Api<Pod> {
    Api::namespaced(client(emulator).await, NAMESPACE)
}

/// Returns a pod manifest with one container `app` running `command`, never restarted.
pub fn pod_manifest(name: &str, command: &[&str]) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "emulator-test"}},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 5,
            "containers": [{"name": "app", "image": "python:3.12-slim", "command": command}],
        },
    })
}

pub fn pod_from(manifest: Value) -> Pod {
    serde_json::from_value(manifest).expect("manifest is a Pod")
}

/// Watches one pod until `done` accepts it; fails after `WAIT`.
pub async fn wait_for_pod(api: &Api<Pod>, name: &str, done: impl Fn(&Pod) -> bool) -> Pod {
    let watching = async {
        let params = WatchParams::default()
            .fields(&format!("metadata.name={name}"))
            .timeout(60);
        let mut stream = api.watch(&params, "0").await.expect("watch starts").boxed();
        while let Some(event) = stream.try_next().await.expect("watch event") {
            match event {
                WatchEvent::Added(pod) | WatchEvent::Modified(pod) if done(&pod) => return pod,
                WatchEvent::Error(status) => panic!("watch failed: {status:?}"),
                _ => {}
            }
        }
        panic!("watch of pod {name} ended before the expected state");
    };
    tokio::time::timeout(WAIT, watching)
        .await
        .unwrap_or_else(|_| panic!("pod {name} did not reach the expected state"))
}

/// Waits until the pod `name` is gone from the store.
pub async fn wait_for_deleted(api: &Api<Pod>, name: &str) {
    let waiting = async {
        loop {
            if api.get_opt(name).await.expect("get pod").is_none() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(WAIT, waiting)
        .await
        .unwrap_or_else(|_| panic!("pod {name} was not deleted"));
}

fn container_state(pod: &Pod, container: &str) -> Option<ContainerState> {
    let status = pod.status.as_ref()?;
    status
        .container_statuses
        .iter()
        .flatten()
        .chain(status.init_container_statuses.iter().flatten())
        .find(|c| c.name == container)
        .and_then(|c| c.state.clone())
}

pub fn terminated(pod: &Pod, container: &str) -> Option<ContainerStateTerminated> {
    container_state(pod, container)?.terminated
}

pub fn waiting_reason(pod: &Pod, container: &str) -> Option<String> {
    container_state(pod, container)?.waiting?.reason
}

pub fn is_running(pod: &Pod, container: &str) -> bool {
    container_state(pod, container).is_some_and(|state| state.running.is_some())
}

pub fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

pub fn condition<'a>(
    pod: &'a Pod,
    type_: &str,
) -> Option<&'a k8s_openapi::api::core::v1::PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

/// Returns the `Status` of a failed kube call.
pub fn api_status(error: kube::Error) -> kube::core::Status {
    match error {
        kube::Error::Api(status) => *status,
        other => panic!("expected an API error, got {other:?}"),
    }
}
