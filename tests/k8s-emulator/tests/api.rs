//! API behaviour through the kube client: watch semantics, garbage collection, patches,
//! services, selectors, discovery, and the binary.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use serde_json::json;
use tower_k8s_emulator::{Emulator, EmulatorOptions};

fn secret(name: &str) -> Secret {
    serde_json::from_value(json!({"metadata": {"name": name}, "stringData": {"key": "value"}}))
        .unwrap()
}

#[tokio::test]
async fn watch_from_old_resource_version_is_gone() {
    let options = EmulatorOptions {
        history_limit: 3,
        ..EmulatorOptions::default()
    };
    let emulator = Emulator::start_with(options).unwrap();
    let client = client(&emulator).await;
    let secrets: Api<Secret> = Api::namespaced(client, NAMESPACE);
    let first = secrets
        .create(&PostParams::default(), &secret("s0"))
        .await
        .unwrap();
    for index in 1..6 {
        secrets
            .create(&PostParams::default(), &secret(&format!("s{index}")))
            .await
            .unwrap();
    }
    let old_version = first.metadata.resource_version.unwrap();
    let mut stream = secrets
        .watch(&WatchParams::default(), &old_version)
        .await
        .expect("watch starts")
        .boxed();
    let event = tokio::time::timeout(WAIT, stream.try_next())
        .await
        .unwrap()
        .unwrap();
    let Some(WatchEvent::Error(status)) = event else {
        panic!("expected an ERROR event, got {event:?}");
    };
    assert_eq!(status.code, 410);
    assert_eq!(status.reason, "Expired");
    assert!(
        status.message.starts_with("too old resource version: "),
        "{}",
        status.message
    );
}

