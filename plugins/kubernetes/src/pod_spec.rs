//! The objects of one execution: the Secret with its secret values, the pod, and the Service.
//!
//! The pod has an `emptyDir` volume mounted at [`MOUNT`] in every container:
//! 1. init container `unpack` reads exactly the package's size from stdin (sent over an attach
//!    stream, so it never waits for a half-close), checks the sha256 and unpacks it;
//! 2. init container `setup` (Python apps only) creates the virtual environment and installs the
//!    dependencies;
//! 3. container `app` runs the script.

use crate::naming::{self, APP_NAME_ANNOTATION, EXECUTION_LABEL, INSTANCE_LABEL, MANAGED_BY, MANAGED_BY_LABEL, RUN_ID_ANNOTATION, TIMEOUT_ANNOTATION};
use crate::settings::Settings;
use crate::status_map::{APP_CONTAINER, SETUP_CONTAINER, UNPACK_CONTAINER};
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use tower_package::Manifest;
use tower_plugin_api::ExecutionSpec;

/// Where the shared volume is mounted in every container.
pub const MOUNT: &str = "/tower";
/// Where the package is unpacked.
const PACKAGE_DIR: &str = "/tower/package";

/// How the package reaches the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// The plugin streams it into the `unpack` container's stdin over an attach stream.
    Attach,
    /// The `unpack` container downloads it from this URL.
    Url(String),
}

/// What the pod needs to know about the package, read from it before the pod is created.
#[derive(Debug, Clone)]
pub struct PackageInfo {
    /// How the package reaches the pod.
    pub delivery: Delivery,
    /// Size of the archive in bytes.
    pub size: u64,
    /// Lowercase hex sha256 of the archive.
    pub sha256: String,
    /// The package's MANIFEST.
    pub manifest: Manifest,
    /// Whether the app folder has a `pyproject.toml`.
    pub has_pyproject: bool,
    /// Whether the app folder has a `requirements.txt`.
    pub has_requirements: bool,
}

/// Names of the objects of one execution.
#[derive(Debug, Clone)]
pub struct ObjectNames {
    /// The pod.
    pub pod: String,
    /// The Secret with the secret values.
    pub secret: String,
    /// The Service, when one is exposed.
    pub service: Option<String>,
    /// Value of the execution label.
    pub execution_label: String,
}

impl ObjectNames {
    /// Derives the names of a run's objects.
    pub fn new(settings: &Settings, spec: &ExecutionSpec) -> Self {
        let pod = naming::pod_name(&settings.pod_name_prefix, &spec.run_id);
        let service = spec.network.expose_service.then(|| match spec.network.service_name.as_ref().into_option() {
            Some(name) if naming::is_dns_label(name) => name.to_string(),
            _ => pod.clone(),
        });
        Self { secret: format!("{pod}-secrets"), pod, service, execution_label: naming::execution_label(&spec.run_id) }
    }
}

/// Returns the labels every object of the execution carries.
pub fn labels(settings: &Settings, names: &ObjectNames) -> BTreeMap<String, String> {
    let mut labels = settings.labels.clone();
    labels.insert(MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string());
    labels.insert(INSTANCE_LABEL.to_string(), settings.instance.clone());
    labels.insert(EXECUTION_LABEL.to_string(), names.execution_label.clone());
    labels
}

/// Key of the package URL in the execution's Secret.
const PACKAGE_URL_KEY: &str = "package-url";

/// Tells whether the execution needs a Secret: it has secrets, or its package URL goes there.
pub fn needs_secret(spec: &ExecutionSpec, package: &PackageInfo) -> bool {
    !spec.secrets.is_empty() || matches!(package.delivery, Delivery::Url(_))
}

/// Builds the Secret that contains the spec's secrets and the package URL. Secret keys are
/// `secret-<index>`, because env var names may contain characters that Secret keys do not allow.
pub fn secret(settings: &Settings, spec: &ExecutionSpec, names: &ObjectNames, package: &PackageInfo) -> Secret {
    let mut data = Map::new();
    if let Delivery::Url(url) = &package.delivery {
        data.insert(PACKAGE_URL_KEY.to_string(), Value::String(url.clone()));
    }
    for (index, secret) in spec.secrets.iter().enumerate() {
        data.insert(format!("secret-{index}"), Value::String(secret.value.expose().to_string()));
    }
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": { "name": names.secret, "labels": labels(settings, names) },
        "type": "Opaque",
        "stringData": data,
    }))
    .expect("a Secret built from strings is valid")
}

