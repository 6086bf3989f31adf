//! Pod-specific API behaviour: validation and defaulting on create, and graceful deletion.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::{json, Value};

use crate::api_error::{ApiError, FieldCause};
use crate::cluster::Cluster;
use crate::kubelet::{self, StopRequest};
use crate::meta;
use crate::store::Kind;

/// How long a zero-grace delete waits for the pod's processes to be reaped before it removes
/// the pod anyway.
const FORCE_DELETE_WAIT: Duration = Duration::from_secs(5);

fn validate_containers(
    list: &[Container],
    field: &str,
    seen: &mut Vec<String>,
    volumes: &[String],
    causes: &mut Vec<FieldCause>,
) {
    for (index, container) in list.iter().enumerate() {
        let path = format!("spec.{field}[{index}]");
        if container.name.is_empty() {
            causes.push(FieldCause::required(format!("{path}.name"), ""));
        } else if let Some(problem) = meta::check_dns1123_label(&container.name) {
            causes.push(FieldCause::invalid(
                format!("{path}.name"),
                &container.name,
                &problem,
            ));
        } else if seen.contains(&container.name) {
            causes.push(FieldCause::duplicate(
                format!("{path}.name"),
                &container.name,
            ));
        } else {
            seen.push(container.name.clone());
        }
        if container.image.as_deref().unwrap_or("").trim().is_empty() {
            causes.push(FieldCause::required(format!("{path}.image"), ""));
        }
        if container
            .command
            .as_ref()
            .is_none_or(|command| command.is_empty())
        {
            causes.push(FieldCause::required(
                format!("{path}.command"),
                "the k8s emulator runs containers as local processes without the image's entrypoint, so command is required",
            ));
        }
        for (mount_index, mount) in container.volume_mounts.iter().flatten().enumerate() {
            let mount_path = format!("{path}.volumeMounts[{mount_index}]");
            if !volumes.contains(&mount.name) {
                causes.push(FieldCause::not_found(
                    format!("{mount_path}.name"),
                    &mount.name,
                ));
            }
            if mount.mount_path.is_empty() {
                causes.push(FieldCause::required(format!("{mount_path}.mountPath"), ""));
            }
        }
    }
}

fn qos_class(containers: &[Container]) -> &'static str {
    let resources: Vec<_> = containers
        .iter()
        .map(|c| c.resources.clone().unwrap_or_default())
        .collect();
    let any_set = resources.iter().any(|r| {
        r.requests.as_ref().is_some_and(|m| !m.is_empty())
            || r.limits.as_ref().is_some_and(|m| !m.is_empty())
    });
    if !any_set {
        return "BestEffort";
    }
    let guaranteed = resources.iter().all(|r| {
        let limits = r.limits.clone().unwrap_or_default();
        let requests = r.requests.clone().unwrap_or_default();
        ["cpu", "memory"].iter().all(|name| {
            limits.contains_key(*name)
                && requests
                    .get(*name)
                    .is_none_or(|request| Some(request) == limits.get(*name))
        })
    });
    if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// Validates a pod for create and fills the defaults the API server sets. `object` already has
/// its final name and namespace.
pub fn prepare_create(mut object: Value) -> Result<Value, ApiError> {
    let name = meta::name(&object).to_owned();
    let pod: Pod = serde_json::from_value(object.clone()).map_err(|error| {
        ApiError::bad_request(format!(
            "Pod in version \"v1\" cannot be handled as a Pod: {error}"
        ))
    })?;
    let mut causes = Vec::new();
    if let Some(problem) = meta::check_dns1123_subdomain(&name) {
        causes.push(FieldCause::invalid("metadata.name", &name, &problem));
    }
    let spec = pod.spec.clone().unwrap_or_default();
    let volumes: Vec<String> = spec
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.clone())
        .collect();
    if spec.containers.is_empty() {
        causes.push(FieldCause::required("spec.containers", ""));
    }
    let mut seen = Vec::new();
    validate_containers(
        spec.init_containers.as_deref().unwrap_or_default(),
        "initContainers",
        &mut seen,
        &volumes,
        &mut causes,
    );
    validate_containers(
        &spec.containers,
        "containers",
        &mut seen,
        &volumes,
        &mut causes,
    );
    let restart_policy = spec
        .restart_policy
        .clone()
        .unwrap_or_else(|| "Always".to_owned());
    if !["Always", "OnFailure", "Never"].contains(&restart_policy.as_str()) {
        causes.push(FieldCause {
            field: "spec.restartPolicy".into(),
            reason: "FieldValueNotSupported",
            message: format!("Unsupported value: {restart_policy:?}: supported values: \"Always\", \"OnFailure\", \"Never\""),
        });
    }
    if spec
        .active_deadline_seconds
        .is_some_and(|seconds| seconds <= 0)
    {
        let value = spec.active_deadline_seconds.unwrap_or_default().to_string();
        causes.push(FieldCause::invalid(
            "spec.activeDeadlineSeconds",
            &value,
            "must be between 1 and 2147483647, inclusive",
        ));
    }
    if !causes.is_empty() {
        return Err(ApiError::invalid("Pod", &name, causes));
    }

    let spec_value = &mut object["spec"];
    let defaults = [
        ("restartPolicy", json!(restart_policy)),
        ("terminationGracePeriodSeconds", json!(30)),
        ("dnsPolicy", json!("ClusterFirst")),
        ("schedulerName", json!("default-scheduler")),
        (
            "serviceAccountName",
            json!(spec
                .service_account_name
                .clone()
                .unwrap_or_else(|| "default".into())),
        ),
        ("securityContext", json!({})),
        ("enableServiceLinks", json!(true)),
        ("priority", json!(0)),
        ("preemptionPolicy", json!("PreemptLowerPriority")),
    ];
    for (field, value) in defaults {
        if spec_value.get(field).is_none_or(Value::is_null) {
            spec_value[field] = value;
        }
    }
    spec_value["serviceAccount"] = spec_value["serviceAccountName"].clone();
    for field in ["initContainers", "containers"] {
        if let Some(list) = spec_value.get_mut(field).and_then(Value::as_array_mut) {
            for container in list {
                let image = container["image"].as_str().unwrap_or("").to_owned();
                let tag = image
                    .rsplit('/')
                    .next()
                    .unwrap_or("")
                    .split_once(':')
                    .map(|(_, tag)| tag.to_owned());
                let pull_policy = if tag.is_none() || tag.as_deref() == Some("latest") {
                    "Always"
                } else {
                    "IfNotPresent"
                };
                let container_defaults = [
                    ("imagePullPolicy", json!(pull_policy)),
                    ("terminationMessagePath", json!("/dev/termination-log")),
                    ("terminationMessagePolicy", json!("File")),
                    ("resources", json!({})),
                ];
                for (key, value) in container_defaults {
                    if container.get(key).is_none_or(Value::is_null) {
                        container[key] = value;
                    }
                }
            }
        }
    }
    let all_containers: Vec<Container> = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .cloned()
        .collect();
    object["status"] = json!({"phase": "Pending", "qosClass": qos_class(&all_containers)});
    Ok(object)
}

