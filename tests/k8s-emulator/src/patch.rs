//! PATCH bodies: JSON merge patch (RFC 7386), strategic merge patch for the fields the
//! emulator's kinds have, and JSON patch (RFC 6902).

use serde_json::{Map, Value};

/// Applies an RFC 7386 merge patch: objects merge key by key, `null` removes a key, and any
/// other value (arrays included) replaces the target.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch_map) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let target_map = target
        .as_object_mut()
        .expect("target was just made an object");
    for (key, value) in patch_map {
        if value.is_null() {
            target_map.remove(key);
        } else {
            merge_patch(target_map.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// The merge key of list fields whose items strategic merge patch merges instead of replacing,
/// from the Kubernetes API schema (`x-kubernetes-patch-merge-key`).
fn merge_key(field: &str, items: &[Value]) -> Option<&'static str> {
    match field {
        "ownerReferences" => Some("uid"),
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets" => Some("name"),
        "volumeMounts" => Some("mountPath"),
        "conditions" => Some("type"),
        "ports" => {
            let has_container_port = items.iter().any(|item| item.get("containerPort").is_some());
            Some(if has_container_port {
                "containerPort"
            } else {
                "port"
            })
        }
        _ => None,
    }
}

/// Primitive list fields that strategic merge patch unions instead of replacing.
fn is_merged_primitive_list(field: &str) -> bool {
    field == "finalizers"
}

/// Applies a strategic merge patch. Lists with a merge key merge item by item, an item with
/// `"$patch": "delete"` removes its match, `"$patch": "replace"` in an object replaces it
/// whole, and `$deleteFromPrimitiveList/<field>` removes values from a merged primitive list.
pub fn strategic_merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch_map) = patch else {
        *target = patch.clone();
        return;
    };
    if patch_map.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut replacement = patch_map.clone();
        replacement.remove("$patch");
        *target = Value::Object(replacement);
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let target_map = target
        .as_object_mut()
        .expect("target was just made an object");
    for (key, value) in patch_map {
        if key.starts_with("$setElementOrder/") || key == "$retainKeys" || key == "$patch" {
            continue;
        }
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Value::Array(removed)) =
                (target_map.get_mut(field), value)
            {
                list.retain(|item| !removed.contains(item));
            }
            continue;
        }
        if value.is_null() {
            target_map.remove(key);
            continue;
        }
        let slot = target_map.entry(key.clone()).or_insert(Value::Null);
        match value {
            Value::Array(patch_items) => merge_list(key, slot, patch_items),
            Value::Object(_) => strategic_merge_patch(slot, value),
            _ => *slot = value.clone(),
        }
    }
}

fn merge_list(field: &str, slot: &mut Value, patch_items: &[Value]) {
    if is_merged_primitive_list(field) {
        let list = match slot {
            Value::Array(list) => list,
            _ => {
                *slot = Value::Array(Vec::new());
                slot.as_array_mut().expect("slot was just made an array")
            }
        };
        for item in patch_items {
            if !list.contains(item) {
                list.push(item.clone());
            }
        }
        return;
    }
    let Some(key) = merge_key(field, patch_items) else {
        *slot = Value::Array(patch_items.to_vec());
        return;
    };
    if !slot.is_array() {
        *slot = Value::Array(Vec::new());
    }
    let list = slot.as_array_mut().expect("slot was just made an array");
    for item in patch_items {
        let position = list
            .iter()
            .position(|existing| existing.get(key) == item.get(key));
        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (position, delete) {
            (Some(index), true) => {
                list.remove(index);
            }
            (None, true) => {}
            (Some(index), false) => strategic_merge_patch(&mut list[index], item),
            (None, false) => {
                let mut added = Value::Null;
                strategic_merge_patch(&mut added, item);
                list.push(added);
            }
        }
    }
}

/// Resolves an RFC 6901 pointer to the parent container and the last reference token.
fn split_pointer(pointer: &str) -> Result<(String, String), String> {
    if pointer.is_empty() {
        return Err("the root cannot be the target of this operation".to_owned());
    }
    let (parent, last) = pointer
        .rsplit_once('/')
        .ok_or_else(|| format!("invalid JSON pointer {pointer:?}"))?;
    let last = last.replace("~1", "/").replace("~0", "~");
    Ok((parent.to_owned(), last))
}

fn add_at(target: &mut Value, pointer: &str, value: Value) -> Result<(), String> {
    let (parent, last) = split_pointer(pointer)?;
    let container = target
        .pointer_mut(&parent)
        .ok_or_else(|| format!("path {parent:?} does not exist"))?;
    match container {
        Value::Object(map) => {
            map.insert(last, value);
            Ok(())
        }
        Value::Array(list) => {
            let index = if last == "-" {
                list.len()
            } else {
                last.parse::<usize>()
                    .map_err(|_| format!("invalid array index {last:?}"))?
            };
            if index > list.len() {
                return Err(format!("array index {index} is out of bounds"));
            }
            list.insert(index, value);
            Ok(())
        }
        _ => Err(format!("path {parent:?} is not an object or array")),
    }
}

