//! Packing an app folder into a package archive the way the Tower CLI does.
//!
//! Layout: the files selected by `app.source` go under `app/`, the files of each import
//! path under `modules/<folder name>/`, and the original Towerfile and a generated MANIFEST
//! at the root. Every entry is a regular file with a GNU tar header, mtime 0 and uid and
//! gid 0, and entries are sorted by name, so the same input gives the same bytes.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use flate2::{Compression, GzBuilder};
use sha2::{Digest, Sha256};

use crate::digest::package_checksum;
use crate::error::PackageError;
use crate::manifest::{Manifest, CURRENT_VERSION};
use crate::towerfile::Towerfile;

/// Pattern used when `app.source` is empty: every file under the app folder.
const DEFAULT_SOURCE_PATTERN: &str = "./**/*";

/// Directory names whose contents are never packed: Python bytecode caches, git data and
/// virtual environments.
const IGNORED_DIRECTORY_NAMES: [&str; 3] = ["__pycache__", ".git", ".venv"];

/// Packs the app folder `dir`, which contains a `Towerfile`, into the package archive `out`.
///
/// Files are selected as the Tower CLI selects them. The `app.source` glob patterns are
/// relative to `dir`, and an empty list selects every file, hidden files included. A pattern
/// that matches a directory selects every file under it. Symbolic links are followed, and a
/// file that resolves outside `dir` and outside the parents of the import paths is skipped.
/// Files under `.git`, `.venv` and `__pycache__`, `.pyc` files and `.gitignore` files are
/// never packed. The Towerfile at the root of `dir` is stored at the root of the archive
/// instead of under `app/`. An existing file at `out` is never packed.
///
/// Returns the generated MANIFEST (version 3). This differs from the Tower CLI in three
/// ways. Files with an execute bit get mode 0755, where the CLI stores every file with
/// mode 0644. Unreadable directories, file names that are not UTF-8 and two import paths
/// with the same folder name fail the call, where the CLI skips the files or writes a
/// package that cannot run. Special files such as fifos are skipped. On error, `out` is
/// deleted.
pub fn pack_dir(dir: &Path, out: &Path) -> Result<Manifest, PackageError> {
    let towerfile_path = dir.join("Towerfile");
    let towerfile_bytes = fs::read(&towerfile_path).map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            PackageError::TowerfileNotFound {
                path: towerfile_path.clone(),
            }
        } else {
            PackageError::io("read", &towerfile_path, source)
        }
    })?;
    let towerfile = Towerfile::from_slice_at(&towerfile_bytes, &towerfile_path)?;

    let base_dir = dir
        .canonicalize()
        .map_err(|source| PackageError::io("resolve", dir, source))?;
    let import_paths = resolve_import_paths(&towerfile, &base_dir, &towerfile_path)?;
    let collector = FileCollector {
        root_towerfile: base_dir.join("Towerfile"),
        import_parents: import_paths
            .iter()
            .filter_map(|import_path| import_path.resolved.parent().map(Path::to_path_buf))
            .collect(),
        output: out.canonicalize().ok(),
        base_dir,
    };

    let mut entries = BTreeMap::new();
    add_app_files(&towerfile, &collector, &mut entries)?;
    for import_path in &import_paths {
        add_module_files(import_path, &collector, &mut entries)?;
    }

    let script = towerfile.app.script.trim_start_matches("./");
    if !entries.contains_key(&format!("app/{script}")) {
        return Err(PackageError::ScriptNotPacked {
            script: towerfile.app.script.clone(),
            dir: dir.to_path_buf(),
        });
    }

    let manifest = Manifest {
        version: CURRENT_VERSION,
        invoke: towerfile.app.script.clone(),
        parameters: towerfile.parameters.clone(),
        schedule: None,
        import_paths: import_paths
            .iter()
            .map(|import_path| format!("modules/{}", import_path.name))
            .collect(),
        app_dir_name: "app".to_string(),
        modules_dir_name: "modules".to_string(),
        checksum: String::new(),
    };

    let result = write_archive(out, &entries, manifest, &towerfile_bytes);
    if result.is_err() {
        // The partial archive is useless, and the original error is more helpful than a
        // failure to delete it.
        let _ = fs::remove_file(out);
    }
    result
}