/// Builds the pod. The template patch from the settings is applied last.
pub fn pod(settings: &Settings, spec: &ExecutionSpec, names: &ObjectNames, package: &PackageInfo) -> Result<Pod, String> {
    let manifest = &package.manifest;
    let workdir = manifest.working_dir(std::path::Path::new(PACKAGE_DIR)).display().to_string();
    let python = !manifest.is_bash();

    let mut annotations = settings.annotations.clone();
    annotations.insert(RUN_ID_ANNOTATION.to_string(), spec.run_id.to_string());
    annotations.insert(APP_NAME_ANNOTATION.to_string(), spec.app_name.to_string());
    // The timeout counts from the app's start, so it becomes `activeDeadlineSeconds` only then
    // (see `execution::set_deadline`). The pod carries it for a host that recovers the execution.
    if let Some(seconds) = spec.limits.timeout_seconds.into_option() {
        annotations.insert(TIMEOUT_ANNOTATION.to_string(), seconds.to_string());
    }

    let mount = json!([{ "name": "tower", "mountPath": MOUNT }]);
    let attach = package.delivery == Delivery::Attach;
    let mut unpack = json!({
        "name": UNPACK_CONTAINER,
        "image": settings.image,
        "command": ["sh", "-c", unpack_script(package)],
        "stdin": attach,
        "stdinOnce": attach,
        "volumeMounts": mount,
    });
    if !attach {
        unpack["env"] = json!([{ "name": "PACKAGE_URL", "valueFrom": { "secretKeyRef": { "name": names.secret, "key": PACKAGE_URL_KEY } } }]);
    }
    let mut init_containers = vec![unpack];
    if python {
        init_containers.push(json!({
            "name": SETUP_CONTAINER,
            "image": settings.image,
            "command": ["sh", "-c", setup_script(settings, package, &workdir)],
            "workingDir": workdir,
            "env": [
                { "name": "UV_CACHE_DIR", "value": format!("{MOUNT}/uv-cache") },
                { "name": "UV_PYTHON_DOWNLOADS", "value": "never" },
            ],
            "volumeMounts": mount,
        }));
    }
    let app = json!({
        "name": APP_CONTAINER,
        "image": settings.image,
        "command": ["sh", "-c", app_script(spec, &workdir, python, &manifest.invoke)],
        "workingDir": workdir,
        "env": app_env(spec, names, manifest, &workdir),
        "resources": resources(spec),
        "volumeMounts": mount,
        "ports": spec.network.port.into_option().map(|port| vec![json!({ "containerPort": port })]).unwrap_or_default(),
    });

    let mut pod_spec = json!({
        "restartPolicy": "Never",
        "initContainers": init_containers,
        "containers": [app],
        "volumes": [{ "name": "tower", "emptyDir": {} }],
        "nodeSelector": settings.node_selector,
        "tolerations": settings.tolerations,
    });
    if let Some(account) = &settings.service_account {
        pod_spec["serviceAccountName"] = json!(account);
    }
    if let Some(policy) = &settings.image_pull_policy {
        for list in ["initContainers", "containers"] {
            for container in pod_spec[list].as_array_mut().into_iter().flatten() {
                container["imagePullPolicy"] = json!(policy);
            }
        }
    }

    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": names.pod, "labels": labels(settings, names), "annotations": annotations },
        "spec": pod_spec,
    });
    if let Some(patch) = &settings.pod_template_patch {
        strategic_merge(&mut pod, patch);
    }
    serde_json::from_value(pod).map_err(|error| format!("the pod built with `pod_template_patch` is not a valid pod: {error}"))
}

/// Builds the ClusterIP Service of an execution that exposes a port.
pub fn service(settings: &Settings, spec: &ExecutionSpec, names: &ObjectNames) -> Option<Service> {
    let name = names.service.as_ref()?;
    let port = spec.network.port.into_option()?;
    let value = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": { "name": name, "labels": labels(settings, names) },
        "spec": {
            "type": "ClusterIP",
            "selector": { EXECUTION_LABEL: names.execution_label, INSTANCE_LABEL: settings.instance },
            "ports": [{ "port": port, "targetPort": port, "protocol": "TCP" }],
        },
    });
    Some(serde_json::from_value(value).expect("a Service built from valid fields is valid"))
}

