//! Loading plugins: every way a plugin file can be wrong gets a clear error naming the file, and
//! the host never crashes.

use std::os::unix::fs::PermissionsExt;
use tower_host_tests::*;
use tower_plugin_api::API_VERSION;

const HOST_FAILURE: i32 = 70;
const USAGE: i32 = 64;

fn check(config: &TestConfig) -> HostOutput {
    capture(host(Some(&config.path)).args(["config", "check"]))
}

#[test]
fn config_check_accepts_well_behaved_plugin() {
    let config = TestConfig::new(&fixture_plugin("scripted"), "");
    let output = check(&config);
    assert_eq!(output.code, Some(0), "{output:?}");
    let expected = format!("plugin scripted 0.1.0 (plugin API {API_VERSION})");
    assert!(output.stdout.contains(&expected), "{output:?}");
    assert!(output.stdout.contains("health: healthy"), "{output:?}");
}

#[test]
fn config_check_into_closed_pipe_exits_quietly() {
    let config = TestConfig::new(&fixture_plugin("scripted"), "");
    let mut child = host(Some(&config.path))
        .args(["config", "check"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The reader goes away before the host writes, as `| head -0` would.
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(141), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn other_major_version_is_refused_naming_both_versions() {
    let plugin = fixture_plugin("other-major");
    let config = TestConfig::new(&plugin, "");
    let output = check(&config);
    assert_eq!(output.code, Some(HOST_FAILURE), "{output:?}");
    assert!(output.stderr.contains(&plugin.display().to_string()), "{output:?}");
    assert!(output.stderr.contains("built against plugin API 2.0.0"), "{output:?}");
    assert!(output.stderr.contains(&format!("this host (plugin API {API_VERSION})")), "{output:?}");
    assert!(output.stderr.contains(&format!("1.0.0 up to 1.{}.x", API_VERSION.minor)), "{output:?}");
}

#[test]
fn failing_constructor_is_reported_with_plugin_name() {
    let config = TestConfig::new(&fixture_plugin("scripted"), "constructor = \"fail\"");
    let output = check(&config);
    // The fixture fails with `invalid_config`, which is the operator's input: the usage code.
    assert_eq!(output.code, Some(USAGE), "{output:?}");
    assert!(output.stderr.contains("plugin `scripted` failed to create the backend"), "{output:?}");
    assert!(output.stderr.contains("the constructor fails (invalid_config)"), "{output:?}");
}

#[test]
fn panicking_constructor_fails_without_crashing_host() {
    let config = TestConfig::new(&fixture_plugin("scripted"), "constructor = \"panic\"");
    let output = check(&config);
    assert_eq!(output.code, Some(HOST_FAILURE), "{output:?}");
    assert!(output.stderr.contains("the plugin panicked: the scripted constructor panics on request"), "{output:?}");
}

#[test]
fn unknown_setting_is_refused_naming_key() {
    let config = TestConfig::new(&fixture_plugin("scripted"), "constructr = \"ok\"");
    let output = check(&config);
    assert_eq!(output.code, Some(USAGE), "{output:?}");
    assert!(output.stderr.contains("invalid setting `constructr`"), "{output:?}");
    assert!(output.stderr.contains("[backend.settings]"), "{output:?}");
}

#[test]
fn missing_plugin_file_is_reported() {
    let config = TestConfig::new(std::path::Path::new("/nonexistent/libtower_plugin_x.so"), "");
    let output = check(&config);
    assert_eq!(output.code, Some(HOST_FAILURE), "{output:?}");
    assert!(output.stderr.contains("plugin file /nonexistent/libtower_plugin_x.so does not exist"), "{output:?}");
}

#[test]
fn missing_plugin_name_lists_searched_folders() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!("[backend]\nplugin = \"nowhere\"\n[plugins]\nsearch_paths = [{:?}]\n", dir.path().display().to_string());
    let config = TestConfig::from_text(&text);
    let output = check(&config);
    assert_eq!(output.code, Some(HOST_FAILURE), "{output:?}");
    assert!(output.stderr.contains("plugin `nowhere` not found: no libtower_plugin_nowhere.so"), "{output:?}");
    assert!(output.stderr.contains(&dir.path().display().to_string()), "{output:?}");
}

#[test]
fn file_that_is_not_a_library_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("libtower_plugin_fake.so");
    std::fs::write(&fake, "this is text, not ELF\n").unwrap();
    let config = TestConfig::new(&fake, "");
    let output = check(&config);
    assert_eq!(output.code, Some(HOST_FAILURE), "{output:?}");
    assert!(output.stderr.contains(&format!("failed to load plugin {}", fake.display())), "{output:?}");
}

#[test]
fn library_that_is_not_a_plugin_is_refused() {
    let plugin = fixture_plugin("not-a-plugin");
    let config = TestConfig::new(&plugin, "");
    let output = check(&config);
    assert_eq!(output.code, Some(HOST_FAILURE), "{output:?}");
    assert!(output.stderr.contains("is a library but not a tower-host plugin"), "{output:?}");
    assert!(output.stderr.contains("tower_plugin_api_version"), "{output:?}");
}

#[test]
fn world_writable_plugin_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = copy_plugin(&fixture_plugin("scripted"), dir.path(), "libtower_plugin_scripted.so");
    std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o777)).unwrap();
    let config = TestConfig::new(&plugin, "");
    let output = check(&config);
    assert_eq!(output.code, Some(HOST_FAILURE), "{output:?}");
    assert!(output.stderr.contains("refusing to load plugin"), "{output:?}");
    assert!(output.stderr.contains("writable by group or others"), "{output:?}");
    assert!(output.stderr.contains("chmod go-w"), "{output:?}");
}

