//! `tower-host serve` over real sockets with the scripted fixture plugin: the execution life
//! cycle with several log consumers, authentication, limits, errors, metrics and the OpenAPI
//! document.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::time::{Duration, Instant};
use tower_host_tests::http::{Client, Endpoint, StreamEnd};
use tower_host_tests::serve::{create, pack_example, upload_spec, ServeHost, ServeSetup, TestPackage};
use tower_host_tests::*;

const USAGE: i32 = 64;
const FINISH_TIMEOUT: Duration = Duration::from_secs(60);
const TOKEN: &str = "test-token-0123456789abcdef";

fn scripted(serve: &str) -> ServeSetup {
    ServeSetup::new(&fixture_plugin("scripted"), "", serve)
}

fn hello() -> TestPackage {
    pack_example("hello-world")
}

/// Reads a whole NDJSON stream and checks that it ended with the final chunk.
fn read_complete(client: &Client, path: &str) -> Vec<serde_json::Value> {
    let (status, mut stream) = client.stream(path);
    assert_eq!(status, 200, "GET {path}");
    let (records, end) = stream.read_all();
    assert_eq!(end, StreamEnd::Complete, "GET {path} ended early");
    records
}

fn seqs(records: &[serde_json::Value]) -> Vec<u64> {
    records.iter().map(|record| record["seq"].as_u64().expect("seq")).collect()
}

/// Creates a slow execution, follows its logs with three consumers (one from the start, one that
/// reconnects mid-stream with its cursor, one that joins after the end), terminates it, checks
/// that every consumer saw the same records, then deletes it.
fn end_to_end(host: &ServeHost, client: &Client) {
    let package = hello();
    let id = "e2e-1";
    let params = [("setup_lines", "2"), ("lines", "40"), ("interval_ms", "25"), ("run_ms", "60000")];
    let created = create(client, id, &package, &params);
    assert_eq!(created.header("location"), Some("/v1/executions/e2e-1"));
    let body = created.json();
    assert_eq!(body["id"], id);
    assert_eq!(body["package"]["sha256"], package.sha256.as_str());
    assert_eq!(body["package"]["size_bytes"], package.bytes.len());

    let follower = {
        let client = client.clone();
        std::thread::spawn(move || read_complete(&client, "/v1/executions/e2e-1/logs?follow=true"))
    };
    let reconnecting = {
        let client = client.clone();
        std::thread::spawn(move || {
            let (status, mut stream) = client.stream("/v1/executions/e2e-1/logs?follow=true");
            assert_eq!(status, 200);
            let mut records = Vec::new();
            for _ in 0..10 {
                let line = stream.next_line().expect("a record before the reconnect");
                records.push(serde_json::from_str::<serde_json::Value>(&line).unwrap());
            }
            drop(stream);
            let last = records.last().unwrap()["seq"].as_u64().unwrap();
            records.extend(read_complete(&client, &format!("/v1/executions/e2e-1/logs?follow=true&after={last}")));
            records
        })
    };

    host.wait_for(id, FINISH_TIMEOUT, |execution| execution["log_records"] == 42);
    let running = client.get("/v1/executions/e2e-1");
    assert_eq!(running.json()["status"]["state"], "running");
    let terminate = client.post_json("/v1/executions/e2e-1/terminate", &serde_json::json!({ "grace_seconds": 5 }));
    assert_eq!(terminate.status, 202, "{}", terminate.text());
    let finished = host.wait_finished(id, FINISH_TIMEOUT);
    assert_eq!(finished["status"]["state"], "cancelled");
    assert_eq!(finished["status"]["forced"], false);
    assert!(finished["status"]["ended_at"].is_string(), "{finished}");
    assert_eq!(finished["exit_code"], serde_json::Value::Null);

    let from_start = follower.join().expect("follower");
    let reconnected = reconnecting.join().expect("reconnecting consumer");
    let after_end = read_complete(client, "/v1/executions/e2e-1/logs?follow=true");
    assert_eq!(seqs(&from_start), (0..42).collect::<Vec<_>>());
    assert_eq!(from_start, reconnected, "the reconnecting consumer saw a gap or a duplicate");
    assert_eq!(from_start, after_end, "the late consumer saw other records");
    assert_eq!(from_start[0]["channel"], "setup");
    assert_eq!(from_start[2]["line"], "line 0");
    assert_eq!(from_start[41]["line"], "line 39");
    let tail = read_complete(client, "/v1/executions/e2e-1/logs?from=40");
    assert_eq!(seqs(&tail), [40, 41]);

    let events = read_complete(client, "/v1/executions/e2e-1/events?follow=true");
    let states: Vec<_> = events.iter().map(|event| event["state"].as_str().unwrap().to_string()).collect();
    assert_eq!(states, ["preparing", "preparing", "running", "cancelled"]);
    assert_eq!(events[0]["phase"], "queued");
    assert_eq!(seqs(&events), [0, 1, 2, 3]);

    let terminate_again = client.post_json("/v1/executions/e2e-1/terminate", &serde_json::json!({}));
    assert_eq!(terminate_again.status, 200, "terminating an ended execution is a no-op");
    let deleted = client.delete("/v1/executions/e2e-1");
    assert_eq!(deleted.status, 204, "{}", deleted.text());
    assert_eq!(client.get("/v1/executions/e2e-1").status, 404);
    assert_eq!(client.delete("/v1/executions/e2e-1").status, 404);
}

