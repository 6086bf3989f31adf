//! `POST /v1/executions`: parses the spec, stages an uploaded package on disk while hashing it,
//! journals the new execution and starts its supervisor, without waiting for the backend.

use super::capacity::Slot;
use super::config::WhenFull;
use super::context::ServeContext;
use super::error::{multipart_error, ApiError};
use super::journal::{
    self, EventRecord, PackageInfo, PackageOrigin, Phase, RecordLog, StoredExecution, EVENTS_FILE, LOGS_FILE, PACKAGE_FILE,
    STATE_FORMAT,
};
use super::registry::{Entry, EntryState, Reservation, ReservedId};
use super::supervisor::{self, Pump};
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tower_plugin_api::{ExecutionSpec, ExecutionState, ExecutionStatus, PackageSource, SetupPhaseKind, Timestamp};

/// Maximum wait for the next piece of an upload before the request fails.
const UPLOAD_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Room for multipart boundaries and part headers in the body limit of an upload.
const MULTIPART_OVERHEAD_BYTES: u64 = 64 * 1024;
/// The Tower environment of a spec that names none, as `tower-host run` uses.
const DEFAULT_ENVIRONMENT: &str = "default";
/// Name of the multipart part with the spec.
const SPEC_PART: &str = "spec";
/// Name of the multipart part with the package.
const PACKAGE_PART: &str = "package";

/// The package as a create request names it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum RequestedPackage {
    /// The package follows in the `package` part of a multipart request.
    Upload { sha256: String },
    /// The backend downloads the package.
    Url { url: String, sha256: String },
    /// A local file; rejected over the API.
    File {
        #[allow(dead_code)]
        path: String,
        #[allow(dead_code)]
        sha256: String,
    },
}

/// A parsed create request.
struct ParsedSpec {
    spec: ExecutionSpec,
    package: RequestedPackage,
    /// The spec as journalled and shown: the client's package form, secret values as `***`.
    public: serde_json::Value,
    fingerprint: String,
}

/// Returns the body limit of create requests: a package, a spec and multipart framing.
pub fn body_limit(ctx: &ServeContext) -> usize {
    let limit = ctx.config.max_package_bytes.saturating_add(ctx.config.max_spec_bytes).saturating_add(MULTIPART_OVERHEAD_BYTES);
    usize::try_from(limit).unwrap_or(usize::MAX)
}

/// Creates an execution from a multipart upload or a JSON spec with a package URL.
pub async fn create(State(ctx): State<Arc<ServeContext>>, request: Request) -> Result<Response, ApiError> {
    let started = Instant::now();
    if !ctx.accepting() {
        ctx.metrics.rejected("shutting_down");
        return Err(ApiError::ShuttingDown);
    }
    let content_type = request.headers().get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok()).unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match essence.as_str() {
        "multipart/form-data" => create_from_upload(ctx, request, started).await,
        "application/json" => create_from_json(ctx, request, started).await,
        _ => Err(ApiError::UnsupportedMediaType(format!(
            "a create request is `multipart/form-data` (parts `spec` and `package`) or `application/json`, not `{content_type}`"
        ))),
    }
}

async fn create_from_json(ctx: Arc<ServeContext>, request: Request, started: Instant) -> Result<Response, ApiError> {
    let limit = usize::try_from(ctx.config.max_spec_bytes).unwrap_or(usize::MAX);
    let body = axum::body::to_bytes(request.into_body(), limit)
        .await
        .map_err(|_| ApiError::PayloadTooLarge(format!("the spec is larger than `serve.max_spec_bytes` ({limit} bytes)")))?;
    let parsed = parse_spec(&body)?;
    let (url, sha256) = match &parsed.package {
        RequestedPackage::Url { url, sha256 } => (url.clone(), sha256.clone()),
        RequestedPackage::Upload { .. } => {
            return Err(ApiError::InvalidSpec {
                field: "package".to_string(),
                message: "an `upload` package needs a multipart/form-data request with a `package` part".to_string(),
            })
        }
        RequestedPackage::File { .. } => unreachable!("parse_spec rejects file packages"),
    };
    let reserved = match reserve(&ctx, &parsed)? {
        Ok(reserved) => reserved,
        Err(existing) => return Ok(existing),
    };
    let slot = admit(&ctx)?;
    let package = PackageInfo { origin: PackageOrigin::Url, sha256: sha256.clone(), size_bytes: None, url: Some(url.clone()) };
    let source = PackageSource::url(url, sha256);
    let entry = register(&ctx, reserved, parsed, package, source, None, slot).await?;
    ctx.metrics.create_request(started.elapsed());
    Ok(created(&ctx, &entry, StatusCode::CREATED))
}

