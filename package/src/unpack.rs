//! Safe extraction of a package archive.
//!
//! The tar reader runs in raw mode, so this module handles GNU long-name and pax headers
//! itself and can bound their size before reading them into memory.

use std::borrow::Cow;
use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;
use tar::{Entry, EntryType, PaxExtensions};

use crate::error::PackageError;
use crate::paths::relative_components;

/// Maximum size of one pax extension header. Real pax headers hold a few records of
/// well under 1 KiB, so 64 KiB leaves room for extended attributes.
const MAX_PAX_HEADER_BYTES: u64 = 64 * 1024;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Limits that [`unpack`] enforces while it reads an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackLimits {
    /// Maximum total size in bytes of the regular files written.
    pub max_unpacked_bytes: u64,
    /// Maximum number of tar headers, counting long-name and pax extension headers.
    pub max_entries: u64,
    /// Maximum length in bytes of an entry name or link target.
    pub max_path_len: usize,
}

impl Default for UnpackLimits {
    /// Returns limits sized for Tower's 50 MiB limit on compressed packages.
    ///
    /// - 1 GiB unpacked: source code rarely compresses more than 10 times (an estimate),
    ///   so a full 50 MiB package unpacks to at most about 500 MiB, and 1 GiB leaves twice
    ///   that margin. Deflate reaches ratios of about 1000 on repeated bytes, so without a
    ///   limit a 50 MiB archive could unpack to about 50 GiB.
    /// - 100,000 headers: a Python virtual environment with heavy dependencies contains
    ///   tens of thousands of files, and app packages contain far fewer. Every entry costs at
    ///   least one 512-byte header, so a count limit also bounds the work spent on an
    ///   archive of empty files.
    /// - 4096-byte names: the Linux `PATH_MAX`.
    fn default() -> Self {
        UnpackLimits {
            max_unpacked_bytes: 1024 * 1024 * 1024,
            max_entries: 100_000,
            max_path_len: 4096,
        }
    }
}

/// Counts of what [`unpack`] created.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnpackSummary {
    /// Regular files written.
    pub files: u64,
    /// Directories created, including parents that had no entry of their own.
    pub directories: u64,
    /// Symbolic links created.
    pub symlinks: u64,
    /// Hard links created.
    pub hard_links: u64,
    /// Bytes written to regular files.
    pub unpacked_bytes: u64,
}

/// Unpacks a gzip-compressed tar archive (or an uncompressed one) into `dest`.
///
/// `dest` must be an existing empty directory. Only regular files, directories, hard
/// links to files unpacked earlier, and symbolic links whose target stays inside `dest`
/// are created. Any other entry fails the whole call with an error that names the entry.
/// Rejected entries include absolute names, `..` components, names that go through a
/// symbolic link or a file, device files, fifos and sparse files. Symbolic links are
/// rejected when they point outside `dest` or use `..` after a directory name.
/// Parent directories are created one component at a time without following symbolic
/// links, so nothing is created outside `dest`.
///
/// NOTE: The checks assume that no other process changes `dest` during the call.
///
/// File modes keep their permission bits, with setuid, setgid and sticky bits cleared.
/// The owner always gets read and write permission on files and full permission on
/// directories, so the caller can read and delete what was unpacked.
///
/// The limits count the bytes actually written and every header read. On error, `dest`
/// may contain part of the archive, and the caller should delete it.
pub fn unpack(
    archive: &Path,
    dest: &Path,
    limits: &UnpackLimits,
) -> Result<UnpackSummary, PackageError> {
    check_destination(dest)?;

    let file = File::open(archive).map_err(|source| PackageError::io("open", archive, source))?;
    let mut reader = BufReader::new(file);
    let is_gzip = reader
        .fill_buf()
        .map_err(|source| PackageError::io("read", archive, source))?
        .starts_with(&GZIP_MAGIC);
    // The Tower CLI writes gzip-compressed tar files, and its unpacker also accepts plain tar.
    let stream: Box<dyn Read> = if is_gzip {
        Box::new(MultiGzDecoder::new(reader))
    } else {
        Box::new(reader)
    };

    let mut unpacker = Unpacker {
        archive,
        dest,
        limits,
        summary: UnpackSummary::default(),
        header_count: 0,
        pending: PendingNames::default(),
    };

    let mut tar_archive = tar::Archive::new(stream);
    let entries = tar_archive
        .entries()
        .map_err(|source| unpacker.corrupt(source))?;
    for entry in entries.raw(true) {
        let entry = entry.map_err(|source| unpacker.corrupt(source))?;
        unpacker.unpack_entry(entry)?;
    }

    if unpacker.pending.is_set() {
        return Err(unpacker.corrupt(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the archive ends after an extension header, without the entry it describes",
        )));
    }
    Ok(unpacker.summary)
}