#[test]
fn unix_socket_end_to_end() {
    let setup = scripted("");
    let host = setup.start();
    let Endpoint::Unix(socket) = &host.endpoint else { panic!("expected a Unix socket") };
    assert_eq!(socket, &setup.state_dir.join("serve.sock"));
    let metadata = std::fs::symlink_metadata(socket).unwrap();
    assert!(metadata.file_type().is_socket());
    assert_eq!(metadata.permissions().mode() & 0o777, 0o600);
    end_to_end(&host, &host.client);
}

fn tcp_setup() -> ServeSetup {
    let setup = scripted("");
    let token_file = setup.dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let text = std::fs::read_to_string(&setup.config).unwrap();
    let text = text.replace("[serve]\n", &format!("[serve]\ntcp = \"127.0.0.1:0\"\ntoken_file = {:?}\n", token_file.display().to_string()));
    std::fs::write(&setup.config, text).unwrap();
    setup
}

#[test]
fn tcp_with_token_end_to_end() {
    let setup = tcp_setup();
    let mut host = setup.start();
    assert!(matches!(host.endpoint, Endpoint::Tcp(_)), "{:?}", host.endpoint);
    host.client = host.client.with_token(Some(TOKEN));
    end_to_end(&host, &host.client);
}

#[test]
fn tcp_rejects_missing_or_wrong_token() {
    let setup = tcp_setup();
    let host = setup.start();
    for (token, message) in [(None, "requires `Authorization: Bearer"), (Some("wrong-token-0123456789abcdef"), "not valid")] {
        let client = host.client.with_token(token);
        for path in ["/v1/health", "/v1/executions", "/v1/openapi.json", "/v1/metrics"] {
            let response = client.get(path);
            assert_eq!(response.status, 401, "{path} with {token:?}");
            assert_eq!(response.error_code(), "unauthorized");
            assert!(response.json()["error"]["message"].as_str().unwrap().contains(message), "{}", response.text());
            assert_eq!(response.header("www-authenticate"), Some("Bearer"));
        }
        let package = hello();
        let response = client.create_upload(&upload_spec("no-auth", &package, &[]), &package.bytes);
        assert_eq!(response.status, 401);
    }
    let authorized = host.client.with_token(Some(TOKEN));
    assert_eq!(authorized.get("/v1/executions/no-auth").status, 404, "an unauthorized create must not create anything");
    assert!(!host.stderr().contains(TOKEN), "the token appeared in the host's log");
}

#[test]
fn tcp_without_token_file_is_refused_at_startup() {
    let setup = scripted("tcp = \"127.0.0.1:0\"");
    let output = capture(host(Some(&setup.config)).arg("serve"));
    assert_eq!(output.code, Some(USAGE), "{output:?}");
    assert!(output.stderr.contains("`serve.token_file` is not"), "{output:?}");
}