async fn create_from_upload(ctx: Arc<ServeContext>, request: Request, started: Instant) -> Result<Response, ApiError> {
    let mut multipart = Multipart::from_request(request, &()).await.map_err(|rejection| {
        ApiError::InvalidRequest(format!("invalid multipart request: {}", rejection.body_text()))
    })?;

    let spec_field = multipart.next_field().await.map_err(multipart_error)?.ok_or_else(|| {
        ApiError::InvalidRequest("the upload has no parts; send a `spec` part, then a `package` part".to_string())
    })?;
    if spec_field.name() != Some(SPEC_PART) {
        return Err(ApiError::InvalidRequest(format!(
            "the first part of the upload must be `{SPEC_PART}`, not `{}`",
            spec_field.name().unwrap_or("")
        )));
    }
    let spec_bytes = read_part(spec_field, ctx.config.max_spec_bytes, "the `spec` part", "serve.max_spec_bytes").await?;
    let parsed = parse_spec(&spec_bytes)?;
    let RequestedPackage::Upload { sha256 } = parsed.package.clone() else {
        return Err(ApiError::InvalidSpec {
            field: "package".to_string(),
            message: "an upload sets `package` to {\"upload\": {\"sha256\": \"<hex>\"}}".to_string(),
        });
    };
    let reserved = match reserve(&ctx, &parsed)? {
        Ok(reserved) => reserved,
        Err(existing) => return Ok(existing),
    };
    let slot = admit(&ctx)?;

    let package_field = multipart.next_field().await.map_err(multipart_error)?.ok_or_else(|| {
        ApiError::InvalidRequest(format!("the upload has no `{PACKAGE_PART}` part after `{SPEC_PART}`"))
    })?;
    if package_field.name() != Some(PACKAGE_PART) {
        return Err(ApiError::InvalidRequest(format!(
            "the second part of the upload must be `{PACKAGE_PART}`, not `{}`",
            package_field.name().unwrap_or("")
        )));
    }
    let staged = stage_upload(&ctx, package_field, &sha256).await?;
    if multipart.next_field().await.map_err(multipart_error)?.is_some() {
        return Err(ApiError::InvalidRequest(format!("the upload has a part after `{PACKAGE_PART}`; send only `spec` and `package`")));
    }

    let target = ctx.execution_dir(reserved.id()).join(PACKAGE_FILE);
    let target_text = target.to_str().ok_or_else(|| ApiError::Internal(format!("the state folder path {} is not UTF-8", target.display())))?;
    let source = PackageSource::file(target_text, sha256.clone());
    let package = PackageInfo { origin: PackageOrigin::Upload, sha256, size_bytes: Some(staged.size), url: None };
    let entry = register(&ctx, reserved, parsed, package, source, Some(staged), slot).await?;
    ctx.metrics.create_request(started.elapsed());
    Ok(created(&ctx, &entry, StatusCode::CREATED))
}

