//! What a container gets: its volumes as folders, its environment, and the rewriting of mount
//! paths onto those folders.
//!
//! Local processes cannot mount anything, so each `volumeMounts[].mountPath` is mapped onto the
//! volume's folder by rewriting that path prefix wherever it appears in the container's
//! `command`, `args`, `env` values and `workingDir`. A path the program builds at run time from
//! other parts is not rewritten.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod, Secret};
use serde_json::Value;

use crate::cluster::Cluster;
use crate::store::Kind;

/// The folders of a pod's volumes, by volume name.
pub type VolumeFolders = BTreeMap<String, PathBuf>;

fn secret_data(
    cluster: &Cluster,
    namespace: &str,
    name: &str,
) -> Option<BTreeMap<String, Vec<u8>>> {
    let object = cluster
        .store()
        .get(Kind::Secret, namespace, name)
        .cloned()?;
    let secret: Secret = serde_json::from_value(object).ok()?;
    Some(
        secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(key, value)| (key, value.0))
            .collect(),
    )
}

/// Creates the pod's volumes under `pod_dir/volumes`. Returns the kubelet-style message of the
/// first volume that cannot be set up yet (a missing secret), so the caller can retry.
pub fn prepare_volumes(
    cluster: &Cluster,
    pod: &Pod,
    pod_dir: &Path,
) -> Result<VolumeFolders, String> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let mut folders = VolumeFolders::new();
    let volumes = pod
        .spec
        .as_ref()
        .and_then(|spec| spec.volumes.clone())
        .unwrap_or_default();
    for volume in volumes {
        let folder = pod_dir.join("volumes").join(&volume.name);
        if volume.empty_dir.is_some() {
            std::fs::create_dir_all(&folder)
                .map_err(|error| format!("failed to create emptyDir {:?}: {error}", volume.name))?;
        } else if let Some(source) = &volume.secret {
            let secret_name = source.secret_name.clone().unwrap_or_default();
            let optional = source.optional.unwrap_or(false);
            let data = match secret_data(cluster, &namespace, &secret_name) {
                Some(data) => data,
                None if optional => BTreeMap::new(),
                None => {
                    return Err(format!(
                        "MountVolume.SetUp failed for volume {:?} : secret {secret_name:?} not found",
                        volume.name
                    ));
                }
            };
            std::fs::create_dir_all(&folder).map_err(|error| {
                format!("failed to create secret volume {:?}: {error}", volume.name)
            })?;
            let files: Vec<(String, String)> = match &source.items {
                Some(items) => items
                    .iter()
                    .map(|item| (item.key.clone(), item.path.clone()))
                    .collect(),
                None => data.keys().map(|key| (key.clone(), key.clone())).collect(),
            };
            for (key, relative) in files {
                let Some(value) = data.get(&key) else {
                    return Err(format!(
                        "MountVolume.SetUp failed for volume {:?} : references non-existent secret key: {key}",
                        volume.name
                    ));
                };
                let path = folder.join(relative);
                if let Some(parent) = path.parent() {
                    let _ = std::fs::create_dir_all(parent);
                }
                std::fs::write(&path, value)
                    .map_err(|error| format!("failed to write {}: {error}", path.display()))?;
            }
        } else if let Some(source) = &volume.host_path {
            let path = PathBuf::from(&source.path);
            if source.type_.as_deref() == Some("DirectoryOrCreate") {
                let _ = std::fs::create_dir_all(&path);
            }
            folders.insert(volume.name.clone(), path);
            continue;
        } else {
            return Err(format!(
                "volume {:?}: the k8s emulator supports only emptyDir, secret and hostPath volumes",
                volume.name
            ));
        }
        folders.insert(volume.name.clone(), folder);
    }
    Ok(folders)
}

/// The mount path prefixes of one container and the folders they stand for.
pub struct Mounts {
    /// Longest mount path first, so `/data/cache` wins over `/data`.
    entries: Vec<(String, PathBuf)>,
}

fn is_path_character(character: char) -> bool {
    character.is_ascii_alphanumeric() || matches!(character, '.' | '_' | '-' | '/' | '~' | '+')
}

