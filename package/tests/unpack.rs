//! Unpacking archives, hostile ones included, with `tower_package::unpack`.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;

use common::{list_tree, mode_of, Sandbox, TestArchive};
use tar::EntryType;
use tower_package::{unpack, ErrorKind, PackageError, UnpackLimits, UnpackSummary};

fn unpack_default(sandbox: &Sandbox) -> Result<UnpackSummary, PackageError> {
    unpack(&sandbox.archive, &sandbox.dest, &UnpackLimits::default())
}

/// Asserts that unpacking fails with `UnsafeEntry` for `entry` and returns the message.
fn expect_unsafe_entry(
    result: Result<UnpackSummary, PackageError>,
    expected_entry: &str,
) -> String {
    let error = result.expect_err("unpack should fail");
    assert_eq!(error.kind(), ErrorKind::InvalidPackage);
    match &error {
        PackageError::UnsafeEntry { entry, .. } => assert_eq!(entry, expected_entry),
        other => panic!("expected UnsafeEntry for {expected_entry:?}, got {other:?}"),
    }
    error.to_string()
}

#[test]
fn unpack_extracts_files_dirs_links_and_modes() {
    let sandbox = Sandbox::new();
    let mut archive = TestArchive::new();
    archive
        .dir("app/", 0o750)
        .file("app/main.py", b"print('hi')\n", 0o644)
        .file("app/run.sh", b"echo hi\n", 0o755)
        .file("app/data/values.txt", b"1 2 3\n", 0o600)
        .symlink("app/current", "data")
        .symlink("app/data/up", "../main.py")
        .hard_link("app/copy.py", "app/main.py");
    archive.write_gz(&sandbox.archive);

    let summary = unpack_default(&sandbox).unwrap();

    assert_eq!(
        summary,
        UnpackSummary {
            files: 3,
            directories: 2,
            symlinks: 2,
            hard_links: 1,
            unpacked_bytes: 12 + 8 + 6,
        }
    );
    let dest = &sandbox.dest;
    assert_eq!(
        fs::read_to_string(dest.join("app/main.py")).unwrap(),
        "print('hi')\n"
    );
    assert_eq!(
        fs::read_to_string(dest.join("app/current/values.txt")).unwrap(),
        "1 2 3\n"
    );
    assert_eq!(
        fs::read_to_string(dest.join("app/data/up")).unwrap(),
        "print('hi')\n"
    );
    assert_eq!(
        fs::read_link(dest.join("app/current")).unwrap().to_str(),
        Some("data")
    );
    assert_eq!(
        fs::metadata(dest.join("app/copy.py")).unwrap().ino(),
        fs::metadata(dest.join("app/main.py")).unwrap().ino()
    );
    assert_eq!(mode_of(&dest.join("app")), 0o750);
    assert_eq!(mode_of(&dest.join("app/main.py")), 0o644);
    assert_eq!(mode_of(&dest.join("app/run.sh")), 0o755);
    assert_eq!(mode_of(&dest.join("app/data/values.txt")), 0o600);
    assert_eq!(mode_of(&dest.join("app/data")), 0o755);
    sandbox.assert_nothing_outside_dest();
}

#[test]
fn unpack_clears_setuid_setgid_and_sticky_bits() {
    let sandbox = Sandbox::new();
    let mut archive = TestArchive::new();
    archive
        .dir("shared/", 0o1777)
        .file("shared/tool", b"#!/bin/sh\n", 0o6755)
        .file("locked.txt", b"x", 0o000);
    archive.write_gz(&sandbox.archive);

    unpack_default(&sandbox).unwrap();

    assert_eq!(mode_of(&sandbox.dest.join("shared")), 0o777);
    assert_eq!(mode_of(&sandbox.dest.join("shared/tool")), 0o755);
    // The owner keeps read and write permission so the caller can read and delete the file.
    assert_eq!(mode_of(&sandbox.dest.join("locked.txt")), 0o600);
}

#[test]
fn unpack_rejects_parent_dir_entry() {
    let sandbox = Sandbox::new();
    let mut archive = TestArchive::new();
    archive
        .file("app/main.py", b"", 0o644)
        .file("../evil", b"owned", 0o644);
    archive.write_gz(&sandbox.archive);

    let message = expect_unsafe_entry(unpack_default(&sandbox), "../evil");

    assert_eq!(
        message,
        format!(
            "archive {}: entry \"../evil\" rejected: contains a '..' component",
            sandbox.archive.display()
        )
    );
    sandbox.assert_nothing_outside_dest();
}