/// Reserves the spec's id, or returns the response for an existing execution with that id: the
/// execution itself for a retry of the same request, 409 for a different one.
fn reserve(ctx: &ServeContext, parsed: &ParsedSpec) -> Result<Result<ReservedId, Response>, ApiError> {
    let id = parsed.spec.run_id.as_str();
    match ctx.registry.reserve(id) {
        Reservation::Reserved(reserved) => Ok(Ok(reserved)),
        Reservation::Busy => Err(ApiError::Conflict(format!("another request is creating execution `{id}`; retry once it returned"))),
        Reservation::Existing(entry) => {
            if entry.state().stored.fingerprint != parsed.fingerprint {
                return Err(ApiError::Conflict(format!(
                    "execution `{id}` exists with a different spec or package; use another id"
                )));
            }
            Ok(Err(created(ctx, &entry, StatusCode::OK)))
        }
    }
}

/// Takes a slot, or decides that the execution waits in the queue (`None`), or rejects it.
fn admit(ctx: &ServeContext) -> Result<Option<Slot>, ApiError> {
    if let Some(slot) = ctx.capacity.try_acquire() {
        return Ok(Some(slot));
    }
    let running = ctx.config.max_running;
    match ctx.config.when_full {
        WhenFull::Reject => {
            ctx.metrics.rejected("full");
            Err(ApiError::TooManyRequests(format!("{running} executions run, the most `serve.max_running` allows; retry later")))
        }
        WhenFull::Queue if ctx.capacity.queued() >= ctx.config.max_queued as usize => {
            ctx.metrics.rejected("queue_full");
            Err(ApiError::TooManyRequests(format!(
                "{running} executions run and {} wait, the most `serve.max_queued` allows; retry later",
                ctx.config.max_queued
            )))
        }
        WhenFull::Queue => Ok(None),
    }
}

fn created(ctx: &ServeContext, entry: &Entry, status: StatusCode) -> Response {
    let mut response = (status, Json(entry.view(ctx.config.retention))).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/executions/{}", entry.id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// Parses a spec document: the contract's `ExecutionSpec`, where `package` is
/// `{"upload": {"sha256"}}` or `{"url": {"url", "sha256"}}` and `run_id` may be left out.
fn parse_spec(bytes: &[u8]) -> Result<ParsedSpec, ApiError> {
    let mut document: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|error| ApiError::InvalidSpec { field: String::new(), message: format!("invalid JSON: {error}") })?;
    let object = document
        .as_object_mut()
        .ok_or_else(|| ApiError::InvalidSpec { field: String::new(), message: "the spec must be a JSON object".to_string() })?;
    let package_json = object
        .remove("package")
        .ok_or_else(|| ApiError::InvalidSpec { field: "package".to_string(), message: "missing field `package`".to_string() })?;
    let package: RequestedPackage = deserialize_at(package_json, "package")?;
    let sha256 = match &package {
        RequestedPackage::Upload { sha256 } | RequestedPackage::Url { sha256, .. } => sha256.to_ascii_lowercase(),
        RequestedPackage::File { .. } => {
            return Err(ApiError::InvalidSpec {
                field: "package.file".to_string(),
                message: "a host file is not accepted over the API; upload the package or give a `url`".to_string(),
            })
        }
    };
    if sha256.len() != 64 || !sha256.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        let field = match package {
            RequestedPackage::Upload { .. } => "package.upload.sha256",
            _ => "package.url.sha256",
        };
        return Err(ApiError::InvalidSpec { field: field.to_string(), message: format!("must be 64 hex digits, got `{sha256}`") });
    }
    let package = match package {
        RequestedPackage::Upload { .. } => RequestedPackage::Upload { sha256 },
        RequestedPackage::Url { url, .. } => {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ApiError::InvalidSpec {
                    field: "package.url.url".to_string(),
                    message: format!("must be an http or https URL, got `{url}`"),
                });
            }
            RequestedPackage::Url { url, sha256 }
        }
        RequestedPackage::File { .. } => unreachable!("rejected above"),
    };

    if !object.contains_key("run_id") {
        object.insert("run_id".to_string(), uuid::Uuid::new_v4().to_string().into());
    }
    if !object.contains_key("environment") {
        object.insert("environment".to_string(), DEFAULT_ENVIRONMENT.into());
    }
    // The contract's spec needs a package; the real one is set once the upload is staged.
    object.insert("package".to_string(), serde_json::json!({ "url": { "url": "", "sha256": "" } }));
    let spec: ExecutionSpec = deserialize_at(document, "")?;
    crate::run::validate_run_id(&spec.run_id)
        .map_err(|rule| ApiError::InvalidSpec { field: "run_id".to_string(), message: format!("invalid `{}`: {rule}", spec.run_id) })?;

    let mut public = serde_json::to_value(&spec).map_err(|error| ApiError::Internal(format!("failed to serialize the spec: {error}")))?;
    public["package"] = match &package {
        RequestedPackage::Upload { sha256 } => serde_json::json!({ "upload": { "sha256": sha256 } }),
        RequestedPackage::Url { url, sha256 } => serde_json::json!({ "url": { "url": url, "sha256": sha256 } }),
        RequestedPackage::File { .. } => unreachable!("rejected above"),
    };
    let fingerprint = hex::encode(Sha256::digest(public.to_string().as_bytes()));
    Ok(ParsedSpec { spec, package, public, fingerprint })
}