#[test]
fn create_over_cap_is_rejected_with_429() {
    let setup = scripted("max_running = 1\nwhen_full = \"reject\"");
    let host = setup.start();
    let package = hello();
    create(&host.client, "first", &package, &[("run_ms", "60000")]);
    let second = host.client.create_upload(&upload_spec("second", &package, &[]), &package.bytes);
    assert_eq!(second.status, 429, "{}", second.text());
    assert_eq!(second.error_code(), "too_many_requests");
    assert_eq!(host.client.get("/v1/executions/second").status, 404);
    let metrics = host.client.get("/v1/metrics").text();
    assert!(metrics.contains("tower_host_creates_rejected_total{reason=\"full\"} 1"), "{metrics}");

    assert_eq!(host.client.post_json("/v1/executions/first/kill", &serde_json::json!(null)).status, 202);
    let killed = host.wait_finished("first", FINISH_TIMEOUT);
    assert_eq!(killed["status"]["state"], "cancelled");
    assert_eq!(killed["status"]["forced"], true);
    create(&host.client, "second", &package, &[]);
    assert_eq!(host.wait_finished("second", FINISH_TIMEOUT)["status"]["state"], "exited");
}

#[test]
fn create_over_cap_waits_in_queue() {
    let setup = scripted("max_running = 1\nwhen_full = \"queue\"");
    let host = setup.start();
    let package = hello();
    create(&host.client, "runs", &package, &[("run_ms", "60000")]);
    create(&host.client, "waits", &package, &[("lines", "3")]);
    create(&host.client, "cancelled-in-queue", &package, &[]);
    std::thread::sleep(Duration::from_millis(300));
    let waiting = host.client.get("/v1/executions/waits").json();
    assert_eq!(waiting["status"]["state"], "preparing");
    assert_eq!(waiting["status"]["phase"], "queued");
    assert_eq!(waiting["phase"], "queued");
    let health = host.client.get("/v1/health").json();
    assert_eq!(health["executions"]["queued"], 2, "{health}");

    assert_eq!(host.client.post_json("/v1/executions/cancelled-in-queue/terminate", &serde_json::json!({})).status, 202);
    let cancelled = host.wait_finished("cancelled-in-queue", FINISH_TIMEOUT);
    assert_eq!(cancelled["status"]["state"], "cancelled");
    assert_eq!(host.client.get("/v1/executions/waits").json()["phase"], "queued");

    assert_eq!(host.client.post_json("/v1/executions/runs/kill", &serde_json::json!({})).status, 202);
    let finished = host.wait_finished("waits", FINISH_TIMEOUT);
    assert_eq!(finished["status"]["state"], "exited");
    assert_eq!(finished["log_records"], 3);
}

#[test]
fn create_is_idempotent_for_retries() {
    let setup = scripted("");
    let host = setup.start();
    let package = hello();
    let first = create(&host.client, "retry-1", &package, &[("lines", "2")]).json();
    let retry = host.client.create_upload(&upload_spec("retry-1", &package, &[("lines", "2")]), &package.bytes);
    assert_eq!(retry.status, 200, "{}", retry.text());
    assert_eq!(retry.json()["created_at"], first["created_at"]);
    host.wait_finished("retry-1", FINISH_TIMEOUT);
    let after_end = host.client.create_upload(&upload_spec("retry-1", &package, &[("lines", "2")]), &package.bytes);
    assert_eq!(after_end.status, 200);
    assert_eq!(after_end.json()["status"]["state"], "exited");

    let different = host.client.create_upload(&upload_spec("retry-1", &package, &[("lines", "3")]), &package.bytes);
    assert_eq!(different.status, 409, "{}", different.text());
    assert_eq!(different.error_code(), "conflict");
    let list = host.client.get("/v1/executions").json();
    assert_eq!(list["executions"].as_array().unwrap().len(), 1, "{list}");
}

