//! The HTTP routes under `/v1`.

use super::auth::{self, BearerToken};
use super::context::ServeContext;
use super::create;
use super::error::ApiError;
use super::fanout::{self, CursorQuery};
use super::metrics;
use super::openapi;
use super::registry::{Entry, StopRequest};
use super::retention::{self, RemoveError};
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

/// Every route as (method, path), in the form of the OpenAPI document.
pub const ROUTES: [(&str, &str); 12] = [
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
/// Maximum time the health route waits for the backend's probe.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(10);
/// Default and maximum page size of the execution list.
const DEFAULT_LIST_LIMIT: usize = 1000;
const MAX_LIST_LIMIT: usize = 10_000;
/// Maximum grace period of a terminate request: one day.
const MAX_GRACE: Duration = Duration::from_secs(24 * 60 * 60);
/// State names a list filter accepts, besides `active` and `finished`.
const STATE_NAMES: [&str; 8] = ["preparing", "running", "exited", "crashed", "cancelled", "timed_out", "failed", "lost"];

/// Builds the router; with a token, every request must carry it.
pub fn router(ctx: Arc<ServeContext>, token: Option<Arc<BearerToken>>) -> Router {
    let create_limit = create::body_limit(&ctx);
    let router = Router::new()
        .route("/v1/executions", post(create::create).layer(DefaultBodyLimit::max(create_limit)).get(list))
        .route("/v1/executions/{id}", get(get_one).delete(delete))
        .route("/v1/executions/{id}/logs", get(logs))
        .route("/v1/executions/{id}/events", get(events))
        .route("/v1/executions/{id}/terminate", post(terminate))
        .route("/v1/executions/{id}/kill", post(kill))
        .route("/v1/backend", get(backend))
        .route("/v1/health", get(health))
        .route("/v1/metrics", get(metrics_text))
        .route("/v1/openapi.json", get(openapi_document))
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(ctx);
    match token {
        Some(token) => router.layer(axum::middleware::from_fn_with_state(token, auth::require_bearer)),
        None => router,
    }
}

async fn route_not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::RouteNotFound { method: method.to_string(), path: uri.path().to_string() }
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed { method: method.to_string(), path: uri.path().to_string() }
}

fn find(ctx: &ServeContext, id: &str) -> Result<Arc<Entry>, ApiError> {
    ctx.registry.get(id).ok_or_else(|| ApiError::ExecutionNotFound(id.to_string()))
}

fn query_error(rejection: QueryRejection) -> ApiError {
    ApiError::InvalidRequest(format!("invalid query: {}", rejection.body_text()))
}

async fn get_one(State(ctx): State<Arc<ServeContext>>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let entry = find(&ctx, &id)?;
    Ok(Json(entry.view(ctx.config.retention)).into_response())
}

/// Query of the execution list.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// Comma-separated state names, or `active` and `finished`.
    state: Option<String>,
    /// Page size.
    limit: Option<usize>,
    /// The id after which the page starts, from `next_after` of the previous page.
    after: Option<String>,
}

async fn list(State(ctx): State<Arc<ServeContext>>, query: Result<Query<ListQuery>, QueryRejection>) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(query_error)?;
    let requested_states: Option<Vec<String>> = query.state.as_deref().map(|states| states.split(',').map(|state| state.trim().to_string()).collect());
    if let Some(states) = &requested_states {
        if let Some(unknown) = states.iter().find(|state| !STATE_NAMES.contains(&state.as_str()) && *state != "active" && *state != "finished") {
            return Err(ApiError::InvalidRequest(format!(
                "unknown state `{unknown}` in `state`; use {}, `active` or `finished`",
                STATE_NAMES.map(|name| format!("`{name}`")).join(", ")
            )));
        }
    }

    let limit = query.limit.unwrap_or(DEFAULT_LIST_LIMIT);
    if limit == 0 || limit > MAX_LIST_LIMIT {
        return Err(ApiError::InvalidRequest(format!("`limit` must be between 1 and {MAX_LIST_LIMIT}, got {limit}")));
    }

    let entries = ctx.registry.list();
    let start = match &query.after {
        Some(after) => {
            let order = ctx.registry.get(after).map(|entry| entry.order).ok_or_else(|| {
                ApiError::InvalidRequest(format!("`after` names execution `{after}`, which does not exist (any more); list from the start"))
            })?;
            entries.partition_point(|entry| entry.order <= order)
        }
        None => 0,
    };
    let matches = |entry: &Entry| {
        let Some(states) = &requested_states else { return true };
        let status = entry.status();
        states.iter().any(|state| match state.as_str() {
            "active" => !status.is_terminal(),
            "finished" => status.is_terminal(),
            name => status.name() == name,
        })
    };

    let mut page = Vec::new();
    let mut next_after = None;
    for entry in &entries[start..] {
        if !matches(entry) {
            continue;
        }
        if page.len() == limit {
            next_after = page.last().map(|view: &super::registry::ExecutionView| view.id.clone());
            break;
        }
        page.push(entry.view(ctx.config.retention));
    }
    Ok(Json(serde_json::json!({ "executions": page, "next_after": next_after })).into_response())
}

async fn logs(
    State(ctx): State<Arc<ServeContext>>,
    Path(id): Path<String>,
    query: Result<Query<CursorQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(query_error)?;
    let entry = find(&ctx, &id)?;
    Ok(fanout::ndjson_stream(&ctx, Arc::clone(&entry.logs), query.start()?, query.follow))
}

