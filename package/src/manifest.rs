//! The MANIFEST file at the root of every package.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};

use crate::error::PackageError;

/// Package format version that [`crate::pack_dir`] writes.
///
/// Version 1 stores the app files at the package root. Version 2 moves them under
/// `app_dir_name`, puts import paths under `modules_dir_name` and adds `checksum`.
/// Version 3 keeps the layout of version 2 and hashes `/`-separated entry names, so the
/// checksum no longer depends on the operating system that built the package.
pub const CURRENT_VERSION: u32 = 3;

/// Parameter that an app declares in its Towerfile and that the package lists in its MANIFEST.
///
/// At run time each parameter reaches the app as an environment variable with the same name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parameter {
    /// Parameter name, which is also the environment variable name.
    #[serde(default)]
    pub name: String,
    /// Human-readable description.
    #[serde(default)]
    pub description: String,
    /// Value used when a run does not set the parameter.
    #[serde(default)]
    pub default: String,
    /// Whether the Tower UI hides the value.
    #[serde(default)]
    pub hidden: bool,
}

/// Contents of the MANIFEST file, a JSON object at the root of every package.
///
/// Fields keep the names and the order that the Tower CLI writes, so a serialized
/// manifest matches one written by the CLI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Package format version: 1, 2 or 3.
    ///
    /// A MANIFEST without a version, or with `null`, predates versioning and reads as
    /// version 1, which is how the Tower CLI treats it.
    #[serde(default = "legacy_version", deserialize_with = "version_or_legacy")]
    pub version: u32,
    /// Script to run, relative to the working directory (see [`Manifest::working_dir`]).
    pub invoke: String,
    /// Parameters declared by the app.
    #[serde(default)]
    pub parameters: Vec<Parameter>,
    /// Cron schedule. The Tower CLI writes `null`.
    #[serde(default)]
    pub schedule: Option<String>,
    /// Folders to add to `PYTHONPATH`, relative to the package root (`modules/<name>`).
    #[serde(default)]
    pub import_paths: Vec<String>,
    /// Folder that contains the app files in versions 2 and 3, normally `app`.
    #[serde(default)]
    pub app_dir_name: String,
    /// Folder that contains the import path folders in versions 2 and 3, normally `modules`.
    #[serde(default)]
    pub modules_dir_name: String,
    /// Lowercase hexadecimal SHA-256 over the app and module files, empty in version 1.
    /// See [`crate::package_checksum`] for the version 3 algorithm.
    #[serde(default)]
    pub checksum: String,
}

fn legacy_version() -> u32 {
    1
}

fn version_or_legacy<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    Ok(Option::<u32>::deserialize(deserializer)?.unwrap_or_else(legacy_version))
}

impl Manifest {
    /// Parses a MANIFEST from JSON bytes and checks that its version is supported.
    ///
    /// Errors name the file as `MANIFEST`. [`crate::Package::open`] reports the full path.
    pub fn from_slice(bytes: &[u8]) -> Result<Manifest, PackageError> {
        Manifest::from_slice_at(bytes, Path::new("MANIFEST"))
    }

    pub(crate) fn from_slice_at(bytes: &[u8], path: &Path) -> Result<Manifest, PackageError> {
        let manifest: Manifest =
            serde_json::from_slice(bytes).map_err(|source| PackageError::InvalidManifest {
                path: path.to_path_buf(),
                source,
            })?;

        if !(1..=CURRENT_VERSION).contains(&manifest.version) {
            return Err(PackageError::UnsupportedVersion {
                path: path.to_path_buf(),
                version: manifest.version,
            });
        }
        Ok(manifest)
    }

    /// Returns the directory that the app runs in.
    ///
    /// Version 1 runs from the package root. Later versions run from `app_dir_name`
    /// under the root.
    pub fn working_dir(&self, package_root: &Path) -> PathBuf {
        if self.version == 1 {
            package_root.to_path_buf()
        } else {
            package_root.join(&self.app_dir_name)
        }
    }

    /// Returns the import path folders under `package_root`, in MANIFEST order.
    pub fn import_paths(&self, package_root: &Path) -> Vec<PathBuf> {
        self.import_paths
            .iter()
            .map(|import_path| package_root.join(import_path))
            .collect()
    }

