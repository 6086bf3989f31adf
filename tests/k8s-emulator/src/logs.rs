//! Container logs: the buffer the kubelet fills from a container's output, and the
//! `pods/{name}/log` route.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use k8s_openapi::jiff::Timestamp;
use serde_json::Value;
use tokio::sync::{mpsc, watch};

use crate::api_error::ApiError;
use crate::cluster::Cluster;
use crate::faults::Fault;
use crate::kubelet::{self, status::ContainerPhase};
use crate::meta;
use crate::store::Kind;

/// The container runtime splits longer lines into partial entries; each is its own log entry.
const MAX_ENTRY_BYTES: usize = 16 * 1024;

/// One log entry: a line with its newline, or a partial line cut at `MAX_ENTRY_BYTES` or at the
/// end of the output.
#[derive(Clone, Debug)]
pub struct LogEntry {
    pub time: Timestamp,
    pub bytes: Bytes,
}

#[derive(Default)]
struct LogState {
    entries: Vec<LogEntry>,
    partial: Vec<u8>,
    closed: bool,
}

/// The output of one container, in the order the container wrote it.
pub struct ContainerLog {
    state: Mutex<LogState>,
    version: watch::Sender<u64>,
}

impl Default for ContainerLog {
    fn default() -> Self {
        Self {
            state: Mutex::default(),
            version: watch::channel(0).0,
        }
    }
}

impl ContainerLog {
    fn notify(&self) {
        self.version.send_modify(|version| *version += 1);
    }

    /// Adds output; complete lines become entries at once, the rest waits for its newline.
    pub fn append(&self, chunk: &[u8]) {
        let mut state = self.state.lock().expect("log lock");
        if state.closed {
            return;
        }
        let now = crate::meta::now();
        for byte in chunk {
            state.partial.push(*byte);
            if *byte == b'\n' || state.partial.len() >= MAX_ENTRY_BYTES {
                let bytes = Bytes::from(std::mem::take(&mut state.partial));
                state.entries.push(LogEntry { time: now, bytes });
            }
        }
        drop(state);
        self.notify();
    }

    /// Ends the log: a last line without newline becomes an entry, and followers stop.
    pub fn close(&self) {
        let mut state = self.state.lock().expect("log lock");
        if state.closed {
            return;
        }
        if !state.partial.is_empty() {
            let bytes = Bytes::from(std::mem::take(&mut state.partial));
            state.entries.push(LogEntry {
                time: crate::meta::now(),
                bytes,
            });
        }
        state.closed = true;
        drop(state);
        self.notify();
    }