#[test]
fn plugin_in_group_writable_folder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = copy_plugin(&fixture_plugin("scripted"), dir.path(), "libtower_plugin_scripted.so");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o775)).unwrap();
    let config = TestConfig::new(&plugin, "");
    let output = check(&config);
    assert_eq!(output.code, Some(HOST_FAILURE), "{output:?}");
    assert!(output.stderr.contains(&format!("folder {} is writable by group or others", dir.path().display())), "{output:?}");
}

#[test]
fn sha256_pin_mismatch_is_refused_and_match_loads() {
    let plugin = fixture_plugin("scripted");
    let wrong = "0".repeat(64);
    let config = TestConfig::from_text(&format!("[backend]\npath = {:?}\nsha256 = \"{wrong}\"\n", plugin.display().to_string()));
    let output = check(&config);
    assert_eq!(output.code, Some(HOST_FAILURE), "{output:?}");
    assert!(output.stderr.contains(&format!("`backend.sha256` pins {wrong}")), "{output:?}");

    let digest = tower_package::sha256_file(&plugin).unwrap();
    let config = TestConfig::from_text(&format!("[backend]\npath = {:?}\nsha256 = \"{digest}\"\n", plugin.display().to_string()));
    let output = check(&config);
    assert_eq!(output.code, Some(0), "{output:?}");
}

#[test]
fn misspelled_config_key_names_file_line_and_column() {
    let config = TestConfig::from_text("[backend]\nplugin = \"subprocess\"\n\n[logging]\nlevel = \"info\"\nformt = \"json\"\n");
    let output = check(&config);
    assert_eq!(output.code, Some(USAGE), "{output:?}");
    let expected = format!("{}:6:1: unknown field `formt`", config.path.display());
    assert!(output.stderr.contains(&expected), "{output:?}");
}

#[test]
fn plugins_list_reports_every_plugin_and_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    copy_plugin(&fixture_plugin("scripted"), dir.path(), "libtower_plugin_scripted.so");
    copy_plugin(&fixture_plugin("other-major"), dir.path(), "libtower_plugin_future.so");
    copy_plugin(&fixture_plugin("not-a-plugin"), dir.path(), "libtower_plugin_plain.so");
    std::fs::write(dir.path().join("libtower_plugin_text.so"), "not a library").unwrap();
    let text = format!("[backend]\nplugin = \"scripted\"\n[plugins]\nsearch_paths = [{:?}]\n", dir.path().display().to_string());
    let config = TestConfig::from_text(&text);
    let output = capture(host(Some(&config.path)).args(["plugins", "list"]));
    assert_eq!(output.code, Some(HOST_FAILURE), "{output:?}");
    let scripted = output.stdout.lines().find(|line| line.starts_with("scripted ")).expect("scripted is listed");
    assert!(scripted.contains("0.1.0") && scripted.contains(&API_VERSION.to_string()) && scripted.contains(" ok "), "{output:?}");
    assert!(output.stdout.contains("built against plugin API 2.0.0"), "{output:?}");
    assert!(output.stdout.contains("is a library but not a tower-host plugin"), "{output:?}");
    assert!(output.stdout.contains("libtower_plugin_text.so"), "{output:?}");
    let failed_rows = output.stdout.lines().filter(|line| line.split_whitespace().nth(3) == Some("error")).count();
    assert_eq!(failed_rows, 3, "{output:?}");
}

#[test]
fn plugins_inspect_prints_capabilities_and_settings_schema() {
    let plugin = fixture_plugin("scripted");
    let output = capture(host(None).args(["plugins", "inspect"]).arg(&plugin));
    assert_eq!(output.code, Some(0), "{output:?}");
    assert!(output.stdout.contains("name:        scripted"), "{output:?}");
    assert!(output.stdout.contains("\"backend\": \"scripted\""), "{output:?}");
    assert!(output.stdout.contains("\"constructor\""), "{output:?}");
}
