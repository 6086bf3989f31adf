//! Fault injection, through the Rust API and the HTTP control API, observed with the kube
//! client.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::*;
use futures_util::{AsyncReadExt as _, StreamExt, TryStreamExt};
use kube::api::{DeleteParams, LogParams, PostParams, WatchEvent, WatchParams};
use serde_json::{json, Value};
use tower_k8s_emulator::{
    Emulator, Fault, PodTarget, DEFAULT_EVICTION_MESSAGE, DEFAULT_FORBIDDEN_USER,
};

#[tokio::test]
async fn image_pull_fault_backs_off_until_removed() {
    let emulator = Emulator::start();
    let faults = emulator.faults();
    let id = faults.inject(Fault::ImagePull {
        pods: PodTarget::labels("app=emulator-test"),
        container: None,
        message: None,
    });
    let api = pods(&emulator).await;
    api.create(
        &PostParams::default(),
        &pod_from(pod_manifest("pull", &["true"])),
    )
    .await
    .unwrap();

    let pod = wait_for_pod(&api, "pull", |pod| {
        waiting_reason(pod, "app").as_deref() == Some("ErrImagePull")
    })
    .await;
    let waiting = pod.status.unwrap().container_statuses.unwrap()[0]
        .state
        .clone()
        .unwrap()
        .waiting
        .unwrap();
    assert!(waiting
        .message
        .unwrap()
        .starts_with("Failed to pull image \"python:3.12-slim\": "));
    wait_for_pod(&api, "pull", |pod| {
        waiting_reason(pod, "app").as_deref() == Some("ImagePullBackOff")
    })
    .await;
    let status = api_status(api.logs("pull", &LogParams::default()).await.unwrap_err());
    assert_eq!(
        status.message,
        "container \"app\" in pod \"pull\" is waiting to start: trying and failing to pull image"
    );
    assert_eq!(phase(&api.get("pull").await.unwrap()), "Pending");

    assert!(faults.remove(id));
    wait_for_pod(&api, "pull", |pod| phase(pod) == "Succeeded").await;
}

#[tokio::test]
async fn invalid_image_name_waits() {
    let emulator = Emulator::start();
    let api = pods(&emulator).await;
    let mut manifest = pod_manifest("bad-image", &["true"]);
    manifest["spec"]["containers"][0]["image"] = json!("Bad Image:1");
    api.create(&PostParams::default(), &pod_from(manifest))
        .await
        .unwrap();
    let pod = wait_for_pod(&api, "bad-image", |pod| {
        waiting_reason(pod, "app").as_deref() == Some("InvalidImageName")
    })
    .await;
    let waiting = pod.status.unwrap().container_statuses.unwrap()[0]
        .state
        .clone()
        .unwrap()
        .waiting
        .unwrap();
    assert!(waiting
        .message
        .unwrap()
        .contains("invalid reference format"));
}

#[tokio::test]
async fn unschedulable_fault_holds_pod_pending() {
    let emulator = Emulator::start();
    let faults = emulator.faults();
    let id = faults.inject(Fault::Unschedulable {
        pods: PodTarget::pod(NAMESPACE, "stuck"),
        message: None,
    });
    let api = pods(&emulator).await;
    api.create(
        &PostParams::default(),
        &pod_from(pod_manifest("stuck", &["true"])),
    )
    .await
    .unwrap();
    let pod = wait_for_pod(&api, "stuck", |pod| {
        condition(pod, "PodScheduled").is_some()
    })
    .await;
    let scheduled = condition(&pod, "PodScheduled").unwrap();
    assert_eq!(scheduled.status, "False");
    assert_eq!(scheduled.reason.as_deref(), Some("Unschedulable"));
    assert!(scheduled
        .message
        .as_deref()
        .unwrap()
        .starts_with("0/1 nodes are available"));
    assert_eq!(phase(&pod), "Pending");
    assert!(pod.spec.unwrap().node_name.is_none());
    assert_eq!(api.logs("stuck", &LogParams::default()).await.unwrap(), "");

    faults.remove(id);
    wait_for_pod(&api, "stuck", |pod| phase(pod) == "Succeeded").await;
}