fn check_destination(dest: &Path) -> Result<(), PackageError> {
    let invalid = |reason| PackageError::InvalidDestination {
        dest: dest.to_path_buf(),
        reason,
    };

    match std::fs::metadata(dest) {
        Ok(metadata) if metadata.is_dir() => {}
        Ok(_) => return Err(invalid("is not a directory")),
        Err(source) if source.kind() == io::ErrorKind::NotFound => {
            return Err(invalid("does not exist"))
        }
        Err(source) => return Err(PackageError::io("read metadata of", dest, source)),
    }

    let mut children =
        std::fs::read_dir(dest).map_err(|source| PackageError::io("list", dest, source))?;
    if children.next().is_some() {
        return Err(invalid("is not empty"));
    }
    Ok(())
}

/// Names and size that extension headers set for the next entry.
#[derive(Default)]
struct PendingNames {
    gnu_long_name: Option<Vec<u8>>,
    gnu_long_link: Option<Vec<u8>>,
    pax_path: Option<Vec<u8>>,
    pax_link: Option<Vec<u8>>,
    pax_size: Option<u64>,
    pax_sparse: bool,
}

impl PendingNames {
    fn is_set(&self) -> bool {
        self.gnu_long_name.is_some()
            || self.gnu_long_link.is_some()
            || self.pax_path.is_some()
            || self.pax_link.is_some()
            || self.pax_size.is_some()
            || self.pax_sparse
    }
}

struct Unpacker<'a> {
    archive: &'a Path,
    dest: &'a Path,
    limits: &'a UnpackLimits,
    summary: UnpackSummary,
    header_count: u64,
    pending: PendingNames,
}

