//! Driving executions through the host's wrappers and recording what they report.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tower_host::plugin::{Backend, EventStream, Execution, ExecutionEvent, LoadedPlugin};
use tower_plugin_api::{Capabilities, ExecutionSpec, ExecutionState, ExecutionStatus, KeyValue, LogRecord, PackageRef};

/// The result type of a check's steps: `Err` is a failure with its reason.
pub type Step<T = ()> = Result<T, String>;

/// The result of a check that did not fail.
pub enum Verdict {
    /// The backend behaved as required.
    Pass,
    /// The check could not run, for the reason in the text.
    Skip(String),
}

/// The state shared by the checks of one run: the backend, its capabilities and the folders.
pub struct Session {
    /// The loaded plugin.
    pub plugin: Arc<LoadedPlugin>,
    /// The settings the backend was created with, as a JSON object.
    pub settings_json: String,
    /// The backend every check uses, except those that create their own.
    pub backend: Backend,
    /// The backend's capabilities.
    pub capabilities: Capabilities,
    /// Packed apps.
    packages: tempfile::TempDir,
    /// The folder apps write PID files to, handed to them as `TOWER_CONFORMANCE_DIR`.
    shared: tempfile::TempDir,
    /// Executions created by the current check and not yet cleaned up.
    open: Mutex<Vec<Execution>>,
}

impl Session {
    /// Creates the session's backend from the settings and reads its capabilities.
    pub async fn new(plugin: Arc<LoadedPlugin>, settings_json: String) -> Result<Self, String> {
        let backend = Backend::new(Arc::clone(&plugin), settings_json.clone()).await.map_err(|error| error.to_string())?;
        let capabilities = backend.capabilities().await.map_err(|error| error.to_string())?;
        let packages = tempfile::Builder::new()
            .prefix("tower-conformance-packages-")
            .tempdir()
            .map_err(|error| format!("failed to create a temp folder: {error}"))?;
        let shared = tempfile::Builder::new()
            .prefix("tower-conformance-shared-")
            .tempdir()
            .map_err(|error| format!("failed to create a temp folder: {error}"))?;
        Ok(Self { plugin, settings_json, backend, capabilities, packages, shared, open: Mutex::new(Vec::new()) })
    }

    /// Returns the folder packed apps go to.
    pub fn package_dir(&self) -> &Path {
        self.packages.path()
    }

    /// Returns the folder apps write their PID files to.
    pub fn shared_dir(&self) -> &Path {
        self.shared.path()
    }

    /// Returns a spec for `package` with a fresh run id and the kit's two environment variables.
    pub fn spec(&self, check: &str, package: PackageRef) -> ExecutionSpec {
        let token = format!("{}-{}", check.replace('_', "-"), uuid::Uuid::new_v4().simple());
        let mut spec = ExecutionSpec::new(format!("conformance-{token}"), package);
        spec.app_name = format!("conformance-{}", check.replace('_', "-")).into();
        spec.env.push(KeyValue::new("TOWER_CONFORMANCE_DIR", self.shared_dir().display().to_string()));
        spec.env.push(KeyValue::new("TOWER_CONFORMANCE_TOKEN", token));
        spec
    }

    /// Returns the token of a spec made by [`Session::spec`].
    pub fn token(spec: &ExecutionSpec) -> String {
        spec.env
            .iter()
            .find(|pair| pair.key == "TOWER_CONFORMANCE_TOKEN")
            .map(|pair| pair.value.to_string())
            .unwrap_or_default()
    }

    /// Returns the PID file path of the execution with `token`.
    pub fn pid_file(&self, token: &str) -> PathBuf {
        self.shared_dir().join(format!("{token}.pids"))
    }

