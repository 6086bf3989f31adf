//! The error type shared by every operation in this crate.

use std::io;
use std::path::PathBuf;

/// Broad class of a [`PackageError`], so callers can map errors to status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The package, archive, MANIFEST, Towerfile or app folder is invalid or unsafe.
    /// Retrying will not help, and the input has to be fixed.
    InvalidPackage,
    /// A file system operation failed on a valid input, for example because a disk is full
    /// or a permission is missing.
    Io,
}

/// Error returned by every fallible function in this crate.
///
/// Each variant names the value that failed: the archive, the entry, the MANIFEST or
/// Towerfile path, the glob pattern or the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PackageError {
    /// A file system operation failed.
    #[error("failed to {operation} {}: {source}", path.display())]
    Io {
        /// Operation that failed, for example "create directory".
        operation: &'static str,
        /// Path the operation was applied to.
        path: PathBuf,
        /// Error returned by the operating system.
        source: io::Error,
    },

    /// The archive is not a readable gzip-compressed or plain tar stream.
    #[error(
        "archive {} is not a valid Tower package: {}; check that it is a .tar.gz package and was not cut short",
        archive.display(),
        corruption_reason(source)
    )]
    CorruptArchive {
        /// Path of the archive.
        archive: PathBuf,
        /// Error from the gzip decoder or the tar reader.
        source: io::Error,
    },

    /// An archive entry was rejected because unpacking it would be unsafe or is unsupported.
    #[error("archive {}: entry {entry:?} rejected: {reason}", archive.display())]
    UnsafeEntry {
        /// Path of the archive.
        archive: PathBuf,
        /// Entry name as stored in the archive.
        entry: String,
        /// Reason for the rejection.
        reason: String,
    },

    /// The total size of the unpacked files would exceed [`crate::UnpackLimits::max_unpacked_bytes`].
    #[error(
        "archive {}: unpacking entry {entry:?} exceeds the limit of {limit} unpacked bytes",
        archive.display()
    )]
    UnpackedSizeLimit {
        /// Path of the archive.
        archive: PathBuf,
        /// Entry at which the limit was reached.
        entry: String,
        /// Limit in bytes.
        limit: u64,
    },

    /// The archive contains more entries than [`crate::UnpackLimits::max_entries`].
    #[error("archive {} contains more than {limit} entries", archive.display())]
    EntryCountLimit {
        /// Path of the archive.
        archive: PathBuf,
        /// Maximum number of entries.
        limit: u64,
    },

    /// The unpack destination is missing, not a directory, or not empty.
    #[error("unpack destination {} {reason}; pass an existing empty directory", dest.display())]
    InvalidDestination {
        /// Destination path passed to [`crate::unpack`].
        dest: PathBuf,
        /// Problem found.
        reason: &'static str,
    },

    /// The MANIFEST file does not exist in the package folder.
    #[error("MANIFEST not found at {}; the folder is not an unpacked Tower package", path.display())]
    ManifestNotFound {
        /// Expected path of the MANIFEST.
        path: PathBuf,
    },

    /// The MANIFEST is not valid JSON or lacks a required field.
    #[error("invalid MANIFEST {}: {source}", path.display())]
    InvalidManifest {
        /// Path of the MANIFEST, or `MANIFEST` when it was parsed from memory.
        path: PathBuf,
        /// JSON error, which includes the line and column.
        source: serde_json::Error,
    },

    /// The MANIFEST declares a package format version that this crate cannot read.
    #[error(
        "unsupported package format version {version} in {}; supported versions are 1, 2 and 3",
        path.display()
    )]
    UnsupportedVersion {
        /// Path of the MANIFEST, or `MANIFEST` when it was parsed from memory.
        path: PathBuf,
        /// Version found in the MANIFEST.
        version: u32,
    },

    /// A path field of the MANIFEST is empty, absolute or leaves the package folder.
    #[error("invalid MANIFEST {}: field {field} value {value:?} {reason}", path.display())]
    InvalidManifestPath {
        /// Path of the MANIFEST.
        path: PathBuf,
        /// Name of the MANIFEST field, for example `invoke`.
        field: &'static str,
        /// Value of the field.
        value: String,
        /// Problem with the value.
        reason: &'static str,
    },

    /// The script named by the MANIFEST `invoke` field is missing or not a regular file.
    #[error("script {invoke:?} of the package is invalid: {} {reason}", path.display())]
    InvalidScript {
        /// Value of the MANIFEST `invoke` field.
        invoke: String,
        /// Path where the script was expected.
        path: PathBuf,
        /// Problem with the path.
        reason: &'static str,
    },

    /// The Towerfile does not exist.
    #[error("Towerfile not found at {}; create one with an [app] table that sets name and script", path.display())]
    TowerfileNotFound {
        /// Expected path of the Towerfile.
        path: PathBuf,
    },

    /// The Towerfile is not valid TOML or has a field of the wrong type.
    #[error("invalid Towerfile {}: {message}", path.display())]
    InvalidTowerfile {
        /// Path of the Towerfile.
        path: PathBuf,
        /// Parser message, which includes the line and column.
        message: String,
    },

    /// A Towerfile field is missing or has a value that cannot be packed.
    #[error("invalid Towerfile {}: field {field} {reason}", path.display())]
    InvalidTowerfileField {
        /// Path of the Towerfile.
        path: PathBuf,
        /// Name of the field, for example `app.script`.
        field: String,
        /// Problem with the field.
        reason: String,
    },

    /// A `source` glob pattern of the Towerfile is invalid.
    #[error("invalid glob pattern {pattern:?} in app.source: {source}")]
    InvalidGlob {
        /// Pattern as written in the Towerfile.
        pattern: String,
        /// Parser error, which includes the position.
        source: glob::PatternError,
    },

    /// An import path of the Towerfile does not exist or is not a directory.
    #[error("import path {import_path:?} resolves to {}, which {reason}", path.display())]
    InvalidImportPath {
        /// Import path as written in the Towerfile.
        import_path: String,
        /// Path it resolves to.
        path: PathBuf,
        /// Problem found.
        reason: &'static str,
    },

    /// Packing found a file that cannot be stored in a package.
    #[error("cannot pack {}: {reason}", path.display())]
    UnpackableFile {
        /// Path of the file.
        path: PathBuf,
        /// Reason the file cannot be stored.
        reason: String,
    },

    /// The Towerfile script is not among the files selected by `source`.
    #[error(
        "script {script:?} is not among the packed files of {}; check that app.script names an existing file and that app.source includes it",
        dir.display()
    )]
    ScriptNotPacked {
        /// Value of `app.script`.
        script: String,
        /// Folder that was packed.
        dir: PathBuf,
    },

    /// A SHA-256 digest passed by the caller is not 64 hexadecimal digits.
    #[error("invalid SHA-256 digest {value:?}: expected 64 hexadecimal digits")]
    InvalidDigest {
        /// Digest as passed by the caller.
        value: String,
    },

    /// A file does not have the expected SHA-256 digest.
    #[error("SHA-256 mismatch for {}: expected {expected}, found {actual}", path.display())]
    DigestMismatch {
        /// Path of the file.
        path: PathBuf,
        /// Expected digest, lowercase hexadecimal.
        expected: String,
        /// Digest of the file, lowercase hexadecimal.
        actual: String,
    },
}

impl PackageError {
    /// Returns the broad class of the error.
    ///
    /// Every variant except [`PackageError::Io`] is [`ErrorKind::InvalidPackage`].
    pub fn kind(&self) -> ErrorKind {
        match self {
            PackageError::Io { .. } => ErrorKind::Io,
            _ => ErrorKind::InvalidPackage,
        }
    }

    pub(crate) fn io(operation: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        PackageError::Io {
            operation,
            path: path.into(),
            source,
        }
    }
}

/// Describes why an archive could not be read, in a few words. The tar reader's own messages can
/// quote header bytes, which for a file that is not an archive means its contents, so they are
/// not shown.
fn corruption_reason(source: &io::Error) -> String {
    let message = source.to_string();
    if source.kind() == io::ErrorKind::UnexpectedEof {
        return "it ends too early".to_string();
    }
    if message.contains("gzip") || message.contains("deflate") {
        return "its gzip data is invalid".to_string();
    }
    if message.contains("MANIFEST is larger") || message.contains("extension header") {
        // Messages of this crate, which quote nothing from the archive.
        return message;
    }
    "a tar header is invalid".to_string()
}