    /// Returns the path of the script to run: `invoke` under the working directory.
    ///
    /// This holds for bash scripts too, because the Tower CLI packs every script under
    /// `app_dir_name`.
    pub fn invoke_path(&self, package_root: &Path) -> PathBuf {
        self.working_dir(package_root).join(&self.invoke)
    }

    /// Returns whether the script is a bash script, which Tower runs with `bash` in place of
    /// Python. The test is the `.sh` suffix of `invoke`.
    pub fn is_bash(&self) -> bool {
        self.invoke.ends_with(".sh")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_reads_cli_version_3_output() {
        let json = br#"{"version":3,"invoke":"./task.py","parameters":[{"name":"NAME","description":"who","default":"world","hidden":false}],"schedule":null,"import_paths":["modules/lib_a"],"app_dir_name":"app","modules_dir_name":"modules","checksum":"abc"}"#;
        let manifest = Manifest::from_slice(json).unwrap();
        let root = Path::new("/pkg");

        assert_eq!(manifest.version, 3);
        assert_eq!(manifest.parameters[0].default, "world");
        assert_eq!(manifest.working_dir(root), PathBuf::from("/pkg/app"));
        assert_eq!(
            manifest.invoke_path(root),
            PathBuf::from("/pkg/app/./task.py")
        );
        assert_eq!(
            manifest.import_paths(root),
            vec![PathBuf::from("/pkg/modules/lib_a")]
        );
        assert!(!manifest.is_bash());
    }

    #[test]
    fn manifest_serializes_fields_in_cli_order() {
        let manifest = Manifest {
            version: 3,
            invoke: "main.py".into(),
            parameters: vec![],
            schedule: None,
            import_paths: vec![],
            app_dir_name: "app".into(),
            modules_dir_name: "modules".into(),
            checksum: "c".into(),
        };
        let json = serde_json::to_string(&manifest).unwrap();
        assert_eq!(
            json,
            r#"{"version":3,"invoke":"main.py","parameters":[],"schedule":null,"import_paths":[],"app_dir_name":"app","modules_dir_name":"modules","checksum":"c"}"#
        );
    }

    #[test]
    fn manifest_without_version_reads_as_version_1() {
        for json in [
            &br#"{"invoke":"task.py"}"#[..],
            br#"{"version":null,"invoke":"task.py"}"#,
        ] {
            let manifest = Manifest::from_slice(json).unwrap();
            assert_eq!(manifest.version, 1);
            assert_eq!(
                manifest.working_dir(Path::new("/pkg")),
                PathBuf::from("/pkg")
            );
        }
    }

    #[test]
    fn manifest_rejects_unknown_version() {
        let error = Manifest::from_slice(br#"{"version":7,"invoke":"main.py"}"#).unwrap_err();
        assert!(matches!(
            error,
            PackageError::UnsupportedVersion { version: 7, .. }
        ));
        assert!(error.to_string().contains("version 7"), "{error}");

        let error = Manifest::from_slice(br#"{"version":0,"invoke":"main.py"}"#).unwrap_err();
        assert!(matches!(
            error,
            PackageError::UnsupportedVersion { version: 0, .. }
        ));
    }

    #[test]
    fn manifest_missing_invoke_names_field() {
        let error = Manifest::from_slice(br#"{"version":3}"#).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("missing field `invoke`"), "{message}");
        assert!(message.contains("line 1 column"), "{message}");
    }

    #[test]
    fn manifest_malformed_json_reports_position() {
        let error = Manifest::from_slice(b"{\n  \"invoke\": \"main.py\",,\n}").unwrap_err();
        let message = error.to_string();
        assert!(
            message.starts_with("invalid MANIFEST MANIFEST:"),
            "{message}"
        );
        assert!(message.contains("line 2 column"), "{message}");
    }

    #[test]
    fn manifest_detects_bash_script() {
        let manifest = Manifest::from_slice(br#"{"version":3,"invoke":"run.sh"}"#).unwrap();
        assert!(manifest.is_bash());
    }
}