#[tokio::test]
async fn watch_replays_changes_after_resource_version() {
    let emulator = Emulator::start();
    let secrets: Api<Secret> = Api::namespaced(client(&emulator).await, NAMESPACE);
    let created = secrets
        .create(&PostParams::default(), &secret("a"))
        .await
        .unwrap();
    let version = created.metadata.resource_version.clone().unwrap();
    let patch = json!({"metadata": {"labels": {"x": "1"}}});
    secrets
        .patch("a", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    secrets.delete("a", &DeleteParams::default()).await.unwrap();

    let mut stream = secrets
        .watch(&WatchParams::default().timeout(5), &version)
        .await
        .unwrap()
        .boxed();
    let mut types = Vec::new();
    while types.len() < 2 {
        match tokio::time::timeout(WAIT, stream.try_next())
            .await
            .unwrap()
            .unwrap()
        {
            Some(WatchEvent::Modified(s)) => {
                assert_eq!(s.metadata.labels.unwrap()["x"], "1");
                types.push("MODIFIED");
            }
            Some(WatchEvent::Deleted(_)) => types.push("DELETED"),
            Some(WatchEvent::Bookmark(_)) => {}
            other => panic!("unexpected event {other:?}"),
        }
    }
    assert_eq!(types, ["MODIFIED", "DELETED"]);
}

#[tokio::test]
async fn watch_sends_bookmarks() {
    let options = EmulatorOptions {
        bookmark_interval: Duration::from_millis(100),
        ..EmulatorOptions::default()
    };
    let emulator = Emulator::start_with(options).unwrap();
    let secrets: Api<Secret> = Api::namespaced(client(&emulator).await, NAMESPACE);
    let mut stream = secrets
        .watch(&WatchParams::default().timeout(5), "0")
        .await
        .unwrap()
        .boxed();
    let event = tokio::time::timeout(WAIT, stream.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    match event {
        WatchEvent::Bookmark(bookmark) => assert!(!bookmark.metadata.resource_version.is_empty()),
        other => panic!("expected a bookmark, got {other:?}"),
    }
}

#[tokio::test]
async fn watch_label_selector_reports_objects_leaving_it() {
    let emulator = Emulator::start();
    let secrets: Api<Secret> = Api::namespaced(client(&emulator).await, NAMESPACE);
    let mut labelled = secret("labelled");
    labelled.metadata.labels = Some([("run".to_owned(), "1".to_owned())].into());
    secrets
        .create(&PostParams::default(), &labelled)
        .await
        .unwrap();
    let params = WatchParams::default()
        .labels("run=1")
        .timeout(5)
        .disable_bookmarks();
    let mut stream = secrets.watch(&params, "0").await.unwrap().boxed();
    assert!(matches!(
        stream.try_next().await.unwrap(),
        Some(WatchEvent::Added(_))
    ));
    let patch = json!({"metadata": {"labels": {"run": "2"}}});
    secrets
        .patch("labelled", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let event = tokio::time::timeout(WAIT, stream.try_next())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(event, Some(WatchEvent::Deleted(_))), "{event:?}");
}

#[tokio::test]
async fn watch_ends_at_timeout() {
    let emulator = Emulator::start();
    let secrets: Api<Secret> = Api::namespaced(client(&emulator).await, NAMESPACE);
    let mut stream = secrets
        .watch(&WatchParams::default().timeout(1).disable_bookmarks(), "0")
        .await
        .unwrap()
        .boxed();
    let end = tokio::time::timeout(Duration::from_secs(5), stream.try_next())
        .await
        .expect("the watch ends");
    assert!(end.unwrap().is_none());
}

#[tokio::test]
async fn list_filters_by_label_selector() {
    let emulator = Emulator::start();
    let api = pods(&emulator).await;
    for (name, run) in [("a", "1"), ("b", "2"), ("c", "3")] {
        let mut manifest = pod_manifest(name, &["true"]);
        manifest["metadata"]["labels"]["run"] = json!(run);
        api.create(&PostParams::default(), &pod_from(manifest))
            .await
            .unwrap();
    }
    let names = |list: kube::api::ObjectList<Pod>| {
        list.items
            .into_iter()
            .map(|p| p.metadata.name.unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(
            api.list(&ListParams::default().labels("run=2"))
                .await
                .unwrap()
        ),
        ["b"]
    );
    assert_eq!(
        names(
            api.list(&ListParams::default().labels("run in (1,3)"))
                .await
                .unwrap()
        ),
        ["a", "c"]
    );
    assert_eq!(
        names(
            api.list(&ListParams::default().labels("run notin (1),app=emulator-test"))
                .await
                .unwrap()
        ),
        ["b", "c"]
    );
    assert_eq!(
        names(
            api.list(&ListParams::default().fields("metadata.name=c"))
                .await
                .unwrap()
        ),
        ["c"]
    );
    let page = api.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(page.items.len(), 2);
    let rest = api
        .list(
            &ListParams::default()
                .limit(2)
                .continue_token(page.metadata.continue_.as_deref().unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(names(rest), ["c"]);
}

#[tokio::test]
async fn deleting_pod_collects_owned_secret_and_service() {
    let emulator = Emulator::start();
    let client = client(&emulator).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    let services: Api<Service> = Api::namespaced(client, NAMESPACE);
    secrets
        .create(&PostParams::default(), &secret("owned"))
        .await
        .unwrap();
    secrets
        .create(&PostParams::default(), &secret("unowned"))
        .await
        .unwrap();
    let pod = pods
        .create(
            &PostParams::default(),
            &pod_from(pod_manifest("owner", &["sleep", "30"])),
        )
        .await
        .unwrap();
    let owner = json!({"apiVersion": "v1", "kind": "Pod", "name": "owner", "uid": pod.metadata.uid.clone().unwrap(), "controller": true});
    let patch = json!({"metadata": {"ownerReferences": [owner]}});
    let patched = secrets
        .patch("owned", &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .unwrap();
    assert_eq!(patched.metadata.owner_references.unwrap()[0].name, "owner");
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": "owned-svc", "ownerReferences": [owner]},
        "spec": {"selector": {"app": "emulator-test"}, "ports": [{"port": 8080}]},
    }))
    .unwrap();
    services
        .create(&PostParams::default(), &service)
        .await
        .unwrap();

    pods.delete(
        "owner",
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        },
    )
    .await
    .unwrap();
    assert!(secrets.get_opt("owned").await.unwrap().is_none());
    assert!(services.get_opt("owned-svc").await.unwrap().is_none());
    assert!(secrets.get_opt("unowned").await.unwrap().is_some());
}

#[tokio::test]
async fn secret_patches_merge_metadata() {
    let emulator = Emulator::start();
    let secrets: Api<Secret> = Api::namespaced(client(&emulator).await, NAMESPACE);
    let created = secrets
        .create(&PostParams::default(), &secret("patched"))
        .await
        .unwrap();
    assert_eq!(created.data.as_ref().unwrap()["key"].0, b"value");
    assert!(created.string_data.is_none());
    assert_eq!(created.type_.as_deref(), Some("Opaque"));

    let merge = json!({"metadata": {"labels": {"a": "1", "b": "2"}}});
    secrets
        .patch("patched", &PatchParams::default(), &Patch::Merge(&merge))
        .await
        .unwrap();
    let strategic =
        json!({"metadata": {"labels": {"b": null, "c": "3"}}, "stringData": {"extra": "x"}});
    let patched = secrets
        .patch(
            "patched",
            &PatchParams::default(),
            &Patch::Strategic(&strategic),
        )
        .await
        .unwrap();
    let labels = patched.metadata.labels.unwrap();
    assert_eq!(labels.get("a").map(String::as_str), Some("1"));
    assert_eq!(labels.get("b"), None);
    assert_eq!(labels.get("c").map(String::as_str), Some("3"));
    let data = patched.data.unwrap();
    assert_eq!(data["extra"].0, b"x");
    assert_eq!(data["key"].0, b"value");
    assert_ne!(
        patched.metadata.resource_version,
        created.metadata.resource_version
    );

    let stale = json!({"metadata": {"resourceVersion": created.metadata.resource_version, "labels": {"d": "4"}}});
    let status = api_status(
        secrets
            .patch("patched", &PatchParams::default(), &Patch::Merge(&stale))
            .await
            .unwrap_err(),
    );
    assert_eq!(status.code, 409);
    assert_eq!(status.reason, "Conflict");
}

#[tokio::test]
async fn service_gets_cluster_ip() {
    let emulator = Emulator::start();
    let services: Api<Service> = Api::namespaced(client(&emulator).await, NAMESPACE);
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": "run-svc"},
        "spec": {"selector": {"app": "x"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }))
    .unwrap();
    let created = services
        .create(&PostParams::default(), &service)
        .await
        .unwrap();
    let spec = created.spec.unwrap();
    let ip = spec.cluster_ip.unwrap();
    assert!(ip.starts_with("10.96."), "{ip}");
    assert_eq!(spec.cluster_ips.unwrap(), [ip]);
    assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
    assert_eq!(spec.ports.unwrap()[0].protocol.as_deref(), Some("TCP"));
    let status = services
        .delete("run-svc", &DeleteParams::default())
        .await
        .unwrap();
    assert!(status.is_right());
    let bad: Service = serde_json::from_value(
        json!({"metadata": {"name": "1bad"}, "spec": {"ports": [{"port": 80}]}}),
    )
    .unwrap();
    assert_eq!(
        api_status(
            services
                .create(&PostParams::default(), &bad)
                .await
                .unwrap_err()
        )
        .code,
        422
    );
}

#[tokio::test]
async fn version_and_discovery_answer() {
    let emulator = Emulator::start();
    let client = client(&emulator).await;
    let version = client.apiserver_version().await.expect("version");
    assert_eq!(version.major, "1");
    let resources = client
        .list_core_api_resources("v1")
        .await
        .expect("core resources");
    assert!(resources.resources.iter().any(|r| r.name == "pods/attach"));
    let counts = emulator.request_counts();
    assert_eq!(counts.get("get", "/version"), 1);
    assert_eq!(counts.get("get", "/api/v1"), 1);
}

#[tokio::test]
async fn binary_prints_kubeconfig_and_stops_on_sigterm() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_k8s-emulator"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the binary");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let first = lines.next().unwrap().unwrap();
    let path = first
        .strip_prefix("kubeconfig: ")
        .expect("kubeconfig line")
        .to_owned();
    let second = lines.next().unwrap().unwrap();
    assert!(second.starts_with("server: http://127.0.0.1:"), "{second}");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(second.strip_prefix("server: ").unwrap()));

    let kubeconfig = kube::config::Kubeconfig::read_from(&path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    let client = kube::Client::try_from(config).unwrap();
    assert_eq!(client.default_namespace(), "default");
    client
        .apiserver_version()
        .await
        .expect("the binary serves the API");

    // SAFETY: kill only sends a signal to the child this test started.
    unsafe { libc_kill(child.id() as i32, 15) };
    let waiting = async {
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let status = tokio::time::timeout(WAIT, waiting)
        .await
        .expect("the binary stops on SIGTERM");
    assert!(status.success(), "{status:?}");
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, signal: i32) -> i32;
}