#[test]
fn unpack_rejects_nested_parent_dir_entry() {
    let sandbox = Sandbox::new();
    let mut archive = TestArchive::new();
    archive.file("app/../../evil", b"owned", 0o644);
    archive.write_gz(&sandbox.archive);

    let message = expect_unsafe_entry(unpack_default(&sandbox), "app/../../evil");

    assert!(message.ends_with("contains a '..' component"), "{message}");
    assert_eq!(
        list_tree(&sandbox.dest).len(),
        0,
        "no parent directory may be created"
    );
    sandbox.assert_nothing_outside_dest();
}

#[test]
fn unpack_rejects_absolute_entry() {
    let sandbox = Sandbox::new();
    let absolute = sandbox.root.path().join("abs");
    let absolute_name = absolute.to_str().unwrap().to_string();
    let mut archive = TestArchive::new();
    archive.file(&absolute_name, b"owned", 0o644);
    archive.write_gz(&sandbox.archive);

    let message = expect_unsafe_entry(unpack_default(&sandbox), &absolute_name);

    assert!(message.ends_with("is an absolute path"), "{message}");
    assert!(!absolute.exists());
    sandbox.assert_nothing_outside_dest();
}

#[test]
fn unpack_rejects_symlink_to_absolute_target() {
    let sandbox = Sandbox::new();
    let mut archive = TestArchive::new();
    archive
        .symlink("etc", "/etc")
        .file("etc/tower-package-test-evil", b"owned", 0o644);
    archive.write_gz(&sandbox.archive);

    let message = expect_unsafe_entry(unpack_default(&sandbox), "etc");

    assert!(
        message.ends_with("symbolic link target \"/etc\" is an absolute path"),
        "{message}"
    );
    assert!(!std::path::Path::new("/etc/tower-package-test-evil").exists());
    assert_eq!(list_tree(&sandbox.dest).len(), 0);
    sandbox.assert_nothing_outside_dest();
}

#[test]
fn unpack_rejects_symlink_to_parent_dir() {
    let sandbox = Sandbox::new();
    let mut archive = TestArchive::new();
    archive
        .symlink("link", "..")
        .file("link/evil", b"owned", 0o644);
    archive.write_gz(&sandbox.archive);

    let message = expect_unsafe_entry(unpack_default(&sandbox), "link");

    assert!(
        message.ends_with("symbolic link target \"..\" points outside the destination"),
        "{message}"
    );
    sandbox.assert_nothing_outside_dest();
}

#[test]
fn unpack_rejects_symlink_escaping_from_subdir() {
    let sandbox = Sandbox::new();
    let mut archive = TestArchive::new();
    archive.symlink("a/b/link", "../../../outside");
    archive.write_gz(&sandbox.archive);

    let message = expect_unsafe_entry(unpack_default(&sandbox), "a/b/link");

    assert!(
        message.ends_with("points outside the destination"),
        "{message}"
    );
    sandbox.assert_nothing_outside_dest();
}

#[test]
fn unpack_rejects_symlink_with_parent_dir_after_name() {
    // `here -> .` is safe, but `here/..` would resolve to the parent of `dest`.
    let sandbox = Sandbox::new();
    let mut archive = TestArchive::new();
    archive
        .symlink("here", ".")
        .symlink("escape", "here/../outside");
    archive.write_gz(&sandbox.archive);

    let message = expect_unsafe_entry(unpack_default(&sandbox), "escape");

    assert!(
        message.ends_with("contains '..' after a directory name"),
        "{message}"
    );
    sandbox.assert_nothing_outside_dest();
}

#[test]
fn unpack_rejects_entry_through_earlier_symlink() {
    let sandbox = Sandbox::new();
    let mut archive = TestArchive::new();
    archive
        .dir("sub/", 0o755)
        .symlink("link", "sub")
        .file("link/evil", b"owned", 0o644);
    archive.write_gz(&sandbox.archive);

    let message = expect_unsafe_entry(unpack_default(&sandbox), "link/evil");

    assert!(
        message.ends_with("parent \"link\" is a symbolic link"),
        "{message}"
    );
    assert!(!sandbox.dest.join("sub/evil").exists());
    sandbox.assert_nothing_outside_dest();
}

#[test]
fn unpack_rejects_entry_under_regular_file() {
    let sandbox = Sandbox::new();
    let mut archive = TestArchive::new();
    archive.file("a", b"", 0o644).file("a/b", b"", 0o644);
    archive.write_gz(&sandbox.archive);

    let message = expect_unsafe_entry(unpack_default(&sandbox), "a/b");

    assert!(
        message.ends_with("parent \"a\" is not a directory"),
        "{message}"
    );
}

