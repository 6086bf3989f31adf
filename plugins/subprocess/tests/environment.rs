//! What an app finds in its environment. This file contains one test because it changes the test
//! process's own environment.

mod common;

use common::{state, Harness, PackageBuilder};
use tower_plugin_api::{ExecutionState, KeyValue, SecretVar, Stream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_sees_spec_variables_but_not_host_secrets() {
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "fake-host-secret");
    std::env::set_var("TOWER_TEST_HOST_ONLY", "host-value");
    let harness = Harness::new().await;

    let mut spec = PackageBuilder::bash("env\n").spec(harness.work.path(), "run-env");
    spec.parameters.push(KeyValue::new("GREETING", "hello"));
    spec.secrets.push(SecretVar::new("API_TOKEN", "s3cr3t-value"));
    spec.env.push(KeyValue::new("EXTRA", "extra-value"));
    spec.env.push(KeyValue::new("PYTHONPATH", "/opt/first"));
    let (_execution, recorder) = harness.start_spec(spec).await;
    let status = recorder.terminal().await;
    assert_eq!(state(&status), ExecutionState::Exited);

    let lines = recorder.program_lines(Stream::Stdout);
    let value = |name: &str| lines.iter().find_map(|line| line.strip_prefix(&format!("{name}=")).map(str::to_string));
    assert_eq!(value("AWS_SECRET_ACCESS_KEY"), None, "a host secret reached the app");
    assert_eq!(value("TOWER_TEST_HOST_ONLY"), None, "a host variable outside the allowlist reached the app");
    assert_eq!(value("PATH"), std::env::var("PATH").ok());
    assert_eq!(value("GREETING").as_deref(), Some("hello"));
    assert_eq!(value("API_TOKEN").as_deref(), Some("s3cr3t-value"));
    assert_eq!(value("EXTRA").as_deref(), Some("extra-value"));
    assert_eq!(value("PYTHONUNBUFFERED").as_deref(), Some("1"));

    let python_path = value("PYTHONPATH").unwrap();
    assert!(python_path.starts_with("/opt/first:"), "{python_path}");
    assert!(python_path.ends_with("/package/app"), "{python_path}");

    let status_json = serde_json::to_string(&recorder.statuses()).unwrap();
    assert!(!status_json.contains("s3cr3t-value"), "a secret is in a status: {status_json}");
}
