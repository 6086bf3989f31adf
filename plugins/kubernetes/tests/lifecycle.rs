//! The kubernetes backend in-process against the emulator: cleanup, recovery after a new backend
//! instance, and a retried create that finds its own pod.

use abi_stable::{sabi_trait::TD_Opaque, std_types::RVec};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tower_k8s_emulator::Emulator;
use tower_plugin_api::ffi::{EventSinkFfi, EventSinkFfi_TO};
use tower_plugin_api::sdk::{Backend, EventSink, Execution};
use tower_plugin_api::{ExecutionSpec, ExecutionState, ExecutionStatus, LogRecord, PackageSource};
use tower_plugin_kubernetes::{KubernetesBackend, Settings};

const WAIT: Duration = Duration::from_secs(60);

/// Records what the backend delivers.
#[derive(Clone, Default)]
struct Recorder(Arc<(Mutex<(Vec<LogRecord>, Vec<ExecutionStatus>)>, Condvar)>);

impl EventSinkFfi for Recorder {
    fn logs(&self, records: RVec<LogRecord>) {
        self.0 .0.lock().unwrap().0.extend(records);
        self.0 .1.notify_all();
    }

    fn status(&self, status: ExecutionStatus) {
        self.0 .0.lock().unwrap().1.push(status);
        self.0 .1.notify_all();
    }
}

impl Recorder {
    fn sink(&self) -> EventSink {
        EventSink::new(EventSinkFfi_TO::from_value(self.clone(), TD_Opaque))
    }

    fn lines(&self) -> Vec<String> {
        self.0 .0.lock().unwrap().0.iter().map(|record| record.line.to_string()).collect()
    }

    /// Waits on a blocking thread until a condition holds, so the runtime keeps driving.
    async fn wait(&self, what: &'static str, condition: impl Fn(&(Vec<LogRecord>, Vec<ExecutionStatus>)) -> bool + Send + 'static) {
        let recorder = self.clone();
        tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + WAIT;
            let mut guard = recorder.0 .0.lock().unwrap();
            while !condition(&guard) {
                let left = deadline.saturating_duration_since(Instant::now());
                assert!(!left.is_zero(), "timed out waiting for {what}: {:?}", guard.1);
                guard = recorder.0 .1.wait_timeout(guard, left).unwrap().0;
            }
        })
        .await
        .unwrap();
    }

    async fn terminal(&self) -> ExecutionStatus {
        self.wait("the terminal status", |events| events.1.iter().any(ExecutionStatus::is_terminal)).await;
        self.0 .0.lock().unwrap().1.iter().find(|status| status.is_terminal()).cloned().unwrap()
    }
}

async fn backend(emulator: &Emulator) -> KubernetesBackend {
    let settings: Settings = tower_plugin_api::sdk::parse_settings(
        &serde_json::json!({ "kubeconfig": emulator.kubeconfig_path(), "namespace": "default", "delete_grace_seconds": 1 }).to_string(),
    )
    .unwrap();
    KubernetesBackend::new(settings).await.unwrap()
}

/// Packs a bash app with `script` and returns the temp folder and the spec.
fn spec(run_id: &str, script: &str) -> (tempfile::TempDir, ExecutionSpec) {
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app");
    std::fs::create_dir(&app).unwrap();
    std::fs::write(app.join("Towerfile"), "[app]\nname = \"probe\"\nscript = \"./main.sh\"\n").unwrap();
    std::fs::write(app.join("main.sh"), script).unwrap();
    let archive = dir.path().join("package.tar.gz");
    tower_package::pack_dir(&app, &archive).unwrap();
    let sha256 = tower_package::sha256_file(&archive).unwrap();
    (dir, ExecutionSpec::new(run_id, PackageSource::file(archive.display().to_string(), sha256)))
}

