//! Opening an unpacked package folder.

use std::io;
use std::path::{Path, PathBuf};

use crate::error::PackageError;
use crate::manifest::Manifest;
use crate::paths::relative_components;

/// Unpacked package whose MANIFEST and script passed the checks of [`Package::open`].
#[derive(Debug, Clone)]
pub struct Package {
    root: PathBuf,
    manifest: Manifest,
}

/// Largest MANIFEST [`read_manifest`] reads; real ones are a few hundred bytes.
const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;

/// Reads the MANIFEST of a package archive without unpacking anything to disk.
///
/// Only the MANIFEST entry is read; the rest of the archive is decompressed and skipped. This
/// checks neither the other entries nor the script: [`unpack`](crate::unpack) and
/// [`Package::open`] do that. Errors name `archive`, with `archive:MANIFEST` for the entry.
pub fn read_manifest(archive: &Path) -> Result<Manifest, PackageError> {
    use std::io::{BufRead, Read};

    let corrupt = |source: io::Error| PackageError::CorruptArchive { archive: archive.to_path_buf(), source };
    let file = std::fs::File::open(archive).map_err(|source| PackageError::io("open", archive, source))?;
    let mut reader = std::io::BufReader::new(file);
    let is_gzip = reader.fill_buf().map_err(|source| PackageError::io("read", archive, source))?.starts_with(&[0x1f, 0x8b]);
    let stream: Box<dyn Read> = if is_gzip { Box::new(flate2::read::MultiGzDecoder::new(reader)) } else { Box::new(reader) };

    let mut tar_archive = tar::Archive::new(stream);
    for entry in tar_archive.entries().map_err(corrupt)? {
        let entry = entry.map_err(corrupt)?;
        let path = entry.path().map_err(corrupt)?;
        let is_manifest = path.components().filter(|part| !matches!(part, std::path::Component::CurDir)).eq([std::path::Component::Normal("MANIFEST".as_ref())]);
        if !is_manifest || !entry.header().entry_type().is_file() {
            continue;
        }
        let manifest_path = archive.with_file_name(format!(
            "{}:MANIFEST",
            archive.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default()
        ));
        let mut bytes = Vec::new();
        entry.take(MAX_MANIFEST_BYTES + 1).read_to_end(&mut bytes).map_err(corrupt)?;
        if bytes.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(corrupt(io::Error::new(io::ErrorKind::InvalidData, format!("its MANIFEST is larger than {MAX_MANIFEST_BYTES} bytes"))));
        }
        return Manifest::from_slice_at(&bytes, &manifest_path);
    }
    Err(PackageError::ManifestNotFound { path: archive.to_path_buf() })
}

impl Package {
    /// Reads `root/MANIFEST` and checks that the package can run.
    ///
    /// The MANIFEST must parse and have a supported version. `invoke`, `app_dir_name`,
    /// `modules_dir_name` and every import path must be relative paths without `..`.
    /// The script must be a regular file under `root`, and no directory on the way to it
    /// may be a symbolic link, so the script cannot resolve outside the package.
    pub fn open(root: &Path) -> Result<Package, PackageError> {
        let manifest_path = root.join("MANIFEST");
        let bytes = std::fs::read(&manifest_path).map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                PackageError::ManifestNotFound {
                    path: manifest_path.clone(),
                }
            } else {
                PackageError::io("read", &manifest_path, source)
            }
        })?;
        let manifest = Manifest::from_slice_at(&bytes, &manifest_path)?;

        check_manifest_paths(&manifest, &manifest_path)?;
        check_script(&manifest, root)?;

        Ok(Package {
            root: root.to_path_buf(),
            manifest,
        })
    }

    /// Returns the package root folder, which contains the MANIFEST.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Returns the parsed MANIFEST.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Returns the directory that the app runs in. See [`Manifest::working_dir`].
    pub fn working_dir(&self) -> PathBuf {
        self.manifest.working_dir(&self.root)
    }

    /// Returns the path of the script to run. See [`Manifest::invoke_path`].
    pub fn invoke_path(&self) -> PathBuf {
        self.manifest.invoke_path(&self.root)
    }

    /// Returns the import path folders to add to `PYTHONPATH`, in MANIFEST order.
    pub fn import_paths(&self) -> Vec<PathBuf> {
        self.manifest.import_paths(&self.root)
    }
}

