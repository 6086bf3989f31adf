//! Pods through the kube client: lifecycle, logs, environment, attach, deletion and
//! validation, with real processes.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::{AsyncReadExt as _, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, AttachParams, DeleteParams, LogParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower_k8s_emulator::Emulator;

#[tokio::test]
async fn pod_runs_to_exit_code_with_logs() {
    let emulator = Emulator::start();
    let api = pods(&emulator).await;
    let manifest = pod_manifest("exit-three", &["sh", "-c", "echo hi; echo err >&2; exit 3"]);
    api.create(&PostParams::default(), &pod_from(manifest))
        .await
        .expect("create pod");

    let pod = wait_for_pod(&api, "exit-three", |pod| terminated(pod, "app").is_some()).await;
    let state = terminated(&pod, "app").unwrap();
    assert_eq!(state.exit_code, 3);
    assert_eq!(state.reason.as_deref(), Some("Error"));
    assert!(state.started_at.is_some());
    assert!(state.finished_at.is_some());
    assert_eq!(phase(&pod), "Failed");
    assert_eq!(
        pod.spec.as_ref().unwrap().node_name.as_deref(),
        Some(tower_k8s_emulator::NODE_NAME)
    );
    assert_eq!(condition(&pod, "PodScheduled").unwrap().status, "True");
    assert_eq!(
        condition(&pod, "Ready").unwrap().reason.as_deref(),
        Some("PodCompleted")
    );

    let logs = api
        .logs("exit-three", &LogParams::default())
        .await
        .expect("logs");
    assert_eq!(logs, "hi\nerr\n");
    let stamped = api
        .logs(
            "exit-three",
            &LogParams {
                timestamps: true,
                ..LogParams::default()
            },
        )
        .await
        .unwrap();
    let lines: Vec<&str> = stamped.lines().collect();
    assert_eq!(lines.len(), 2);
    for (line, text) in lines.iter().zip(["hi", "err"]) {
        let (stamp, rest) = line.split_once(' ').expect("timestamp and text");
        assert_eq!(rest, text);
        assert_eq!(
            stamp.len(),
            "2024-01-02T03:04:05.123456789Z".len(),
            "stamp {stamp}"
        );
        assert!(stamp.ends_with('Z'));
        assert!(
            stamp.parse::<k8s_openapi::jiff::Timestamp>().is_ok(),
            "stamp {stamp}"
        );
    }
    assert!(emulator
        .container_terminated_at(NAMESPACE, "exit-three", "app")
        .is_some());
    emulator.shutdown();
}

#[tokio::test]
async fn successful_pod_succeeds() {
    let emulator = Emulator::start();
    let api = pods(&emulator).await;
    api.create(
        &PostParams::default(),
        &pod_from(pod_manifest("ok", &["true"])),
    )
    .await
    .unwrap();
    let pod = wait_for_pod(&api, "ok", |pod| phase(pod) == "Succeeded").await;
    let state = terminated(&pod, "app").unwrap();
    assert_eq!(state.exit_code, 0);
    assert_eq!(state.reason.as_deref(), Some("Completed"));
    assert!(pod.status.as_ref().unwrap().start_time.is_some());
}

#[tokio::test]
async fn log_follow_streams_until_exit() {
    let emulator = Emulator::start();
    let api = pods(&emulator).await;
    let script = "for i in 1 2 3; do echo line $i; sleep 0.2; done";
    api.create(
        &PostParams::default(),
        &pod_from(pod_manifest("follow", &["sh", "-c", script])),
    )
    .await
    .unwrap();
    wait_for_pod(&api, "follow", |pod| {
        is_running(pod, "app") || terminated(pod, "app").is_some()
    })
    .await;

    let params = LogParams {
        follow: true,
        ..LogParams::default()
    };
    let reading = async {
        let mut stream = api.log_stream("follow", &params).await.expect("log stream");
        let mut text = String::new();
        stream
            .read_to_string(&mut text)
            .await
            .expect("read log stream");
        text
    };
    let text = tokio::time::timeout(WAIT, reading)
        .await
        .expect("follow ends when the container exits");
    assert_eq!(text, "line 1\nline 2\nline 3\n");
}