fn remove_at(target: &mut Value, pointer: &str) -> Result<Value, String> {
    let (parent, last) = split_pointer(pointer)?;
    let missing = || format!("path {pointer:?} does not exist");
    match target.pointer_mut(&parent).ok_or_else(missing)? {
        Value::Object(map) => map.remove(&last).ok_or_else(missing),
        Value::Array(list) => {
            let index = last.parse::<usize>().map_err(|_| missing())?;
            (index < list.len())
                .then(|| list.remove(index))
                .ok_or_else(missing)
        }
        _ => Err(missing()),
    }
}

/// Applies an RFC 6902 JSON patch: `add`, `remove`, `replace`, `move`, `copy` and `test`.
pub fn json_patch(target: &mut Value, operations: &Value) -> Result<(), String> {
    let operations = operations
        .as_array()
        .ok_or("a JSON patch must be an array")?;
    for operation in operations {
        let op = operation["op"].as_str().ok_or("missing op")?;
        let path = operation["path"].as_str().ok_or("missing path")?;
        match op {
            "add" => add_at(target, path, operation["value"].clone())?,
            "remove" => {
                remove_at(target, path)?;
            }
            "replace" => {
                remove_at(target, path)?;
                add_at(target, path, operation["value"].clone())?;
            }
            "move" => {
                let from = operation["from"].as_str().ok_or("missing from")?;
                let value = remove_at(target, from)?;
                add_at(target, path, value)?;
            }
            "copy" => {
                let from = operation["from"].as_str().ok_or("missing from")?;
                let value = target
                    .pointer(from)
                    .cloned()
                    .ok_or_else(|| format!("path {from:?} does not exist"))?;
                add_at(target, path, value)?;
            }
            "test" => {
                if target.pointer(path) != Some(&operation["value"]) {
                    return Err(format!("testing value {path} failed"));
                }
            }
            other => return Err(format!("unknown operation {other:?}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_replaces_lists_and_removes_nulls() {
        let mut target = json!({"metadata": {"labels": {"a": "1", "b": "2"}, "finalizers": ["x"]}});
        merge_patch(
            &mut target,
            &json!({"metadata": {"labels": {"b": null, "c": "3"}, "finalizers": ["y"]}}),
        );
        assert_eq!(
            target,
            json!({"metadata": {"labels": {"a": "1", "c": "3"}, "finalizers": ["y"]}})
        );
    }

    #[test]
    fn strategic_patch_merges_owner_references_by_uid() {
        let mut target = json!({"metadata": {"ownerReferences": [{"uid": "1", "name": "a"}]}});
        let patch = json!({"metadata": {"ownerReferences": [{"uid": "2", "name": "b"}, {"uid": "1", "name": "renamed"}]}});
        strategic_merge_patch(&mut target, &patch);
        assert_eq!(
            target["metadata"]["ownerReferences"],
            json!([{"uid": "1", "name": "renamed"}, {"uid": "2", "name": "b"}])
        );
        strategic_merge_patch(
            &mut target,
            &json!({"metadata": {"ownerReferences": [{"uid": "1", "$patch": "delete"}]}}),
        );
        assert_eq!(
            target["metadata"]["ownerReferences"],
            json!([{"uid": "2", "name": "b"}])
        );
    }

    #[test]
    fn strategic_patch_unions_finalizers() {
        let mut target = json!({"metadata": {"finalizers": ["a"]}});
        strategic_merge_patch(
            &mut target,
            &json!({"metadata": {"finalizers": ["b", "a"]}}),
        );
        assert_eq!(target["metadata"]["finalizers"], json!(["a", "b"]));
        strategic_merge_patch(
            &mut target,
            &json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}),
        );
        assert_eq!(target["metadata"]["finalizers"], json!(["b"]));
    }

    #[test]
    fn json_patch_operations() {
        let mut target = json!({"metadata": {"labels": {"a": "1"}}});
        let operations = json!([
            {"op": "add", "path": "/metadata/ownerReferences", "value": []},
            {"op": "add", "path": "/metadata/ownerReferences/-", "value": {"uid": "1"}},
            {"op": "replace", "path": "/metadata/labels/a", "value": "2"},
            {"op": "test", "path": "/metadata/labels/a", "value": "2"},
            {"op": "remove", "path": "/metadata/labels/a"},
        ]);
        json_patch(&mut target, &operations).unwrap();
        assert_eq!(
            target,
            json!({"metadata": {"labels": {}, "ownerReferences": [{"uid": "1"}]}})
        );
        assert!(json_patch(&mut target, &json!([{"op": "remove", "path": "/nope"}])).is_err());
    }
}
