//! A plugin built against an older minor version of the plugin API keeps loading and working.
//!
//! `tests/fixtures/previous-minor` is a workspace of its own that builds the plugin template's
//! source (the bubblewrap backend) against `plugin-api-1.0`, the contract as released in 1.0.0. This test builds it with
//! cargo (offline: every crate it needs is the main workspace's), then loads it into this host,
//! which implements a newer minor version.

use std::path::PathBuf;
use std::process::Command;
use tower_host_tests::*;

/// Builds the fixture workspace and returns its plugin file.
fn build_previous_minor_plugin() -> PathBuf {
    let manifest = repo_root().join("tests/fixtures/previous-minor/Cargo.toml");
    let target = profile_dir().parent().expect("target/<profile> is inside target").join("previous-minor");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--offline", "--quiet", "--manifest-path"])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target)
        .status()
        .expect("cargo starts");
    assert!(status.success(), "building {} failed", manifest.display());
    target.join("debug").join(format!("libtower_plugin_bubblewrap_api_1_0{}", std::env::consts::DLL_SUFFIX))
}

#[test]
fn previous_minor_plugin_loads_passes_kit_and_lacks_new_method() {
    bubblewrap_tmpdir();
    if skip_unless(find_bwrap().is_some(), "bwrap (Debian package bubblewrap) is not on PATH") {
        return;
    }
    let Some(uv) = find_uv() else {
        assert!(!skip_unless(false, "uv is not on PATH"));
        return;
    };
    let Some(wheels) = wheels_dir() else {
        assert!(!skip_unless(false, "tests/wheels has no wheels"));
        return;
    };
    let plugin = build_previous_minor_plugin();

    // The host reports the version it was built against.
    let inspect = capture(host(None).args(["plugins", "inspect"]).arg(&plugin));
    assert_eq!(inspect.code, Some(0), "{inspect:?}");
    assert!(inspect.stdout.contains("plugin API:  1.0.0"), "{inspect:?}");

    // It passes the whole conformance kit.
    let settings = bubblewrap_settings(&uv, &wheels).to_string();
    let report = tower_conformance::run_blocking(&plugin, &settings, &[]).unwrap();
    assert!(report.success(), "{report}");

    // A method added in 1.1 is reported as unsupported instead of crashing the host.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let loaded = tower_host::plugin::loader::load(&plugin, None).unwrap();
        assert_eq!(loaded.api_version.minor, 0);
        let backend = tower_host::plugin::Backend::new(loaded, settings.clone()).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("app.tar.gz");
        tower_package::pack_dir(&example("bash-app"), &archive).unwrap();
        let sha256 = tower_package::sha256_file(&archive).unwrap();
        let spec = tower_plugin_api::ExecutionSpec::new("old-minor-1", tower_plugin_api::PackageSource::file(archive.display().to_string(), sha256));
        let (execution, mut events) = backend.create(spec).await.unwrap();
        let error = execution.signal(10).await.unwrap_err();
        assert_eq!(error.error.kind(), Some(tower_plugin_api::ErrorKind::Unsupported), "{error}");
        assert!(error.error.message.contains("plugin API 1.0"), "{error}");
        // Its log records arrive through `logs`, which the host turns into batches.
        let mut lines = Vec::new();
        while let Some(event) = events.next().await {
            match event {
                tower_host::plugin::ExecutionEvent::Logs(batch) => lines.extend(batch.iter().map(|line| (line.seq, line.line.to_string()))),
                tower_host::plugin::ExecutionEvent::Status(status) if status.is_terminal() => {
                    assert_eq!(status.name(), "exited");
                    break;
                }
                tower_host::plugin::ExecutionEvent::Status(_) => {}
            }
        }
        assert!(!lines.is_empty(), "no log records from the 1.0 plugin");
        let numbers: Vec<u64> = lines.iter().map(|(seq, _)| *seq).collect();
        assert_eq!(numbers, (0..lines.len() as u64).collect::<Vec<_>>(), "{lines:?}");
        execution.cleanup().await.unwrap();
    });
}

#[test]
fn current_minor_plugin_implements_new_method() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let loaded = tower_host::plugin::loader::load(&fixture_plugin("scripted"), None).unwrap();
        assert_eq!(loaded.api_version, tower_plugin_api::API_VERSION);
        let backend = tower_host::plugin::Backend::new(loaded, "{}".to_string()).await.unwrap();
        let mut spec = tower_plugin_api::ExecutionSpec::new("new-minor-1", tower_plugin_api::PackageSource::file("/dev/null", "0".repeat(64)));
        spec.parameters.push(tower_plugin_api::KeyValue::new("run_ms", "60000"));
        let (execution, _events) = backend.create(spec).await.unwrap();
        execution.signal(10).await.expect("a plugin built against the current minor version handles signal");
        execution.kill().await.unwrap();
    });
}
