//! Packing folders with `pack_dir`, unpacking the result and opening it with `Package::open`,
//! plus packages built by hand in the version 1 and 2 layouts.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{list_tree, mode_of, TestArchive};
use sha2::{Digest, Sha256};
use tower_package::{pack_dir, unpack, Package, PackageError, Parameter, UnpackLimits};

const TOWERFILE: &str = r#"[app]
name = "round-trip"
script = "./main.py"
import_paths = ["lib_a", "../shared"]

[[parameters]]
name = "GREETING"
description = "Word to greet with"
default = "Hello"

[[parameters]]
name = "TOKEN"
default = "secret"
hidden = true
"#;

fn write(root: &Path, relative: &str, contents: &str) {
    let path = root.join(relative);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, contents).unwrap();
}

/// Creates `workspace/app` (the app folder) and `workspace/shared` (an import path outside it).
fn create_app_folder(workspace: &Path) -> std::path::PathBuf {
    let app = workspace.join("app");
    write(&app, "Towerfile", TOWERFILE);
    write(&app, "main.py", "import helpers\nprint(helpers.VALUE)\n");
    write(&app, "run.sh", "#!/bin/sh\necho hi\n");
    fs::set_permissions(app.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    write(&app, "pkg/__init__.py", "");
    write(&app, "pkg/util.py", "X = 1\n");
    write(&app, "lib_a/alpha.py", "A = 1\n");
    write(&app, ".env", "HIDDEN=1\n");
    write(
        &app,
        "sub/Towerfile",
        "[app]\nname = \"sub\"\nscript = \"x.py\"\n",
    );
    write(&app, ".gitignore", "*.pyc\n");
    write(&app, "stale.pyc", "bytecode");
    write(&app, "pkg/__pycache__/util.cpython-311.pyc", "bytecode");
    write(&app, ".venv/lib/site.py", "venv");
    write(&app, ".git/config", "git");
    write(workspace, "shared/helpers.py", "VALUE = 42\n");
    write(workspace, "shared/nested/deep.py", "");
    app
}

/// Recomputes the version 3 checksum from the files under `app/` and `modules/`, written
/// here from the format description and independent of the crate's implementation.
fn checksum_of_unpacked(root: &Path) -> String {
    let mut lines = Vec::new();
    for name in list_tree(root) {
        let is_content = name.starts_with("app/") || name.starts_with("modules/");
        if !is_content || name.ends_with('/') {
            continue;
        }
        let digest = Sha256::digest(fs::read(root.join(&name)).unwrap());
        let hex_digest: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
        lines.push(format!("{name}:{hex_digest}"));
    }
    lines.sort();
    let digest = Sha256::digest(lines.concat().as_bytes());
    digest.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn pack_and_unpack(app: &Path, workspace: &Path) -> (tower_package::Manifest, std::path::PathBuf) {
    let archive = workspace.join("package.tar.gz");
    let manifest = pack_dir(app, &archive).unwrap();
    let dest = workspace.join("unpacked");
    fs::create_dir(&dest).unwrap();
    unpack(&archive, &dest, &UnpackLimits::default()).unwrap();
    (manifest, dest)
}

#[test]
fn round_trip_keeps_layout_modes_and_checksum() {
    let workspace = tempfile::tempdir().unwrap();
    let app = create_app_folder(workspace.path());

    let (manifest, dest) = pack_and_unpack(&app, workspace.path());
    let package = Package::open(&dest).unwrap();

    let expected: BTreeSet<String> = [
        "MANIFEST",
        "Towerfile",
        "app/",
        "app/.env",
        "app/lib_a/",
        "app/lib_a/alpha.py",
        "app/main.py",
        "app/pkg/",
        "app/pkg/__init__.py",
        "app/pkg/util.py",
        "app/run.sh",
        "app/sub/",
        "app/sub/Towerfile",
        "modules/",
        "modules/lib_a/",
        "modules/lib_a/alpha.py",
        "modules/shared/",
        "modules/shared/helpers.py",
        "modules/shared/nested/",
        "modules/shared/nested/deep.py",
    ]
    .iter()
    .map(|name| name.to_string())
    .collect();
    assert_eq!(list_tree(&dest), expected);

    assert_eq!(
        fs::read_to_string(dest.join("Towerfile")).unwrap(),
        TOWERFILE
    );
    assert_eq!(
        fs::read_to_string(dest.join("modules/shared/helpers.py")).unwrap(),
        "VALUE = 42\n"
    );
    assert_eq!(mode_of(&dest.join("app/run.sh")), 0o755);
    assert_eq!(mode_of(&dest.join("app/main.py")), 0o644);

    assert_eq!(package.manifest(), &manifest);
    assert_eq!(manifest.version, 3);
    assert_eq!(manifest.invoke, "./main.py");
    assert_eq!(manifest.app_dir_name, "app");
    assert_eq!(manifest.modules_dir_name, "modules");
    assert_eq!(manifest.schedule, None);
    assert_eq!(manifest.import_paths, ["modules/lib_a", "modules/shared"]);
    assert_eq!(manifest.checksum, checksum_of_unpacked(&dest));
    assert_eq!(
        manifest.parameters,
        [
            Parameter {
                name: "GREETING".into(),
                description: "Word to greet with".into(),
                default: "Hello".into(),
                hidden: false,
            },
            Parameter {
                name: "TOKEN".into(),
                description: String::new(),
                default: "secret".into(),
                hidden: true,
            },
        ]
    );

    assert_eq!(package.working_dir(), dest.join("app"));
    assert_eq!(package.invoke_path(), dest.join("app/./main.py"));
    assert_eq!(
        package.import_paths(),
        [dest.join("modules/lib_a"), dest.join("modules/shared")]
    );
}

#[test]
fn pack_dir_output_is_deterministic() {
    let workspace = tempfile::tempdir().unwrap();
    let app = create_app_folder(workspace.path());
    let first = workspace.path().join("first.tar.gz");
    let second = workspace.path().join("second.tar.gz");

    pack_dir(&app, &first).unwrap();
    // A newer mtime must not change the output.
    fs::write(
        app.join("main.py"),
        "import helpers\nprint(helpers.VALUE)\n",
    )
    .unwrap();
    pack_dir(&app, &second).unwrap();

    assert_eq!(fs::read(&first).unwrap(), fs::read(&second).unwrap());
}

#[test]
fn pack_dir_writes_cli_tar_headers() {
    let workspace = tempfile::tempdir().unwrap();
    let app = create_app_folder(workspace.path());
    let archive_path = workspace.path().join("package.tar.gz");
    pack_dir(&app, &archive_path).unwrap();

    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(
        fs::File::open(&archive_path).unwrap(),
    ));
    let mut names = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let header = entry.header();
        assert!(header.as_gnu().is_some(), "GNU header expected");
        assert_eq!(header.entry_type(), tar::EntryType::Regular);
        assert_eq!(header.mtime().unwrap(), 0);
        assert_eq!(header.uid().unwrap(), 0);
        assert_eq!(header.gid().unwrap(), 0);
        names.push(entry.path().unwrap().to_str().unwrap().to_string());
        let mut contents = Vec::new();
        entry.read_to_end(&mut contents).unwrap();
    }

    let (content_names, trailer) = names.split_at(names.len() - 2);
    assert_eq!(trailer, ["MANIFEST", "Towerfile"]);
    let mut sorted = content_names.to_vec();
    sorted.sort();
    assert_eq!(content_names, sorted.as_slice());
}