/// The unpack script: reads exactly `size` bytes from stdin, so it ends without waiting for stdin
/// to close (or downloads the URL with Python's standard library), then checks the size and the
/// sha256 before unpacking.
fn unpack_script(package: &PackageInfo) -> String {
    let archive = format!("{MOUNT}/package.tar.gz");
    let receive = match &package.delivery {
        Delivery::Attach => format!("head -c {} > {archive}", package.size),
        // The URL comes from the Secret, because signed URLs carry credentials.
        Delivery::Url(_) => format!(
            "python3 -c 'import os, sys, urllib.request; urllib.request.urlretrieve(os.environ[\"PACKAGE_URL\"], sys.argv[1])' {archive}\necho 'downloaded the package'"
        ),
    };
    format!(
        r#"set -eu
{receive}
received=$(wc -c < {archive})
if [ "$received" -ne {size} ]; then
  echo "the package did not arrive whole: received $received of {size} bytes" >&2
  exit 2
fi
if ! echo "{sha}  {archive}" | sha256sum -c - > /dev/null; then
  echo "the package does not match its sha256 {sha}: got $(sha256sum {archive} | cut -d' ' -f1)" >&2
  exit 3
fi
mkdir -p {PACKAGE_DIR}
tar -xzf {archive} -C {PACKAGE_DIR} --no-same-owner
rm -f {archive}
echo "unpacked the package ({size} bytes, sha256 {sha})"
"#,
        size = package.size,
        sha = package.sha256,
    )
}

/// Returns the setup script: a virtual environment, then `uv sync` or `uv pip install -r`.
fn setup_script(settings: &Settings, package: &PackageInfo, workdir: &str) -> String {
    let extra = settings.uv_args.iter().map(|arg| shell_quote(arg)).collect::<Vec<_>>().join(" ");
    let install = if package.has_pyproject {
        format!("uv sync --color never --no-progress {extra}")
    } else if package.has_requirements {
        format!("uv pip install --color never --no-progress --python .venv/bin/python {extra} -r requirements.txt")
    } else {
        "echo 'no pyproject.toml or requirements.txt: no dependencies to install'".to_string()
    };
    format!("set -eu\ncd {}\nuv venv --color never --no-progress {extra} .venv\n{install}\n", shell_quote(workdir))
}

/// The app script: the manifest's script with `python` from the virtual environment or `bash`,
/// or the spec's entrypoint and command overrides.
fn app_script(spec: &ExecutionSpec, workdir: &str, python: bool, invoke: &str) -> String {
    let mut script = String::from("set -eu\n");
    if python {
        script.push_str(&format!("export PATH={}/.venv/bin:\"$PATH\"\n", shell_quote(workdir)));
    }
    let overrides: Vec<String> = spec.runtime.entrypoint.iter().chain(spec.runtime.command.iter()).map(|arg| shell_quote(arg)).collect();
    let command = if !overrides.is_empty() {
        overrides.join(" ")
    } else if python {
        format!("python {}", shell_quote(invoke))
    } else {
        format!("bash {}", shell_quote(invoke))
    };
    script.push_str(&format!("exec {command}\n"));
    script
}

/// Returns the app's environment: `TOWER_ENVIRONMENT`, parameters, extra env vars, secrets by reference,
/// `PYTHONPATH` and `PYTHONUNBUFFERED`.
fn app_env(spec: &ExecutionSpec, names: &ObjectNames, manifest: &Manifest, workdir: &str) -> Vec<Value> {
    let mut env = Vec::new();
    // The environment name, as the Tower CLI sets it; the spec's own variables may override it.
    if !spec.environment.is_empty() {
        env.push(json!({ "name": "TOWER_ENVIRONMENT", "value": spec.environment }));
    }
    for pair in spec.parameters.iter().chain(spec.env.iter()) {
        env.push(json!({ "name": pair.key, "value": pair.value }));
    }
    for (index, secret) in spec.secrets.iter().enumerate() {
        env.push(json!({
            "name": secret.name,
            "valueFrom": { "secretKeyRef": { "name": names.secret, "key": format!("secret-{index}") } },
        }));
    }
    let mut python_path: Vec<String> = manifest.import_paths(std::path::Path::new(PACKAGE_DIR)).iter().map(|path| path.display().to_string()).collect();
    python_path.push(workdir.to_string());
    env.push(json!({ "name": "PYTHONPATH", "value": python_path.join(":") }));
    env.push(json!({ "name": "PYTHONUNBUFFERED", "value": "1" }));
    env
}