impl Mounts {
    pub fn new(container: &Container, folders: &VolumeFolders) -> Self {
        let mut entries: Vec<(String, PathBuf)> = container
            .volume_mounts
            .iter()
            .flatten()
            .filter_map(|mount| {
                let folder = folders.get(&mount.name)?;
                let folder = match mount.sub_path.as_deref().filter(|p| !p.is_empty()) {
                    Some(sub_path) => {
                        let path = folder.join(sub_path);
                        let _ = std::fs::create_dir_all(&path);
                        path
                    }
                    None => folder.clone(),
                };
                let mount_path = mount.mount_path.trim_end_matches('/').to_owned();
                (!mount_path.is_empty()).then_some((mount_path, folder))
            })
            .collect();
        entries.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
        Self { entries }
    }

    /// Replaces each mount path that appears in `text` as a whole path prefix. The character
    /// before it must not be part of a path, and the one after it must be `/` or not be part of
    /// a path. So `/work` is rewritten in `cd /work/app` but not in `/workspace` or `/a/work`.
    pub fn rewrite(&self, text: &str) -> String {
        let mut result = String::with_capacity(text.len());
        let mut position = 0;
        'scan: while position < text.len() {
            let before = text[..position].chars().next_back();
            if before.is_none_or(|c| !is_path_character(c)) {
                for (mount_path, folder) in &self.entries {
                    if !text[position..].starts_with(mount_path.as_str()) {
                        continue;
                    }
                    let after = text[position + mount_path.len()..].chars().next();
                    if after.is_none_or(|c| c == '/' || !is_path_character(c)) {
                        result.push_str(&folder.to_string_lossy());
                        position += mount_path.len();
                        continue 'scan;
                    }
                }
            }
            let character = text[position..]
                .chars()
                .next()
                .expect("position is inside text");
            result.push(character);
            position += character.len_utf8();
        }
        result
    }
}

/// Expands `$(NAME)` references to earlier variables as the kubelet does; `$$` is a literal `$`
/// and a reference to an unknown name stays as written.
pub fn expand_references(text: &str, env: &[(String, OsString)]) -> String {
    let mut result = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(index) = rest.find('$') {
        result.push_str(&rest[..index]);
        let after = &rest[index + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            result.push('$');
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(end) => {
                    let name = &inner[..end];
                    match env.iter().rev().find(|(key, _)| key == name) {
                        Some((_, value)) => result.push_str(&value.to_string_lossy()),
                        None => {
                            result.push_str("$(");
                            result.push_str(name);
                            result.push(')');
                        }
                    }
                    rest = &inner[end + 1..];
                }
                None => {
                    result.push_str("$(");
                    rest = inner;
                }
            }
        } else {
            result.push('$');
            rest = after;
        }
    }
    result.push_str(rest);
    result
}

fn field_ref(pod: &Value, path: &str) -> Option<String> {
    let metadata = &pod["metadata"];
    for (prefix, map) in [
        ("metadata.labels['", "labels"),
        ("metadata.annotations['", "annotations"),
    ] {
        if let Some(key) = path
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix("']"))
        {
            return Some(metadata[map][key].as_str().unwrap_or("").to_owned());
        }
    }
    let value = match path {
        "metadata.name" => &metadata["name"],
        "metadata.namespace" => &metadata["namespace"],
        "metadata.uid" => &metadata["uid"],
        "spec.nodeName" => &pod["spec"]["nodeName"],
        "spec.serviceAccountName" => &pod["spec"]["serviceAccountName"],
        "status.podIP" | "status.hostIP" => return Some(super::status::POD_IP.to_owned()),
        _ => return None,
    };
    Some(value.as_str().unwrap_or("").to_owned())
}