#[test]
fn pack_dir_selects_source_globs() {
    let workspace = tempfile::tempdir().unwrap();
    let app = workspace.path().join("app");
    write(
        &app,
        "Towerfile",
        "[app]\nname = \"x\"\nscript = \"main.py\"\nsource = [\"*.py\", \"pkg\"]\n",
    );
    write(&app, "main.py", "");
    write(&app, "notes.txt", "");
    write(&app, "pkg/inner/mod.py", "");
    write(&app, "other/skip.py", "");

    let (_, dest) = pack_and_unpack(&app, workspace.path());

    let files: BTreeSet<String> = list_tree(&dest)
        .into_iter()
        .filter(|name| !name.ends_with('/'))
        .collect();
    let expected: BTreeSet<String> = [
        "MANIFEST",
        "Towerfile",
        "app/main.py",
        "app/pkg/inner/mod.py",
    ]
    .iter()
    .map(|name| name.to_string())
    .collect();
    assert_eq!(files, expected);
}

#[test]
fn pack_dir_skips_output_inside_folder() {
    let workspace = tempfile::tempdir().unwrap();
    let app = workspace.path().join("app");
    write(
        &app,
        "Towerfile",
        "[app]\nname = \"x\"\nscript = \"main.py\"\n",
    );
    write(&app, "main.py", "");
    let archive = app.join("package.tar.gz");

    pack_dir(&app, &archive).unwrap();
    let first = fs::read(&archive).unwrap();
    pack_dir(&app, &archive).unwrap();

    assert_eq!(
        fs::read(&archive).unwrap(),
        first,
        "the earlier archive must not be packed"
    );
}

