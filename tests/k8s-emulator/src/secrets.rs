//! Secret-specific API behaviour: `stringData` folded into `data`, and the immutable `type`.

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use serde_json::Value;

use crate::api_error::{ApiError, FieldCause};
use crate::meta;

/// Checks `data` decodes and moves `stringData` into it, as the API server stores secrets.
pub fn normalize(mut object: Value) -> Result<Value, ApiError> {
    let name = meta::name(&object).to_owned();
    let mut secret: Secret = serde_json::from_value(object.clone()).map_err(|error| {
        ApiError::bad_request(format!(
            "Secret in version \"v1\" cannot be handled as a Secret: {error}"
        ))
    })?;
    if let Some(strings) = secret.string_data.take() {
        let data = secret.data.get_or_insert_with(Default::default);
        for (key, value) in strings {
            data.insert(key, ByteString(value.into_bytes()));
        }
    }

    let mut causes = Vec::new();
    for key in secret.data.iter().flatten().map(|(key, _)| key) {
        let valid = !key.is_empty()
            && key.len() <= 253
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !valid {
            causes.push(FieldCause::invalid(
                format!("data[{key}]"),
                key,
                "a valid config key must consist of alphanumeric characters, '-', '_' or '.'",
            ));
        }
    }
    if !causes.is_empty() {
        return Err(ApiError::invalid("Secret", &name, causes));
    }

    let data = serde_json::to_value(&secret.data).unwrap_or(Value::Null);
    let map = object
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("a Secret must be a JSON object"))?;
    map.remove("stringData");
    if data.is_null() {
        map.remove("data");
    } else {
        map.insert("data".into(), data);
    }
    if map.get("type").is_none_or(Value::is_null) {
        map.insert("type".into(), Value::String("Opaque".into()));
    }
    Ok(object)
}

/// Validates a secret for create.
pub fn prepare_create(object: Value) -> Result<Value, ApiError> {
    let name = meta::name(&object).to_owned();
    if let Some(problem) = meta::check_dns1123_subdomain(&name) {
        return Err(ApiError::invalid(
            "Secret",
            &name,
            vec![FieldCause::invalid("metadata.name", &name, &problem)],
        ));
    }
    normalize(object)
}

/// Copies the changeable fields of `desired` onto `current`.
pub fn apply_update(current: &mut Value, desired: Value) -> Result<(), ApiError> {
    let name = meta::name(current).to_owned();
    let desired = normalize(desired)?;
    if desired["type"] != current["type"] {
        return Err(ApiError::invalid(
            "Secret",
            &name,
            vec![FieldCause::invalid(
                "type",
                desired["type"].as_str().unwrap_or(""),
                "field is immutable",
            )],
        ));
    }
    if current["immutable"] == Value::Bool(true) && desired["data"] != current["data"] {
        return Err(ApiError::invalid(
            "Secret",
            &name,
            vec![FieldCause::forbidden(
                "data",
                "field is immutable when `immutable` is set",
            )],
        ));
    }
    current["data"] = desired["data"].clone();
    if current["data"].is_null() {
        current.as_object_mut().map(|map| map.remove("data"));
    }
    if !desired["immutable"].is_null() {
        current["immutable"] = desired["immutable"].clone();
    }
    Ok(())
}
