//! The routes every stored kind shares: get, list, create, replace, patch and delete, with the
//! kind-specific parts in `pods`, `secrets` and `services`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::api_error::{success_status, ApiError, FieldCause};
use crate::cluster::Cluster;
use crate::patch;
use crate::selectors::{FieldSelector, LabelSelector};
use crate::store::Kind;
use crate::{gc, kubelet, meta, pods, secrets, services, watch};

fn json_response(code: StatusCode, value: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

/// Returns the API server's plain-text 404 for a path it does not serve.
fn page_not_found() -> Response {
    (StatusCode::NOT_FOUND, "404 page not found\n").into_response()
}

fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|error| {
        ApiError::bad_request(format!(
            "the body of the request could not be decoded as JSON: {error}"
        ))
    })
}

fn is_dry_run(query: &HashMap<String, String>) -> bool {
    query.get("dryRun").is_some_and(|value| value == "All")
}

/// `GET /api/v1/{resource}`: list or watch in every namespace.
pub async fn collection_all(
    State(cluster): State<Arc<Cluster>>,
    Path(resource): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let Some(kind) = Kind::from_resource(&resource) else {
        return page_not_found();
    };
    list_or_watch(&cluster, kind, None, &query).await
}

/// `GET /api/v1/namespaces/{namespace}/{resource}`: list or watch.
pub async fn collection(
    State(cluster): State<Arc<Cluster>>,
    Path((namespace, resource)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let Some(kind) = Kind::from_resource(&resource) else {
        return page_not_found();
    };
    list_or_watch(&cluster, kind, Some(namespace), &query).await
}

async fn list_or_watch(
    cluster: &Arc<Cluster>,
    kind: Kind,
    namespace: Option<String>,
    query: &HashMap<String, String>,
) -> Response {
    let watching = query.get("watch").is_some_and(|v| v == "true" || v == "1");
    let result = if watching {
        watch::watch(cluster.clone(), kind, namespace, query).await
    } else {
        list(cluster, kind, namespace.as_deref(), query)
            .map(|list| json_response(StatusCode::OK, &list))
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

/// Encodes a continue token: the namespace and name of the last item sent.
fn encode_continue(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn decode_continue(token: &str) -> Result<(String, String), ApiError> {
    let invalid = || ApiError::bad_request(format!("continue key is not valid: {token:?}"));
    let bytes = (0..token.len())
        .step_by(2)
        .map(|i| {
            token
                .get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(invalid)?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let (namespace, name) = text.split_once('/').ok_or_else(invalid)?;
    Ok((namespace.to_owned(), name.to_owned()))
}

fn list(
    cluster: &Cluster,
    kind: Kind,
    namespace: Option<&str>,
    query: &HashMap<String, String>,
) -> Result<Value, ApiError> {
    let labels =
        LabelSelector::parse(query.get("labelSelector").map(String::as_str).unwrap_or(""))?;
    let fields = FieldSelector::parse(
        kind,
        query.get("fieldSelector").map(String::as_str).unwrap_or(""),
    )?;
    let limit = match query.get("limit") {
        Some(text) => Some(
            text.parse::<usize>()
                .map_err(|_| ApiError::bad_request(format!("invalid limit {text:?}")))?,
        ),
        None => None,
    }
    .filter(|limit| *limit > 0);
    let after = query
        .get("continue")
        .filter(|t| !t.is_empty())
        .map(|t| decode_continue(t))
        .transpose()?;

    let store = cluster.store();
    let current = store.resource_version();
    if query.get("resourceVersionMatch").map(String::as_str) == Some("Exact") {
        let requested = query
            .get("resourceVersion")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        if requested != current {
            // NOTE: the store keeps no snapshots, so it can serve an exact list only at the
            // current resourceVersion.
            return Err(ApiError::expired(
                "The resourceVersion for the provided list is too old.",
            ));
        }
    }
    let matching: Vec<&Value> = store
        .list(kind, namespace)
        .into_iter()
        .filter(|object| labels.matches(object) && fields.matches(object))
        .filter(|object| {
            after.as_ref().is_none_or(|(ns, name)| {
                (meta::meta_str(object, "namespace"), meta::name(object))
                    > (ns.as_str(), name.as_str())
            })
        })
        .collect();
    let page_len = limit.unwrap_or(matching.len()).min(matching.len());
    let mut metadata = json!({"resourceVersion": current.to_string()});
    if page_len < matching.len() {
        let last = matching[page_len - 1];
        metadata["continue"] = json!(encode_continue(
            meta::meta_str(last, "namespace"),
            meta::name(last)
        ));
        metadata["remainingItemCount"] = json!(matching.len() - page_len);
    }
    let items: Vec<Value> = matching[..page_len]
        .iter()
        .map(|object| {
            let mut item = (*object).clone();
            if let Some(map) = item.as_object_mut() {
                map.remove("kind");
                map.remove("apiVersion");
            }
            item
        })
        .collect();
    Ok(
        json!({"kind": format!("{}List", kind.name()), "apiVersion": "v1", "metadata": metadata, "items": items}),
    )
}

/// `POST /api/v1/namespaces/{namespace}/{resource}`.
pub async fn create(
    State(cluster): State<Arc<Cluster>>,
    Path((namespace, resource)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let Some(kind) = Kind::from_resource(&resource) else {
        return page_not_found();
    };
    match create_object(&cluster, kind, &namespace, &body, is_dry_run(&query)) {
        Ok(object) => json_response(StatusCode::CREATED, &object),
        Err(error) => error.into_response(),
    }
}

fn check_type(kind: Kind, object: &Value) -> Result<(), ApiError> {
    let kind_matches = object["kind"].as_str().is_none_or(|k| k == kind.name());
    let version_matches = object["apiVersion"].as_str().is_none_or(|v| v == "v1");
    if !object.is_object() || !kind_matches || !version_matches {
        return Err(ApiError::bad_request(format!(
            "the body of the request must be a {} in version \"v1\"",
            kind.name()
        )));
    }
    Ok(())
}

fn create_object(
    cluster: &Arc<Cluster>,
    kind: Kind,
    namespace: &str,
    body: &Bytes,
    dry_run: bool,
) -> Result<Value, ApiError> {
    let mut object = parse_body(body)?;
    check_type(kind, &object)?;
    let body_namespace = meta::meta_str(&object, "namespace");
    if !body_namespace.is_empty() && body_namespace != namespace {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    if meta::name(&object).is_empty() {
        let prefix = meta::meta_str(&object, "generateName").to_owned();
        if prefix.is_empty() {
            return Err(ApiError::invalid(
                kind.name(),
                "",
                vec![crate::api_error::FieldCause::required(
                    "metadata.name",
                    "name or generateName is required",
                )],
            ));
        }
        meta::metadata_mut(&mut object)
            .insert("name".into(), Value::String(meta::generate_name(&prefix)));
    }

    {
        let metadata = meta::metadata_mut(&mut object);
        metadata.insert("namespace".into(), Value::String(namespace.to_owned()));
        metadata.insert(
            "uid".into(),
            Value::String(uuid::Uuid::new_v4().to_string()),
        );
        metadata.insert(
            "creationTimestamp".into(),
            Value::String(meta::format_seconds(crate::meta::now())),
        );
        for field in [
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ] {
            metadata.remove(field);
        }
    }

    object["kind"] = json!(kind.name());
    object["apiVersion"] = json!("v1");
    let object = match kind {
        Kind::Pod => pods::prepare_create(object)?,
        Kind::Secret => secrets::prepare_create(object)?,
        Kind::Service => services::prepare_create(cluster, object)?,
    };
    if dry_run {
        return Ok(object);
    }

    let stored = cluster.store().insert(kind, object)?;
    tracing::info!(
        namespace,
        resource = kind.resource(),
        name = meta::name(&stored),
        "created"
    );
    if kind == Kind::Pod {
        kubelet::admit(cluster, &stored);
    }
    gc::collect_if_orphaned(cluster, kind, namespace, meta::name(&stored));
    Ok(stored)
}

/// `GET /api/v1/namespaces/{namespace}/{resource}/{name}`.
pub async fn get(
    State(cluster): State<Arc<Cluster>>,
    Path((namespace, resource, name)): Path<(String, String, String)>,
) -> Response {
    let Some(kind) = Kind::from_resource(&resource) else {
        return page_not_found();
    };
    match cluster.store().get(kind, &namespace, &name) {
        Some(object) => json_response(StatusCode::OK, object),
        None => ApiError::not_found(kind.resource(), &name).into_response(),
    }
}

/// `GET /api/v1/namespaces/{namespace}/pods/{name}/status`.
pub async fn get_pod_status(
    state: State<Arc<Cluster>>,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    get(state, Path((namespace, "pods".to_owned(), name))).await
}

/// Copies what an update may change from `desired` onto `current`: the user metadata and the
/// kind's changeable fields. Status and system metadata stay as stored.
fn apply_update(kind: Kind, current: &mut Value, desired: Value) -> Result<(), ApiError> {
    let name = meta::name(current).to_owned();
    if !desired.is_object() {
        return Err(ApiError::bad_request(
            "the body of the request must be a JSON object",
        ));
    }
    let desired_name = meta::name(&desired);
    if !desired_name.is_empty() && desired_name != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({desired_name}) does not match the name on the URL ({name})"
        )));
    }
    let requested_version = meta::meta_str(&desired, "resourceVersion");
    if !requested_version.is_empty()
        && requested_version != meta::meta_str(current, "resourceVersion")
    {
        return Err(ApiError::conflict(
            kind.resource(),
            &name,
            "the object has been modified; please apply your changes to the latest version and try again",
        ));
    }
    for field in ["labels", "annotations", "ownerReferences", "finalizers"] {
        let value = desired["metadata"][field].clone();
        let metadata = meta::metadata_mut(current);
        if value.is_null() {
            metadata.remove(field);
        } else {
            metadata.insert(field.to_owned(), value);
        }
    }
    match kind {
        Kind::Secret => secrets::apply_update(current, desired),
        Kind::Service => services::apply_update(current, desired),
        Kind::Pod => {
            let mut desired_spec = desired["spec"].clone();
            let mut current_spec = current["spec"].clone();
            for spec in [&mut desired_spec, &mut current_spec] {
                if let Some(map) = spec.as_object_mut() {
                    map.remove("activeDeadlineSeconds");
                    map.remove("nodeName");
                }
            }
            if !desired_spec.is_null() && desired_spec != current_spec {
                return Err(ApiError::invalid("Pod", &name, vec![crate::api_error::FieldCause::forbidden(
                    "spec",
                    "pod updates may not change fields other than `spec.containers[*].image`, `spec.initContainers[*].image`, `spec.activeDeadlineSeconds`, `spec.tolerations` (only additions to existing tolerations) or `spec.terminationGracePeriodSeconds`",
                )]));
            }
            let previous = current["spec"]["activeDeadlineSeconds"].as_i64();
            let requested = desired["spec"]["activeDeadlineSeconds"].as_i64();
            let field = "spec.activeDeadlineSeconds";
            let problem = match (previous, requested) {
                (_, Some(seconds)) if seconds <= 0 => Some(FieldCause::invalid(field, &seconds.to_string(), "must be a positive number of seconds")),
                (Some(previous), Some(seconds)) if seconds > previous => Some(FieldCause::invalid(
                    field,
                    &seconds.to_string(),
                    &format!("may only be lowered, and it is {previous}"),
                )),
                (Some(_), None) => Some(FieldCause::invalid(field, "null", "may not be removed once set")),
                _ => None,
            };
            if let Some(cause) = problem {
                return Err(ApiError::invalid("Pod", &name, vec![cause]));
            }
            match requested {
                Some(seconds) => current["spec"]["activeDeadlineSeconds"] = json!(seconds),
                None => {
                    current["spec"]
                        .as_object_mut()
                        .map(|spec| spec.remove("activeDeadlineSeconds"));
                }
            }
            Ok(())
        }
    }
}

/// Runs the follow-ups of a change: removal once the last finalizer of a deleted object is
/// gone, and garbage collection of an object whose owners are gone.
fn after_update(cluster: &Arc<Cluster>, kind: Kind, object: &Value) {
    let namespace = meta::meta_str(object, "namespace").to_owned();
    let name = meta::name(object).to_owned();
    if meta::is_deleting(object) && meta::finalizers(object).is_empty() {
        match kind {
            Kind::Pod => {
                let uid = meta::uid(object).to_owned();
                if cluster.kubelet.pod(&uid).is_none_or(|pod| pod.is_done()) {
                    finish_pod_deletion(cluster, &namespace, &name, &uid);
                }
            }
            _ => {
                remove_object(cluster, kind, &namespace, &name);
            }
        }
        return;
    }
    if kind == Kind::Pod {
        kubelet::deadline_updated(cluster, meta::uid(object), object);
    }
    gc::collect_if_orphaned(cluster, kind, &namespace, &name);
}

/// `PUT /api/v1/namespaces/{namespace}/{resource}/{name}`.
pub async fn replace(
    State(cluster): State<Arc<Cluster>>,
    Path((namespace, resource, name)): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let Some(kind) = Kind::from_resource(&resource) else {
        return page_not_found();
    };
    let result = parse_body(&body).and_then(|desired| {
        check_type(kind, &desired)?;
        update(
            &cluster,
            kind,
            &namespace,
            &name,
            is_dry_run(&query),
            |current| apply_update(kind, current, desired),
        )
    });
    match result {
        Ok(object) => json_response(StatusCode::OK, &object),
        Err(error) => error.into_response(),
    }
}

fn update(
    cluster: &Arc<Cluster>,
    kind: Kind,
    namespace: &str,
    name: &str,
    dry_run: bool,
    change: impl FnOnce(&mut Value) -> Result<(), ApiError>,
) -> Result<Value, ApiError> {
    if dry_run {
        let mut object = cluster
            .store()
            .get(kind, namespace, name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(kind.resource(), name))?;
        change(&mut object)?;
        return Ok(object);
    }
    let updated = cluster.store().update(kind, namespace, name, change)?;
    after_update(cluster, kind, &updated);
    Ok(updated)
}

enum PatchType {
    Merge,
    Strategic,
    Json,
    Apply,
}

/// `PATCH /api/v1/namespaces/{namespace}/{resource}/{name}`.
pub async fn patch(
    State(cluster): State<Arc<Cluster>>,
    Path((namespace, resource, name)): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(kind) = Kind::from_resource(&resource) else {
        return page_not_found();
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media_type = content_type.split(';').next().unwrap_or("").trim();
    let patch_type = match media_type {
        "application/merge-patch+json" => PatchType::Merge,
        "application/strategic-merge-patch+json" => PatchType::Strategic,
        "application/json-patch+json" => PatchType::Json,
        "application/apply-patch+yaml" => PatchType::Apply,
        other => return ApiError::unsupported_media_type(other).into_response(),
    };
    let body = match parse_body(&body) {
        Ok(body) => body,
        Err(_) if matches!(patch_type, PatchType::Apply) => {
            return ApiError::bad_request(
                "the k8s emulator accepts apply patches only in their JSON form",
            )
            .into_response();
        }
        Err(error) => return error.into_response(),
    };
    let exists = cluster.store().get(kind, &namespace, &name).is_some();
    if matches!(patch_type, PatchType::Apply) && !exists {
        let mut object = body;
        meta::metadata_mut(&mut object).insert("name".into(), json!(name));
        let bytes = Bytes::from(object.to_string());
        return match create_object(&cluster, kind, &namespace, &bytes, is_dry_run(&query)) {
            Ok(object) => json_response(StatusCode::CREATED, &object),
            Err(error) => error.into_response(),
        };
    }
    let result = update(
        &cluster,
        kind,
        &namespace,
        &name,
        is_dry_run(&query),
        |current| {
            let mut desired = current.clone();
            // A patch does not carry the stored resourceVersion unless it sets one as a precondition.
            meta::metadata_mut(&mut desired).remove("resourceVersion");
            match patch_type {
            PatchType::Merge | PatchType::Apply => patch::merge_patch(&mut desired, &body),
            PatchType::Strategic => patch::strategic_merge_patch(&mut desired, &body),
            PatchType::Json => patch::json_patch(&mut desired, &body).map_err(|error| {
                ApiError::new(422, "Invalid", format!("the server rejected our request due to an error in our request: {error}"))
            })?,
        }
            apply_update(kind, current, desired)
        },
    );
    match result {
        Ok(object) => json_response(StatusCode::OK, &object),
        Err(error) => error.into_response(),
    }
}

/// The grace period and preconditions of a delete, from the query and the DeleteOptions body.
struct DeleteOptions {
    grace: Option<i64>,
    uid: Option<String>,
    resource_version: Option<String>,
    dry_run: bool,
}

fn delete_options(
    query: &HashMap<String, String>,
    body: &Bytes,
) -> Result<DeleteOptions, ApiError> {
    let body: Value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        parse_body(body)?
    };
    let grace =
        match query.get("gracePeriodSeconds") {
            Some(text) => Some(text.parse::<i64>().map_err(|_| {
                ApiError::bad_request(format!("invalid gracePeriodSeconds {text:?}"))
            })?),
            None => body["gracePeriodSeconds"].as_i64(),
        };
    let dry_run = is_dry_run(query)
        || body["dryRun"]
            .as_array()
            .is_some_and(|list| list.iter().any(|v| v == "All"));
    Ok(DeleteOptions {
        grace,
        uid: body["preconditions"]["uid"].as_str().map(str::to_owned),
        resource_version: body["preconditions"]["resourceVersion"]
            .as_str()
            .map(str::to_owned),
        dry_run,
    })
}

/// `DELETE /api/v1/namespaces/{namespace}/{resource}/{name}`.
pub async fn delete(
    State(cluster): State<Arc<Cluster>>,
    Path((namespace, resource, name)): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let Some(kind) = Kind::from_resource(&resource) else {
        return page_not_found();
    };
    let options = match delete_options(&query, &body) {
        Ok(options) => options,
        Err(error) => return error.into_response(),
    };
    let Some(current) = cluster.store().get(kind, &namespace, &name).cloned() else {
        return ApiError::not_found(kind.resource(), &name).into_response();
    };
    if let Some(uid) = &options.uid {
        if uid != meta::uid(&current) {
            let detail = format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                meta::uid(&current)
            );
            return ApiError::conflict(kind.resource(), &name, &detail).into_response();
        }
    }
    if let Some(version) = &options.resource_version {
        if version != meta::meta_str(&current, "resourceVersion") {
            let detail = format!(
                "Precondition failed: ResourceVersion in precondition: {version}, ResourceVersion in object meta: {}",
                meta::meta_str(&current, "resourceVersion")
            );
            return ApiError::conflict(kind.resource(), &name, &detail).into_response();
        }
    }
    if options.dry_run {
        return json_response(StatusCode::OK, &current);
    }
    let result = match kind {
        Kind::Pod => pods::delete(&cluster, &namespace, &name, options.grace).await,
        _ => delete_plain(&cluster, kind, &namespace, &name),
    };
    match result {
        Ok(value) => json_response(StatusCode::OK, &value),
        Err(error) => error.into_response(),
    }
}

/// Deletes an object without graceful deletion: at once, or once its finalizers are gone.
/// Returns the object while finalizers hold it, else a success Status.
fn delete_plain(
    cluster: &Arc<Cluster>,
    kind: Kind,
    namespace: &str,
    name: &str,
) -> Result<Value, ApiError> {
    let current = cluster
        .store()
        .get(kind, namespace, name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(kind.resource(), name))?;
    if !meta::finalizers(&current).is_empty() {
        let now = meta::format_seconds(crate::meta::now());
        return cluster.store().update(kind, namespace, name, |object| {
            let metadata = meta::metadata_mut(object);
            metadata
                .entry("deletionTimestamp")
                .or_insert(Value::String(now));
            metadata.insert("deletionGracePeriodSeconds".into(), json!(0));
            Ok(())
        });
    }
    let removed = remove_object(cluster, kind, namespace, name)
        .ok_or_else(|| ApiError::not_found(kind.resource(), name))?;
    Ok(success_status(kind.resource(), name, meta::uid(&removed)))
}

fn remove_object(cluster: &Arc<Cluster>, kind: Kind, namespace: &str, name: &str) -> Option<Value> {
    let removed = cluster.store().remove(kind, namespace, name)?;
    tracing::info!(namespace, resource = kind.resource(), name, "deleted");
    gc::collect_dependents(cluster, namespace, meta::uid(&removed));
    Some(removed)
}

/// Deletes a dependent the garbage collector found, with the kind's default grace period.
pub fn delete_dependent(cluster: &Arc<Cluster>, kind: Kind, namespace: &str, name: &str) {
    if kind == Kind::Pod {
        let cluster = cluster.clone();
        let (namespace, name) = (namespace.to_owned(), name.to_owned());
        tokio::spawn(async move {
            let _ = pods::delete(&cluster, &namespace, &name, None).await;
        });
    } else {
        let _ = delete_plain(cluster, kind, namespace, name);
    }
}

/// Removes a deleted pod once the kubelet has stopped it, unless finalizers still hold it;
/// then collects its dependents and drops the kubelet's record. Returns the removed object.
pub fn finish_pod_deletion(
    cluster: &Arc<Cluster>,
    namespace: &str,
    name: &str,
    uid: &str,
) -> Option<Value> {
    let removable = {
        let store = cluster.store();
        let object = store.get(Kind::Pod, namespace, name)?;
        meta::uid(object) == uid && meta::finalizers(object).is_empty()
    };
    if !removable {
        return None;
    }
    let removed = remove_object(cluster, Kind::Pod, namespace, name);
    kubelet::forget(cluster, uid);
    removed
}
