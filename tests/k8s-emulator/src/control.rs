//! The control API under `/_emulator`, for tests: faults, request counts and actions on pods
//! that happen behind the client's back. It is not part of Kubernetes, and its requests are not
//! counted.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use serde_json::{json, Value};

use crate::api_error::ApiError;
use crate::cluster::Cluster;
use crate::faults::FaultRequest;
use crate::store::Kind;
use crate::{kubelet, meta, pods};

pub fn router() -> Router<Arc<Cluster>> {
    Router::new()
        .route(
            "/_emulator/faults",
            get(list_faults).post(inject_fault).delete(clear_faults),
        )
        .route("/_emulator/faults/{id}", delete(remove_fault))
        .route(
            "/_emulator/requests",
            get(request_counts).delete(reset_request_counts),
        )
        .route(
            "/_emulator/pods/{namespace}/{name}/containers",
            get(containers),
        )
        .route(
            "/_emulator/pods/{namespace}/{name}/oom-kill",
            post(oom_kill),
        )
        .route("/_emulator/pods/{namespace}/{name}/evict", post(evict))
        .route(
            "/_emulator/pods/{namespace}/{name}/delete",
            post(delete_pod),
        )
}

fn json_response(code: StatusCode, value: Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

fn optional_body(body: &Bytes) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(body)
        .map_err(|error| ApiError::bad_request(format!("invalid JSON body: {error}")))
}

async fn list_faults(State(cluster): State<Arc<Cluster>>) -> Response {
    json_response(StatusCode::OK, json!(cluster.faults().list()))
}

async fn inject_fault(State(cluster): State<Arc<Cluster>>, body: Bytes) -> Response {
    let request: FaultRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(error) => {
            return ApiError::bad_request(format!("invalid fault: {error}")).into_response()
        }
    };
    tracing::info!(fault = ?request.fault, times = ?request.times, "fault injected");
    let id = cluster.faults().inject(request.fault, request.times);
    json_response(StatusCode::CREATED, json!({"id": id}))
}

async fn clear_faults(State(cluster): State<Arc<Cluster>>) -> Response {
    cluster.faults().clear();
    StatusCode::NO_CONTENT.into_response()
}

async fn remove_fault(State(cluster): State<Arc<Cluster>>, Path(id): Path<u64>) -> Response {
    if cluster.faults().remove(id) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        ApiError::new(404, "NotFound", format!("fault {id} not found")).into_response()
    }
}

async fn request_counts(State(cluster): State<Arc<Cluster>>) -> Response {
    let counts = cluster.requests.lock().expect("request count lock").clone();
    let list: Vec<Value> = counts
        .iter()
        .map(|(verb, resource, count)| json!({"verb": verb, "resource": resource, "count": count}))
        .collect();
    json_response(StatusCode::OK, json!(list))
}

async fn reset_request_counts(State(cluster): State<Arc<Cluster>>) -> Response {
    *cluster.requests.lock().expect("request count lock") = Default::default();
    StatusCode::NO_CONTENT.into_response()
}

fn pod_uid(cluster: &Cluster, namespace: &str, name: &str) -> Result<String, ApiError> {
    cluster
        .store()
        .get(Kind::Pod, namespace, name)
        .map(|pod| meta::uid(pod).to_owned())
        .ok_or_else(|| ApiError::not_found("pods", name))
}

/// Kills a running container as out of memory.
pub fn oom_kill_pod(
    cluster: &Cluster,
    namespace: &str,
    name: &str,
    container: Option<&str>,
) -> Result<(), ApiError> {
    let uid = pod_uid(cluster, namespace, name)?;
    if kubelet::oom_kill(cluster, &uid, container) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "pod {namespace}/{name} has no running container to kill"
        )))
    }
}

/// Evicts a pod as the kubelet does under node pressure.
pub fn evict_pod(
    cluster: &Cluster,
    namespace: &str,
    name: &str,
    message: Option<String>,
) -> Result<(), ApiError> {
    let uid = pod_uid(cluster, namespace, name)?;
    if kubelet::evict(cluster, &uid, message) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "pod {namespace}/{name} no longer runs"
        )))
    }
}

/// Deletes a pod as someone else would, with `grace` seconds (0 unless set).
pub async fn delete_pod_behind(
    cluster: &Arc<Cluster>,
    namespace: &str,
    name: &str,
    grace: i64,
) -> Result<Value, ApiError> {
    tracing::info!(
        namespace,
        pod = name,
        grace,
        "deleting a pod behind the client's back"
    );
    pods::delete(cluster, namespace, name, Some(grace)).await
}

async fn containers(
    State(cluster): State<Arc<Cluster>>,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    let uid = match pod_uid(&cluster, &namespace, &name) {
        Ok(uid) => uid,
        Err(error) => return error.into_response(),
    };
    let Some(pod) = cluster.kubelet.pod(&uid) else {
        return json_response(StatusCode::OK, json!([]));
    };
    let list: Vec<Value> = pod
        .containers
        .iter()
        .map(|container| {
            let terminated_at = container
                .terminated_at()
                .map(|time| meta::format_nanos(meta::from_system_time(time)));
            json!({"name": container.name, "terminatedAt": terminated_at})
        })
        .collect();
    json_response(StatusCode::OK, json!(list))
}

async fn oom_kill(
    State(cluster): State<Arc<Cluster>>,
    Path((namespace, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let result = optional_body(&body)
        .and_then(|body| oom_kill_pod(&cluster, &namespace, &name, body["container"].as_str()));
    match result {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(error) => error.into_response(),
    }
}

async fn evict(
    State(cluster): State<Arc<Cluster>>,
    Path((namespace, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let result = optional_body(&body).and_then(|body| {
        evict_pod(
            &cluster,
            &namespace,
            &name,
            body["message"].as_str().map(str::to_owned),
        )
    });
    match result {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(error) => error.into_response(),
    }
}

async fn delete_pod(
    State(cluster): State<Arc<Cluster>>,
    Path((namespace, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let grace = match optional_body(&body) {
        Ok(body) => body["gracePeriodSeconds"].as_i64().unwrap_or(0),
        Err(error) => return error.into_response(),
    };
    match delete_pod_behind(&cluster, &namespace, &name, grace).await {
        Ok(object) => json_response(StatusCode::OK, object),
        Err(error) => error.into_response(),
    }
}
