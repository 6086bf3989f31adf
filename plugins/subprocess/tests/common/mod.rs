//! Shared helpers of the integration tests: a recording event sink, package archives built with
//! `tar` and `flate2`, and a backend in a temporary work folder.

#![allow(dead_code)]

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::RVec;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tower_plugin_api::ffi::{EventSinkFfi, EventSinkFfi_TO};
use tower_plugin_api::sdk::{Backend, EventSink};
use tower_plugin_api::{
    Channel, ExecutionSpec, ExecutionState, ExecutionStatus, LogRecord, PackageSource, Stream,
};
use tower_plugin_subprocess::{Settings, SubprocessBackend, SubprocessExecution};

/// How long a test waits for an execution to reach a state before it fails.
pub const WAIT_TIMEOUT: Duration = Duration::from_secs(60);

/// One event delivered to the sink.
#[derive(Debug, Clone)]
pub enum Event {
    Log(LogRecord),
    Status(ExecutionStatus),
}

/// An event sink that records every event and wakes waiters.
#[derive(Clone, Default)]
pub struct Recorder {
    shared: Arc<(Mutex<Vec<Event>>, Condvar)>,
}

impl EventSinkFfi for Recorder {
    fn logs(&self, records: RVec<LogRecord>) {
        let (events, changed) = &*self.shared;
        events.lock().unwrap().extend(records.into_iter().map(Event::Log));
        changed.notify_all();
    }

    fn status(&self, status: ExecutionStatus) {
        let (events, changed) = &*self.shared;
        events.lock().unwrap().push(Event::Status(status));
        changed.notify_all();
    }
}

impl Recorder {
    /// Wraps the recorder the way the SDK wraps the host's sink.
    pub fn sink(&self) -> EventSink {
        EventSink::new(EventSinkFfi_TO::from_value(self.clone(), TD_Opaque))
    }

    pub fn events(&self) -> Vec<Event> {
        self.shared.0.lock().unwrap().clone()
    }

    /// Waits until `predicate` holds for the events so far; panics after [`WAIT_TIMEOUT`].
    pub async fn wait_until(&self, what: &str, predicate: impl Fn(&[Event]) -> bool + Send + 'static) {
        let recorder = self.clone();
        let what = what.to_string();
        tokio::task::spawn_blocking(move || {
            let (events, changed) = &*recorder.shared;
            let deadline = Instant::now() + WAIT_TIMEOUT;
            let mut guard = events.lock().unwrap();
            while !predicate(&guard) {
                let left = deadline.saturating_duration_since(Instant::now());
                assert!(!left.is_zero(), "timed out waiting for {what}; events: {:#?}", *guard);
                guard = changed.wait_timeout(guard, left).unwrap().0;
            }
        })
        .await
        .unwrap();
    }

    /// Waits for the terminal status and returns it.
    pub async fn terminal(&self) -> ExecutionStatus {
        self.wait_until("the terminal status", |events| statuses(events).iter().any(|s| s.is_terminal())).await;
        self.statuses().into_iter().find(|status| status.is_terminal()).unwrap()
    }

    /// Waits for the `running` status.
    pub async fn running(&self) {
        self.wait_until("the running status", |events| {
            statuses(events).iter().any(|status| matches!(status.state(), Some(ExecutionState::Running)))
        })
        .await;
    }

    /// Waits until a log line of `channel` contains `text`.
    pub async fn line_containing(&self, channel: Channel, text: &str) {
        let text = text.to_string();
        self.wait_until(&format!("a log line containing {text:?}"), move |events| {
            logs(events).iter().any(|record| record.channel == channel && record.line.contains(text.as_str()))
        })
        .await;
    }

    pub fn statuses(&self) -> Vec<ExecutionStatus> {
        statuses(&self.events())
    }

    pub fn logs(&self) -> Vec<LogRecord> {
        logs(&self.events())
    }