#[test]
fn pack_dir_rejects_script_outside_sources() {
    let workspace = tempfile::tempdir().unwrap();
    let app = workspace.path().join("app");
    write(
        &app,
        "Towerfile",
        "[app]\nname = \"x\"\nscript = \"main.py\"\nsource = [\"*.txt\"]\n",
    );
    write(&app, "main.py", "");
    write(&app, "notes.txt", "");
    let archive = workspace.path().join("package.tar.gz");

    let error = pack_dir(&app, &archive).unwrap_err();

    assert!(
        matches!(error, PackageError::ScriptNotPacked { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("\"main.py\""), "{error}");
    assert!(!archive.exists());
}

#[test]
fn pack_dir_rejects_missing_import_path() {
    let workspace = tempfile::tempdir().unwrap();
    let app = workspace.path().join("app");
    write(
        &app,
        "Towerfile",
        "[app]\nname = \"x\"\nscript = \"main.py\"\nimport_paths = [\"../missing\"]\n",
    );
    write(&app, "main.py", "");

    let error = pack_dir(&app, &workspace.path().join("package.tar.gz")).unwrap_err();

    assert!(
        matches!(
            error,
            PackageError::InvalidImportPath {
                reason: "does not exist",
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("\"../missing\""), "{error}");
}

#[test]
fn pack_dir_rejects_import_paths_with_same_name() {
    let workspace = tempfile::tempdir().unwrap();
    let app = workspace.path().join("app");
    write(
        &app,
        "Towerfile",
        "[app]\nname = \"x\"\nscript = \"main.py\"\nimport_paths = [\"a/lib\", \"b/lib\"]\n",
    );
    write(&app, "main.py", "");
    write(&app, "a/lib/x.py", "");
    write(&app, "b/lib/y.py", "");

    let error = pack_dir(&app, &workspace.path().join("package.tar.gz")).unwrap_err();

    assert!(error.to_string().contains("modules/lib"), "{error}");
}

#[test]
fn pack_dir_rejects_invalid_glob() {
    let workspace = tempfile::tempdir().unwrap();
    let app = workspace.path().join("app");
    write(
        &app,
        "Towerfile",
        "[app]\nname = \"x\"\nscript = \"main.py\"\nsource = [\"[main.py\"]\n",
    );
    write(&app, "main.py", "");

    let error = pack_dir(&app, &workspace.path().join("package.tar.gz")).unwrap_err();

    assert!(
        matches!(&error, PackageError::InvalidGlob { pattern, .. } if pattern == "[main.py"),
        "{error:?}"
    );
}

#[test]
fn pack_dir_without_towerfile_names_path() {
    let workspace = tempfile::tempdir().unwrap();

    let error = pack_dir(workspace.path(), &workspace.path().join("package.tar.gz")).unwrap_err();

    assert!(
        matches!(error, PackageError::TowerfileNotFound { .. }),
        "{error:?}"
    );
    assert!(error
        .to_string()
        .contains(&workspace.path().join("Towerfile").display().to_string()));
}

#[test]
fn pack_dir_follows_symlink_inside_folder() {
    let workspace = tempfile::tempdir().unwrap();
    let app = workspace.path().join("app");
    write(
        &app,
        "Towerfile",
        "[app]\nname = \"x\"\nscript = \"main.py\"\n",
    );
    write(&app, "main.py", "");
    write(workspace.path(), "elsewhere/secret.txt", "outside");
    std::os::unix::fs::symlink(workspace.path().join("elsewhere"), app.join("linked")).unwrap();
    std::os::unix::fs::symlink("main.py", app.join("alias.py")).unwrap();
    std::os::unix::fs::symlink("missing.py", app.join("dangling.py")).unwrap();

    let (_, dest) = pack_and_unpack(&app, workspace.path());

    let files: BTreeSet<String> = list_tree(&dest)
        .into_iter()
        .filter(|name| !name.ends_with('/'))
        .collect();
    let expected: BTreeSet<String> = ["MANIFEST", "Towerfile", "app/main.py"]
        .iter()
        .map(|name| name.to_string())
        .collect();
    assert_eq!(
        files, expected,
        "links resolve to their targets, and targets outside the folder are skipped"
    );
}

#[test]
fn open_reads_hand_built_version_1_package() {
    let workspace = tempfile::tempdir().unwrap();
    let archive_path = workspace.path().join("v1.tar.gz");
    let mut archive = TestArchive::new();
    archive
        .file("task.py", b"print('v1')\n", 0o644)
        .file("helpers/util.py", b"", 0o644)
        .file("MANIFEST", br#"{"version":1,"invoke":"task.py"}"#, 0o644);
    archive.write_gz(&archive_path);
    let dest = workspace.path().join("dest");
    fs::create_dir(&dest).unwrap();

    unpack(&archive_path, &dest, &UnpackLimits::default()).unwrap();
    let package = Package::open(&dest).unwrap();

    assert_eq!(package.manifest().version, 1);
    assert_eq!(package.working_dir(), dest);
    assert_eq!(package.invoke_path(), dest.join("task.py"));
    assert!(package.import_paths().is_empty());
    assert!(!package.manifest().is_bash());
}

#[test]
fn open_reads_hand_built_version_2_package() {
    let workspace = tempfile::tempdir().unwrap();
    let archive_path = workspace.path().join("v2.tar.gz");
    let manifest = br#"{"version":2,"invoke":"run.sh","parameters":[{"name":"NAME","description":"","default":"world"}],"schedule":"0 0 * * *","import_paths":["modules/common"],"app_dir_name":"app","modules_dir_name":"modules","checksum":"0000"}"#;
    let mut archive = TestArchive::new();
    // Directory entries and a pax header, as GNU tar or Python's tarfile write them.
    archive
        .dir("app/", 0o755)
        .file("app/run.sh", b"echo v2\n", 0o755)
        .dir("modules/", 0o755)
        .dir("modules/common/", 0o755)
        .pax(&[("mtime", b"1700000000.5")])
        .file("modules/common/shared.py", b"", 0o644)
        .file("MANIFEST", manifest, 0o644)
        .file(
            "Towerfile",
            b"[app]\nname = \"v2\"\nscript = \"run.sh\"\n",
            0o644,
        );
    archive.write_gz(&archive_path);
    let dest = workspace.path().join("dest");
    fs::create_dir(&dest).unwrap();

    unpack(&archive_path, &dest, &UnpackLimits::default()).unwrap();
    let package = Package::open(&dest).unwrap();

    assert_eq!(package.manifest().version, 2);
    assert_eq!(package.manifest().schedule.as_deref(), Some("0 0 * * *"));
    assert_eq!(package.manifest().parameters[0].default, "world");
    assert!(!package.manifest().parameters[0].hidden);
    assert!(package.manifest().is_bash());
    assert_eq!(package.working_dir(), dest.join("app"));
    assert_eq!(package.invoke_path(), dest.join("app/run.sh"));
    assert_eq!(package.import_paths(), [dest.join("modules/common")]);
    assert_eq!(mode_of(&dest.join("app/run.sh")), 0o755);
}

#[test]
fn read_manifest_reads_packed_archive_without_unpacking() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("app.tar.gz");
    let packed = tower_package::pack_dir(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/params-and-secret"), &archive).unwrap();
    let read = tower_package::read_manifest(&archive).unwrap();
    assert_eq!(read.invoke, packed.invoke);
    assert_eq!(read.checksum, packed.checksum);
    assert_eq!(read.parameters.len(), 2);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "nothing was unpacked next to the archive");
}

#[test]
fn read_manifest_of_non_archive_names_file_only() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "root:x:0:0:secret-looking line\n".repeat(50)).unwrap();
    let error = tower_package::read_manifest(&text).unwrap_err().to_string();
    assert!(error.contains(&text.display().to_string()), "{error}");
    assert!(!error.contains("secret-looking"), "the error repeats the file's content: {error}");
}

#[test]
fn read_manifest_without_manifest_is_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("empty.tar");
    let mut builder = tar::Builder::new(std::fs::File::create(&archive).unwrap());
    let mut header = tar::Header::new_gnu();
    header.set_size(3);
    header.set_mode(0o644);
    header.set_cksum();
    builder.append_data(&mut header, "app/main.py", &b"x=1"[..]).unwrap();
    builder.finish().unwrap();
    let error = tower_package::read_manifest(&archive).unwrap_err().to_string();
    assert!(error.contains("MANIFEST not found"), "{error}");
    assert!(error.contains("empty.tar"), "{error}");
}
