//! Service-specific API behaviour: name rules, defaults and ClusterIP allocation. Nothing routes
//! traffic to a ClusterIP.

use serde_json::{json, Value};

use crate::api_error::{ApiError, FieldCause};
use crate::cluster::Cluster;
use crate::meta;

fn default_ports(spec: &mut Value) {
    let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) else {
        return;
    };
    for port in ports {
        if port.get("protocol").is_none_or(Value::is_null) {
            port["protocol"] = json!("TCP");
        }
        if port.get("targetPort").is_none_or(Value::is_null) {
            port["targetPort"] = port["port"].clone();
        }
    }
}

fn validate(name: &str, spec: &Value) -> Vec<FieldCause> {
    let mut causes = Vec::new();
    if let Some(problem) = meta::check_dns1035_label(name) {
        causes.push(FieldCause::invalid("metadata.name", name, &problem));
    }
    let headless = spec["clusterIP"].as_str() == Some("None");
    let ports = spec["ports"].as_array().cloned().unwrap_or_default();
    if ports.is_empty() && !headless {
        causes.push(FieldCause::required("spec.ports", ""));
    }
    for (index, port) in ports.iter().enumerate() {
        let number = port["port"].as_i64().unwrap_or(0);
        if !(1..=65535).contains(&number) {
            causes.push(FieldCause::invalid(
                format!("spec.ports[{index}].port"),
                &number.to_string(),
                "must be between 1 and 65535, inclusive",
            ));
        }
        if ports.len() > 1 && port["name"].as_str().unwrap_or("").is_empty() {
            causes.push(FieldCause::required(
                format!("spec.ports[{index}].name"),
                "",
            ));
        }
    }
    let service_type = spec["type"].as_str().unwrap_or("ClusterIP");
    if !["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"].contains(&service_type) {
        causes.push(FieldCause::invalid(
            "spec.type",
            service_type,
            "supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\"",
        ));
    }
    causes
}

/// Validates a service for create, fills defaults and assigns its ClusterIP.
pub fn prepare_create(cluster: &Cluster, mut object: Value) -> Result<Value, ApiError> {
    let name = meta::name(&object).to_owned();
    if !object["spec"].is_object() {
        object["spec"] = json!({});
    }
    let causes = validate(&name, &object["spec"]);
    if !causes.is_empty() {
        return Err(ApiError::invalid("Service", &name, causes));
    }

    let spec = &mut object["spec"];
    if spec["type"].is_null() {
        spec["type"] = json!("ClusterIP");
    }
    let cluster_ip = match spec["clusterIP"].as_str() {
        Some(ip) if !ip.is_empty() => ip.to_owned(),
        _ => cluster.allocate_cluster_ip(),
    };
    spec["clusterIP"] = json!(cluster_ip);
    if cluster_ip != "None" {
        spec["clusterIPs"] = json!([cluster_ip]);
        spec["ipFamilies"] = json!(["IPv4"]);
        spec["ipFamilyPolicy"] = json!("SingleStack");
    }
    for (field, value) in [
        ("sessionAffinity", json!("None")),
        ("internalTrafficPolicy", json!("Cluster")),
    ] {
        if spec.get(field).is_none_or(Value::is_null) {
            spec[field] = value;
        }
    }
    default_ports(spec);
    object["status"] = json!({"loadBalancer": {}});
    Ok(object)
}

/// Copies the changeable fields of `desired` onto `current`; the ClusterIP cannot change.
pub fn apply_update(current: &mut Value, desired: Value) -> Result<(), ApiError> {
    let name = meta::name(current).to_owned();
    let mut spec = desired["spec"].clone();
    if !spec.is_object() {
        spec = json!({});
    }
    let requested_ip = spec["clusterIP"].as_str().unwrap_or("");
    let current_ip = current["spec"]["clusterIP"].as_str().unwrap_or("");
    if !requested_ip.is_empty() && requested_ip != current_ip {
        return Err(ApiError::invalid(
            "Service",
            &name,
            vec![FieldCause::invalid(
                "spec.clusterIPs[0]",
                requested_ip,
                "may not change once set",
            )],
        ));
    }
    let causes = validate(&name, &spec);
    if !causes.is_empty() {
        return Err(ApiError::invalid("Service", &name, causes));
    }
    for field in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
        spec[field] = current["spec"][field].clone();
    }
    for (field, value) in [
        ("type", json!("ClusterIP")),
        ("sessionAffinity", json!("None")),
        ("internalTrafficPolicy", json!("Cluster")),
    ] {
        if spec.get(field).is_none_or(Value::is_null) {
            spec[field] = value;
        }
    }
    default_ports(&mut spec);
    current["spec"] = spec;
    Ok(())
}