    /// Creates an execution on the session's backend.
    pub async fn start(&self, spec: ExecutionSpec) -> Step<Run> {
        let token = Self::token(&spec);
        let (execution, stream) = self.backend.create(spec).await.map_err(|error| error.to_string())?;
        self.open.lock().expect("the list of open executions is never poisoned").push(execution.clone());
        Ok(Run { execution, stream, observed: Observed::default(), token })
    }

    /// Records an execution created on another backend instance, so that it is cleaned up.
    pub fn track(&self, execution: &Execution) {
        self.open.lock().expect("the list of open executions is never poisoned").push(execution.clone());
    }

    /// Runs `spec` to its end within `limit` and returns what it reported, after checking the
    /// order of its statuses and cleaning it up twice.
    pub async fn run_to_end(&self, spec: ExecutionSpec, limit: Duration) -> Step<Observed> {
        let mut run = self.start(spec).await?;
        run.wait_end(limit).await?;
        run.observed.check_order()?;
        self.cleanup(&run.execution).await?;
        Ok(run.observed)
    }

    /// Cleans an ended execution up twice: `cleanup` is valid after every ending and idempotent.
    pub async fn cleanup(&self, execution: &Execution) -> Step {
        for attempt in ["first", "second"] {
            execution
                .cleanup()
                .await
                .map_err(|error| format!("the {attempt} cleanup of `{}` failed: {error}", execution.id()))?;
        }
        self.open.lock().expect("the list of open executions is never poisoned").retain(|open| open.id() != execution.id());
        Ok(())
    }

    /// Kills and cleans up every execution the current check left behind; errors are ignored,
    /// because the check already has its outcome.
    pub async fn release_open(&self) {
        let open = std::mem::take(&mut *self.open.lock().expect("the list of open executions is never poisoned"));
        for execution in open {
            let _ = tokio::time::timeout(Duration::from_secs(60), execution.kill()).await;
            let _ = tokio::time::timeout(Duration::from_secs(60), execution.cleanup()).await;
        }
    }
}

/// Everything an execution reported, in order.
#[derive(Debug, Default, Clone)]
pub struct Observed {
    /// Every status, in order; the last one is terminal once the execution ended.
    pub statuses: Vec<ExecutionStatus>,
    /// Every log record, in order.
    pub records: Vec<LogRecord>,
}

impl Observed {
    /// Returns the terminal status, if the execution ended.
    pub fn terminal(&self) -> Option<&ExecutionStatus> {
        self.statuses.last().filter(|status| status.is_terminal())
    }

    /// Returns the terminal state; an error when the execution has not ended or the state is of
    /// a newer contract version.
    pub fn terminal_state(&self) -> Step<&ExecutionState> {
        let terminal = self.terminal().ok_or("the execution has not ended")?;
        terminal.state().ok_or_else(|| "the terminal state is of a newer contract version".to_string())
    }

    /// Returns the text of the records of the program channel.
    pub fn program_lines(&self) -> Vec<&str> {
        self.records
            .iter()
            .filter(|record| record.channel == tower_plugin_api::Channel::Program)
            .map(|record| record.line.as_str())
            .collect()
    }

    /// Tells whether the program printed `line`.
    pub fn printed(&self, line: &str) -> bool {
        self.program_lines().contains(&line)
    }

    /// Checks the legal order of statuses: any number of `preparing`, then any number of
    /// `running`, then exactly one terminal status, last. It also checks that log sequence
    /// numbers start at 0 and have no gaps.
    pub fn check_order(&self) -> Step {
        let names: Vec<_> = self.statuses.iter().map(|status| status.name()).collect();
        let mut seen_running = false;
        for (index, status) in self.statuses.iter().enumerate() {
            let last = index + 1 == self.statuses.len();
            match status.state() {
                Some(ExecutionState::Preparing { .. }) if seen_running => {
                    return Err(format!("`preparing` came after `running`: {names:?}"));
                }
                Some(ExecutionState::Running) => seen_running = true,
                _ if status.is_terminal() && !last => return Err(format!("a status came after the terminal status: {names:?}")),
                _ => {}
            }
        }
        if self.terminal().is_none() {
            return Err(format!("no terminal status: {names:?}"));
        }
        for (expected, record) in self.records.iter().enumerate() {
            if record.seq != expected as u64 {
                return Err(format!("log record {expected} has sequence number {}; numbers start at 0 without gaps", record.seq));
            }
        }
        Ok(())
    }
}