    /// Returns the lines of one stream of the program.
    pub fn program_lines(&self, stream: Stream) -> Vec<String> {
        self.logs()
            .into_iter()
            .filter(|record| record.channel == Channel::Program && record.stream == stream)
            .map(|record| record.line.to_string())
            .collect()
    }

    /// Returns every setup line, both streams, in order.
    pub fn setup_text(&self) -> String {
        let lines: Vec<String> = self
            .logs()
            .into_iter()
            .filter(|record| record.channel == Channel::Setup)
            .map(|record| record.line.to_string())
            .collect();
        lines.join("\n")
    }

    /// Checks that the terminal status is the last event and that log numbers have no gaps.
    pub fn assert_terminal_is_last(&self) {
        let events = self.events();
        let last = events.last().expect("no events");
        assert!(matches!(last, Event::Status(status) if status.is_terminal()), "last event is {last:?}");
        let terminals = statuses(&events).iter().filter(|status| status.is_terminal()).count();
        assert_eq!(terminals, 1, "{events:#?}");
        let seqs: Vec<u64> = logs(&events).iter().map(|record| record.seq).collect();
        assert!(seqs.iter().enumerate().all(|(index, &seq)| seq == index as u64), "log numbers have gaps");
    }
}

fn statuses(events: &[Event]) -> Vec<ExecutionStatus> {
    events
        .iter()
        .filter_map(|event| match event {
            Event::Status(status) => Some(status.clone()),
            Event::Log(_) => None,
        })
        .collect()
}

fn logs(events: &[Event]) -> Vec<LogRecord> {
    events
        .iter()
        .filter_map(|event| match event {
            Event::Log(record) => Some(record.clone()),
            Event::Status(_) => None,
        })
        .collect()
}

/// Returns the state of a status; tests use only states of this contract version.
pub fn state(status: &ExecutionStatus) -> ExecutionState {
    status.state().cloned().expect("a state of this contract version")
}

/// A package archive under construction: a MANIFEST and files.
pub struct PackageBuilder {
    manifest: serde_json::Value,
    files: Vec<(String, Vec<u8>, u32)>,
}

impl PackageBuilder {
    /// Creates a version 3 package whose script `app/<invoke>` contains `script`.
    pub fn app(invoke: &str, script: &str) -> Self {
        let manifest = serde_json::json!({
            "version": 3, "invoke": invoke, "parameters": [], "schedule": null,
            "import_paths": [], "app_dir_name": "app", "modules_dir_name": "modules", "checksum": ""
        });
        Self { manifest, files: vec![(format!("app/{invoke}"), script.as_bytes().to_vec(), 0o755)] }
    }

    /// Creates a bash app running `script`.
    pub fn bash(script: &str) -> Self {
        Self::app("main.sh", script)
    }

    /// Creates a Python app running `script`.
    pub fn python(script: &str) -> Self {
        Self::app("main.py", script)
    }

    /// Replaces the MANIFEST.
    pub fn manifest(mut self, manifest: serde_json::Value) -> Self {
        self.manifest = manifest;
        self
    }

    /// Replaces the file list.
    pub fn without_files(mut self) -> Self {
        self.files.clear();
        self
    }

    /// Adds a file; the name is written into the tar header as given, `..` included.
    pub fn file(mut self, name: &str, contents: &str) -> Self {
        self.files.push((name.to_string(), contents.as_bytes().to_vec(), 0o644));
        self
    }

    /// Writes `<dir>/package-<n>.tar.gz` and returns its path and sha256.
    pub fn write(&self, dir: &Path) -> (PathBuf, String) {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = dir.join(format!("package-{}.tar.gz", NEXT.fetch_add(1, Ordering::Relaxed)));
        let file = std::fs::File::create(&path).unwrap();
        let encoder = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
        let mut builder = tar::Builder::new(encoder);
        let manifest = serde_json::to_vec(&self.manifest).unwrap();
        append_raw(&mut builder, "MANIFEST", &manifest, 0o644);
        for (name, contents, mode) in &self.files {
            append_raw(&mut builder, name, contents, *mode);
        }
        builder.into_inner().unwrap().finish().unwrap();
        let sha256 = tower_package::sha256_file(&path).unwrap();
        (path, sha256)
    }