#[test]
fn unpack_rejects_file_named_like_root() {
    for name in [".", "./"] {
        let sandbox = Sandbox::new();
        let mut archive = TestArchive::new();
        archive.file(name, b"data", 0o644);
        archive.write_gz(&sandbox.archive);

        let message = expect_unsafe_entry(unpack_default(&sandbox), name);

        assert!(
            message.ends_with("the entry name has no file name"),
            "{message}"
        );
    }
}

#[test]
fn unpack_replaces_symlink_without_following_it() {
    let sandbox = Sandbox::new();
    let mut archive = TestArchive::new();
    archive
        .file("victim.txt", b"original", 0o644)
        .symlink("link", "victim.txt")
        .file("link", b"replacement", 0o644);
    archive.write_gz(&sandbox.archive);

    unpack_default(&sandbox).unwrap();

    assert_eq!(
        fs::read_to_string(sandbox.dest.join("victim.txt")).unwrap(),
        "original"
    );
    assert!(fs::symlink_metadata(sandbox.dest.join("link"))
        .unwrap()
        .is_file());
    assert_eq!(
        fs::read_to_string(sandbox.dest.join("link")).unwrap(),
        "replacement"
    );
}

#[test]
fn unpack_rejects_hard_link_to_absolute_path() {
    let sandbox = Sandbox::new();
    let mut archive = TestArchive::new();
    archive.hard_link("passwd", "/etc/passwd");
    archive.write_gz(&sandbox.archive);

    let message = expect_unsafe_entry(unpack_default(&sandbox), "passwd");

    assert!(
        message.ends_with("hard link target \"/etc/passwd\" is an absolute path"),
        "{message}"
    );
    assert_eq!(list_tree(&sandbox.dest).len(), 0);
}

#[test]
fn unpack_rejects_hard_link_outside_dest() {
    let sandbox = Sandbox::new();
    let outside = sandbox.root.path().join("outside.txt");
    fs::write(&outside, "secret").unwrap();
    let mut archive = TestArchive::new();
    archive.hard_link("stolen", "../outside.txt");
    archive.write_gz(&sandbox.archive);

    let message = expect_unsafe_entry(unpack_default(&sandbox), "stolen");

    assert!(message.contains("contains a '..' component"), "{message}");
    assert_eq!(fs::metadata(&outside).unwrap().nlink(), 1);
    assert_eq!(list_tree(&sandbox.dest).len(), 0);
}

#[test]
fn unpack_rejects_hard_link_to_symlink() {
    let sandbox = Sandbox::new();
    let mut archive = TestArchive::new();
    archive
        .file("real.txt", b"data", 0o644)
        .symlink("alias", "real.txt")
        .hard_link("copy", "alias");
    archive.write_gz(&sandbox.archive);

    let message = expect_unsafe_entry(unpack_default(&sandbox), "copy");

    assert!(
        message.ends_with("is not a regular file unpacked earlier from this archive"),
        "{message}"
    );
}

#[test]
fn unpack_rejects_hard_link_to_missing_file() {
    let sandbox = Sandbox::new();
    let mut archive = TestArchive::new();
    archive.hard_link("copy", "missing.txt");
    archive.write_gz(&sandbox.archive);

    expect_unsafe_entry(unpack_default(&sandbox), "copy");
}

#[test]
fn unpack_rejects_character_device() {
    let sandbox = Sandbox::new();
    let mut archive = TestArchive::new();
    archive.raw(EntryType::Char, "null", "", 0o666, b"");
    archive.write_gz(&sandbox.archive);

    let message = expect_unsafe_entry(unpack_default(&sandbox), "null");

    assert!(
        message.ends_with("character devices are not allowed"),
        "{message}"
    );
    assert_eq!(list_tree(&sandbox.dest).len(), 0);
}

#[test]
fn unpack_rejects_block_device_and_fifo() {
    for (entry_type, reason) in [
        (EntryType::Block, "block devices are not allowed"),
        (EntryType::Fifo, "fifos are not allowed"),
        (EntryType::GNUSparse, "sparse files are not supported"),
    ] {
        let sandbox = Sandbox::new();
        let mut archive = TestArchive::new();
        archive.raw(entry_type, "special", "", 0o644, b"");
        archive.write_gz(&sandbox.archive);

        let message = expect_unsafe_entry(unpack_default(&sandbox), "special");

        assert!(message.ends_with(reason), "{message}");
    }
}