/// Deserializes `value`, naming the path of the first invalid field below `prefix`.
fn deserialize_at<T: serde::de::DeserializeOwned>(value: serde_json::Value, prefix: &str) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|error| {
        let mut field = error.path().to_string();
        if field == "." || field == "?" {
            field.clear();
        }
        let message = error.inner().to_string();
        // A missing field is reported at its parent's path; name the field itself.
        if let Some(name) = message.strip_prefix("missing field `").and_then(|rest| rest.split('`').next()) {
            if field.rsplit('.').next() != Some(name) {
                field = if field.is_empty() { name.to_string() } else { format!("{field}.{name}") };
            }
        }
        let field = match (prefix.is_empty(), field.is_empty()) {
            (true, _) => field,
            (false, true) => prefix.to_string(),
            (false, false) => format!("{prefix}.{field}"),
        };
        ApiError::InvalidSpec { field, message }
    })
}

/// Reads a small multipart part whole, failing past `limit` bytes.
async fn read_part(mut field: axum::extract::multipart::Field<'_>, limit: u64, what: &str, setting: &str) -> Result<Vec<u8>, ApiError> {
    let mut bytes = Vec::new();
    while let Some(chunk) = next_chunk(&mut field).await? {
        if bytes.len() as u64 + chunk.len() as u64 > limit {
            return Err(ApiError::PayloadTooLarge(format!("{what} is larger than `{setting}` ({limit} bytes)")));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

async fn next_chunk(field: &mut axum::extract::multipart::Field<'_>) -> Result<Option<bytes::Bytes>, ApiError> {
    match tokio::time::timeout(UPLOAD_IDLE_TIMEOUT, field.chunk()).await {
        Ok(chunk) => chunk.map_err(multipart_error),
        Err(_) => Err(ApiError::RequestTimeout(format!(
            "the upload sent nothing for {}s",
            UPLOAD_IDLE_TIMEOUT.as_secs()
        ))),
    }
}

/// An uploaded package in `uploads/`, removed on drop unless moved into an execution folder.
struct StagedUpload {
    path: PathBuf,
    size: u64,
    kept: bool,
}

impl Drop for StagedUpload {
    fn drop(&mut self) {
        if !self.kept {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Streams the package part to a file in `uploads/`, hashing it and counting its size.
async fn stage_upload(ctx: &ServeContext, mut field: axum::extract::multipart::Field<'_>, sha256: &str) -> Result<StagedUpload, ApiError> {
    let path = ctx.uploads_dir().join(format!("{}.part", uuid::Uuid::new_v4()));
    let io_error = |error: std::io::Error| ApiError::Internal(format!("failed to stage the upload in {}: {error}", ctx.uploads_dir().display()));
    let mut file = tokio::fs::File::create(&path).await.map_err(io_error)?;
    let mut staged = StagedUpload { path, size: 0, kept: false };
    let mut hasher = Sha256::new();
    let limit = ctx.config.max_package_bytes;
    while let Some(chunk) = next_chunk(&mut field).await? {
        staged.size += chunk.len() as u64;
        if staged.size > limit {
            return Err(ApiError::PayloadTooLarge(format!("the package is larger than `serve.max_package_bytes` ({limit} bytes)")));
        }
        hasher.update(&chunk);
        file.write_all(&chunk).await.map_err(io_error)?;
    }
    file.flush().await.map_err(io_error)?;
    let actual = hex::encode(hasher.finalize());
    if actual != sha256 {
        return Err(ApiError::InvalidPackage(format!(
            "the uploaded package has sha256 {actual}, but the spec gives {sha256}; the upload may be damaged or the spec may name another package"
        )));
    }
    Ok(staged)
}

/// Journals a new execution, adds it to the registry and starts its supervisor.
async fn register(
    ctx: &Arc<ServeContext>,
    reserved: ReservedId,
    parsed: ParsedSpec,
    package: PackageInfo,
    source: tower_plugin_api::PackageRef,
    staged: Option<StagedUpload>,
    slot: Option<Slot>,
) -> Result<Arc<Entry>, ApiError> {
    let ParsedSpec { mut spec, public, fingerprint, .. } = parsed;
    spec.package = source;
    let id = reserved.id().to_string();
    let dir = ctx.execution_dir(&id);
    let stored = StoredExecution {
        format: STATE_FORMAT,
        id: id.clone(),
        created_at: Timestamp::now(),
        fingerprint,
        spec: public,
        package,
        phase: Phase::Queued,
        recoveries: 0,
        finished: None,
        cleaned_up: false,
        log_limit_reached: false,
    };

    let (logs, events) = {
        let dir = dir.clone();
        let stored = stored.clone();
        let executions_dir = ctx.executions_dir();
        let staged_path = staged.as_ref().map(|staged| staged.path.clone());
        tokio::task::spawn_blocking(move || create_folder(&executions_dir, &dir, &stored, staged_path.as_deref()))
            .await
            .map_err(|error| ApiError::Internal(error.to_string()))?
            .map_err(|error| ApiError::Internal(error.to_string()))?
    };
    if let Some(mut staged) = staged {
        staged.kept = true;
    }

    let span = tracing::info_span!(
        "execution",
        execution.id = %id,
        backend = %ctx.capabilities.backend,
        plugin = %ctx.backend.plugin().name
    );
    let queued = ExecutionStatus::new(ExecutionState::preparing(SetupPhaseKind::Queued));
    let state = EntryState { stored, status: queued.clone(), updated_at: Timestamp::now() };
    let entry = Arc::new(Entry::new(ctx.registry.next_order(), dir, Arc::clone(&logs), Arc::clone(&events), state, span));
    let journal_error = |error: journal::JournalError| ApiError::Internal(error.to_string());
    let mut events_writer = events.writer().map_err(journal_error)?;
    events_writer.append(vec![EventRecord { seq: 0, recorded_at: Timestamp::now(), status: queued }]).await.map_err(journal_error)?;
    let pump = Pump::new(Arc::clone(ctx), Arc::clone(&entry), logs.writer().map_err(journal_error)?, events_writer);

    ctx.registry.commit(reserved, Arc::clone(&entry));
    ctx.metrics.transition(None, Some("preparing"));
    tracing::info!(parent: &entry.span, queued = slot.is_none(), "execution accepted");
    supervisor::spawn_new(pump, spec, slot);
    Ok(entry)
}

/// Creates an execution's folder with its state and empty journal files, and moves the staged
/// package into it (blocking).
fn create_folder(
    executions_dir: &Path,
    dir: &Path,
    stored: &StoredExecution,
    staged: Option<&Path>,
) -> Result<(Arc<RecordLog>, Arc<RecordLog>), journal::JournalError> {
    let io_error = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| journal::JournalError::Io { action, path, source }
    };
    if dir.exists() {
        // A folder left by an execution whose removal did not finish.
        std::fs::remove_dir_all(dir).map_err(io_error("remove the stale folder", dir))?;
    }
    std::fs::create_dir(dir).map_err(io_error("create", dir))?;
    if let Some(staged) = staged {
        let target = dir.join(PACKAGE_FILE);
        std::fs::rename(staged, &target).map_err(io_error("move the upload to", &target))?;
    }
    let logs = RecordLog::create(dir.join(LOGS_FILE))?;
    let events = RecordLog::create(dir.join(EVENTS_FILE))?;
    journal::write_state(dir, stored)?;
    journal::sync_dir(executions_dir)?;
    Ok((logs, events))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "0000000000000000000000000000000000000000000000000000000000000000";

    fn field_of(json: &str) -> String {
        match parse_spec(json.as_bytes()) {
            Err(ApiError::InvalidSpec { field, .. }) => field,
            Err(other) => panic!("unexpected error {other:?}"),
            Ok(_) => panic!("{json} was accepted"),
        }
    }

    #[test]
    fn upload_spec_parses_and_hides_secrets() {
        let json = format!(
            r#"{{"run_id":"r1","package":{{"upload":{{"sha256":"{SHA}"}}}},"secrets":[{{"name":"T","value":"hunter2"}}]}}"#
        );
        let parsed = parse_spec(json.as_bytes()).unwrap();
        assert_eq!(parsed.spec.run_id.as_str(), "r1");
        assert_eq!(parsed.spec.secrets[0].value.expose(), "hunter2");
        let public = parsed.public.to_string();
        assert!(!public.contains("hunter2"), "{public}");
        assert_eq!(parsed.public["package"]["upload"]["sha256"], SHA);
    }

    #[test]
    fn bad_field_is_named() {
        let base = format!(r#""package":{{"url":{{"url":"https://x/p.tar.gz","sha256":"{SHA}"}}}}"#);
        assert_eq!(field_of(&format!(r#"{{{base},"limits":{{"timeout_seconds":"soon"}}}}"#)), "limits.timeout_seconds");
        assert_eq!(field_of(&format!(r#"{{{base},"limitz":{{}}}}"#)), "limitz");
        assert_eq!(field_of(&format!(r#"{{{base},"limits":{{"cpu":1}}}}"#)), "limits.cpu");
        assert_eq!(field_of(&format!(r#"{{{base},"run_id":".."}}"#)), "run_id");
        assert_eq!(field_of(r#"{"run_id":"r"}"#), "package");
        assert_eq!(field_of(r#"{"package":{"upload":{"sha256":"abc"}}}"#), "package.upload.sha256");
        assert_eq!(field_of(r#"{"package":{"upload":{}}}"#), "package.upload.sha256");
        assert_eq!(field_of(&format!(r#"{{"package":{{"file":{{"path":"/etc/passwd","sha256":"{SHA}"}}}}}}"#)), "package.file");
    }

    #[test]
    fn missing_run_id_gets_a_uuid() {
        let json = format!(r#"{{"package":{{"upload":{{"sha256":"{SHA}"}}}}}}"#);
        let parsed = parse_spec(json.as_bytes()).unwrap();
        assert_eq!(parsed.spec.run_id.len(), 36);
    }

    #[test]
    fn fingerprint_ignores_secret_values_only() {
        let spec = |secret: &str, env: &str| {
            format!(
                r#"{{"run_id":"r1","package":{{"upload":{{"sha256":"{SHA}"}}}},"secrets":[{{"name":"T","value":"{secret}"}}],"env":[{{"key":"A","value":"{env}"}}]}}"#
            )
        };
        let fingerprint = |json: String| parse_spec(json.as_bytes()).unwrap().fingerprint;
        assert_eq!(fingerprint(spec("a", "1")), fingerprint(spec("b", "1")));
        assert_ne!(fingerprint(spec("a", "1")), fingerprint(spec("a", "2")));
    }
}