/// Builds a container's environment: the emulator's base variables, `HOSTNAME`, `envFrom` and
/// `env` in order, with `$(NAME)` references expanded and mount paths rewritten. Returns the
/// kubelet's `CreateContainerConfigError` message when a secret or key it needs is missing.
pub fn container_env(
    cluster: &Cluster,
    pod: &Value,
    container: &Container,
    mounts: &Mounts,
) -> Result<Vec<(String, OsString)>, String> {
    let namespace = pod["metadata"]["namespace"].as_str().unwrap_or("");
    let mut env: Vec<(String, OsString)> = cluster.base_env.clone();
    let hostname = pod["metadata"]["name"]
        .as_str()
        .unwrap_or("")
        .chars()
        .take(63)
        .collect::<String>();
    env.push(("HOSTNAME".to_owned(), hostname.into()));

    for source in container.env_from.iter().flatten() {
        let prefix = source.prefix.clone().unwrap_or_default();
        if let Some(secret_ref) = &source.secret_ref {
            match secret_data(cluster, namespace, &secret_ref.name) {
                Some(data) => env.extend(
                    data.into_iter()
                        .map(|(key, value)| (format!("{prefix}{key}"), OsString::from_vec(value))),
                ),
                None if secret_ref.optional.unwrap_or(false) => {}
                None => return Err(format!("secret \"{}\" not found", secret_ref.name)),
            }
        }
        if source.config_map_ref.is_some() {
            return Err(
                "envFrom configMapRef: the k8s emulator does not store ConfigMaps".to_owned(),
            );
        }
    }

    for variable in container.env.iter().flatten() {
        let value: OsString = if let Some(value) = &variable.value {
            expand_references(value, &env).into()
        } else if let Some(source) = &variable.value_from {
            if let Some(selector) = &source.secret_key_ref {
                let optional = selector.optional.unwrap_or(false);
                match secret_data(cluster, namespace, &selector.name) {
                    Some(data) => match data.get(&selector.key) {
                        Some(value) => OsString::from_vec(value.clone()),
                        None if optional => continue,
                        None => {
                            return Err(format!(
                                "couldn't find key {} in Secret {namespace}/{}",
                                selector.key, selector.name
                            ));
                        }
                    },
                    None if optional => continue,
                    None => return Err(format!("secret \"{}\" not found", selector.name)),
                }
            } else if let Some(selector) = &source.field_ref {
                match field_ref(pod, &selector.field_path) {
                    Some(value) => value.into(),
                    None => {
                        return Err(format!(
                            "unsupported fieldRef {:?} for env {:?}",
                            selector.field_path, variable.name
                        ));
                    }
                }
            } else {
                return Err(format!(
                    "env {:?}: the k8s emulator supports valueFrom only with secretKeyRef and fieldRef",
                    variable.name
                ));
            }
        } else {
            OsString::new()
        };
        env.push((variable.name.clone(), value));
    }

    // Later definitions of a name win, as in the container runtime.
    let mut resolved: Vec<(String, OsString)> = Vec::new();
    for (name, value) in env {
        let value = match value.into_string() {
            Ok(text) => OsString::from(mounts.rewrite(&text)),
            Err(raw) => raw,
        };
        resolved.retain(|(existing, _)| *existing != name);
        resolved.push((name, value));
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mounts(entries: &[(&str, &str)]) -> Mounts {
        let mut entries: Vec<(String, PathBuf)> = entries
            .iter()
            .map(|(m, f)| (m.to_string(), PathBuf::from(f)))
            .collect();
        entries.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
        Mounts { entries }
    }

    #[test]
    fn rewrite_replaces_whole_path_prefixes_only() {
        let mounts = mounts(&[("/work", "/tmp/v/work"), ("/work/cache", "/tmp/v/cache")]);
        let cases = [
            ("/work", "/tmp/v/work"),
            ("cd /work/app && ls", "cd /tmp/v/work/app && ls"),
            ("/work/cache/x", "/tmp/v/cache/x"),
            ("/workspace", "/workspace"),
            ("/a/work", "/a/work"),
            ("--dir=/work", "--dir=/tmp/v/work"),
            ("'/work'", "'/tmp/v/work'"),
            ("x:/work:y", "x:/tmp/v/work:y"),
        ];
        for (input, expected) in cases {
            assert_eq!(mounts.rewrite(input), expected, "input {input:?}");
        }
    }

    #[test]
    fn references_expand_like_the_kubelet() {
        let env = vec![("A".to_owned(), OsString::from("1"))];
        assert_eq!(expand_references("x$(A)y", &env), "x1y");
        assert_eq!(expand_references("$$(A)", &env), "$(A)");
        assert_eq!(expand_references("$(B)", &env), "$(B)");
        assert_eq!(expand_references("$A", &env), "$A");
    }
}