#[tokio::test]
async fn log_of_waiting_container_is_bad_request() {
    let emulator = Emulator::start();
    let faults = emulator.faults();
    faults.inject(tower_k8s_emulator::Fault::StartDelay {
        pods: tower_k8s_emulator::PodTarget::any(),
        container: None,
        delay_millis: 3000,
    });
    let api = pods(&emulator).await;
    api.create(
        &PostParams::default(),
        &pod_from(pod_manifest("slow", &["true"])),
    )
    .await
    .unwrap();
    wait_for_pod(&api, "slow", |pod| {
        waiting_reason(pod, "app").as_deref() == Some("ContainerCreating")
    })
    .await;
    let error = api.logs("slow", &LogParams::default()).await.unwrap_err();
    let status = api_status(error);
    assert_eq!(status.code, 400);
    assert_eq!(status.reason, "BadRequest");
    assert_eq!(
        status.message,
        "container \"app\" in pod \"slow\" is waiting to start: ContainerCreating"
    );
}

#[tokio::test]
async fn secret_key_ref_env_reaches_container() {
    let emulator = Emulator::start();
    let client = client(&emulator).await;
    let api: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let secrets: Api<Secret> = Api::namespaced(client, NAMESPACE);
    let mut manifest = pod_manifest("env", &["sh", "-c", "echo \"$TOKEN $POD $GREETING\""]);
    manifest["spec"]["containers"][0]["env"] = json!([
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "GREETING", "value": "hello-$(POD)"},
    ]);
    api.create(&PostParams::default(), &pod_from(manifest))
        .await
        .unwrap();

    let pod = wait_for_pod(&api, "env", |pod| {
        waiting_reason(pod, "app").as_deref() == Some("CreateContainerConfigError")
    })
    .await;
    let waiting = pod.status.unwrap().container_statuses.unwrap()[0]
        .state
        .clone()
        .unwrap()
        .waiting
        .unwrap();
    assert_eq!(
        waiting.message.as_deref(),
        Some("secret \"creds\" not found")
    );

    let secret: Secret = serde_json::from_value(
        json!({"metadata": {"name": "creds"}, "stringData": {"token": "s3cret"}}),
    )
    .unwrap();
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    wait_for_pod(&api, "env", |pod| phase(pod) == "Succeeded").await;
    assert_eq!(
        api.logs("env", &LogParams::default()).await.unwrap(),
        "s3cret env hello-env\n"
    );
}

#[tokio::test]
async fn missing_secret_key_is_config_error() {
    let emulator = Emulator::start();
    let client = client(&emulator).await;
    let api: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let secrets: Api<Secret> = Api::namespaced(client, NAMESPACE);
    let secret: Secret = serde_json::from_value(
        json!({"metadata": {"name": "creds"}, "stringData": {"other": "x"}}),
    )
    .unwrap();
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let mut manifest = pod_manifest("nokey", &["true"]);
    manifest["spec"]["containers"][0]["env"] =
        json!([{"name": "T", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}}]);
    api.create(&PostParams::default(), &pod_from(manifest))
        .await
        .unwrap();
    let pod = wait_for_pod(&api, "nokey", |pod| {
        waiting_reason(pod, "app").is_some_and(|r| r == "CreateContainerConfigError")
    })
    .await;
    let waiting = pod.status.unwrap().container_statuses.unwrap()[0]
        .state
        .clone()
        .unwrap()
        .waiting
        .unwrap();
    assert_eq!(
        waiting.message.as_deref(),
        Some("couldn't find key token in Secret tests/creds")
    );
    assert_eq!(phase(&api.get("nokey").await.unwrap()), "Pending");
}

#[tokio::test]
async fn attach_stdin_reaches_cat() {
    let emulator = Emulator::start();
    let api = pods(&emulator).await;
    let mut manifest = pod_manifest("cat", &["cat"]);
    manifest["spec"]["containers"][0]["stdin"] = json!(true);
    manifest["spec"]["containers"][0]["stdinOnce"] = json!(true);
    api.create(&PostParams::default(), &pod_from(manifest))
        .await
        .unwrap();
    wait_for_pod(&api, "cat", |pod| is_running(pod, "app")).await;

    let params = AttachParams::default()
        .stdin(true)
        .stdout(true)
        .stderr(false);
    let mut attached = api.attach("cat", &params).await.expect("attach");
    let mut stdin = attached.stdin().expect("stdin");
    let mut stdout = attached.stdout().expect("stdout");
    let status = attached.take_status().expect("status");
    stdin.write_all(b"package bytes\n").await.unwrap();
    let mut echoed = vec![0u8; "package bytes\n".len()];
    tokio::time::timeout(WAIT, stdout.read_exact(&mut echoed))
        .await
        .expect("echo arrives")
        .unwrap();
    assert_eq!(echoed, b"package bytes\n");
    stdin.shutdown().await.unwrap();
    drop(stdin);

    let status = tokio::time::timeout(WAIT, status)
        .await
        .expect("status arrives")
        .expect("a status");
    assert_eq!(status.status.as_deref(), Some("Success"));
    let pod = wait_for_pod(&api, "cat", |pod| terminated(pod, "app").is_some()).await;
    assert_eq!(terminated(&pod, "app").unwrap().exit_code, 0);
    assert_eq!(
        api.logs("cat", &LogParams::default()).await.unwrap(),
        "package bytes\n"
    );
}

