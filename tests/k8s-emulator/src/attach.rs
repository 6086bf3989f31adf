//! `pods/{name}/attach` over a WebSocket with the `v5.channel.k8s.io` or `v4.channel.k8s.io`
//! subprotocol. Each binary message starts with its channel: 0 stdin, 1 stdout, 2 stderr,
//! 3 the error channel that carries the final `Status`, 4 terminal resize, and in v5 255 to
//! close a channel (`[255, 0]` ends stdin).
//!
//! A container's stdout and stderr share one pipe, so all output goes out on channel 1 when
//! stdout is requested (channel 2 when only stderr is).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::sync::broadcast::error::RecvError;

use crate::api_error::ApiError;
use crate::cluster::Cluster;
use crate::kubelet::{self, ContainerRuntime, Progress};
use crate::logs::{select_container, waiting_error};
use crate::meta;
use crate::store::Kind;

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const CLOSE: u8 = 255;

const V5: &str = "v5.channel.k8s.io";
const V4: &str = "v4.channel.k8s.io";

fn flag(query: &HashMap<String, String>, key: &str) -> bool {
    query.get(key).is_some_and(|v| v == "true" || v == "1")
}

/// `GET` (or `POST`) `/api/v1/namespaces/{namespace}/pods/{name}/attach`.
pub async fn pod_attach(
    State(cluster): State<Arc<Cluster>>,
    Path((namespace, name)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    match prepare(&cluster, &namespace, &name, &query, upgrade) {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

fn prepare(
    cluster: &Arc<Cluster>,
    namespace: &str,
    name: &str,
    query: &HashMap<String, String>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let pod = cluster
        .store()
        .get(Kind::Pod, namespace, name)
        .cloned()
        .ok_or_else(|| ApiError::not_found("pods", name))?;
    let container_name = select_container(&pod, query.get("container").map(String::as_str))?;
    let (want_stdin, want_stdout, want_stderr) = (
        flag(query, "stdin"),
        flag(query, "stdout"),
        flag(query, "stderr"),
    );
    if !want_stdin && !want_stdout && !want_stderr {
        return Err(ApiError::bad_request(
            "you must specify at least 1 of stdin, stdout, stderr",
        ));
    }

    let Some((pod_runtime, container)) =
        kubelet::container(cluster, meta::uid(&pod), &container_name)
    else {
        return Err(waiting_error(&container_name, name, "ContainerCreating"));
    };
    match *container.progress.borrow() {
        Progress::NotStarted => {
            let status = pod_runtime.status.lock().expect("status lock");
            let reason = match status.container(&container_name).map(|c| c.phase.clone()) {
                Some(kubelet::status::ContainerPhase::Waiting { reason, .. }) => reason,
                _ => "ContainerCreating".to_owned(),
            };
            return Err(waiting_error(&container_name, name, &reason));
        }
        Progress::Exited => {
            return Err(ApiError::bad_request(format!(
                "container \"{container_name}\" in pod \"{name}\" is not running: it has terminated"
            )));
        }
        Progress::Running => {}
    }

    if want_stdin && !container.spec.stdin.unwrap_or(false) {
        return Err(ApiError::bad_request(format!(
            "container \"{container_name}\" in pod \"{name}\" was not created with stdin: true, so it cannot attach to stdin"
        )));
    }

    let upgrade = upgrade.map_err(|_| ApiError::bad_request("Upgrade request required"))?;
    let upgrade = upgrade.protocols([V5, V4]);
    let protocol = match upgrade.selected_protocol().and_then(|p| p.to_str().ok()) {
        Some(protocol) => protocol.to_owned(),
        None => {
            let requested: Vec<String> = upgrade
                .requested_protocols()
                .filter_map(|p| p.to_str().ok().map(str::to_owned))
                .collect();
            return Err(ApiError::bad_request(format!(
                "requested protocol(s) are not supported: {requested:?}; supports [{V5} {V4}]"
            )));
        }
    };

    tracing::info!(namespace, pod = name, container = %container_name, %protocol, stdin = want_stdin, "attach session starts");
    let session = Session {
        container,
        v5: protocol == V5,
        stdin: want_stdin,
        output_channel: if want_stdout {
            Some(STDOUT)
        } else if want_stderr {
            Some(STDERR)
        } else {
            None
        },
    };
    Ok(upgrade.on_upgrade(move |socket| session.run(socket)))
}

struct Session {
    container: Arc<ContainerRuntime>,
    v5: bool,
    stdin: bool,
    output_channel: Option<u8>,
}

fn frame(channel: u8, data: &[u8]) -> Message {
    let mut bytes = Vec::with_capacity(data.len() + 1);
    bytes.push(channel);
    bytes.extend_from_slice(data);
    Message::Binary(Bytes::from(bytes))
}

impl Session {
    /// Ends this session's hold on stdin: with `stdinOnce` the container's stdin closes.
    async fn release_stdin(&self, owns_stdin: bool) {
        if owns_stdin && self.container.spec.stdin_once.unwrap_or(false) {
            self.container.stdin.lock().await.take();
        }
    }

    async fn run(self, socket: WebSocket) {
        let mut output = self.container.output.subscribe();
        let mut progress = self.container.progress.subscribe();
        let (mut sender, mut receiver) = socket.split();
        let owns_stdin = self.stdin && !self.container.stdin_claimed.swap(true, Ordering::SeqCst);

        // The API server opens each channel with an empty message on it.
        let mut opening: Vec<u8> = self.output_channel.into_iter().collect();
        opening.push(ERROR);
        for channel in opening {
            if sender.send(frame(channel, &[])).await.is_err() {
                self.release_stdin(owns_stdin).await;
                return;
            }
        }

        let mut stdin_open = self.stdin;
        loop {
            tokio::select! {
                message = receiver.next() => {
                    match message {
                        Some(Ok(Message::Binary(data))) if !data.is_empty() => {
                            match data[0] {
                                STDIN if stdin_open && data.len() > 1 => {
                                    let mut stdin = self.container.stdin.lock().await;
                                    if let Some(pipe) = stdin.as_mut() {
                                        if pipe.write_all(&data[1..]).await.is_err() || pipe.flush().await.is_err() {
                                            stdin.take();
                                        }
                                    }
                                }
                                CLOSE if self.v5 && data.get(1) == Some(&STDIN) => {
                                    stdin_open = false;
                                    self.release_stdin(owns_stdin).await;
                                }
                                _ => {}
                            }
                        }
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                            self.release_stdin(owns_stdin).await;
                            tracing::info!(container = %self.container.name, "attach client disconnected");
                            return;
                        }
                        Some(Ok(_)) => {}
                    }
                }
                chunk = output.recv() => {
                    match chunk {
                        Ok(chunk) => {
                            if let Some(channel) = self.output_channel {
                                if sender.send(frame(channel, &chunk)).await.is_err() {
                                    self.release_stdin(owns_stdin).await;
                                    return;
                                }
                            }
                        }
                        Err(RecvError::Lagged(skipped)) => {
                            tracing::warn!(container = %self.container.name, skipped, "attach client fell behind; output chunks dropped");
                        }
                        Err(RecvError::Closed) => {}
                    }
                }
                exited = async { progress.wait_for(|p| *p == Progress::Exited).await.is_ok() } => {
                    if !exited {
                        return;
                    }
                    break;
                }
            }
        }

        // The reader has put every output chunk in the channel before the container counts as
        // exited, so what is left there is the rest of the output.
        while let Ok(chunk) = output.try_recv() {
            if let Some(channel) = self.output_channel {
                if sender.send(frame(channel, &chunk)).await.is_err() {
                    return;
                }
            }
        }
        let status = serde_json::json!({"metadata": {}, "status": "Success"}).to_string();
        let _ = sender.send(frame(ERROR, status.as_bytes())).await;
        let _ = sender.send(Message::Close(None)).await;
        tracing::info!(container = %self.container.name, "attach session ended with the container");
    }
}