#[test]
fn unknown_id_and_route_are_404() {
    let setup = scripted("");
    let host = setup.start();
    for (method, path) in [
        ("GET", "/v1/executions/nope"),
        ("GET", "/v1/executions/nope/logs"),
        ("GET", "/v1/executions/nope/events?follow=true"),
        ("POST", "/v1/executions/nope/terminate"),
        ("POST", "/v1/executions/nope/kill"),
        ("DELETE", "/v1/executions/nope"),
        ("GET", "/v1/nothing-here"),
    ] {
        let response = host.client.request(method, path, &[], b"");
        assert_eq!(response.status, 404, "{method} {path}: {}", response.text());
        assert_eq!(response.error_code(), "not_found", "{method} {path}");
    }
    let wrong_method = host.client.request("PUT", "/v1/executions", &[], b"");
    assert_eq!(wrong_method.status, 405);
    assert_eq!(wrong_method.error_code(), "method_not_allowed");
}

#[test]
fn invalid_spec_is_400_naming_the_field() {
    let setup = scripted("");
    let host = setup.start();
    let package = hello();
    let with = |change: &dyn Fn(&mut serde_json::Value)| {
        let mut spec = upload_spec("bad-1", &package, &[]);
        change(&mut spec);
        host.client.create_upload(&spec, &package.bytes)
    };
    type SpecChange = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: [(&str, SpecChange); 6] = [
        ("limits.timeout_seconds", Box::new(|spec| spec["limits"] = serde_json::json!({ "timeout_seconds": "soon" }))),
        ("limitz", Box::new(|spec| spec["limitz"] = serde_json::json!({}))),
        ("parameters[0].value", Box::new(|spec| spec["parameters"] = serde_json::json!([{ "key": "a", "value": 3 }]))),
        ("run_id", Box::new(|spec| spec["run_id"] = "../escape".into())),
        ("package.upload.sha256", Box::new(|spec| spec["package"]["upload"]["sha256"] = "abc".into())),
        ("package.file", Box::new(|spec| spec["package"] = serde_json::json!({ "file": { "path": "/etc/passwd", "sha256": "00" } }))),
    ];
    for (field, change) in cases {
        let response = with(&*change);
        assert_eq!(response.status, 400, "{field}: {}", response.text());
        assert_eq!(response.error_code(), "invalid_spec", "{field}");
        assert_eq!(response.json()["error"]["field"], field, "{}", response.text());
    }

    let not_json = host.client.request("POST", "/v1/executions", &[("Content-Type", "application/json")], b"{not json");
    assert_eq!(not_json.status, 400);
    assert_eq!(not_json.error_code(), "invalid_spec");
    let upload_as_json = host.client.post_json("/v1/executions", &upload_spec("bad-2", &package, &[]));
    assert_eq!(upload_as_json.status, 400);
    assert_eq!(upload_as_json.json()["error"]["field"], "package");
    let plain = host.client.request("POST", "/v1/executions", &[("Content-Type", "text/plain")], b"hello");
    assert_eq!(plain.status, 415);
    assert_eq!(host.client.get("/v1/executions").json()["executions"].as_array().unwrap().len(), 0);
}

#[test]
fn package_with_wrong_sha256_is_rejected() {
    let setup = scripted("");
    let host = setup.start();
    let package = hello();
    let mut spec = upload_spec("wrong-sha", &package, &[]);
    spec["package"]["upload"]["sha256"] = "ab".repeat(32).into();
    let response = host.client.create_upload(&spec, &package.bytes);
    assert_eq!(response.status, 400, "{}", response.text());
    assert_eq!(response.error_code(), "invalid_package");
    assert!(response.json()["error"]["message"].as_str().unwrap().contains(&package.sha256));
    assert_eq!(host.client.get("/v1/executions/wrong-sha").status, 404);
    let uploads = std::fs::read_dir(setup.state_dir.join("uploads")).unwrap().count();
    assert_eq!(uploads, 0, "the rejected upload was left behind");
}

#[test]
fn package_url_is_passed_to_the_backend() {
    let setup = scripted("");
    let host = setup.start();
    let sha = "cd".repeat(32);
    let spec = serde_json::json!({
        "run_id": "by-url",
        "package": { "url": { "url": "https://packages.invalid/app.tar.gz", "sha256": sha } },
        "parameters": [{ "key": "echo_spec", "value": "1" }],
    });
    let response = host.client.post_json("/v1/executions", &spec);
    assert_eq!(response.status, 201, "{}", response.text());
    host.wait_finished("by-url", FINISH_TIMEOUT);
    let logs = read_complete(&host.client, "/v1/executions/by-url/logs");
    let echoed: serde_json::Value = serde_json::from_str(logs[0]["line"].as_str().unwrap()).unwrap();
    assert_eq!(echoed["package"]["url"]["url"], "https://packages.invalid/app.tar.gz");
    assert_eq!(echoed["package"]["url"]["sha256"], sha.as_str());
    assert_eq!(echoed["environment"], "default");
}