struct ImportPath {
    /// Value from the Towerfile.
    raw: String,
    /// Canonical path of the folder.
    resolved: PathBuf,
    /// Folder name under `modules/`.
    name: String,
}

fn resolve_import_paths(
    towerfile: &Towerfile,
    base_dir: &Path,
    towerfile_path: &Path,
) -> Result<Vec<ImportPath>, PackageError> {
    let mut import_paths: Vec<ImportPath> = Vec::new();
    for raw in &towerfile.app.import_paths {
        let invalid_field = |reason: String| PackageError::InvalidTowerfileField {
            path: towerfile_path.to_path_buf(),
            field: "app.import_paths".to_string(),
            reason,
        };

        let name = import_path_name(raw).ok_or_else(|| {
            invalid_field(format!("entry {raw:?} does not end with a folder name"))
        })?;
        if let Some(other) = import_paths
            .iter()
            .find(|import_path| import_path.name == name)
        {
            return Err(invalid_field(format!(
                "entries {:?} and {raw:?} both end with {name:?}, so both would be packed as modules/{name}",
                other.raw
            )));
        }

        let joined = base_dir.join(raw);
        let resolved = joined.canonicalize().map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                PackageError::InvalidImportPath {
                    import_path: raw.clone(),
                    path: joined.clone(),
                    reason: "does not exist",
                }
            } else {
                PackageError::io("resolve", &joined, source)
            }
        })?;
        if !resolved.is_dir() {
            return Err(PackageError::InvalidImportPath {
                import_path: raw.clone(),
                path: resolved,
                reason: "is not a directory",
            });
        }

        import_paths.push(ImportPath {
            raw: raw.clone(),
            resolved,
            name: name.to_string(),
        });
    }
    Ok(import_paths)
}

/// Returns the last folder name of an import path, accepting `/` and `\` separators as the
/// Tower CLI does, so `../shared` and `./lib/` give `shared` and `lib`.
fn import_path_name(raw: &str) -> Option<&str> {
    raw.rsplit(['/', '\\'])
        .find(|component| !component.is_empty() && *component != "." && *component != "..")
}

fn add_app_files(
    towerfile: &Towerfile,
    collector: &FileCollector,
    entries: &mut BTreeMap<String, PathBuf>,
) -> Result<(), PackageError> {
    let base_str = collector
        .base_dir
        .to_str()
        .ok_or_else(|| PackageError::UnpackableFile {
            path: collector.base_dir.clone(),
            reason: "the folder path is not valid UTF-8".to_string(),
        })?;
    let escaped_base = glob::Pattern::escape(base_str);

    let patterns = if towerfile.app.source.is_empty() {
        vec![DEFAULT_SOURCE_PATTERN.to_string()]
    } else {
        towerfile.app.source.clone()
    };

    let mut found = BTreeMap::new();
    let mut visited_dirs = HashSet::new();
    for pattern in &patterns {
        // Checking the pattern alone gives an error position within the pattern as written.
        glob::Pattern::new(pattern).map_err(|source| PackageError::InvalidGlob {
            pattern: pattern.clone(),
            source,
        })?;
        let full_pattern = if Path::new(pattern).is_absolute() {
            pattern.clone()
        } else {
            format!("{escaped_base}/{pattern}")
        };
        let matches = glob::glob(&full_pattern).map_err(|source| PackageError::InvalidGlob {
            pattern: pattern.clone(),
            source,
        })?;

        for matched in matches {
            let path = matched.map_err(|error| {
                let path = error.path().to_path_buf();
                PackageError::io("read", path, io::Error::from(error))
            })?;
            collector.collect(&path, &mut visited_dirs, &mut found)?;
        }
    }

    for (physical, logical) in found {
        let name = format!("app/{}", archive_name(&logical, &physical)?);
        insert_entry(entries, name, physical)?;
    }
    Ok(())
}