    /// Writes the archive and returns a spec for it.
    pub fn spec(&self, dir: &Path, run_id: &str) -> ExecutionSpec {
        let (path, sha256) = self.write(dir);
        ExecutionSpec::new(run_id, PackageSource::file(path.to_str().unwrap(), sha256))
    }
}

/// Appends a regular file, writing the name bytes straight into the header so that names the
/// `tar` crate refuses (`../x`) can be tested.
fn append_raw<W: std::io::Write>(builder: &mut tar::Builder<W>, name: &str, contents: &[u8], mode: u32) {
    let mut header = tar::Header::new_gnu();
    header.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
    header.set_size(contents.len() as u64);
    header.set_mode(mode);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    builder.append(&header, contents).unwrap();
}

/// A backend in its own temporary work folder.
pub struct Harness {
    pub work: tempfile::TempDir,
    pub backend: SubprocessBackend,
}

impl Harness {
    pub async fn new() -> Self {
        Self::with(|_| {}).await
    }

    /// Creates a backend whose settings `adjust` changes.
    pub async fn with(adjust: impl FnOnce(&mut Settings)) -> Self {
        let work = tempfile::tempdir().unwrap();
        let mut settings = Settings { work_dir: Some(work.path().join("work")), default_grace_seconds: 2, ..Settings::default() };
        adjust(&mut settings);
        let backend = SubprocessBackend::new(settings).await.unwrap();
        Self { work, backend }
    }

    /// Creates an execution of `package` and returns its handle and recorder.
    pub async fn start(&self, package: &PackageBuilder) -> (SubprocessExecution, Recorder) {
        self.start_spec(package.spec(self.work.path(), "run-1")).await
    }

    pub async fn start_spec(&self, spec: ExecutionSpec) -> (SubprocessExecution, Recorder) {
        let recorder = Recorder::default();
        let execution = self.backend.create(spec, recorder.sink()).await.unwrap();
        (execution, recorder)
    }

    /// Runs `package` to its end and returns the terminal status and the recorder.
    pub async fn run(&self, package: &PackageBuilder) -> (ExecutionStatus, Recorder) {
        let (_execution, recorder) = self.start(package).await;
        let status = recorder.terminal().await;
        (status, recorder)
    }

    /// Returns the names of the execution folders, which are also the names of their cgroups.
    pub fn execution_names(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.executions_dir()) else { return Vec::new() };
        entries.flatten().map(|entry| entry.file_name().to_string_lossy().into_owned()).collect()
    }

    pub fn executions_dir(&self) -> PathBuf {
        self.work.path().join("work").join("executions")
    }

    /// Tells whether this machine gives executions a cgroup, from the capabilities.
    pub fn cgroup_version(&self) -> Option<String> {
        let capabilities = self.backend.capabilities();
        let detail = capabilities.details.iter().find(|pair| pair.key.as_str() == "cgroup")?;
        (detail.value.as_str() != "none").then(|| detail.value.to_string())
    }
}

impl Drop for Harness {
    /// Removes the cgroups of the executions that a test did not clean up, since they outlive
    /// the temporary work folder.
    fn drop(&mut self) {
        let Some(manager) = self.backend.cgroups() else { return };
        for name in self.execution_names() {
            if let Some(cgroup) = manager.existing(&name) {
                if let Err(error) = cgroup.remove() {
                    eprintln!("failed to remove test cgroup {}: {error}", cgroup.path().display());
                }
            }
        }
    }
}

/// Tells whether process `pid` runs (exists and is not a zombie).
pub fn process_runs(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat[stat.rfind(')').unwrap() + 1..].split_whitespace().next().unwrap().to_string();
            state != "Z" && state != "X"
        }
        Err(_) => false,
    }
}