#[tokio::test]
async fn oom_fault_kills_container() {
    let emulator = Emulator::start();
    emulator.faults().inject(Fault::OomKill {
        pods: PodTarget::any(),
        container: Some("app".into()),
        after_millis: 200,
    });
    let api = pods(&emulator).await;
    api.create(
        &PostParams::default(),
        &pod_from(pod_manifest("hungry", &["sleep", "30"])),
    )
    .await
    .unwrap();
    let pod = wait_for_pod(&api, "hungry", |pod| phase(pod) == "Failed").await;
    let state = terminated(&pod, "app").unwrap();
    assert_eq!(state.reason.as_deref(), Some("OOMKilled"));
    assert_eq!(state.exit_code, 137);
    assert_eq!(state.signal, Some(9));
}

#[tokio::test]
async fn oom_action_kills_running_container() {
    let emulator = Emulator::start();
    let api = pods(&emulator).await;
    api.create(
        &PostParams::default(),
        &pod_from(pod_manifest("victim", &["sleep", "30"])),
    )
    .await
    .unwrap();
    wait_for_pod(&api, "victim", |pod| is_running(pod, "app")).await;
    assert!(emulator.faults().oom_kill(NAMESPACE, "victim", None));
    let pod = wait_for_pod(&api, "victim", |pod| phase(pod) == "Failed").await;
    assert_eq!(
        terminated(&pod, "app").unwrap().reason.as_deref(),
        Some("OOMKilled")
    );
}

#[tokio::test]
async fn eviction_fails_pod() {
    let emulator = Emulator::start();
    let api = pods(&emulator).await;
    api.create(
        &PostParams::default(),
        &pod_from(pod_manifest("evicted", &["sleep", "30"])),
    )
    .await
    .unwrap();
    wait_for_pod(&api, "evicted", |pod| is_running(pod, "app")).await;
    assert!(emulator.faults().evict(NAMESPACE, "evicted", None));
    let pod = wait_for_pod(&api, "evicted", |pod| phase(pod) == "Failed").await;
    let status = pod.status.clone().unwrap();
    assert_eq!(status.reason.as_deref(), Some("Evicted"));
    assert_eq!(status.message.as_deref(), Some(DEFAULT_EVICTION_MESSAGE));
    assert_eq!(
        condition(&pod, "DisruptionTarget")
            .unwrap()
            .reason
            .as_deref(),
        Some("TerminationByKubelet")
    );
    assert_eq!(terminated(&pod, "app").unwrap().exit_code, 137);
}

#[tokio::test]
async fn eviction_fault_fires_after_start() {
    let emulator = Emulator::start();
    emulator.faults().inject(Fault::Evict {
        pods: PodTarget::any(),
        after_millis: 100,
        message: Some("disk pressure".into()),
    });
    let api = pods(&emulator).await;
    api.create(
        &PostParams::default(),
        &pod_from(pod_manifest("evict-later", &["sleep", "30"])),
    )
    .await
    .unwrap();
    let pod = wait_for_pod(&api, "evict-later", |pod| phase(pod) == "Failed").await;
    assert_eq!(
        pod.status.unwrap().message.as_deref(),
        Some("disk pressure")
    );
}

#[tokio::test]
async fn broken_log_stream_ends_early_once() {
    let emulator = Emulator::start();
    emulator.faults().inject(Fault::BrokenLogStream {
        pods: PodTarget::any(),
        container: None,
        after_lines: 2,
        abort: false,
    });
    let api = pods(&emulator).await;
    let script = "for i in 1 2 3 4; do echo line $i; sleep 0.3; done";
    api.create(
        &PostParams::default(),
        &pod_from(pod_manifest("flaky-log", &["sh", "-c", script])),
    )
    .await
    .unwrap();
    wait_for_pod(&api, "flaky-log", |pod| is_running(pod, "app")).await;

    let params = LogParams {
        follow: true,
        ..LogParams::default()
    };
    let read_all = || async {
        let mut stream = api
            .log_stream("flaky-log", &params)
            .await
            .expect("log stream");
        let mut text = String::new();
        stream.read_to_string(&mut text).await.expect("read");
        text
    };
    let broken = tokio::time::timeout(WAIT, read_all()).await.unwrap();
    assert_eq!(broken, "line 1\nline 2\n");
    assert!(
        is_running(&api.get("flaky-log").await.unwrap(), "app"),
        "the container still runs"
    );
    let whole = tokio::time::timeout(WAIT, read_all()).await.unwrap();
    assert_eq!(whole, "line 1\nline 2\nline 3\nline 4\n");
}