#[tokio::test]
async fn graceful_delete_sends_sigterm_then_removes() {
    let emulator = Emulator::start();
    let api = pods(&emulator).await;
    let script = "trap 'echo got-term; exit 0' TERM; echo ready; while true; do sleep 0.1; done";
    api.create(
        &PostParams::default(),
        &pod_from(pod_manifest("graceful", &["sh", "-c", script])),
    )
    .await
    .unwrap();
    let running = wait_for_pod(&api, "graceful", |pod| is_running(pod, "app")).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let version = running.metadata.resource_version.clone().unwrap();
    let params = WatchParams::default()
        .fields("metadata.name=graceful")
        .timeout(30);
    let mut events = api.watch(&params, &version).await.expect("watch").boxed();

    let deleted = api
        .delete(
            "graceful",
            &DeleteParams {
                grace_period_seconds: Some(5),
                ..DeleteParams::default()
            },
        )
        .await
        .unwrap();
    let pod = deleted.left().expect("a graceful delete returns the pod");
    assert!(pod.metadata.deletion_timestamp.is_some());
    assert_eq!(pod.metadata.deletion_grace_period_seconds, Some(5));

    let mut seen = Vec::new();
    let collecting = async {
        while let Some(event) = events.try_next().await.expect("watch event") {
            match event {
                WatchEvent::Modified(pod) => seen.push(("MODIFIED", pod)),
                WatchEvent::Deleted(pod) => {
                    seen.push(("DELETED", pod));
                    return;
                }
                _ => {}
            }
        }
    };
    tokio::time::timeout(WAIT, collecting)
        .await
        .expect("the pod is deleted within the grace period");
    assert!(seen[0].1.metadata.deletion_timestamp.is_some());
    let (last_type, last) = seen.last().unwrap();
    assert_eq!(*last_type, "DELETED");
    let state = terminated(last, "app").expect("the deleted pod's container has terminated");
    assert_eq!(state.exit_code, 0, "the trap ran and exited 0");
    assert_eq!(phase(last), "Succeeded");
    assert!(emulator.pod(NAMESPACE, "graceful").is_none());
}

#[tokio::test]
async fn delete_kills_after_grace_period() {
    let emulator = Emulator::start();
    let api = pods(&emulator).await;
    let script = "trap '' TERM; while true; do sleep 0.1; done";
    api.create(
        &PostParams::default(),
        &pod_from(pod_manifest("stubborn", &["sh", "-c", script])),
    )
    .await
    .unwrap();
    wait_for_pod(&api, "stubborn", |pod| is_running(pod, "app")).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let started = Instant::now();
    api.delete(
        "stubborn",
        &DeleteParams {
            grace_period_seconds: Some(1),
            ..DeleteParams::default()
        },
    )
    .await
    .unwrap();
    let pod = wait_for_pod(&api, "stubborn", |pod| terminated(pod, "app").is_some()).await;
    let state = terminated(&pod, "app").unwrap();
    assert_eq!(state.exit_code, 137);
    assert_eq!(state.signal, Some(9));
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "killed after {:?}",
        started.elapsed()
    );
    wait_for_deleted(&api, "stubborn").await;
}

#[tokio::test]
async fn zero_grace_delete_removes_at_once() {
    let emulator = Emulator::start();
    let api = pods(&emulator).await;
    api.create(
        &PostParams::default(),
        &pod_from(pod_manifest("sleeper", &["sleep", "60"])),
    )
    .await
    .unwrap();
    wait_for_pod(&api, "sleeper", |pod| is_running(pod, "app")).await;
    api.delete(
        "sleeper",
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        },
    )
    .await
    .unwrap();
    assert!(api.get_opt("sleeper").await.unwrap().is_none());
}