impl Unpacker<'_> {
    fn corrupt(&self, source: io::Error) -> PackageError {
        PackageError::CorruptArchive {
            archive: self.archive.to_path_buf(),
            source,
        }
    }

    fn reject(&self, entry: &str, reason: impl Into<String>) -> PackageError {
        PackageError::UnsafeEntry {
            archive: self.archive.to_path_buf(),
            entry: entry.to_string(),
            reason: reason.into(),
        }
    }

    fn unpack_entry<R: Read>(&mut self, mut entry: Entry<'_, R>) -> Result<(), PackageError> {
        self.header_count += 1;
        if self.header_count > self.limits.max_entries {
            return Err(PackageError::EntryCountLimit {
                archive: self.archive.to_path_buf(),
                limit: self.limits.max_entries,
            });
        }

        let entry_type = entry.header().entry_type();
        if self.read_extension_header(&mut entry, entry_type)? {
            return Ok(());
        }

        let pending = std::mem::take(&mut self.pending);
        let name_bytes = pending
            .pax_path
            .or(pending.gnu_long_name)
            .unwrap_or_else(|| entry.header().path_bytes().into_owned());
        let name = self.decode_name(&name_bytes, "entry name")?;

        if pending.pax_sparse {
            return Err(self.reject(&name, "sparse files are not supported"));
        }
        if let Some(pax_size) = pending.pax_size {
            if pax_size != entry.size() {
                return Err(self.reject(&name, "the pax size record differs from the header size"));
            }
        }

        let components = relative_components(&name).map_err(|reason| self.reject(&name, reason))?;
        let mode = entry
            .header()
            .mode()
            .map_err(|source| self.corrupt(source))?;

        match entry_type {
            EntryType::Regular | EntryType::Continuous
                if name.ends_with('/') && entry.size() == 0 =>
            {
                // Pre-POSIX tar marks a directory with a trailing slash on a regular entry.
                self.unpack_directory(&name, &components, mode)
            }
            EntryType::Regular | EntryType::Continuous => {
                self.unpack_file(&mut entry, &name, &components, mode)
            }
            EntryType::Directory => self.unpack_directory(&name, &components, mode),
            EntryType::Symlink | EntryType::Link => {
                let link_bytes = pending
                    .pax_link
                    .or(pending.gnu_long_link)
                    .or_else(|| entry.header().link_name_bytes().map(Cow::into_owned))
                    .unwrap_or_default();
                let target = self.decode_name(&link_bytes, "link target")?;
                if entry_type == EntryType::Symlink {
                    self.unpack_symlink(&name, &components, &target)
                } else {
                    self.unpack_hard_link(&name, &components, &target)
                }
            }
            EntryType::Char => Err(self.reject(&name, "character devices are not allowed")),
            EntryType::Block => Err(self.reject(&name, "block devices are not allowed")),
            EntryType::Fifo => Err(self.reject(&name, "fifos are not allowed")),
            EntryType::GNUSparse => Err(self.reject(&name, "sparse files are not supported")),
            other => Err(self.reject(
                &name,
                format!("entry type {:?} is not supported", other.as_byte() as char),
            )),
        }
    }

    /// Reads a GNU long-name or pax header into `self.pending` and returns true, or returns
    /// false when the entry is not an extension header.
    fn read_extension_header<R: Read>(
        &mut self,
        entry: &mut Entry<'_, R>,
        entry_type: EntryType,
    ) -> Result<bool, PackageError> {
        let is_gnu_name = entry_type.is_gnu_longname() || entry_type.is_gnu_longlink();
        let is_pax = entry_type.is_pax_local_extensions() || entry_type.is_pax_global_extensions();
        if !is_gnu_name && !is_pax {
            return Ok(false);
        }

        let max_len = if is_gnu_name {
            // GNU tar stores the name with a trailing NUL byte.
            self.limits.max_path_len as u64 + 1
        } else {
            MAX_PAX_HEADER_BYTES
        };
        let header_name = String::from_utf8_lossy(&entry.header().path_bytes()).into_owned();
        if entry.size() > max_len {
            return Err(self.reject(
                &header_name,
                format!(
                    "extension header of {} bytes exceeds the limit of {max_len} bytes",
                    entry.size()
                ),
            ));
        }

        let mut data = Vec::with_capacity(entry.size() as usize);
        entry
            .read_to_end(&mut data)
            .map_err(|source| self.corrupt(source))?;
        if data.len() as u64 != entry.size() {
            return Err(self.corrupt(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("extension header {header_name:?} is truncated"),
            )));
        }

        if entry_type.is_gnu_longname() {
            self.pending.gnu_long_name = Some(trim_trailing_nuls(data));
        } else if entry_type.is_gnu_longlink() {
            self.pending.gnu_long_link = Some(trim_trailing_nuls(data));
        } else if entry_type.is_pax_local_extensions() {
            self.read_pax_records(&data, &header_name)?;
        }
        // Global pax headers hold defaults such as comments and times, which are not used.
        Ok(true)
    }

    fn read_pax_records(&mut self, data: &[u8], header_name: &str) -> Result<(), PackageError> {
        for record in PaxExtensions::new(data) {
            let record = record.map_err(|_| self.reject(header_name, "malformed pax header"))?;
            match record.key_bytes() {
                b"path" => self.pending.pax_path = Some(record.value_bytes().to_vec()),
                b"linkpath" => self.pending.pax_link = Some(record.value_bytes().to_vec()),
                b"size" => {
                    let size = record
                        .value()
                        .ok()
                        .and_then(|value| value.parse::<u64>().ok())
                        .ok_or_else(|| self.reject(header_name, "malformed pax size record"))?;
                    self.pending.pax_size = Some(size);
                }
                key if key.starts_with(b"GNU.sparse") => self.pending.pax_sparse = true,
                _ => {}
            }
        }
        Ok(())
    }

    fn decode_name(&self, bytes: &[u8], what: &str) -> Result<String, PackageError> {
        let lossy = String::from_utf8_lossy(bytes);
        if bytes.len() > self.limits.max_path_len {
            return Err(self.reject(
                &lossy,
                format!("{what} is longer than {} bytes", self.limits.max_path_len),
            ));
        }
        if bytes.contains(&0) {
            return Err(self.reject(&lossy, format!("{what} contains a NUL byte")));
        }
        String::from_utf8(bytes.to_vec())
            .map_err(|_| self.reject(&lossy, format!("{what} is not valid UTF-8")))
    }

    fn unpack_file<R: Read>(
        &mut self,
        entry: &mut Entry<'_, R>,
        name: &str,
        components: &[&str],
        mode: u32,
    ) -> Result<(), PackageError> {
        if components.is_empty() {
            return Err(self.reject(name, "the entry name has no file name"));
        }
        let remaining = self.limits.max_unpacked_bytes - self.summary.unpacked_bytes;
        if entry.size() > remaining {
            return Err(self.size_limit(name));
        }

        let path = self.prepare_parents(name, components)?;
        self.remove_existing(name, &path)?;
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|source| PackageError::io("create file", &path, source))?;

        let written = self.copy_entry_data(entry, &mut file, &path, name)?;
        if written != entry.size() {
            return Err(self.corrupt(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "entry {name:?} is truncated: {written} of {} bytes",
                    entry.size()
                ),
            )));
        }

        file.set_permissions(Permissions::from_mode((mode & 0o777) | 0o600))
            .map_err(|source| PackageError::io("set permissions of", &path, source))?;
        self.summary.files += 1;
        Ok(())
    }

    /// Copies the entry data into `file` and counts the bytes written against the limit.
    fn copy_entry_data<R: Read>(
        &mut self,
        entry: &mut Entry<'_, R>,
        file: &mut File,
        path: &Path,
        name: &str,
    ) -> Result<u64, PackageError> {
        let mut buffer = vec![0u8; 64 * 1024];
        let mut written = 0u64;
        loop {
            let count = match entry.read(&mut buffer) {
                Ok(0) => return Ok(written),
                Ok(count) => count,
                Err(source) if source.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(self.corrupt(source)),
            };

            self.summary.unpacked_bytes += count as u64;
            if self.summary.unpacked_bytes > self.limits.max_unpacked_bytes {
                return Err(self.size_limit(name));
            }
            file.write_all(&buffer[..count])
                .map_err(|source| PackageError::io("write", path, source))?;
            written += count as u64;
        }
    }

    fn size_limit(&self, name: &str) -> PackageError {
        PackageError::UnpackedSizeLimit {
            archive: self.archive.to_path_buf(),
            entry: name.to_string(),
            limit: self.limits.max_unpacked_bytes,
        }
    }

    fn unpack_directory(
        &mut self,
        name: &str,
        components: &[&str],
        mode: u32,
    ) -> Result<(), PackageError> {
        if components.is_empty() {
            // The entry is the archive root, for example "./", which is `dest` itself.
            return Ok(());
        }

        let path = self.prepare_parents(name, components)?;
        match std::fs::symlink_metadata(&path) {
            Ok(metadata) if metadata.is_dir() => {}
            Ok(_) => {
                return Err(self.reject(
                    name,
                    "a file or symbolic link with this name was unpacked earlier",
                ))
            }
            Err(source) if source.kind() == io::ErrorKind::NotFound => {
                self.create_directory(&path)?;
            }
            Err(source) => return Err(PackageError::io("read metadata of", &path, source)),
        }

        // `path` is a directory and not a symbolic link, so this changes nothing outside `dest`.
        std::fs::set_permissions(&path, Permissions::from_mode((mode & 0o777) | 0o700))
            .map_err(|source| PackageError::io("set permissions of", &path, source))?;
        Ok(())
    }

    fn unpack_symlink(
        &mut self,
        name: &str,
        components: &[&str],
        target: &str,
    ) -> Result<(), PackageError> {
        if components.is_empty() {
            return Err(self.reject(name, "the entry name has no file name"));
        }
        check_symlink_target(components, target).map_err(|reason| {
            self.reject(name, format!("symbolic link target {target:?} {reason}"))
        })?;

        let path = self.prepare_parents(name, components)?;
        self.remove_existing(name, &path)?;
        std::os::unix::fs::symlink(target, &path)
            .map_err(|source| PackageError::io("create symbolic link", &path, source))?;
        self.summary.symlinks += 1;
        Ok(())
    }

    fn unpack_hard_link(
        &mut self,
        name: &str,
        components: &[&str],
        target: &str,
    ) -> Result<(), PackageError> {
        if components.is_empty() {
            return Err(self.reject(name, "the entry name has no file name"));
        }
        let target_components = relative_components(target)
            .map_err(|reason| self.reject(name, format!("hard link target {target:?} {reason}")))?;
        if target_components == components {
            return Err(self.reject(name, "hard link points to itself"));
        }
        let target_path = self.find_unpacked_file(&target_components).ok_or_else(|| {
            self.reject(
                name,
                format!("hard link target {target:?} is not a regular file unpacked earlier from this archive"),
            )
        })?;

        let path = self.prepare_parents(name, components)?;
        self.remove_existing(name, &path)?;
        std::fs::hard_link(&target_path, &path)
            .map_err(|source| PackageError::io("create hard link", &path, source))?;
        self.summary.hard_links += 1;
        Ok(())
    }

    /// Returns the path of an existing regular file under `dest`, reached only through real
    /// directories, or `None`.
    fn find_unpacked_file(&self, components: &[&str]) -> Option<PathBuf> {
        let (last, parents) = components.split_last()?;
        let mut path = self.dest.to_path_buf();
        for component in parents {
            path.push(component);
            if !std::fs::symlink_metadata(&path).ok()?.is_dir() {
                return None;
            }
        }
        path.push(last);
        std::fs::symlink_metadata(&path)
            .ok()?
            .is_file()
            .then_some(path)
    }

    /// Creates the missing parents of an entry one component at a time and returns the
    /// entry's path. Fails when a parent is a symbolic link or not a directory.
    fn prepare_parents(
        &mut self,
        name: &str,
        components: &[&str],
    ) -> Result<PathBuf, PackageError> {
        let (last, parents) = components
            .split_last()
            .expect("callers pass at least one component");
        let mut path = self.dest.to_path_buf();
        for (index, component) in parents.iter().enumerate() {
            path.push(component);
            let parent_name = parents[..=index].join("/");
            match std::fs::symlink_metadata(&path) {
                Ok(metadata) if metadata.file_type().is_symlink() => {
                    return Err(
                        self.reject(name, format!("parent {parent_name:?} is a symbolic link"))
                    );
                }
                Ok(metadata) if metadata.is_dir() => {}
                Ok(_) => {
                    return Err(
                        self.reject(name, format!("parent {parent_name:?} is not a directory"))
                    )
                }
                Err(source) if source.kind() == io::ErrorKind::NotFound => {
                    self.create_directory(&path)?
                }
                Err(source) => return Err(PackageError::io("read metadata of", &path, source)),
            }
        }
        path.push(last);
        Ok(path)
    }

    fn create_directory(&mut self, path: &Path) -> Result<(), PackageError> {
        // `create` fails when any file, including a symbolic link, already has this name.
        DirBuilder::new()
            .mode(0o755)
            .create(path)
            .map_err(|source| PackageError::io("create directory", path, source))?;
        self.summary.directories += 1;
        Ok(())
    }

    /// Removes a file or symbolic link that an earlier entry created with the same name, so
    /// that a later entry never writes through it. Fails for a directory.
    fn remove_existing(&self, name: &str, path: &Path) -> Result<(), PackageError> {
        match std::fs::symlink_metadata(path) {
            Ok(metadata) if metadata.is_dir() => {
                Err(self.reject(name, "a directory with this name was unpacked earlier"))
            }
            Ok(_) => std::fs::remove_file(path)
                .map_err(|source| PackageError::io("remove", path, source)),
            Err(source) if source.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(PackageError::io("read metadata of", path, source)),
        }
    }
}

