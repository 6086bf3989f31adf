//! Helpers that build tar archives, including hostile ones, for the integration tests.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use flate2::Compression;
use tar::{EntryType, Header};

/// Tar archive under construction. Unlike `tar::Builder::append_data`, the methods store
/// names and link targets byte for byte, so tests can write `..`, absolute names and
/// other entries that a careful archiver refuses to write.
pub struct TestArchive {
    builder: tar::Builder<Vec<u8>>,
}

impl TestArchive {
    pub fn new() -> Self {
        TestArchive {
            builder: tar::Builder::new(Vec::new()),
        }
    }

    /// Appends an entry whose name fits the 100-byte GNU name field.
    pub fn raw(
        &mut self,
        entry_type: EntryType,
        name: &str,
        link: &str,
        mode: u32,
        data: &[u8],
    ) -> &mut Self {
        let mut header = Header::new_gnu();
        let name_field = &mut header.as_gnu_mut().unwrap().name;
        assert!(
            name.len() < name_field.len(),
            "name {name:?} does not fit the header"
        );
        name_field[..name.len()].copy_from_slice(name.as_bytes());
        if !link.is_empty() {
            header.set_link_name_literal(link).unwrap();
        }
        header.set_entry_type(entry_type);
        header.set_mode(mode);
        header.set_size(data.len() as u64);
        header.set_mtime(0);
        header.set_cksum();
        self.builder.append(&header, data).unwrap();
        self
    }

    pub fn file(&mut self, name: &str, data: &[u8], mode: u32) -> &mut Self {
        self.raw(EntryType::Regular, name, "", mode, data)
    }

    pub fn dir(&mut self, name: &str, mode: u32) -> &mut Self {
        self.raw(EntryType::Directory, name, "", mode, b"")
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(EntryType::Symlink, name, target, 0o777, b"")
    }

    pub fn hard_link(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(EntryType::Link, name, target, 0o644, b"")
    }

    /// Appends a file through `tar::Builder::append_data`, which writes a GNU long-name
    /// header for names of 100 bytes or more.
    pub fn file_with_long_name(&mut self, name: &str, data: &[u8]) -> &mut Self {
        let mut header = Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(EntryType::Regular);
        self.builder.append_data(&mut header, name, data).unwrap();
        self
    }

    /// Appends a pax header with the given records, which apply to the next entry.
    pub fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        self.builder
            .append_pax_extensions(records.iter().copied())
            .unwrap();
        self
    }

    pub fn into_tar(self) -> Vec<u8> {
        self.builder.into_inner().unwrap()
    }

    /// Writes the archive gzip-compressed to `path`.
    pub fn write_gz(self, path: &Path) {
        let tar_bytes = self.into_tar();
        let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
        encoder.write_all(&tar_bytes).unwrap();
        fs::write(path, encoder.finish().unwrap()).unwrap();
    }
}

/// Temporary folder holding `archive.tar.gz` and an empty `dest` directory, so a test can
/// check that unpacking created nothing next to `dest`.
pub struct Sandbox {
    pub root: tempfile::TempDir,
    pub archive: PathBuf,
    pub dest: PathBuf,
}

impl Sandbox {
    pub fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        let archive = root.path().join("archive.tar.gz");
        let dest = root.path().join("dest");
        fs::create_dir(&dest).unwrap();
        Sandbox {
            root,
            archive,
            dest,
        }
    }

    /// Names in the sandbox root, which must stay `archive.tar.gz` and `dest`.
    pub fn root_names(&self) -> BTreeSet<String> {
        fs::read_dir(self.root.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect()
    }

    pub fn assert_nothing_outside_dest(&self) {
        let expected: BTreeSet<String> = ["archive.tar.gz", "dest"]
            .iter()
            .map(|name| name.to_string())
            .collect();
        assert_eq!(self.root_names(), expected);
    }
}

/// Lists every path under `root`, relative and `/`-separated, without following symbolic links.
pub fn list_tree(root: &Path) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let relative = path
                .strip_prefix(root)
                .unwrap()
                .to_str()
                .unwrap()
                .to_string();
            if entry.file_type().unwrap().is_dir() {
                names.insert(format!("{relative}/"));
                stack.push(path);
            } else {
                names.insert(relative);
            }
        }
    }
    names
}

/// Returns the permission bits of a path, without following a symbolic link.
pub fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}
