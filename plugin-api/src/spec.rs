//! The execution spec: everything a backend needs to run one execution.

use abi_stable::{
    nonexhaustive_enum::NonExhaustive,
    std_types::{ROption, RString, RVec},
    StableAbi,
};
use serde::{Deserialize, Serialize};
use std::fmt;

/// One execution to run: the package, how to run it and with what.
///
/// Adding a field is a major version; backend-specific knobs belong in the plugin's settings.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutionSpec {
    /// The execution id, unique per host; backends name their workloads after it.
    pub run_id: RString,
    /// The app's name, shown to operators (labels, annotations); may be empty.
    #[serde(default)]
    pub app_name: RString,
    /// Where the Tower package is.
    #[serde(with = "package_ref_serde")]
    pub package: PackageRef,
    /// Image, version and command overrides.
    #[serde(default)]
    pub runtime: RuntimeSpec,
    /// The Tower environment name (`default`, `production`, …).
    #[serde(default)]
    pub environment: RString,
    /// Secrets, delivered to the app as environment variables and never logged.
    #[serde(default)]
    pub secrets: RVec<SecretVar>,
    /// App parameters, delivered as environment variables.
    #[serde(default)]
    pub parameters: RVec<KeyValue>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: RVec<KeyValue>,
    /// Resource limits and the timeout.
    #[serde(default)]
    pub limits: ResourceLimits,
    /// Port and service exposure.
    #[serde(default)]
    pub network: NetworkSpec,
    /// Dependency cache settings.
    #[serde(default)]
    pub cache: CacheSpec,
    /// The W3C `traceparent` of the caller's trace, if any.
    #[serde(default)]
    pub traceparent: ROption<RString>,
}

/// Where a package comes from, with the sha256 it must have.
#[non_exhaustive]
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
#[sabi(kind(WithNonExhaustive(size = [usize; 12], traits(Debug, Clone, PartialEq))))]
pub enum PackageSource {
    /// A `.tar.gz` the host staged on the local file system.
    File {
        /// Absolute path of the archive.
        path: RString,
        /// Lowercase hex sha256 of the archive.
        sha256: RString,
    },
    /// A `.tar.gz` that the backend downloads.
    Url {
        /// `http` or `https` URL of the archive.
        url: RString,
        /// Lowercase hex sha256 of the archive.
        sha256: RString,
    },
}

/// A [`PackageSource`] in its boundary form; a minor version may add sources.
pub type PackageRef = PackageSource_NE;

impl PackageSource {
    /// Creates a reference to a staged local archive.
    pub fn file(path: impl Into<String>, sha256: impl Into<String>) -> PackageRef {
        NonExhaustive::new(PackageSource::File { path: path.into().into(), sha256: sha256.into().into() })
    }

    /// Creates a reference to an archive the backend downloads.
    pub fn url(url: impl Into<String>, sha256: impl Into<String>) -> PackageRef {
        NonExhaustive::new(PackageSource::Url { url: url.into().into(), sha256: sha256.into().into() })
    }

    /// Returns the expected sha256.
    pub fn sha256(&self) -> &str {
        match self {
            PackageSource::File { sha256, .. } | PackageSource::Url { sha256, .. } => sha256,
        }
    }
}

/// Serde form of [`PackageRef`]: `{"file": {"path": …, "sha256": …}}` or `{"url": {…}}`.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum PackageRefJson {
    File { path: String, sha256: String },
    Url { url: String, sha256: String },
}


/// Serializes and deserializes a [`PackageRef`] field through [`PackageRefJson`].
mod package_ref_serde {
    use super::{PackageRef, PackageRefJson, PackageSource};
    use serde::{Deserialize, Serialize};

    pub fn serialize<S: serde::Serializer>(value: &PackageRef, serializer: S) -> Result<S::Ok, S::Error> {
        let json = match value.as_enum() {
            Ok(PackageSource::File { path, sha256 }) => {
                PackageRefJson::File { path: path.to_string(), sha256: sha256.to_string() }
            }
            Ok(PackageSource::Url { url, sha256 }) => {
                PackageRefJson::Url { url: url.to_string(), sha256: sha256.to_string() }
            }
            Err(_) => return Err(serde::ser::Error::custom("package source of a newer contract version")),
        };
        json.serialize(serializer)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<PackageRef, D::Error> {
        Ok(match PackageRefJson::deserialize(deserializer)? {
            PackageRefJson::File { path, sha256 } => PackageSource::file(path, sha256),
            PackageRefJson::Url { url, sha256 } => PackageSource::url(url, sha256),
        })
    }
}

/// How to start the app, where the defaults of the package do not fit.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSpec {
    /// Container image, for backends that run images.
    #[serde(default)]
    pub image: ROption<RString>,
    /// Runtime version (for example the Python version), where the backend can choose it.
    #[serde(default)]
    pub version: ROption<RString>,
    /// Program and leading arguments that replace the interpreter (`python`, `bash`).
    #[serde(default)]
    pub entrypoint: RVec<RString>,
    /// Arguments that replace the manifest's script; run after `entrypoint` when both are set.
    #[serde(default)]
    pub command: RVec<RString>,
}

/// A name and a value.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KeyValue {
    /// The name.
    pub key: RString,
    /// The value.
    pub value: RString,
}

