//! Packs every app under `examples/` and opens the unpacked result, which also checks
//! that each example's Towerfile parses.

use std::fs;
use std::path::{Path, PathBuf};

use tower_package::{pack_dir, unpack, Package, UnpackLimits};

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn pack_and_open(example: &str, workspace: &Path) -> Package {
    let archive = workspace.join(format!("{example}.tar.gz"));
    pack_dir(&examples_dir().join(example), &archive)
        .unwrap_or_else(|error| panic!("{example}: {error}"));
    let dest = workspace.join(example);
    fs::create_dir(&dest).unwrap();
    unpack(&archive, &dest, &UnpackLimits::default())
        .unwrap_or_else(|error| panic!("{example}: {error}"));
    Package::open(&dest).unwrap_or_else(|error| panic!("{example}: {error}"))
}

#[test]
fn every_example_packs_and_opens() {
    let workspace = tempfile::tempdir().unwrap();
    let mut names: Vec<String> = fs::read_dir(examples_dir())
        .unwrap()
        .map(|entry| entry.unwrap())
        .filter(|entry| entry.path().join("Towerfile").is_file())
        .map(|entry| entry.file_name().into_string().unwrap())
        .collect();
    names.sort();

    assert_eq!(
        names,
        [
            "bash-app",
            "broken-dependency",
            "hello-world",
            "import-paths",
            "legacy-requirements",
            "params-and-secret",
            "with-dependency",
        ]
    );
    for name in &names {
        let package = pack_and_open(name, workspace.path());
        assert!(package.invoke_path().is_file(), "{name}");
        assert_eq!(package.manifest().version, 3, "{name}");
    }
}

#[test]
fn import_paths_example_packs_both_modules() {
    let workspace = tempfile::tempdir().unwrap();

    let package = pack_and_open("import-paths", workspace.path());

    assert_eq!(
        package.manifest().import_paths,
        ["modules/lib_a", "modules/lib_b"]
    );
    assert!(package.root().join("modules/lib_a/greetings.py").is_file());
    assert!(package.root().join("modules/lib_b/arithmetic.py").is_file());
}

#[test]
fn params_example_declares_defaults() {
    let workspace = tempfile::tempdir().unwrap();

    let package = pack_and_open("params-and-secret", workspace.path());

    let defaults: Vec<(&str, &str)> = package
        .manifest()
        .parameters
        .iter()
        .map(|parameter| (parameter.name.as_str(), parameter.default.as_str()))
        .collect();
    assert_eq!(defaults, [("GREETING", "Hello"), ("TARGET", "world")]);
}

#[test]
fn bash_example_is_bash_and_executable() {
    use std::os::unix::fs::PermissionsExt;
    let workspace = tempfile::tempdir().unwrap();

    let package = pack_and_open("bash-app", workspace.path());

    assert!(package.manifest().is_bash());
    let mode = fs::metadata(package.invoke_path())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o111, 0o111);
}