#[tokio::test]
async fn watch_gone_fault_fails_one_watch() {
    let emulator = Emulator::start();
    emulator.faults().inject(Fault::WatchGone {
        resource: Some("pods".into()),
        http: false,
    });
    let api = pods(&emulator).await;
    let mut stream = api
        .watch(&WatchParams::default().timeout(5), "0")
        .await
        .unwrap()
        .boxed();
    match tokio::time::timeout(WAIT, stream.try_next())
        .await
        .unwrap()
        .unwrap()
    {
        Some(WatchEvent::Error(status)) => {
            assert_eq!(status.code, 410);
            assert_eq!(status.reason, "Expired");
        }
        other => panic!("expected an ERROR event, got {other:?}"),
    }
    assert!(tokio::time::timeout(WAIT, stream.try_next())
        .await
        .unwrap()
        .unwrap()
        .is_none());

    emulator.faults().inject(Fault::WatchGone {
        resource: None,
        http: true,
    });
    let error = api
        .watch(&WatchParams::default().timeout(5), "0")
        .await
        .err()
        .expect("HTTP 410");
    assert_eq!(api_status(error).code, 410);
    let mut healthy = api
        .watch(&WatchParams::default().timeout(1).disable_bookmarks(), "0")
        .await
        .unwrap()
        .boxed();
    assert!(tokio::time::timeout(WAIT, healthy.try_next())
        .await
        .unwrap()
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn api_error_fault_fails_counted_requests() {
    let emulator = Emulator::start();
    emulator.faults().inject_times(
        Fault::ApiError {
            verb: "create".into(),
            resource: "pods".into(),
            code: 500,
            message: None,
        },
        2,
    );
    let api = pods(&emulator).await;
    for _ in 0..2 {
        let status = api_status(
            api.create(
                &PostParams::default(),
                &pod_from(pod_manifest("retried", &["true"])),
            )
            .await
            .unwrap_err(),
        );
        assert_eq!(status.code, 500);
        assert_eq!(status.reason, "InternalError");
    }
    api.create(
        &PostParams::default(),
        &pod_from(pod_manifest("retried", &["true"])),
    )
    .await
    .expect("third create succeeds");
    assert_eq!(emulator.request_counts().get("create", "pods"), 3);
    assert_eq!(emulator.faults().list()[0].fired, 2);
}

#[tokio::test]
async fn forbidden_fault_names_verb_resource_and_user() {
    let emulator = Emulator::start();
    emulator.faults().inject(Fault::Forbidden {
        verb: "get".into(),
        resource: "pods/log".into(),
        user: None,
    });
    let api = pods(&emulator).await;
    api.create(
        &PostParams::default(),
        &pod_from(pod_manifest("secretive", &["true"])),
    )
    .await
    .unwrap();
    let status = api_status(
        api.logs("secretive", &LogParams::default())
            .await
            .unwrap_err(),
    );
    assert_eq!(status.code, 403);
    assert_eq!(status.reason, "Forbidden");
    assert_eq!(
        status.message,
        format!("pods \"secretive\" is forbidden: User \"{DEFAULT_FORBIDDEN_USER}\" cannot get resource \"pods/log\" in API group \"\" in the namespace \"tests\"")
    );
}

#[tokio::test]
async fn pod_deleted_behind_back_reaches_watch() {
    let emulator = Emulator::start();
    let api = pods(&emulator).await;
    let created = api
        .create(
            &PostParams::default(),
            &pod_from(pod_manifest("vanishing", &["sleep", "30"])),
        )
        .await
        .unwrap();
    wait_for_pod(&api, "vanishing", |pod| is_running(pod, "app")).await;
    let version = created.metadata.resource_version.unwrap();
    let mut stream = api
        .watch(
            &WatchParams::default()
                .fields("metadata.name=vanishing")
                .timeout(10),
            &version,
        )
        .await
        .unwrap()
        .boxed();
    assert!(emulator.faults().delete_pod(NAMESPACE, "vanishing", 0));
    let deleted = async {
        while let Some(event) = stream.try_next().await.unwrap() {
            if let WatchEvent::Deleted(pod) = event {
                return pod;
            }
        }
        panic!("the watch ended without DELETED");
    };
    let pod = tokio::time::timeout(WAIT, deleted).await.unwrap();
    assert_eq!(pod.metadata.name.as_deref(), Some("vanishing"));
    let count_before = emulator.request_counts().get("delete", "pods");
    assert_eq!(
        count_before, 0,
        "a delete behind the client's back is not an API request"
    );
}

#[tokio::test]
async fn start_delay_holds_container_creating() {
    let emulator = Emulator::start();
    emulator.faults().inject(Fault::StartDelay {
        pods: PodTarget::any(),
        container: Some("app".into()),
        delay_millis: 700,
    });
    let api = pods(&emulator).await;
    let created = Instant::now();
    api.create(
        &PostParams::default(),
        &pod_from(pod_manifest("delayed", &["true"])),
    )
    .await
    .unwrap();
    wait_for_pod(&api, "delayed", |pod| phase(pod) == "Succeeded").await;
    assert!(
        created.elapsed() >= Duration::from_millis(700),
        "{:?}",
        created.elapsed()
    );
}

#[tokio::test]
async fn request_counts_cover_one_execution() {
    let emulator = Emulator::start();
    let api = pods(&emulator).await;
    api.create(
        &PostParams::default(),
        &pod_from(pod_manifest("counted", &["echo", "done"])),
    )
    .await
    .unwrap();
    wait_for_pod(&api, "counted", |pod| phase(pod) == "Succeeded").await;
    api.logs("counted", &LogParams::default()).await.unwrap();
    api.delete("counted", &DeleteParams::default())
        .await
        .unwrap();
    let counts = emulator.request_counts();
    assert_eq!(counts.get("create", "pods"), 1);
    assert_eq!(counts.get("watch", "pods"), 1);
    assert_eq!(counts.get("get", "pods/log"), 1);
    assert_eq!(counts.get("delete", "pods"), 1);
    assert_eq!(counts.total_resource_requests(), 4);
    let terminated_at = emulator.container_terminated_at(NAMESPACE, "counted", "app");
    assert!(
        terminated_at.is_none(),
        "a deleted pod's runtime is forgotten"
    );
}

/// Sends one HTTP/1.1 request to the emulator and returns the status code and JSON body.
fn http(emulator: &Emulator, method: &str, path: &str, body: &str) -> (u16, Value) {
    let address = emulator.url().trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let code = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .unwrap_or("");
    (
        code,
        serde_json::from_str(body.trim()).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn control_api_injects_and_lists_faults() {
    let emulator = Emulator::start();
    let fault =
        r#"{"type": "apiError", "verb": "list", "resource": "secrets", "code": 503, "times": 1}"#;
    let (code, created) = http(&emulator, "POST", "/_emulator/faults", fault);
    assert_eq!(code, 201);
    let id = created["id"].as_u64().unwrap();
    let (_, listed) = http(&emulator, "GET", "/_emulator/faults", "");
    assert_eq!(listed[0]["type"], "apiError");
    assert_eq!(listed[0]["remaining"], 1);

    let (code, status) = http(&emulator, "GET", "/api/v1/namespaces/tests/secrets", "");
    assert_eq!(code, 503);
    assert_eq!(status["reason"], "ServiceUnavailable");
    assert_eq!(status["kind"], "Status");
    let (code, list) = http(&emulator, "GET", "/api/v1/namespaces/tests/secrets", "");
    assert_eq!(code, 200);
    assert_eq!(list["kind"], "SecretList");

    let (_, counts) = http(&emulator, "GET", "/_emulator/requests", "");
    assert_eq!(
        counts,
        json!([{"verb": "list", "resource": "secrets", "count": 2}])
    );
    let (code, _) = http(&emulator, "DELETE", &format!("/_emulator/faults/{id}"), "");
    assert_eq!(code, 204);
    let (code, bad) = http(
        &emulator,
        "POST",
        "/_emulator/faults",
        r#"{"type": "nonsense"}"#,
    );
    assert_eq!(code, 400);
    assert!(bad["message"]
        .as_str()
        .unwrap()
        .starts_with("invalid fault"));
}