fn add_module_files(
    import_path: &ImportPath,
    collector: &FileCollector,
    entries: &mut BTreeMap<String, PathBuf>,
) -> Result<(), PackageError> {
    let mut found = BTreeMap::new();
    collector.collect(&import_path.resolved, &mut HashSet::new(), &mut found)?;

    for physical in found.into_keys() {
        // A symbolic link inside the import path may resolve elsewhere, and the CLI skips it.
        let Ok(relative) = physical.strip_prefix(&import_path.resolved) else {
            continue;
        };
        let name = format!(
            "modules/{}/{}",
            import_path.name,
            archive_name(relative, &physical)?
        );
        insert_entry(entries, name, physical.clone())?;
    }
    Ok(())
}

/// Converts a relative path to a `/`-separated archive entry name.
fn archive_name(relative: &Path, physical: &Path) -> Result<String, PackageError> {
    let mut parts = Vec::new();
    for component in relative.components() {
        if let Component::Normal(part) = component {
            let part = part.to_str().ok_or_else(|| PackageError::UnpackableFile {
                path: physical.to_path_buf(),
                reason: "the file name is not valid UTF-8".to_string(),
            })?;
            parts.push(part);
        }
    }
    Ok(parts.join("/"))
}

fn insert_entry(
    entries: &mut BTreeMap<String, PathBuf>,
    name: String,
    physical: PathBuf,
) -> Result<(), PackageError> {
    if let Some(existing) = entries.get(&name) {
        if *existing != physical {
            return Err(PackageError::UnpackableFile {
                path: physical,
                reason: format!("{} is also packed as {name:?}", existing.display()),
            });
        }
        return Ok(());
    }
    entries.insert(name, physical);
    Ok(())
}

/// Walks matched paths and maps the regular files found to their paths inside the package.
struct FileCollector {
    /// Canonical app folder.
    base_dir: PathBuf,
    /// Canonical path of the Towerfile that describes the package.
    root_towerfile: PathBuf,
    /// Canonical parents of the import paths. Files under them keep paths relative to them.
    import_parents: Vec<PathBuf>,
    /// Canonical path of an existing output archive.
    output: Option<PathBuf>,
}

impl FileCollector {
    /// Adds every packable regular file at or under `start` to `found`, keyed by canonical
    /// path, with its path relative to the app folder or to an import path's parent.
    fn collect(
        &self,
        start: &Path,
        visited_dirs: &mut HashSet<PathBuf>,
        found: &mut BTreeMap<PathBuf, PathBuf>,
    ) -> Result<(), PackageError> {
        let mut queue = VecDeque::from([start.to_path_buf()]);
        while let Some(current) = queue.pop_front() {
            let physical = match current.canonicalize() {
                Ok(physical) => physical,
                // A dangling or looping symbolic link has nothing to pack.
                Err(_) if is_symlink(&current) => continue,
                Err(source) => return Err(PackageError::io("resolve", &current, source)),
            };
            let Some(logical) = self.logical_path(&physical) else {
                continue;
            };
            if has_ignored_directory(logical) {
                continue;
            }

            let metadata = fs::metadata(&physical)
                .map_err(|source| PackageError::io("read metadata of", &physical, source))?;
            if metadata.is_dir() {
                if !visited_dirs.insert(physical.clone()) {
                    continue;
                }
                let children = fs::read_dir(&physical)
                    .map_err(|source| PackageError::io("list", &physical, source))?;
                for child in children {
                    let child =
                        child.map_err(|source| PackageError::io("list", &physical, source))?;
                    queue.push_back(child.path());
                }
            } else if metadata.is_file() && !self.is_ignored_file(&physical) {
                let logical = logical.to_path_buf();
                found.insert(physical, logical);
            }
        }
        Ok(())
    }