async fn events(
    State(ctx): State<Arc<ServeContext>>,
    Path(id): Path<String>,
    query: Result<Query<CursorQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(query_error)?;
    let entry = find(&ctx, &id)?;
    Ok(fanout::ndjson_stream(&ctx, Arc::clone(&entry.events), query.start()?, query.follow))
}

/// Body of a terminate request; all of it optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TerminateRequest {
    /// Seconds between the polite stop and the forced one; default `serve.stop_grace`.
    grace_seconds: Option<f64>,
}

async fn terminate(
    State(ctx): State<Arc<ServeContext>>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let entry = find(&ctx, &id)?;
    let body = body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge("the terminate request body is too large".to_string()),
        _ => ApiError::InvalidRequest(format!("failed to read the terminate request: {}", rejection.body_text())),
    })?;
    let request: TerminateRequest = if body.iter().all(u8::is_ascii_whitespace) {
        TerminateRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|error| ApiError::InvalidRequest(format!("invalid terminate request: {error}")))?
    };
    let grace = match request.grace_seconds {
        None => ctx.config.stop_grace,
        Some(seconds) if seconds.is_finite() && seconds >= 0.0 && seconds <= MAX_GRACE.as_secs_f64() => Duration::from_secs_f64(seconds),
        Some(seconds) => {
            return Err(ApiError::InvalidRequest(format!(
                "`grace_seconds` must be between 0 and {}, got {seconds}",
                MAX_GRACE.as_secs()
            )))
        }
    };
    stop(&ctx, &entry, StopRequest::Terminate { grace })
}

async fn kill(State(ctx): State<Arc<ServeContext>>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let entry = find(&ctx, &id)?;
    stop(&ctx, &entry, StopRequest::Kill)
}

/// Hands a stop request to the execution's supervisor: 202 while it runs, 200 once it ended.
fn stop(ctx: &ServeContext, entry: &Entry, request: StopRequest) -> Result<Response, ApiError> {
    if entry.is_finished() {
        return Ok((StatusCode::OK, Json(entry.view(ctx.config.retention))).into_response());
    }
    if entry.request_stop(request) {
        tracing::info!(parent: &entry.span, request = ?request, "stop requested");
    }
    Ok((StatusCode::ACCEPTED, Json(entry.view(ctx.config.retention))).into_response())
}

async fn delete(State(ctx): State<Arc<ServeContext>>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let entry = find(&ctx, &id)?;
    match retention::remove(&ctx, &entry).await {
        Ok(()) => Ok(StatusCode::NO_CONTENT.into_response()),
        Err(RemoveError::NotFinished) => Err(ApiError::Conflict(format!(
            "execution `{id}` has not ended; terminate or kill it first, then delete it"
        ))),
        Err(RemoveError::Cleanup(error)) => Err(ApiError::Backend(format!("{error}; the execution is kept, retry the delete"))),
        Err(RemoveError::Journal(error)) => Err(ApiError::Internal(error.to_string())),
    }
}

async fn backend(State(ctx): State<Arc<ServeContext>>) -> Response {
    let plugin = ctx.backend.plugin();
    Json(serde_json::json!({
        "plugin": {
            "name": plugin.name,
            "version": plugin.version,
            "api_version": plugin.api_version.to_string(),
            "path": plugin.path.display().to_string(),
        },
        "host_version": env!("CARGO_PKG_VERSION"),
        "capabilities": ctx.capabilities,
        "limits": {
            "max_running": ctx.config.max_running,
            "when_full": match ctx.config.when_full { super::config::WhenFull::Queue => "queue", super::config::WhenFull::Reject => "reject" },
            "max_queued": ctx.config.max_queued,
            "max_package_bytes": ctx.config.max_package_bytes,
            "max_spec_bytes": ctx.config.max_spec_bytes,
            "retention_seconds": ctx.config.retention.as_secs(),
        },
    }))
    .into_response()
}

async fn health(State(ctx): State<Arc<ServeContext>>) -> Response {
    let probe = tokio::time::timeout(HEALTH_TIMEOUT, ctx.backend.health()).await;
    let (backend_healthy, backend_message) = match probe {
        Ok(health) => (health.healthy, health.message.to_string()),
        Err(_) => (false, format!("the backend's health probe did not answer within {}s", HEALTH_TIMEOUT.as_secs())),
    };
    let accepting = ctx.accepting();
    let healthy = backend_healthy && accepting;
    let message = match (backend_healthy, accepting) {
        (true, true) => "ready".to_string(),
        (false, _) => format!("the backend is unhealthy: {backend_message}"),
        (true, false) => "the host is shutting down".to_string(),
    };
    let status = if healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = serde_json::json!({
        "healthy": healthy,
        "message": message,
        "accepting": accepting,
        "backend": { "healthy": backend_healthy, "message": backend_message },
        "executions": { "running": ctx.capacity.in_use(), "queued": ctx.capacity.queued() },
    });
    (status, Json(body)).into_response()
}

async fn metrics_text(State(ctx): State<Arc<ServeContext>>) -> Result<Response, ApiError> {
    let text = ctx.metrics.encode().map_err(|error| ApiError::Internal(error.to_string()))?;
    let mut response = text.into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(metrics::CONTENT_TYPE));
    Ok(response)
}

async fn openapi_document() -> Response {
    Json(openapi::document()).into_response()
}