fn trim_trailing_nuls(mut bytes: Vec<u8>) -> Vec<u8> {
    while bytes.last() == Some(&0) {
        bytes.pop();
    }
    bytes
}

/// Checks that a symbolic link at `link_components` with `target` resolves inside `dest`.
///
/// The target must be relative and have the form `../../a/b`: `..` components may only
/// come first. Those climb from the link's parent, which is a real directory because
/// entries never go through symbolic links, so they resolve as written. The names after
/// them descend from a directory inside `dest`, and any of them that is a symbolic link
/// was checked the same way, so the whole target resolves inside `dest`.
fn check_symlink_target(link_components: &[&str], target: &str) -> Result<(), &'static str> {
    if target.is_empty() {
        return Err("is empty");
    }
    if target.starts_with('/') {
        return Err("is an absolute path");
    }

    let mut depth = link_components.len() - 1;
    let mut seen_name = false;
    for component in target.split('/') {
        match component {
            "" | "." => {}
            ".." if seen_name => return Err("contains '..' after a directory name"),
            ".." if depth == 0 => return Err("points outside the destination"),
            ".." => depth -= 1,
            _ => seen_name = true,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_symlink_target;

    #[test]
    fn symlink_target_inside_dest_is_accepted() {
        assert_eq!(check_symlink_target(&["a", "link"], "../b/c"), Ok(()));
        assert_eq!(check_symlink_target(&["link"], "."), Ok(()));
        assert_eq!(check_symlink_target(&["link"], "./b"), Ok(()));
    }

    #[test]
    fn symlink_target_outside_dest_is_rejected() {
        assert_eq!(
            check_symlink_target(&["link"], ".."),
            Err("points outside the destination")
        );
        assert_eq!(
            check_symlink_target(&["a", "link"], "../../x"),
            Err("points outside the destination")
        );
        assert_eq!(
            check_symlink_target(&["link"], "/etc"),
            Err("is an absolute path")
        );
        assert_eq!(check_symlink_target(&["link"], ""), Err("is empty"));
    }

    #[test]
    fn symlink_target_with_inner_parent_dir_is_rejected() {
        assert_eq!(
            check_symlink_target(&["a", "link"], "x/../.."),
            Err("contains '..' after a directory name")
        );
    }
}