#[tokio::test]
async fn delete_missing_pod_is_not_found() {
    let emulator = Emulator::start();
    let api = pods(&emulator).await;
    let status = api_status(
        api.delete("nope", &DeleteParams::default())
            .await
            .unwrap_err(),
    );
    assert_eq!(status.code, 404);
    assert_eq!(status.reason, "NotFound");
    assert_eq!(status.message, "pods \"nope\" not found");
}

#[tokio::test]
async fn invalid_pod_name_is_unprocessable() {
    let emulator = Emulator::start();
    let api = pods(&emulator).await;
    let status = api_status(
        api.create(
            &PostParams::default(),
            &pod_from(pod_manifest("Bad_Name", &["true"])),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(status.code, 422);
    assert_eq!(status.reason, "Invalid");
    assert!(
        status
            .message
            .starts_with("Pod \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\""),
        "{}",
        status.message
    );
    let causes = status.details.unwrap().causes;
    assert_eq!(causes[0].field, "metadata.name");
}

#[tokio::test]
async fn duplicate_pod_is_conflict() {
    let emulator = Emulator::start();
    let api = pods(&emulator).await;
    api.create(
        &PostParams::default(),
        &pod_from(pod_manifest("twice", &["sleep", "5"])),
    )
    .await
    .unwrap();
    let status = api_status(
        api.create(
            &PostParams::default(),
            &pod_from(pod_manifest("twice", &["true"])),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(status.code, 409);
    assert_eq!(status.reason, "AlreadyExists");
}

#[tokio::test]
async fn failed_init_container_fails_pod() {
    let emulator = Emulator::start();
    let api = pods(&emulator).await;
    let mut manifest = pod_manifest("init-fails", &["echo", "never"]);
    manifest["spec"]["initContainers"] =
        json!([{"name": "setup", "image": "busybox", "command": ["sh", "-c", "exit 7"]}]);
    api.create(&PostParams::default(), &pod_from(manifest))
        .await
        .unwrap();
    let pod = wait_for_pod(&api, "init-fails", |pod| phase(pod) == "Failed").await;
    assert_eq!(terminated(&pod, "setup").unwrap().exit_code, 7);
    assert_eq!(
        waiting_reason(&pod, "app").as_deref(),
        Some("PodInitializing")
    );
    assert_eq!(condition(&pod, "Initialized").unwrap().status, "False");
}

#[tokio::test]
async fn empty_dir_shared_by_init_and_app() {
    let emulator = Emulator::start();
    let api = pods(&emulator).await;
    let mut manifest = pod_manifest("shared", &["sh", "-c", "cat /work/package.txt; pwd"]);
    manifest["spec"]["volumes"] = json!([{"name": "work", "emptyDir": {}}]);
    manifest["spec"]["containers"][0]["volumeMounts"] =
        json!([{"name": "work", "mountPath": "/work"}]);
    manifest["spec"]["containers"][0]["workingDir"] = json!("/work");
    manifest["spec"]["initContainers"] = json!([{
        "name": "stage", "image": "busybox",
        "command": ["sh", "-c", "echo staged > /work/package.txt"],
        "volumeMounts": [{"name": "work", "mountPath": "/work"}],
    }]);
    api.create(&PostParams::default(), &pod_from(manifest))
        .await
        .unwrap();
    wait_for_pod(&api, "shared", |pod| phase(pod) == "Succeeded").await;
    let logs = api.logs("shared", &LogParams::default()).await.unwrap();
    let mut lines = logs.lines();
    assert_eq!(lines.next(), Some("staged"));
    assert!(lines.next().unwrap().ends_with("/volumes/work"), "{logs}");
    assert_eq!(
        api.logs(
            "shared",
            &LogParams {
                container: Some("stage".into()),
                ..LogParams::default()
            }
        )
        .await
        .unwrap(),
        ""
    );
}

#[tokio::test]
async fn active_deadline_fails_pod() {
    let emulator = Emulator::start();
    let api = pods(&emulator).await;
    let mut manifest = pod_manifest("deadline", &["sleep", "60"]);
    manifest["spec"]["activeDeadlineSeconds"] = json!(1);
    api.create(&PostParams::default(), &pod_from(manifest))
        .await
        .unwrap();
    let pod = wait_for_pod(&api, "deadline", |pod| phase(pod) == "Failed").await;
    let status = pod.status.clone().unwrap();
    assert_eq!(status.reason.as_deref(), Some("DeadlineExceeded"));
    assert_eq!(
        status.message.as_deref(),
        Some("Pod was active on the node longer than the specified deadline")
    );
    assert_eq!(terminated(&pod, "app").unwrap().exit_code, 143);
}

#[tokio::test]
async fn deadline_update_counts_from_start() {
    let emulator = Emulator::start();
    let api = pods(&emulator).await;
    api.create(&PostParams::default(), &pod_from(pod_manifest("later", &["sleep", "60"])))
        .await
        .unwrap();
    wait_for_pod(&api, "later", |pod| phase(pod) == "Running").await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let set = |seconds: Option<i64>| {
        let api = api.clone();
        async move {
            let patch = Patch::Merge(json!({ "spec": { "activeDeadlineSeconds": seconds } }));
            api.patch("later", &PatchParams::default(), &patch).await
        }
    };
    // 4 s from the pod's start, which was 2 s ago: it ends in about 2 s, not 4.
    let patched = Instant::now();
    set(Some(4)).await.unwrap();
    let rejected = [
        (Some(5), "may only be lowered, and it is 4"),
        (None, "may not be removed once set"),
        (Some(0), "must be a positive number of seconds"),
    ];
    for (seconds, detail) in rejected {
        let status = api_status(set(seconds).await.unwrap_err());
        assert_eq!(status.code, 422, "{seconds:?}");
        assert!(status.message.contains(detail), "{seconds:?}: {}", status.message);
    }

    let pod = wait_for_pod(&api, "later", |pod| phase(pod) == "Failed").await;
    assert_eq!(pod.status.unwrap().reason.as_deref(), Some("DeadlineExceeded"));
    assert!(patched.elapsed() < Duration::from_millis(3500), "ended {:?} after the patch", patched.elapsed());
}

#[tokio::test]
async fn missing_command_is_unprocessable() {
    let emulator = Emulator::start();
    let api = pods(&emulator).await;
    let mut manifest = pod_manifest("no-command", &[]);
    manifest["spec"]["containers"][0]
        .as_object_mut()
        .unwrap()
        .remove("command");
    let status = api_status(
        api.create(&PostParams::default(), &pod_from(manifest))
            .await
            .unwrap_err(),
    );
    assert_eq!(status.code, 422);
    assert_eq!(
        status.details.unwrap().causes[0].field,
        "spec.containers[0].command"
    );
}

#[tokio::test]
async fn unknown_program_is_start_error() {
    let emulator = Emulator::start();
    let api = pods(&emulator).await;
    api.create(
        &PostParams::default(),
        &pod_from(pod_manifest("missing-program", &["/nonexistent/program"])),
    )
    .await
    .unwrap();
    let pod = wait_for_pod(&api, "missing-program", |pod| phase(pod) == "Failed").await;
    let state = terminated(&pod, "app").unwrap();
    assert_eq!(state.reason.as_deref(), Some("StartError"));
    assert_eq!(state.exit_code, 128);
}

#[tokio::test]
async fn shutdown_kills_running_processes() {
    let emulator = Emulator::start();
    let api = pods(&emulator).await;
    // `$$` is the kubelet's escape for `$`, so the shell gets `$$`, its own pid.
    api.create(
        &PostParams::default(),
        &pod_from(pod_manifest(
            "lingering",
            &["sh", "-c", "echo $$$$; sleep 60"],
        )),
    )
    .await
    .unwrap();
    wait_for_pod(&api, "lingering", |pod| is_running(pod, "app")).await;
    let waiting = async {
        loop {
            let text = emulator
                .container_log(NAMESPACE, "lingering", "app")
                .unwrap_or_default();
            if let Some(line) = text.lines().next() {
                return line.trim().parse::<i32>().expect("pid");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let pid = tokio::time::timeout(WAIT, waiting).await.unwrap();
    emulator.shutdown();
    // SAFETY: signal 0 only checks whether the process exists.
    let alive = unsafe { libc_kill(pid, 0) } == 0;
    assert!(!alive, "process {pid} survived the shutdown");
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, signal: i32) -> i32;
}