#[test]
fn secret_values_never_leave_the_host() {
    let setup = scripted("");
    let host = setup.start();
    let package = hello();
    let mut spec = upload_spec("secret-1", &package, &[("echo_spec", "1")]);
    spec["secrets"] = serde_json::json!([{ "name": "API_TOKEN", "value": "hunter2-secret-value" }]);
    assert_eq!(host.client.create_upload(&spec, &package.bytes).status, 201);
    let finished = host.wait_finished("secret-1", FINISH_TIMEOUT);
    assert_eq!(finished["spec"]["secrets"][0]["value"], "***");
    let logs = read_complete(&host.client, "/v1/executions/secret-1/logs");
    let echoed: serde_json::Value = serde_json::from_str(logs[0]["line"].as_str().unwrap()).unwrap();
    assert_eq!(echoed["secret_lengths"][0], "hunter2-secret-value".len(), "the backend received the value");
    let state = std::fs::read_to_string(setup.state_dir.join("executions/secret-1/state.json")).unwrap();
    assert!(!state.contains("hunter2"), "{state}");
    assert!(!host.stderr().contains("hunter2"), "the secret appeared in the host's log");
}

#[test]
fn size_limits_are_enforced() {
    let setup = scripted("max_package_bytes = 1024\nmax_spec_bytes = 2048");
    let host = setup.start();
    let big = TestPackage { bytes: vec![7u8; 4096], sha256: "00".repeat(32) };
    let response = host.client.create_upload(&upload_spec("too-big", &big, &[]), &big.bytes);
    assert_eq!(response.status, 413, "{}", response.text());
    assert_eq!(response.error_code(), "payload_too_large");

    let mut spec = upload_spec("big-spec", &hello(), &[]);
    spec["env"] = serde_json::json!([{ "key": "PADDING", "value": "x".repeat(4096) }]);
    let response = host.client.post_json("/v1/executions", &spec);
    assert_eq!(response.status, 413, "{}", response.text());
    let package = hello();
    let response = host.client.create_upload(&spec, &package.bytes);
    assert_eq!(response.status, 413, "{}", response.text());

    let huge_header = "h".repeat(64 * 1024);
    let response = host.client.request("GET", "/v1/health", &[("X-Padding", &huge_header)], b"");
    assert_eq!(response.status, 431, "{}", response.text());
    assert_eq!(host.client.get("/v1/executions").json()["executions"].as_array().unwrap().len(), 0);
}

#[test]
fn host_enforces_timeout_as_timed_out() {
    let setup = scripted("stop_grace = \"1s\"");
    let host = setup.start();
    let package = hello();
    let mut spec = upload_spec("slow", &package, &[("run_ms", "60000")]);
    spec["limits"] = serde_json::json!({ "timeout_seconds": 1 });
    assert_eq!(host.client.create_upload(&spec, &package.bytes).status, 201);
    let started = Instant::now();
    let finished = host.wait_finished("slow", FINISH_TIMEOUT);
    assert_eq!(finished["status"]["state"], "timed_out", "{finished}");
    assert!(started.elapsed() < Duration::from_secs(20), "took {:?}", started.elapsed());
}

#[test]
fn host_timeout_counts_from_running() {
    let setup = scripted("stop_grace = \"1s\"");
    let host = setup.start();
    let package = hello();
    // Setup takes 1.5 s, longer than the 1 s timeout, and the program itself 0.3 s.
    let mut spec = upload_spec("slow-setup", &package, &[("setup_ms", "1500"), ("run_ms", "300")]);
    spec["limits"] = serde_json::json!({ "timeout_seconds": 1 });
    assert_eq!(host.client.create_upload(&spec, &package.bytes).status, 201);
    let finished = host.wait_finished("slow-setup", FINISH_TIMEOUT);
    assert_eq!(finished["status"]["state"], "exited", "{finished}");
}

