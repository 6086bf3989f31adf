//! The HTTP router: discovery, the core v1 resource routes, the control API, and the gate every
//! API request passes (request counting and injected 403 and 5xx errors).

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use k8s_openapi::jiff::Timestamp;
use serde_json::{json, Value};

use crate::api_error::ApiError;
use crate::cluster::Cluster;
use crate::faults::{pattern_matches, Fault, DEFAULT_FORBIDDEN_USER};
use crate::requests::{classify, RequestInfo};
use crate::{attach, control, logs, meta, resources};

pub fn router(cluster: Arc<Cluster>) -> Router {
    let api = Router::new()
        .route("/version", get(version))
        .route("/api", get(api_versions))
        .route("/api/v1", get(api_resources))
        .route("/apis", get(api_groups))
        .route("/healthz", get(health))
        .route("/livez", get(health))
        .route("/readyz", get(health))
        .route("/api/v1/namespaces/{namespace}", get(namespace))
        .route("/api/v1/{resource}", get(resources::collection_all))
        .route(
            "/api/v1/namespaces/{namespace}/{resource}",
            get(resources::collection).post(resources::create),
        )
        .route(
            "/api/v1/namespaces/{namespace}/{resource}/{name}",
            get(resources::get)
                .put(resources::replace)
                .patch(resources::patch)
                .delete(resources::delete),
        )
        .route(
            "/api/v1/namespaces/{namespace}/pods/{name}/log",
            get(logs::pod_log),
        )
        .route(
            "/api/v1/namespaces/{namespace}/pods/{name}/status",
            get(resources::get_pod_status),
        )
        .route(
            "/api/v1/namespaces/{namespace}/pods/{name}/attach",
            get(attach::pod_attach).post(attach::pod_attach),
        )
        .layer(middleware::from_fn_with_state(cluster.clone(), gate));
    api.merge(control::router()).with_state(cluster)
}

/// Builds the error with which an `ApiError` or `Forbidden` fault fails a request.
fn injected_error(fault: &Fault, info: &RequestInfo) -> Option<ApiError> {
    match fault {
        Fault::ApiError { code, message, .. } => {
            let message = message.clone().unwrap_or_else(|| match code {
                503 => "the server is currently unable to handle the request".to_owned(),
                504 => "the server was unable to return a response in the time allotted, but may still be processing the request".to_owned(),
                429 => "Too many requests, please try again later.".to_owned(),
                _ => "Internal error occurred: an injected fault failed the request".to_owned(),
            });
            Some(ApiError::new(
                *code,
                ApiError::reason_for_code(*code),
                message,
            ))
        }
        Fault::Forbidden { user, .. } => {
            let user = user.as_deref().unwrap_or(DEFAULT_FORBIDDEN_USER);
            let base = info.resource.split('/').next().unwrap_or("");
            let subject = match &info.name {
                Some(name) => format!("{base} \"{name}\""),
                None => base.to_owned(),
            };
            let scope = match &info.namespace {
                Some(namespace) => format!("in the namespace \"{namespace}\""),
                None => "at the cluster scope".to_owned(),
            };
            let message = format!(
                "{subject} is forbidden: User \"{user}\" cannot {} resource \"{}\" in API group \"\" {scope}",
                info.verb, info.resource
            );
            let details = json!({"name": info.name.clone().unwrap_or_default(), "kind": base});
            Some(ApiError::new(403, "Forbidden", message).with_details(details))
        }
        _ => None,
    }
}

/// Counts each API request and fails it when an armed fault matches it.
async fn gate(State(cluster): State<Arc<Cluster>>, request: Request, next: Next) -> Response {
    let info = classify(
        request.method(),
        request.uri().path(),
        request.uri().query(),
    );
    cluster
        .requests
        .lock()
        .expect("request count lock")
        .record(&info);
    let fired = cluster.fire_fault(|fault| match fault {
        Fault::ApiError { verb, resource, .. } | Fault::Forbidden { verb, resource, .. } => {
            pattern_matches(verb, &info.verb) && pattern_matches(resource, &info.resource)
        }
        _ => false,
    });
    if let Some(error) = fired.and_then(|(_, fault)| injected_error(&fault, &info)) {
        tracing::info!(verb = %info.verb, resource = %info.resource, code = error.code, "failing a request as a fault");
        return error.into_response();
    }
    next.run(request).await
}

fn json_response(value: Value) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

async fn version() -> Response {
    json_response(json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0-k8s-emulator",
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "",
        "compiler": "rustc",
        "platform": "linux/amd64",
    }))
}

async fn api_versions() -> Response {
    json_response(
        json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}),
    )
}

async fn api_groups() -> Response {
    json_response(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": []}))
}

async fn health() -> Response {
    (StatusCode::OK, "ok").into_response()
}

async fn api_resources() -> Response {
    let object_verbs = json!(["create", "delete", "get", "list", "patch", "update", "watch"]);
    json_response(json!({
        "kind": "APIResourceList",
        "groupVersion": "v1",
        "resources": [
            {"name": "namespaces", "singularName": "namespace", "namespaced": false, "kind": "Namespace", "verbs": ["get"], "shortNames": ["ns"]},
            {"name": "pods", "singularName": "pod", "namespaced": true, "kind": "Pod", "verbs": object_verbs, "shortNames": ["po"], "categories": ["all"]},
            {"name": "pods/attach", "singularName": "", "namespaced": true, "kind": "PodAttachOptions", "verbs": ["create", "get"]},
            {"name": "pods/log", "singularName": "", "namespaced": true, "kind": "Pod", "verbs": ["get"]},
            {"name": "pods/status", "singularName": "", "namespaced": true, "kind": "Pod", "verbs": ["get"]},
            {"name": "secrets", "singularName": "secret", "namespaced": true, "kind": "Secret", "verbs": object_verbs},
            {"name": "services", "singularName": "service", "namespaced": true, "kind": "Service", "verbs": object_verbs, "shortNames": ["svc"], "categories": ["all"]},
        ],
    }))
}

/// Returns an active Namespace for any valid name, because the emulator does not store
/// namespaces.
async fn namespace(Path(name): Path<String>) -> Response {
    if let Some(problem) = meta::check_dns1123_label(&name) {
        return ApiError::bad_request(format!("invalid namespace name {name:?}: {problem}"))
            .into_response();
    }
    json_response(json!({
        "kind": "Namespace",
        "apiVersion": "v1",
        "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}, "creationTimestamp": meta::format_seconds(Timestamp::UNIX_EPOCH)},
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    }))
}