/// Describes a status for messages: its name and fields, without times and metadata.
pub fn describe(status: &ExecutionStatus) -> String {
    let mut json = serde_json::to_value(status).unwrap_or_default();
    let Some(fields) = json.as_object_mut() else { return status.name().to_string() };
    for key in ["state", "started_at", "ended_at", "metadata"] {
        fields.remove(key);
    }
    if fields.is_empty() {
        status.name().to_string()
    } else {
        format!("{} {}", status.name(), serde_json::Value::Object(fields.clone()))
    }
}

/// One execution being driven: its handle, its event stream and what arrived so far.
pub struct Run {
    /// The handle.
    pub execution: Execution,
    stream: EventStream,
    /// The events that arrived so far.
    pub observed: Observed,
    /// The execution's `TOWER_CONFORMANCE_TOKEN`.
    pub token: String,
}

impl Run {
    /// Wraps an execution recovered on another backend instance.
    pub fn recovered(execution: Execution, stream: EventStream, token: String) -> Self {
        Self { execution, stream, observed: Observed::default(), token }
    }

    /// Waits up to `limit` until `condition` holds for what arrived. Fails when the execution
    /// ends first or the time runs out, naming `what`.
    pub async fn wait_for(&mut self, limit: Duration, what: &str, condition: impl Fn(&Observed) -> bool) -> Step {
        let deadline = Instant::now() + limit;
        loop {
            if condition(&self.observed) {
                return Ok(());
            }
            if let Some(terminal) = self.observed.terminal() {
                return Err(format!("the execution ended as {} before {what}", describe(terminal)));
            }
            let event = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .map_err(|_| format!("timed out after {limit:?} waiting for {what}"))?;
            match event {
                Some(ExecutionEvent::Logs(records)) => self.observed.records.extend(records.iter().map(|line| line.to_record())),
                Some(ExecutionEvent::Status(status)) => self.observed.statuses.push(status),
                None => return Err(format!("the event stream closed before {what}")),
            }
        }
    }

    /// Waits up to `limit` for the program to print `line`.
    pub async fn wait_for_line(&mut self, limit: Duration, line: &str) -> Step {
        self.wait_for(limit, &format!("the app printed `{line}`"), |observed| observed.printed(line)).await
    }

    /// Waits up to `limit` for the terminal status and returns it.
    pub async fn wait_end(&mut self, limit: Duration) -> Step<ExecutionStatus> {
        let deadline = Instant::now() + limit;
        while self.observed.terminal().is_none() {
            let event = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .map_err(|_| format!("timed out after {limit:?} waiting for the terminal status"))?;
            match event {
                Some(ExecutionEvent::Logs(records)) => self.observed.records.extend(records.iter().map(|line| line.to_record())),
                Some(ExecutionEvent::Status(status)) => self.observed.statuses.push(status),
                None => return Err("the event stream closed without a terminal status".to_string()),
            }
        }
        Ok(self.observed.terminal().cloned().expect("the loop ends on a terminal status"))
    }

    /// Reads the PID file of this execution's app, if it exists on this machine.
    pub fn read_pids(&self, session: &Session) -> Option<Vec<(String, i32)>> {
        let text = std::fs::read_to_string(session.pid_file(&self.token)).ok()?;
        let pids = text
            .lines()
            .filter_map(|line| {
                let (role, pid) = line.split_once(' ')?;
                Some((role.to_string(), pid.trim().parse().ok()?))
            })
            .collect();
        Some(pids)
    }
}
