//! Staging: a fresh execution folder with an owner marker, the archive checked against its
//! sha256, unpacked with the limits of `tower-package`, and its MANIFEST read.

use crate::owner::Owner;
use std::io;
use std::path::{Path, PathBuf};
use tower_package::{Package, PackageError, UnpackLimits};
use tower_plugin_api::{PackageRef, PackageSource, PluginError};

/// Folder inside the execution folder that contains the unpacked package.
pub const PACKAGE_DIR_NAME: &str = "package";

/// Random characters appended to the run id in an execution folder name, so that a run id
/// used twice never shares a folder.
const FOLDER_RANDOM_CHARS: usize = 8;

/// Characters of the run id kept in an execution folder name; cgroup and file names stay short.
const MAX_RUN_ID_CHARS_IN_NAME: usize = 64;

/// Errors of staging.
#[derive(Debug, thiserror::Error)]
pub enum StagingError {
    /// The package comes from a source this backend cannot read.
    #[error("package source `{0}` is not supported by the subprocess backend; stage the archive on the local file system and pass a `file` source")]
    UnsupportedSource(&'static str),

    /// The execution folder or its owner marker could not be written.
    #[error("failed to create an execution folder in {}: {source}", dir.display())]
    CreateFolder {
        /// The executions folder.
        dir: PathBuf,
        /// The file system error.
        source: io::Error,
    },

    /// The archive, its checksum, an entry or the MANIFEST is invalid, or reading it failed.
    #[error(transparent)]
    Package(#[from] PackageError),
}

impl StagingError {
    /// Converts to the error that crosses the plugin boundary.
    pub fn to_plugin_error(&self) -> PluginError {
        let message = self.to_string();
        match self {
            StagingError::UnsupportedSource(_) => PluginError::unsupported(message),
            StagingError::CreateFolder { .. } => PluginError::internal(message),
            StagingError::Package(PackageError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                PluginError::not_found(message)
            }
            StagingError::Package(error) if error.kind() == tower_package::ErrorKind::Io => PluginError::internal(message),
            StagingError::Package(_) => PluginError::invalid_package(message),
        }
    }
}

/// Returns the local archive path and expected sha256 of a package reference.
pub fn local_archive(source: &PackageRef) -> Result<(PathBuf, String), StagingError> {
    match source.as_enum() {
        Ok(PackageSource::File { path, sha256 }) => Ok((PathBuf::from(path.as_str()), sha256.to_string())),
        Ok(PackageSource::Url { .. }) => Err(StagingError::UnsupportedSource("url")),
        _ => Err(StagingError::UnsupportedSource("unknown (from a newer plugin contract)")),
    }
}

/// Creates `<executions_dir>/<run_id>-<random>` and writes the owner marker into it.
pub fn create_execution_dir(executions_dir: &Path, run_id: &str, owner: &Owner) -> Result<PathBuf, StagingError> {
    let create_error = |source| StagingError::CreateFolder { dir: executions_dir.to_path_buf(), source };
    let dir = tempfile::Builder::new()
        .prefix(&format!("{}-", folder_safe_id(run_id)))
        .rand_bytes(FOLDER_RANDOM_CHARS)
        .tempdir_in(executions_dir)
        .map_err(create_error)?
        .keep();
    owner.write(&dir).map_err(create_error)?;
    Ok(dir)
}

/// Checks the archive's sha256, unpacks it into `<execution_dir>/package` and opens the package,
/// which reads the MANIFEST (versions 1 to 3) and checks that the `invoke` script exists.
pub fn stage(archive: &Path, sha256: &str, execution_dir: &Path, limits: &UnpackLimits) -> Result<Package, StagingError> {
    tower_package::verify_sha256(archive, sha256)?;

    let package_dir = execution_dir.join(PACKAGE_DIR_NAME);
    std::fs::create_dir(&package_dir)
        .map_err(|source| StagingError::CreateFolder { dir: execution_dir.to_path_buf(), source })?;
    tower_package::unpack(archive, &package_dir, limits)?;

    Ok(Package::open(&package_dir)?)
}

/// Keeps the characters of a run id that are safe in file and cgroup names.
pub fn folder_safe_id(run_id: &str) -> String {
    let safe: String = run_id
        .chars()
        .take(MAX_RUN_ID_CHARS_IN_NAME)
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' })
        .collect();
    if safe.is_empty() || safe.starts_with('.') {
        format!("run{safe}")
    } else {
        safe
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_safe_id_replaces_separators() {
        assert_eq!(folder_safe_id("run/../1"), "run_.._1");
        assert_eq!(folder_safe_id(""), "run");
        assert_eq!(folder_safe_id(".hidden"), "run.hidden");
        assert_eq!(folder_safe_id(&"x".repeat(100)).len(), MAX_RUN_ID_CHARS_IN_NAME);
    }

    #[test]
    fn execution_dirs_are_unique_and_marked() {
        let root = tempfile::tempdir().unwrap();
        let owner = Owner::current().unwrap();
        let first = create_execution_dir(root.path(), "run-1", &owner).unwrap();
        let second = create_execution_dir(root.path(), "run-1", &owner).unwrap();
        assert_ne!(first, second);
        assert!(first.file_name().unwrap().to_str().unwrap().starts_with("run-1-"));
        assert_eq!(Owner::read(&first), Some(owner));
    }

    #[test]
    fn url_source_is_unsupported() {
        let error = local_archive(&PackageSource::url("https://example.invalid/p.tar.gz", "00")).unwrap_err();
        assert_eq!(error.to_plugin_error().code_name(), "unsupported");
    }

    #[test]
    fn missing_archive_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.tar.gz");
        let error = stage(&missing, &"0".repeat(64), dir.path(), &UnpackLimits::default()).unwrap_err();
        let error = error.to_plugin_error();
        assert_eq!(error.code_name(), "not_found");
        assert!(error.message.contains("missing.tar.gz"), "{error}");
    }

    #[test]
    fn checksum_mismatch_is_invalid_package() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("p.tar.gz");
        std::fs::write(&archive, b"not an archive").unwrap();
        let error = stage(&archive, &"0".repeat(64), dir.path(), &UnpackLimits::default()).unwrap_err();
        assert_eq!(error.to_plugin_error().code_name(), "invalid_package");
        assert!(error.to_string().contains("SHA-256 mismatch"), "{error}");
    }
}