    fn logical_path<'a>(&self, physical: &'a Path) -> Option<&'a Path> {
        if let Ok(relative) = physical.strip_prefix(&self.base_dir) {
            return Some(relative);
        }
        self.import_parents
            .iter()
            .find_map(|parent| physical.strip_prefix(parent).ok())
    }

    fn is_ignored_file(&self, physical: &Path) -> bool {
        let is_bytecode = physical
            .extension()
            .is_some_and(|extension| extension == "pyc");
        let is_gitignore = physical
            .file_name()
            .is_some_and(|name| name == ".gitignore");
        let is_output = self.output.as_deref() == Some(physical);
        is_bytecode || is_gitignore || is_output || physical == self.root_towerfile
    }
}

fn has_ignored_directory(logical: &Path) -> bool {
    logical.components().any(|component| match component {
        Component::Normal(name) => IGNORED_DIRECTORY_NAMES
            .iter()
            .any(|ignored| name == *ignored),
        _ => false,
    })
}

fn is_symlink(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|metadata| metadata.file_type().is_symlink())
}

fn write_archive(
    out: &Path,
    entries: &BTreeMap<String, PathBuf>,
    mut manifest: Manifest,
    towerfile_bytes: &[u8],
) -> Result<Manifest, PackageError> {
    let write_error = |source| PackageError::io("write", out, source);

    let file = File::create(out).map_err(|source| PackageError::io("create", out, source))?;
    let encoder = GzBuilder::new()
        .mtime(0)
        .write(BufWriter::new(file), Compression::default());
    let mut builder = tar::Builder::new(encoder);

    let mut digests = Vec::with_capacity(entries.len());
    for (name, physical) in entries {
        let bytes =
            fs::read(physical).map_err(|source| PackageError::io("read", physical, source))?;
        let metadata = fs::metadata(physical)
            .map_err(|source| PackageError::io("read metadata of", physical, source))?;
        let mode = if metadata.permissions().mode() & 0o111 != 0 {
            0o755
        } else {
            0o644
        };

        digests.push((name.as_str(), hex::encode(Sha256::digest(&bytes))));
        append_file(&mut builder, name, &bytes, mode).map_err(write_error)?;
    }
    manifest.checksum = package_checksum(
        digests
            .iter()
            .map(|(name, digest)| (*name, digest.as_str())),
    );

    let manifest_bytes =
        serde_json::to_vec(&manifest).expect("a Manifest always serializes to JSON");
    append_file(&mut builder, "MANIFEST", &manifest_bytes, 0o644).map_err(write_error)?;
    append_file(&mut builder, "Towerfile", towerfile_bytes, 0o644).map_err(write_error)?;

    let encoder = builder.into_inner().map_err(write_error)?;
    let mut writer = encoder.finish().map_err(write_error)?;
    writer.flush().map_err(write_error)?;
    Ok(manifest)
}

fn append_file<W: Write>(
    builder: &mut tar::Builder<W>,
    name: &str,
    bytes: &[u8],
    mode: u32,
) -> io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(bytes.len() as u64);
    header.set_mode(mode);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    builder.append_data(&mut header, name, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn import_path_name_takes_last_folder() {
        assert_eq!(import_path_name("../shared"), Some("shared"));
        assert_eq!(import_path_name("libs/inner"), Some("inner"));
        assert_eq!(import_path_name("./weird/"), Some("weird"));
        assert_eq!(import_path_name("..\\win\\lib"), Some("lib"));
        assert_eq!(import_path_name(".."), None);
        assert_eq!(import_path_name("./"), None);
    }

    #[test]
    fn ignored_directories_match_any_component() {
        assert!(has_ignored_directory(Path::new("pkg/__pycache__/x.py")));
        assert!(has_ignored_directory(Path::new(".venv/lib/site.py")));
        assert!(has_ignored_directory(Path::new(".git/config")));
        assert!(!has_ignored_directory(Path::new("pkg/.github/ci.yml")));
        assert!(!has_ignored_directory(Path::new(".env")));
    }
}