#[test]
fn unpack_rejects_file_over_size_limit() {
    let sandbox = Sandbox::new();
    let mut archive = TestArchive::new();
    archive.file("bomb.bin", &vec![0u8; 2 * 1024 * 1024], 0o644);
    archive.write_gz(&sandbox.archive);
    let limits = UnpackLimits {
        max_unpacked_bytes: 1024 * 1024,
        ..UnpackLimits::default()
    };

    let error = unpack(&sandbox.archive, &sandbox.dest, &limits).unwrap_err();

    assert!(
        matches!(&error, PackageError::UnpackedSizeLimit { entry, limit: 1048576, .. } if entry == "bomb.bin"),
        "{error:?}"
    );
    assert_eq!(error.kind(), ErrorKind::InvalidPackage);
    assert!(
        !sandbox.dest.join("bomb.bin").exists(),
        "the file is rejected before it is written"
    );
}

#[test]
fn unpack_rejects_total_size_over_limit() {
    let sandbox = Sandbox::new();
    let chunk = vec![0u8; 400 * 1024];
    let mut archive = TestArchive::new();
    archive
        .file("one.bin", &chunk, 0o644)
        .file("two.bin", &chunk, 0o644)
        .file("three.bin", &chunk, 0o644);
    archive.write_gz(&sandbox.archive);
    let limits = UnpackLimits {
        max_unpacked_bytes: 1024 * 1024,
        ..UnpackLimits::default()
    };

    let error = unpack(&sandbox.archive, &sandbox.dest, &limits).unwrap_err();

    assert_eq!(
        error.to_string(),
        format!(
            "archive {}: unpacking entry \"three.bin\" exceeds the limit of 1048576 unpacked bytes",
            sandbox.archive.display()
        )
    );
}

#[test]
fn unpack_rejects_entry_count_over_limit() {
    let sandbox = Sandbox::new();
    let mut archive = TestArchive::new();
    for index in 0..11 {
        archive.file(&format!("file{index}"), b"", 0o644);
    }
    archive.write_gz(&sandbox.archive);
    let limits = UnpackLimits {
        max_entries: 10,
        ..UnpackLimits::default()
    };

    let error = unpack(&sandbox.archive, &sandbox.dest, &limits).unwrap_err();

    assert!(
        matches!(error, PackageError::EntryCountLimit { limit: 10, .. }),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("more than 10 entries"),
        "{error}"
    );
    assert!(!sandbox.dest.join("file10").exists());
}

#[test]
fn unpack_accepts_entry_count_at_limit() {
    let sandbox = Sandbox::new();
    let mut archive = TestArchive::new();
    for index in 0..10 {
        archive.file(&format!("file{index}"), b"", 0o644);
    }
    archive.write_gz(&sandbox.archive);
    let limits = UnpackLimits {
        max_entries: 10,
        ..UnpackLimits::default()
    };

    let summary = unpack(&sandbox.archive, &sandbox.dest, &limits).unwrap();

    assert_eq!(summary.files, 10);
}

#[test]
fn unpack_rejects_truncated_gzip() {
    let sandbox = Sandbox::new();
    let mut archive = TestArchive::new();
    let data: Vec<u8> = (0..200_000u32)
        .flat_map(|value| value.to_le_bytes())
        .collect();
    archive.file("data.bin", &data, 0o644);
    archive.write_gz(&sandbox.archive);
    let bytes = fs::read(&sandbox.archive).unwrap();
    fs::write(&sandbox.archive, &bytes[..bytes.len() / 2]).unwrap();

    let error = unpack_default(&sandbox).unwrap_err();

    assert!(
        matches!(error, PackageError::CorruptArchive { .. }),
        "{error:?}"
    );
    assert_eq!(error.kind(), ErrorKind::InvalidPackage);
    let message = error.to_string();
    assert!(
        message.contains(&sandbox.archive.display().to_string()),
        "{message}"
    );
    assert!(message.contains("it ends too early"), "{message}");
}

#[test]
fn unpack_rejects_corrupt_gzip_data() {
    let sandbox = Sandbox::new();
    let mut archive = TestArchive::new();
    archive.file("main.py", &[b'x'; 10_000], 0o644);
    archive.write_gz(&sandbox.archive);
    let mut bytes = fs::read(&sandbox.archive).unwrap();
    let middle = bytes.len() / 2;
    for byte in &mut bytes[middle..middle + 8] {
        *byte ^= 0xff;
    }
    fs::write(&sandbox.archive, &bytes).unwrap();

    let error = unpack_default(&sandbox).unwrap_err();

    assert!(
        matches!(error, PackageError::CorruptArchive { .. }),
        "{error:?}"
    );
}

