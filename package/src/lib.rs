//! The Tower package format, shared by the host, which packs app folders, and the backend
//! plugins, which unpack and run packages.
//!
//! A package is a gzip-compressed tar archive. Its root contains a `MANIFEST` (JSON, see
//! [`Manifest`]) and the app's original `Towerfile` (TOML, see [`Towerfile`]). In format
//! versions 2 and 3 the app files sit under `app/` and each import path under
//! `modules/<folder name>/`. Version 1 packages keep the app files at the root.
//!
//! - [`pack_dir`] builds a version 3 package from a folder with a Towerfile, with the
//!   layout and MANIFEST checksum of the Tower CLI.
//! - [`unpack`] extracts an archive into an empty directory and rejects entries that
//!   could write outside it.
//! - [`Package::open`] reads the MANIFEST of an unpacked package and checks its script.
//!
//! The format facts come from the Tower CLI source (`crates/tower-package` of
//! <https://github.com/tower/tower-cli>, commit 8d5ef437).
//!
//! This crate is synchronous and uses no async runtime. It supports Unix only, because
//! unpacking relies on Unix file modes and symbolic links.

#![deny(missing_docs)]

#[cfg(not(unix))]
compile_error!(
    "tower-package supports Unix only: unpacking relies on Unix file modes and symbolic links"
);

mod digest;
mod error;
mod manifest;
mod pack;
mod package;
mod paths;
mod towerfile;
mod unpack;

pub use digest::{package_checksum, sha256_file, verify_sha256};
pub use error::{ErrorKind, PackageError};
pub use manifest::{Manifest, Parameter, CURRENT_VERSION};
pub use pack::pack_dir;
pub use package::{read_manifest, Package};
pub use towerfile::{App, Towerfile};
pub use unpack::{unpack, UnpackLimits, UnpackSummary};

/// Maximum size in bytes of a compressed package that Tower accepts for deployment
/// (50 MiB, the limit in the Tower CLI). [`UnpackLimits::default`] is sized from it.
pub const MAX_PACKAGE_BYTES: u64 = 50 * 1024 * 1024;