/// Maps the spec's limits to container requests and limits (equal, so the pod is Guaranteed
/// where every limit is set).
fn resources(spec: &ExecutionSpec) -> Value {
    let limits = &spec.limits;
    let mut quantities = Map::new();
    if let Some(cpu) = limits.cpu_millicores.into_option() {
        quantities.insert("cpu".into(), json!(format!("{cpu}m")));
    }
    if let Some(memory) = limits.memory_mib.into_option() {
        quantities.insert("memory".into(), json!(format!("{memory}Mi")));
    }
    if let Some(storage) = limits.ephemeral_storage_mib.into_option() {
        quantities.insert("ephemeral-storage".into(), json!(format!("{storage}Mi")));
    }
    if let Some(gpus) = limits.gpu_count.into_option() {
        quantities.insert("nvidia.com/gpu".into(), json!(gpus.to_string()));
    }
    if quantities.is_empty() {
        return json!({});
    }
    json!({ "requests": quantities, "limits": quantities })
}

/// Quotes a string for `sh`.
pub fn shell_quote(text: &str) -> String {
    if !text.is_empty() && text.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:@%+,".contains(c)) {
        return text.to_string();
    }
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// List fields whose items are merged by their `name` in a strategic merge patch.
const MERGE_BY_NAME: [&str; 6] = ["containers", "initContainers", "volumes", "env", "volumeMounts", "ports"];

/// Applies a strategic merge patch: objects merge key by key (`null` removes a key), the lists in
/// [`MERGE_BY_NAME`] merge their items by `name`, and other lists are replaced.
pub fn strategic_merge(target: &mut Value, patch: &Value) {
    let (Value::Object(target_map), Value::Object(patch_map)) = (&mut *target, patch) else {
        *target = patch.clone();
        return;
    };
    for (key, patch_value) in patch_map {
        if patch_value.is_null() {
            target_map.remove(key);
            continue;
        }
        let existing = target_map.entry(key.clone()).or_insert(Value::Null);
        match (existing, patch_value) {
            (Value::Array(items), Value::Array(patch_items)) if MERGE_BY_NAME.contains(&key.as_str()) => {
                for patch_item in patch_items {
                    let name = patch_item.get("name");
                    match items.iter_mut().find(|item| name.is_some() && item.get("name") == name) {
                        Some(item) => strategic_merge(item, patch_item),
                        None => items.push(patch_item.clone()),
                    }
                }
            }
            (existing @ Value::Object(_), Value::Object(_)) => strategic_merge(existing, patch_value),
            (existing, _) => *existing = patch_value.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategic_merge_merges_containers_by_name() {
        let mut pod = json!({"spec": {"containers": [{"name": "app", "image": "a", "env": [{"name": "X", "value": "1"}]}], "nodeSelector": {"a": "b"}}});
        let patch = json!({"spec": {"containers": [{"name": "app", "env": [{"name": "Y", "value": "2"}]}, {"name": "sidecar", "image": "s"}],
            "nodeSelector": null, "securityContext": {"runAsNonRoot": true}}});
        strategic_merge(&mut pod, &patch);
        let containers = pod["spec"]["containers"].as_array().unwrap();
        assert_eq!(containers.len(), 2);
        assert_eq!(containers[0]["image"], "a");
        assert_eq!(containers[0]["env"].as_array().unwrap().len(), 2);
        assert!(pod["spec"].get("nodeSelector").is_none());
        assert_eq!(pod["spec"]["securityContext"]["runAsNonRoot"], true);
    }

    #[test]
    fn shell_quote_survives_quotes() {
        assert_eq!(shell_quote("main.py"), "main.py");
        assert_eq!(shell_quote("it's here"), r"'it'\''s here'");
        assert_eq!(shell_quote(""), "''");
    }
}
