//! SHA-256 helpers: file digests and the MANIFEST checksum.

use std::fs::File;
use std::io;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::PackageError;

/// Computes the SHA-256 digest of a file as 64 lowercase hexadecimal digits.
///
/// The file is read in a stream, so its size does not affect memory use.
pub fn sha256_file(path: &Path) -> Result<String, PackageError> {
    let mut file = File::open(path).map_err(|source| PackageError::io("open", path, source))?;
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher).map_err(|source| PackageError::io("read", path, source))?;
    Ok(hex::encode(hasher.finalize()))
}

/// Checks that a file has the expected SHA-256 digest.
///
/// `expected` is 64 hexadecimal digits in either case. A malformed `expected` gives
/// [`PackageError::InvalidDigest`], and a different digest gives
/// [`PackageError::DigestMismatch`] with both values.
pub fn verify_sha256(path: &Path, expected: &str) -> Result<(), PackageError> {
    let expected_lower = expected.to_ascii_lowercase();
    let is_valid =
        expected_lower.len() == 64 && expected_lower.bytes().all(|byte| byte.is_ascii_hexdigit());
    if !is_valid {
        return Err(PackageError::InvalidDigest {
            value: expected.to_string(),
        });
    }

    let actual = sha256_file(path)?;
    if actual != expected_lower {
        return Err(PackageError::DigestMismatch {
            path: path.to_path_buf(),
            expected: expected_lower,
            actual,
        });
    }
    Ok(())
}

/// Computes the version 3 MANIFEST checksum from `(entry name, file digest)` pairs.
///
/// The pairs cover the files under `app/` and `modules/` but neither MANIFEST nor
/// Towerfile. Entry names use `/` separators (for example `app/main.py`) and digests are
/// lowercase hexadecimal SHA-256 of the file contents. The pairs are sorted by entry name
/// as byte strings, and the checksum is the SHA-256 of the concatenated `name:digest`
/// strings, with no separator between pairs. This is how the Tower CLI computes it.
///
/// Version 2 checksums joined the same pairs but sorted the names as paths,
/// component by component, and used the platform separator, so this function does not
/// reproduce every version 2 checksum.
pub fn package_checksum<'a, I>(files: I) -> String
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    let mut pairs: Vec<(&str, &str)> = files.into_iter().collect();
    pairs.sort_unstable();

    let mut hasher = Sha256::new();
    for (name, digest) in pairs {
        hasher.update(name.as_bytes());
        hasher.update(b":");
        hasher.update(digest.as_bytes());
    }
    hex::encode(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn sha256_file_hashes_contents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty");
        std::fs::write(&path, b"").unwrap();

        assert_eq!(sha256_file(&path).unwrap(), EMPTY_SHA256);
    }

    #[test]
    fn verify_sha256_accepts_uppercase() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty");
        std::fs::write(&path, b"").unwrap();

        verify_sha256(&path, &EMPTY_SHA256.to_ascii_uppercase()).unwrap();
    }

    #[test]
    fn verify_sha256_mismatch_names_both_digests() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        std::fs::write(&path, b"x").unwrap();

        let error = verify_sha256(&path, EMPTY_SHA256).unwrap_err();
        let message = error.to_string();
        assert!(message.contains(EMPTY_SHA256), "{message}");
        assert!(message.contains(&sha256_file(&path).unwrap()), "{message}");
        assert!(message.contains(&path.display().to_string()), "{message}");
    }

    #[test]
    fn verify_sha256_rejects_malformed_digest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        std::fs::write(&path, b"x").unwrap();

        let error = verify_sha256(&path, "xyz").unwrap_err();
        assert!(matches!(error, PackageError::InvalidDigest { .. }));
    }

    #[test]
    fn sha256_file_missing_names_path() {
        let error = sha256_file(Path::new("/nonexistent/file")).unwrap_err();
        assert!(error.to_string().contains("/nonexistent/file"), "{error}");
    }

    #[test]
    fn package_checksum_sorts_names_as_bytes() {
        // "app/a-b.py" sorts before "app/a/x.py" as bytes ('-' < '/') but after it as a path.
        let checksum = package_checksum([("app/a/x.py", "2"), ("app/a-b.py", "1")]);
        let expected = hex::encode(Sha256::digest(b"app/a-b.py:1app/a/x.py:2"));
        assert_eq!(checksum, expected);
    }
}