#[test]
fn unpack_rejects_file_that_is_not_an_archive() {
    let sandbox = Sandbox::new();
    fs::write(&sandbox.archive, vec![b'A'; 2048]).unwrap();

    let error = unpack_default(&sandbox).unwrap_err();

    assert!(
        matches!(error, PackageError::CorruptArchive { .. }),
        "{error:?}"
    );
}

#[test]
fn unpack_reads_uncompressed_tar() {
    let sandbox = Sandbox::new();
    let mut archive = TestArchive::new();
    archive.file("app/main.py", b"print(1)", 0o644);
    fs::write(&sandbox.archive, archive.into_tar()).unwrap();

    let summary = unpack_default(&sandbox).unwrap();

    assert_eq!(summary.files, 1);
    assert_eq!(
        fs::read_to_string(sandbox.dest.join("app/main.py")).unwrap(),
        "print(1)"
    );
}

#[test]
fn unpack_reads_gnu_long_names_and_pax_paths() {
    let sandbox = Sandbox::new();
    let long_name = format!("app/{}/main.py", "d".repeat(150));
    let mut archive = TestArchive::new();
    archive
        .file_with_long_name(&long_name, b"long")
        .pax(&[("path", b"app/from-pax.py")])
        .file("short-name", b"pax", 0o644);
    archive.write_gz(&sandbox.archive);

    unpack_default(&sandbox).unwrap();

    assert_eq!(
        fs::read_to_string(sandbox.dest.join(&long_name)).unwrap(),
        "long"
    );
    assert_eq!(
        fs::read_to_string(sandbox.dest.join("app/from-pax.py")).unwrap(),
        "pax"
    );
    assert!(!sandbox.dest.join("short-name").exists());
}

#[test]
fn unpack_rejects_pax_path_with_parent_dir() {
    let sandbox = Sandbox::new();
    let mut archive = TestArchive::new();
    archive
        .pax(&[("path", b"../evil")])
        .file("harmless.txt", b"owned", 0o644);
    archive.write_gz(&sandbox.archive);

    expect_unsafe_entry(unpack_default(&sandbox), "../evil");
    sandbox.assert_nothing_outside_dest();
}

#[test]
fn unpack_rejects_name_over_path_limit() {
    let sandbox = Sandbox::new();
    let name = "n".repeat(80);
    let mut archive = TestArchive::new();
    archive.file(&name, b"", 0o644);
    archive.write_gz(&sandbox.archive);
    let limits = UnpackLimits {
        max_path_len: 50,
        ..UnpackLimits::default()
    };

    let message = expect_unsafe_entry(unpack(&sandbox.archive, &sandbox.dest, &limits), &name);

    assert!(
        message.ends_with("entry name is longer than 50 bytes"),
        "{message}"
    );
}

#[test]
fn unpack_rejects_oversized_long_name_header() {
    let sandbox = Sandbox::new();
    let mut archive = TestArchive::new();
    archive.raw(
        EntryType::GNULongName,
        "././@LongLink",
        "",
        0o644,
        &vec![b'a'; 10_000],
    );
    archive.file("x", b"", 0o644);
    archive.write_gz(&sandbox.archive);

    let message = expect_unsafe_entry(unpack_default(&sandbox), "././@LongLink");

    assert!(
        message.ends_with("extension header of 10000 bytes exceeds the limit of 4097 bytes"),
        "{message}"
    );
}

#[test]
fn unpack_rejects_missing_destination() {
    let sandbox = Sandbox::new();
    TestArchive::new().write_gz(&sandbox.archive);
    let missing = sandbox.root.path().join("missing");

    let error = unpack(&sandbox.archive, &missing, &UnpackLimits::default()).unwrap_err();

    assert_eq!(
        error.to_string(),
        format!(
            "unpack destination {} does not exist; pass an existing empty directory",
            missing.display()
        )
    );
}

#[test]
fn unpack_rejects_non_empty_destination() {
    let sandbox = Sandbox::new();
    TestArchive::new().write_gz(&sandbox.archive);
    fs::File::create(sandbox.dest.join("left-over"))
        .unwrap()
        .write_all(b"x")
        .unwrap();

    let error = unpack_default(&sandbox).unwrap_err();

    assert!(error.to_string().contains("is not empty"), "{error}");
}

#[test]
fn unpack_missing_archive_is_io_error() {
    let sandbox = Sandbox::new();

    let error = unpack_default(&sandbox).unwrap_err();

    assert_eq!(error.kind(), ErrorKind::Io);
    assert!(error.to_string().contains("archive.tar.gz"), "{error}");
}