impl KeyValue {
    /// Creates a pair.
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Self {
        Self { key: key.into().into(), value: value.into().into() }
    }
}

/// A secret value. `Debug`, `Display` and `Serialize` print `***` so that a spec can be logged
/// or journalled without leaking it; [`Secret::expose`] gives the value.
#[repr(transparent)]
#[derive(StableAbi, Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(RString);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into().into())
    }

    /// Returns the value. Call this only where the value is handed to the workload.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("***")
    }
}

/// A secret environment variable.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretVar {
    /// The environment variable name.
    pub name: RString,
    /// The value.
    pub value: Secret,
}

impl SecretVar {
    /// Creates a secret variable.
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Self {
        Self { name: name.into().into(), value: Secret::new(value) }
    }
}

/// Resource limits. `None` means the backend's default; backends report in their
/// [`Capabilities`](crate::Capabilities) which limits they enforce.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceLimits {
    /// CPU in thousandths of a core.
    #[serde(default)]
    pub cpu_millicores: ROption<u32>,
    /// Memory in MiB.
    #[serde(default)]
    pub memory_mib: ROption<u64>,
    /// Scratch disk in MiB.
    #[serde(default)]
    pub ephemeral_storage_mib: ROption<u64>,
    /// Number of processes (and threads) the execution may have at once.
    #[serde(default)]
    pub max_processes: ROption<u32>,
    /// Number of GPUs.
    #[serde(default)]
    pub gpu_count: ROption<u32>,
    /// Wall-clock limit in seconds, counted from the start of the app's own program; when it runs
    /// out the backend terminates the execution and reports it as timed out.
    #[serde(default)]
    pub timeout_seconds: ROption<u64>,
}

/// Networking of the execution.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    /// The port the app listens on, if any.
    #[serde(default)]
    pub port: ROption<u16>,
    /// Whether to expose the port as a service endpoint.
    #[serde(default)]
    pub expose_service: bool,
    /// Name of the service, where the backend creates one; the backend picks one when empty.
    #[serde(default)]
    pub service_name: ROption<RString>,
}

/// Dependency cache settings.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSpec {
    /// Whether the execution may use and fill the backend's persistent dependency cache.
    #[serde(default = "default_true")]
    pub enabled: bool,
}

impl Default for CacheSpec {
    fn default() -> Self {
        Self { enabled: true }
    }
}

fn default_true() -> bool {
    true
}

impl ExecutionSpec {
    /// Creates a spec with defaults for everything but the id and the package.
    pub fn new(run_id: impl Into<String>, package: PackageRef) -> Self {
        Self {
            run_id: run_id.into().into(),
            app_name: RString::new(),
            package,
            runtime: RuntimeSpec::default(),
            environment: RString::from("default"),
            secrets: RVec::new(),
            parameters: RVec::new(),
            env: RVec::new(),
            limits: ResourceLimits::default(),
            network: NetworkSpec::default(),
            cache: CacheSpec::default(),
            traceparent: ROption::RNone,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_is_hidden_in_debug_and_json() {
        let mut spec = ExecutionSpec::new("run-1", PackageSource::file("/p.tar.gz", "ab"));
        spec.secrets.push(SecretVar::new("API_TOKEN", "hunter2"));
        let debug = format!("{spec:?}");
        let json = serde_json::to_string(&spec).unwrap();
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(!json.contains("hunter2"), "{json}");
        assert_eq!(spec.secrets[0].value.expose(), "hunter2");
    }

    #[test]
    fn spec_deserializes_with_defaults() {
        let json = r#"{"run_id":"r1","package":{"file":{"path":"/x.tar.gz","sha256":"00"}},
            "secrets":[{"name":"TOKEN","value":"s3cr3t"}],
            "limits":{"timeout_seconds":5}}"#;
        let spec: ExecutionSpec = serde_json::from_str(json).unwrap();
        assert_eq!(spec.run_id.as_str(), "r1");
        assert_eq!(spec.limits.timeout_seconds, ROption::RSome(5));
        assert!(spec.cache.enabled);
        assert_eq!(spec.secrets[0].value.expose(), "s3cr3t");
        match spec.package.as_enum() {
            Ok(PackageSource::File { path, sha256 }) => {
                assert_eq!(path.as_str(), "/x.tar.gz");
                assert_eq!(sha256.as_str(), "00");
            }
            other => panic!("unexpected package source {other:?}"),
        }
    }

    #[test]
    fn spec_rejects_unknown_field_by_name() {
        let json = r#"{"run_id":"r1","package":{"url":{"url":"http://x","sha256":"00"}},"limitz":{}}"#;
        let error = serde_json::from_str::<ExecutionSpec>(json).unwrap_err().to_string();
        assert!(error.contains("limitz"), "{error}");
    }

    #[test]
    fn spec_round_trips_without_secrets() {
        let mut spec = ExecutionSpec::new("r2", PackageSource::url("https://example.invalid/p.tar.gz", "ff"));
        spec.parameters.push(KeyValue::new("name", "world"));
        spec.limits.memory_mib = ROption::RSome(512);
        let json = serde_json::to_string(&spec).unwrap();
        let back: ExecutionSpec = serde_json::from_str(&json).unwrap();
        assert_eq!(back, spec);
    }
}