/// Deletes a pod. An unscheduled or finished pod goes at once. A running one gets
/// `deletionTimestamp` and `deletionGracePeriodSeconds`, and its processes get SIGTERM and,
/// after the grace period, SIGKILL. It leaves the store once they are gone.
pub async fn delete(
    cluster: &Arc<Cluster>,
    namespace: &str,
    name: &str,
    grace: Option<i64>,
) -> Result<Value, ApiError> {
    let object = cluster
        .store()
        .get(Kind::Pod, namespace, name)
        .cloned()
        .ok_or_else(|| ApiError::not_found("pods", name))?;
    let uid = meta::uid(&object).to_owned();
    let spec_grace = object["spec"]["terminationGracePeriodSeconds"]
        .as_i64()
        .unwrap_or(30);
    let grace = grace.unwrap_or(spec_grace).max(0);
    let phase = object["status"]["phase"].as_str().unwrap_or("");
    let scheduled = !object["spec"]["nodeName"].as_str().unwrap_or("").is_empty();
    let runtime = cluster.kubelet.pod(&uid);
    let finished = runtime.as_ref().is_none_or(|pod| pod.is_done());
    let immediate = !scheduled || phase == "Succeeded" || phase == "Failed" || finished;

    if immediate || grace == 0 {
        tracing::info!(namespace, pod = name, grace, "deleting pod now");
        let now = meta::format_seconds(crate::meta::now());
        let marked = cluster
            .store()
            .update(Kind::Pod, namespace, name, |object| {
                let metadata = meta::metadata_mut(object);
                metadata
                    .entry("deletionTimestamp")
                    .or_insert_with(|| Value::String(now));
                metadata.insert("deletionGracePeriodSeconds".into(), json!(0));
                Ok(())
            })?;
        kubelet::request_stop(
            cluster,
            &uid,
            StopRequest::Delete {
                grace: Duration::ZERO,
            },
        );
        if let Some(pod) = &runtime {
            if !pod.wait_done(FORCE_DELETE_WAIT).await {
                tracing::warn!(
                    namespace,
                    pod = name,
                    "pod processes still running after SIGKILL; removing the pod anyway"
                );
            }
        }
        let removed = finish_deletion_now(cluster, namespace, name, &uid);
        return Ok(removed.unwrap_or(marked));
    }

    let already_deleting = meta::is_deleting(&object);
    let current_grace = object["metadata"]["deletionGracePeriodSeconds"].as_i64();
    if already_deleting && current_grace.is_some_and(|current| current <= grace) {
        return Ok(object);
    }
    tracing::info!(namespace, pod = name, grace, "deleting pod gracefully");
    let deadline = meta::add_seconds(meta::now(), grace);
    let updated = cluster
        .store()
        .update(Kind::Pod, namespace, name, |object| {
            let metadata = meta::metadata_mut(object);
            metadata.insert(
                "deletionTimestamp".into(),
                Value::String(meta::format_seconds(deadline)),
            );
            metadata.insert("deletionGracePeriodSeconds".into(), json!(grace));
            Ok(())
        })?;
    kubelet::request_stop(
        cluster,
        &uid,
        StopRequest::Delete {
            grace: Duration::from_secs(grace as u64),
        },
    );
    Ok(updated)
}

/// Removes a pod whose processes are gone, unless finalizers hold it; returns the removed
/// object.
fn finish_deletion_now(
    cluster: &Arc<Cluster>,
    namespace: &str,
    name: &str,
    uid: &str,
) -> Option<Value> {
    crate::resources::finish_pod_deletion(cluster, namespace, name, uid)
}