#[test]
fn delete_of_running_execution_is_conflict() {
    let setup = scripted("");
    let host = setup.start();
    create(&host.client, "busy", &hello(), &[("run_ms", "60000")]);
    let response = host.client.delete("/v1/executions/busy");
    assert_eq!(response.status, 409, "{}", response.text());
    assert_eq!(response.error_code(), "conflict");
    host.client.post_json("/v1/executions/busy/kill", &serde_json::json!({}));
    host.wait_finished("busy", FINISH_TIMEOUT);
    assert_eq!(host.client.delete("/v1/executions/busy").status, 204);
    assert!(!setup.state_dir.join("executions/busy").exists());
}

#[test]
fn list_filters_by_state() {
    let setup = scripted("");
    let host = setup.start();
    let package = hello();
    create(&host.client, "a-exits", &package, &[]);
    create(&host.client, "b-crashes", &package, &[("exit_code", "3")]);
    create(&host.client, "c-runs", &package, &[("run_ms", "60000")]);
    host.wait_finished("a-exits", FINISH_TIMEOUT);
    let crashed = host.wait_finished("b-crashes", FINISH_TIMEOUT);
    assert_eq!(crashed["exit_code"], 3);
    host.wait_for("c-runs", FINISH_TIMEOUT, |execution| execution["status"]["state"] == "running");

    let ids = |query: &str| -> Vec<String> {
        let response = host.client.get(&format!("/v1/executions{query}"));
        assert_eq!(response.status, 200, "{query}: {}", response.text());
        response.json()["executions"].as_array().unwrap().iter().map(|execution| execution["id"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(ids(""), ["a-exits", "b-crashes", "c-runs"]);
    assert_eq!(ids("?state=running"), ["c-runs"]);
    assert_eq!(ids("?state=exited,crashed"), ["a-exits", "b-crashes"]);
    assert_eq!(ids("?state=finished"), ["a-exits", "b-crashes"]);
    assert_eq!(ids("?state=active"), ["c-runs"]);
    assert_eq!(ids("?limit=2"), ["a-exits", "b-crashes"]);
    assert_eq!(ids("?after=b-crashes"), ["c-runs"]);
    let page = host.client.get("/v1/executions?limit=1").json();
    assert_eq!(page["next_after"], "a-exits");
    let bad = host.client.get("/v1/executions?state=sleeping");
    assert_eq!(bad.status, 400);
    assert!(bad.json()["error"]["message"].as_str().unwrap().contains("sleeping"));
    host.client.post_json("/v1/executions/c-runs/kill", &serde_json::json!({}));
}

#[test]
fn metrics_report_counters() {
    let setup = scripted("");
    let host = setup.start();
    create(&host.client, "counted", &hello(), &[("lines", "5"), ("setup_lines", "1")]);
    host.wait_finished("counted", FINISH_TIMEOUT);
    let response = host.client.get("/v1/metrics");
    assert_eq!(response.status, 200);
    assert!(response.header("content-type").unwrap().starts_with("text/plain"), "{:?}", response.headers);
    let text = response.text();
    for expected in [
        "tower_host_executions{state=\"exited\"} 1",
        "tower_host_executions_finished_total{state=\"exited\"} 1",
        "tower_host_create_request_duration_seconds_count 1",
        "tower_host_backend_create_duration_seconds_count 1",
        "tower_host_log_records_total 6",
        "tower_host_log_bytes_total 37",
        "tower_host_log_records_truncated_total 0",
        "tower_host_log_records_split_total 0",
        "tower_host_executions_active 0",
        "tower_host_executions_queued 0",
        "tower_host_recoveries_total{result=\"lost\"} 0",
        "tower_host_creates_rejected_total{reason=\"full\"} 0",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
}

#[test]
fn health_and_backend_report_the_plugin() {
    let setup = scripted("");
    let host = setup.start();
    let health = host.client.get("/v1/health");
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["backend"]["message"], "the scripted backend runs nothing");
    let backend = host.client.get("/v1/backend").json();
    assert_eq!(backend["plugin"]["name"], "scripted");
    assert_eq!(backend["plugin"]["api_version"], tower_plugin_api::API_VERSION.to_string());
    assert_eq!(backend["capabilities"]["backend"], "scripted");
    assert_eq!(backend["limits"]["max_package_bytes"], 50 * 1024 * 1024);
}

#[test]
fn openapi_document_lists_every_route() {
    let setup = scripted("");
    let host = setup.start();
    let response = host.client.get("/v1/openapi.json");
    assert_eq!(response.status, 200);
    let document = response.json();
    assert!(document["openapi"].as_str().unwrap().starts_with("3."), "{document}");
    let routes = [
        ("post", "/v1/executions"),
        ("get", "/v1/executions"),
        ("get", "/v1/executions/{id}"),
        ("delete", "/v1/executions/{id}"),
        ("get", "/v1/executions/{id}/logs"),
        ("get", "/v1/executions/{id}/events"),
        ("post", "/v1/executions/{id}/terminate"),
        ("post", "/v1/executions/{id}/kill"),
        ("get", "/v1/backend"),
        ("get", "/v1/health"),
        ("get", "/v1/metrics"),
        ("get", "/v1/openapi.json"),
    ];
    for (method, path) in routes {
        let operation = &document["paths"][path][method];
        assert!(operation["operationId"].is_string(), "{method} {path} is not documented");
        assert!(operation["responses"].is_object(), "{method} {path} has no responses");
        // Every documented route exists on the server: an unknown id is 404 `no execution`,
        // never 404 `no route`.
        let concrete = path.replace("{id}", "openapi-probe");
        let probe = host.client.request(&method.to_uppercase(), &concrete, &[], b"");
        assert!(!probe.text().contains("\"message\":\"no route for"), "{method} {path} is not served: {}", probe.text());
    }
    let documented: usize = document["paths"].as_object().unwrap().values().map(|item| item.as_object().unwrap().len()).sum();
    assert_eq!(documented, routes.len(), "the document lists routes the test does not know");
}

#[test]
fn stale_socket_is_replaced_and_second_host_refused() {
    let setup = scripted("");
    let mut first = setup.start();
    first.kill();
    let socket = setup.state_dir.join("serve.sock");
    assert!(socket.exists(), "SIGKILL leaves the socket file behind");
    let second = setup.start();
    assert_eq!(second.client.get("/v1/health").status, 200);

    let output = capture(host(Some(&setup.config)).arg("serve"));
    assert_eq!(output.code, Some(70), "{output:?}");
    assert!(output.stderr.contains("another tower-host serve uses the state folder"), "{output:?}");

    let other = scripted(&format!("socket = {:?}", socket.display().to_string()));
    let output = capture(host(Some(&other.config)).arg("serve"));
    assert_eq!(output.code, Some(70), "{output:?}");
    assert!(output.stderr.contains("another process listens on"), "{output:?}");
    assert_eq!(second.client.get("/v1/health").status, 200, "the live socket must survive");
}

#[test]
fn retention_removes_finished_executions() {
    let setup = scripted("retention = \"1s\"");
    let host = setup.start();
    create(&host.client, "short-lived", &hello(), &[("lines", "1")]);
    let finished = host.wait_finished("short-lived", FINISH_TIMEOUT);
    assert!(finished["expires_at"].is_string(), "{finished}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while host.client.get("/v1/executions/short-lived").status != 404 {
        assert!(Instant::now() < deadline, "the execution outlived its retention");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!setup.state_dir.join("executions/short-lived").exists());
}

#[test]
fn log_limit_drops_output_and_notes_it() {
    let setup = scripted("max_log_bytes = 8192");
    let host = setup.start();
    create(&host.client, "chatty", &hello(), &[("lines", "1000")]);
    let finished = host.wait_finished("chatty", FINISH_TIMEOUT);
    assert_eq!(finished["status"]["state"], "exited", "{finished}");

    let text = host.client.get("/v1/executions/chatty/logs").text();
    let records: Vec<serde_json::Value> = text.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    let program_records = records.iter().take_while(|record| record["channel"] == "program").count();
    assert!(program_records > 0, "no program line was journalled");
    assert!(program_records < 1000, "all {program_records} program lines were journalled");
    let lines: Vec<&str> = records.iter().map(|record| record["line"].as_str().unwrap()).collect();
    let expected: Vec<String> = (0..program_records).map(|n| format!("line {n}")).collect();
    assert_eq!(lines[..program_records], expected);
    assert_eq!(seqs(&records), (0..records.len() as u64).collect::<Vec<_>>());

    // The program records fill the limit as far as whole records go; the host's notes follow.
    let program_bytes: usize = text.lines().take(program_records).map(|line| line.len() + 1).sum();
    assert!(program_bytes <= 8192, "{program_bytes} bytes of program lines");
    assert!(program_bytes > 8192 - 200, "{program_bytes} bytes of program lines");
    assert_eq!(lines.len(), program_records + 2, "{lines:?}");
    assert_eq!(lines[program_records], "tower-host: this execution's log reached serve.max_log_bytes (8192 bytes), so its further output is dropped");
    assert_eq!(lines[program_records + 1], format!("tower-host: dropped {} log records over serve.max_log_bytes (8192 bytes)", 1000 - program_records));
    assert_eq!(records[program_records]["channel"], "setup");

    let metrics = host.client.get("/v1/metrics").text();
    assert!(metrics.contains(&format!("tower_host_log_records_dropped_total {}", 1000 - program_records)), "{metrics}");
    assert!(metrics.contains("tower_host_log_records_total 1000"), "{metrics}");
}

#[test]
fn log_limit_drops_everything_after_the_cut() {
    let work = tempfile::tempdir().unwrap();
    let settings = format!("work_dir = {:?}\ncgroups = \"off\"", work.path().display().to_string());
    let setup = ServeSetup::new(&shipped_plugin("subprocess"), &settings, "max_log_bytes = 1000");
    let host = setup.start();
    // A line far over the limit, then short lines in later reads that would fit in the room left.
    let script = "echo small first\nhead -c 200000 /dev/zero | tr '\\0' x\necho\nsleep 0.5\nfor i in $(seq 1 20); do echo \"after $i\"; done\n";
    let package = bash_package(script);
    create(&host.client, "hole", &package, &[]);
    let finished = host.wait_finished("hole", FINISH_TIMEOUT);
    assert_eq!(finished["status"]["state"], "exited", "{finished}");

    let records = read_complete(&host.client, "/v1/executions/hole/logs");
    let lines: Vec<&str> = records.iter().map(|record| record["line"].as_str().unwrap()).collect();
    let note = lines.iter().position(|line| line.starts_with("tower-host:")).expect("the host's note");
    assert_eq!(lines.len(), note + 2, "only the two notes follow the cut: {lines:?}");
    assert!(lines[..note].contains(&"small first"), "{lines:?}");
    assert!(!lines.iter().any(|line| line.starts_with("after")), "{lines:?}");
    let metrics = host.client.get("/v1/metrics").text();
    let received: usize = metric(&metrics, "tower_host_log_records_total");
    assert_eq!(lines[note + 1], format!("tower-host: dropped {} log records over serve.max_log_bytes (1000 bytes)", received - note));
}

/// Packs a bash app whose `main.sh` is `script`.
fn bash_package(script: &str) -> TestPackage {
    let app = tempfile::tempdir().unwrap();
    std::fs::write(app.path().join("Towerfile"), "[app]\nname = \"probe\"\nscript = \"./main.sh\"\n").unwrap();
    std::fs::write(app.path().join("main.sh"), script).unwrap();
    let out = tempfile::tempdir().unwrap();
    let archive = out.path().join("package.tar.gz");
    tower_package::pack_dir(app.path(), &archive).unwrap();
    let sha256 = tower_package::sha256_file(&archive).unwrap();
    TestPackage { bytes: std::fs::read(&archive).unwrap(), sha256 }
}

/// Returns the value of an unlabelled metric in Prometheus text.
fn metric(text: &str, name: &str) -> usize {
    let line = text.lines().find(|line| line.split(' ').next() == Some(name)).unwrap_or_else(|| panic!("no {name} in\n{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}