fn check_manifest_paths(manifest: &Manifest, manifest_path: &Path) -> Result<(), PackageError> {
    let invalid = |field: &'static str, value: &str, reason: &'static str| {
        PackageError::InvalidManifestPath {
            path: manifest_path.to_path_buf(),
            field,
            value: value.to_string(),
            reason,
        }
    };

    let invoke_components = relative_components(&manifest.invoke)
        .map_err(|reason| invalid("invoke", &manifest.invoke, reason))?;
    if invoke_components.is_empty() {
        return Err(invalid("invoke", &manifest.invoke, "does not name a file"));
    }

    relative_components(&manifest.app_dir_name)
        .map_err(|reason| invalid("app_dir_name", &manifest.app_dir_name, reason))?;
    relative_components(&manifest.modules_dir_name)
        .map_err(|reason| invalid("modules_dir_name", &manifest.modules_dir_name, reason))?;
    for import_path in &manifest.import_paths {
        relative_components(import_path)
            .map_err(|reason| invalid("import_paths", import_path, reason))?;
    }
    Ok(())
}

/// Checks each component on the way from `root` to the script without following symbolic links.
fn check_script(manifest: &Manifest, root: &Path) -> Result<(), PackageError> {
    let script_path = manifest.invoke_path(root);
    let invalid = |reason: &'static str| PackageError::InvalidScript {
        invoke: manifest.invoke.clone(),
        path: script_path.clone(),
        reason,
    };

    let mut components = Vec::new();
    if manifest.version != 1 {
        components.extend(relative_components(&manifest.app_dir_name).unwrap_or_default());
    }
    components.extend(relative_components(&manifest.invoke).unwrap_or_default());

    let mut current = root.to_path_buf();
    let last_index = components.len() - 1;
    for (index, component) in components.iter().enumerate() {
        current.push(component);
        let metadata = match std::fs::symlink_metadata(&current) {
            Ok(metadata) => metadata,
            Err(source) if source.kind() == io::ErrorKind::NotFound => {
                return Err(invalid("does not exist"));
            }
            Err(source) => return Err(PackageError::io("read metadata of", &current, source)),
        };

        let file_type = metadata.file_type();
        if file_type.is_symlink() {
            return Err(invalid("is or goes through a symbolic link"));
        }
        if index < last_index && !file_type.is_dir() {
            return Err(invalid("goes through a path that is not a directory"));
        }
        if index == last_index && file_type.is_dir() {
            return Err(invalid("is a directory"));
        }
        if index == last_index && !file_type.is_file() {
            return Err(invalid("is not a regular file"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn write_manifest(root: &Path, json: &str) {
        fs::write(root.join("MANIFEST"), json).unwrap();
    }

    #[test]
    fn open_accepts_script_in_app_dir() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("app")).unwrap();
        fs::write(dir.path().join("app/main.py"), "print(1)").unwrap();
        write_manifest(
            dir.path(),
            r#"{"version":3,"invoke":"./main.py","app_dir_name":"app"}"#,
        );

        let package = Package::open(dir.path()).unwrap();
        assert_eq!(package.working_dir(), dir.path().join("app"));
        assert!(package.invoke_path().is_file());
    }

    #[test]
    fn open_missing_manifest_names_path() {
        let dir = tempfile::tempdir().unwrap();
        let error = Package::open(dir.path()).unwrap_err();
        assert!(matches!(error, PackageError::ManifestNotFound { .. }));
        assert!(error
            .to_string()
            .contains(&dir.path().join("MANIFEST").display().to_string()));
    }

    #[test]
    fn open_malformed_manifest_names_path_and_position() {
        let dir = tempfile::tempdir().unwrap();
        write_manifest(dir.path(), "{\"version\": 3,\n\"invoke\": }");

        let message = Package::open(dir.path()).unwrap_err().to_string();
        assert!(
            message.contains(&dir.path().join("MANIFEST").display().to_string()),
            "{message}"
        );
        assert!(message.contains("line 2 column"), "{message}");
    }

    #[test]
    fn open_rejects_invoke_with_parent_dir() {
        let dir = tempfile::tempdir().unwrap();
        write_manifest(
            dir.path(),
            r#"{"version":3,"invoke":"../../etc/passwd","app_dir_name":"app"}"#,
        );

        let error = Package::open(dir.path()).unwrap_err();
        assert!(
            matches!(
                error,
                PackageError::InvalidManifestPath {
                    field: "invoke",
                    ..
                }
            ),
            "{error}"
        );
    }

    #[test]
    fn open_rejects_absolute_invoke() {
        let dir = tempfile::tempdir().unwrap();
        write_manifest(dir.path(), r#"{"version":1,"invoke":"/usr/bin/python3"}"#);

        let error = Package::open(dir.path()).unwrap_err();
        assert!(
            matches!(
                error,
                PackageError::InvalidManifestPath {
                    field: "invoke",
                    ..
                }
            ),
            "{error}"
        );
    }

    #[test]
    fn open_rejects_app_dir_with_parent_dir() {
        let dir = tempfile::tempdir().unwrap();
        write_manifest(
            dir.path(),
            r#"{"version":3,"invoke":"main.py","app_dir_name":".."}"#,
        );

        let error = Package::open(dir.path()).unwrap_err();
        assert!(
            matches!(
                error,
                PackageError::InvalidManifestPath {
                    field: "app_dir_name",
                    ..
                }
            ),
            "{error}"
        );
    }

    #[test]
    fn open_rejects_escaping_import_path() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("main.py"), "").unwrap();
        write_manifest(
            dir.path(),
            r#"{"version":1,"invoke":"main.py","import_paths":["/usr/lib"]}"#,
        );

        let error = Package::open(dir.path()).unwrap_err();
        assert!(
            matches!(
                error,
                PackageError::InvalidManifestPath {
                    field: "import_paths",
                    ..
                }
            ),
            "{error}"
        );
    }

    #[test]
    fn open_rejects_missing_script() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("app")).unwrap();
        write_manifest(
            dir.path(),
            r#"{"version":3,"invoke":"main.py","app_dir_name":"app"}"#,
        );

        let error = Package::open(dir.path()).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "script \"main.py\" of the package is invalid: {} does not exist",
                dir.path().join("app/main.py").display()
            )
        );
    }

    #[test]
    fn open_rejects_script_directory() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("app/main.py")).unwrap();
        write_manifest(
            dir.path(),
            r#"{"version":3,"invoke":"main.py","app_dir_name":"app"}"#,
        );

        let error = Package::open(dir.path()).unwrap_err();
        assert!(error.to_string().ends_with("is a directory"), "{error}");
    }

    #[test]
    fn open_rejects_script_symlink() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("app")).unwrap();
        fs::write(dir.path().join("app/real.py"), "").unwrap();
        std::os::unix::fs::symlink("real.py", dir.path().join("app/main.py")).unwrap();
        write_manifest(
            dir.path(),
            r#"{"version":3,"invoke":"main.py","app_dir_name":"app"}"#,
        );

        let error = Package::open(dir.path()).unwrap_err();
        assert!(error.to_string().contains("symbolic link"), "{error}");
    }

    #[test]
    fn open_rejects_app_dir_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("main.py"), "").unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("app")).unwrap();
        write_manifest(
            dir.path(),
            r#"{"version":3,"invoke":"main.py","app_dir_name":"app"}"#,
        );

        let error = Package::open(dir.path()).unwrap_err();
        assert!(error.to_string().contains("symbolic link"), "{error}");
    }
}