    /// Returns the entries from `index` on, and whether the log is closed.
    pub fn entries_from(&self, index: usize) -> (Vec<LogEntry>, bool) {
        let state = self.state.lock().expect("log lock");
        (
            state
                .entries
                .get(index..)
                .map(<[_]>::to_vec)
                .unwrap_or_default(),
            state.closed,
        )
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Returns the whole output so far as text, without timestamps.
    pub fn text(&self) -> String {
        let state = self.state.lock().expect("log lock");
        let mut bytes: Vec<u8> = state
            .entries
            .iter()
            .flat_map(|e| e.bytes.to_vec())
            .collect();
        bytes.extend_from_slice(&state.partial);
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

fn flag(query: &HashMap<String, String>, key: &str) -> bool {
    query
        .get(key)
        .is_some_and(|value| value == "true" || value == "1")
}

fn number(query: &HashMap<String, String>, key: &str) -> Result<Option<i64>, ApiError> {
    query
        .get(key)
        .map(|value| {
            value.parse::<i64>().map_err(|_| {
                ApiError::bad_request(format!(
                    "invalid value for {key}: {value:?} is not an integer"
                ))
            })
        })
        .transpose()
}

/// Picks the container a log or attach request means, with the API server's errors.
pub fn select_container(pod: &Value, requested: Option<&str>) -> Result<String, ApiError> {
    let names = |field: &str| -> Vec<String> {
        pod["spec"][field]
            .as_array()
            .map(|list| {
                list.iter()
                    .filter_map(|c| c["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let containers = names("containers");
    let init_containers = names("initContainers");
    let pod_name = meta::name(pod);
    match requested {
        Some(name) if containers.iter().chain(&init_containers).any(|c| c == name) => {
            Ok(name.to_owned())
        }
        Some(name) => Err(ApiError::bad_request(format!(
            "container {name} is not valid for pod {pod_name}"
        ))),
        None if containers.len() == 1 => Ok(containers[0].clone()),
        None => {
            let mut message = format!(
                "a container name must be specified for pod {pod_name}, choose one of: [{}]",
                containers.join(" ")
            );
            if !init_containers.is_empty() {
                message.push_str(&format!(
                    " or one of the init containers: [{}]",
                    init_containers.join(" ")
                ));
            }
            Err(ApiError::bad_request(message))
        }
    }
}

/// Builds the kubelet's error for the output of a container that has not started.
pub fn waiting_error(container: &str, pod: &str, reason: &str) -> ApiError {
    let reason = match reason {
        "ErrImagePull" | "ImagePullBackOff" => "trying and failing to pull image",
        "InvalidImageName" => "image can't be pulled",
        other => other,
    };
    ApiError::bad_request(format!(
        "container \"{container}\" in pod \"{pod}\" is waiting to start: {reason}"
    ))
}

/// Where a stream stops early because a `BrokenLogStream` fault fired.
struct Break {
    after_lines: u64,
    abort: bool,
}

/// `GET /api/v1/namespaces/{namespace}/pods/{name}/log`.
pub async fn pod_log(
    State(cluster): State<Arc<Cluster>>,
    Path((namespace, name)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let pod = cluster
        .store()
        .get(Kind::Pod, &namespace, &name)
        .cloned()
        .ok_or_else(|| ApiError::not_found("pods", &name))?;
    let container = select_container(&pod, query.get("container").map(String::as_str))?;
    if flag(&query, "previous") {
        return Err(ApiError::bad_request(format!(
            "previous terminated container \"{container}\" in pod \"{name}\" not found"
        )));
    }
    let follow = flag(&query, "follow");
    let timestamps = flag(&query, "timestamps");
    let tail_lines = number(&query, "tailLines")?;
    let limit_bytes = number(&query, "limitBytes")?;
    let since = match (query.get("sinceTime"), number(&query, "sinceSeconds")?) {
        (Some(text), _) => Some(text.parse::<Timestamp>().map_err(|error| {
            ApiError::bad_request(format!("invalid sinceTime {text:?}: {error}"))
        })?),
        (None, Some(seconds)) => Some(meta::add_seconds(meta::now(), -seconds.max(0))),
        (None, None) => None,
    };

    // A pod that no node runs has no log yet; the API server returns an empty body for it.
    if pod["spec"]["nodeName"].as_str().unwrap_or("").is_empty() {
        return Ok(text_response(Body::empty()));
    }
    let runtime = kubelet::container(&cluster, meta::uid(&pod), &container);
    let Some((pod_runtime, container_runtime)) = runtime else {
        return Err(waiting_error(&container, &name, "ContainerCreating"));
    };
    if !container_runtime.has_started() {
        let status = pod_runtime.status.lock().expect("status lock");
        let reason = match status.container(&container).map(|c| c.phase.clone()) {
            Some(ContainerPhase::Waiting { reason, .. }) => reason,
            _ => "ContainerCreating".to_owned(),
        };
        return Err(waiting_error(&container, &name, &reason));
    }

    let broken = follow
        .then(|| {
            cluster.fire_fault(|fault| match fault {
                Fault::BrokenLogStream {
                    pods,
                    container: only,
                    ..
                } => pods.matches(&pod) && only.as_deref().is_none_or(|c| c == container),
                _ => false,
            })
        })
        .flatten()
        .and_then(|(_, fault)| match fault {
            Fault::BrokenLogStream {
                after_lines, abort, ..
            } => Some(Break { after_lines, abort }),
            _ => None,
        });

    let (sender, receiver) = mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    let log = container_runtime.clone();
    tokio::spawn(async move {
        let options = StreamOptions {
            follow,
            timestamps,
            tail_lines,
            limit_bytes,
            since,
            broken,
        };
        stream_log(&log.log, options, sender).await;
    });
    let body = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|item| (item, receiver))
    });
    Ok(text_response(Body::from_stream(body)))
}

fn text_response(body: Body) -> Response {
    ([(header::CONTENT_TYPE, "text/plain")], body).into_response()
}

struct StreamOptions {
    follow: bool,
    timestamps: bool,
    tail_lines: Option<i64>,
    limit_bytes: Option<i64>,
    since: Option<Timestamp>,
    broken: Option<Break>,
}

/// Writes log entries into `sender` until the log ends (with `follow`) or the kept entries
/// are sent, honouring the request's filters.
async fn stream_log(
    log: &ContainerLog,
    options: StreamOptions,
    sender: mpsc::Sender<Result<Bytes, std::io::Error>>,
) {
    let mut changes = log.subscribe();
    let (entries, _) = log.entries_from(0);
    let first_recent = match options.since {
        Some(since) => entries
            .iter()
            .position(|e| e.time >= since)
            .unwrap_or(entries.len()),
        None => 0,
    };
    let first_tail = match options.tail_lines {
        Some(tail) => entries.len().saturating_sub(tail.max(0) as usize),
        None => 0,
    };
    let mut index = first_recent.max(first_tail);
    let mut remaining_bytes = options.limit_bytes.map(|limit| limit.max(0) as usize);
    let mut lines_sent = 0u64;
    loop {
        changes.borrow_and_update();
        let (entries, closed) = log.entries_from(index);
        for entry in entries {
            index += 1;
            let mut bytes = if options.timestamps {
                let mut line = format!("{} ", meta::format_nanos(entry.time)).into_bytes();
                line.extend_from_slice(&entry.bytes);
                Bytes::from(line)
            } else {
                entry.bytes.clone()
            };
            if let Some(remaining) = remaining_bytes.as_mut() {
                if bytes.len() >= *remaining {
                    bytes.truncate(*remaining);
                    let _ = sender.send(Ok(bytes)).await;
                    return;
                }
                *remaining -= bytes.len();
            }
            if sender.send(Ok(bytes)).await.is_err() {
                return;
            }
            lines_sent += 1;
            if let Some(broken) = &options.broken {
                if lines_sent >= broken.after_lines {
                    tracing::info!(
                        lines = lines_sent,
                        abort = broken.abort,
                        "breaking a log stream as a fault"
                    );
                    if broken.abort {
                        let error = std::io::Error::new(
                            std::io::ErrorKind::ConnectionReset,
                            "log stream broken by a fault",
                        );
                        let _ = sender.send(Err(error)).await;
                    }
                    return;
                }
            }
        }
        if !options.follow || closed {
            return;
        }
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = sender.closed() => return,
        }
    }
}