#[tokio::test(flavor = "multi_thread")]
async fn cleanup_twice_removes_everything() {
    let emulator = Emulator::start();
    let backend = backend(&emulator).await;
    let (_dir, mut spec) = spec("cleanup-1", "echo hello\n");
    spec.secrets.push(tower_plugin_api::SecretVar::new("TOKEN", "value"));
    let recorder = Recorder::default();
    let execution = backend.create(spec, recorder.sink()).await.unwrap();
    let status = recorder.terminal().await;
    assert_eq!(status.state(), Some(&ExecutionState::Exited));
    assert!(recorder.lines().contains(&"hello".to_string()), "{:?}", recorder.lines());

    let pod = emulator.pods()[0].metadata.name.clone().unwrap();
    assert!(emulator.secret("default", &format!("{pod}-secrets")).is_some(), "the secret exists before cleanup");
    execution.cleanup().await.unwrap();
    execution.cleanup().await.unwrap();
    let deadline = Instant::now() + WAIT;
    while !emulator.pods().is_empty() {
        assert!(Instant::now() < deadline, "the pod is still there");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(emulator.secret("default", &format!("{pod}-secrets")).is_none(), "the secret is gone");
}

#[tokio::test(flavor = "multi_thread")]
async fn new_backend_instance_recovers_running_execution() {
    let emulator = Emulator::start();
    let first = backend(&emulator).await;
    let (_dir, spec) = spec("recover-1", "echo first\nsleep 2\necho second\n");
    let recorder = Recorder::default();
    let _execution = first.create(spec, recorder.sink()).await.unwrap();
    recorder.wait("the first line", |events| events.0.iter().any(|record| record.line == "first")).await;
    let reattached_after = tower_plugin_api::Timestamp::now();

    // A new host process: a fresh backend instance reattaches by run id.
    let second = backend(&emulator).await;
    let recovered = Recorder::default();
    let execution = second.recover("recover-1".to_string(), recovered.sink()).await.unwrap();
    let status = recovered.terminal().await;
    assert_eq!(status.state(), Some(&ExecutionState::Exited), "{status:?}");
    // The start is the pod's creation, not the moment of the reattach.
    let started_at = status.started_at.into_option().expect("a start time");
    assert!(started_at.unix_nanos < reattached_after.unix_nanos, "{status:?}");
    let lines = recovered.lines();
    assert!(lines.contains(&"second".to_string()), "{lines:?}");
    execution.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn recover_of_unknown_run_is_not_found() {
    let emulator = Emulator::start();
    let backend = backend(&emulator).await;
    let error = backend.recover("never-created".to_string(), Recorder::default().sink()).await.err().expect("an error");
    assert_eq!(error.kind(), Some(tower_plugin_api::ErrorKind::NotFound));
    assert!(error.message.contains("never-created"), "{error}");
}

#[tokio::test(flavor = "multi_thread")]
async fn retried_create_adopts_its_own_pod() {
    let emulator = Emulator::start();
    let backend = backend(&emulator).await;
    let (_dir, spec) = spec("retry-1", "sleep 1\necho done\n");
    let first = Recorder::default();
    let _execution = backend.create(spec.clone(), first.sink()).await.unwrap();
    // The first create delivered the package; the retry must not fail for lack of it.
    first.wait("the package unpacked", |events| events.0.iter().any(|record| record.line.starts_with("unpacked the package"))).await;
    let second = Recorder::default();
    let adopted = backend.create(spec, second.sink()).await.expect("the retried create adopts the pod");
    assert_eq!(emulator.pods().len(), 1);
    let status = second.terminal().await;
    assert_eq!(status.state(), Some(&ExecutionState::Exited), "{status:?}");
    adopted.cleanup().await.unwrap();
}

/// Serves `body` to every GET on 127.0.0.1 until the test ends; returns the URL.
fn serve_file(body: Vec<u8>) -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/package.tar.gz?signature=do-not-leak", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().take(8) {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|read| read > 2) {
                line.clear();
            }
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len());
            let _ = stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(&body));
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread")]
async fn url_package_is_downloaded_in_pod_and_url_kept_out_of_spec() {
    let emulator = Emulator::start();
    let backend = backend(&emulator).await;
    let (dir, file_spec) = spec("url-1", "echo from url\n");
    let archive = dir.path().join("package.tar.gz");
    let url = serve_file(std::fs::read(&archive).unwrap());
    let sha256 = tower_package::sha256_file(&archive).unwrap();
    let mut spec = ExecutionSpec::new("url-1", PackageSource::url(url, sha256));
    spec.limits = file_spec.limits;

    let recorder = Recorder::default();
    let execution = backend.create(spec, recorder.sink()).await.unwrap();
    let status = recorder.terminal().await;
    assert_eq!(status.state(), Some(&ExecutionState::Exited), "{status:?} {:?}", recorder.lines());
    assert!(recorder.lines().contains(&"from url".to_string()), "{:?}", recorder.lines());
    assert!(recorder.lines().contains(&"downloaded the package".to_string()), "{:?}", recorder.lines());
    let pod = serde_json::to_string(&emulator.pods()).unwrap();
    assert!(!pod.contains("do-not-leak"), "the signed URL is in the pod spec: {pod}");
    execution.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn url_package_with_wrong_sha256_is_rejected() {
    let emulator = Emulator::start();
    let backend = backend(&emulator).await;
    let (dir, _) = spec("url-2", "echo never\n");
    let url = serve_file(std::fs::read(dir.path().join("package.tar.gz")).unwrap());
    let spec = ExecutionSpec::new("url-2", PackageSource::url(url, "0".repeat(64)));
    let error = backend.create(spec, Recorder::default().sink()).await.err().expect("an error");
    assert_eq!(error.kind(), Some(tower_plugin_api::ErrorKind::InvalidPackage), "{error}");
    assert!(!error.message.contains("do-not-leak"), "{error}");
    assert!(emulator.pods().is_empty());
}
