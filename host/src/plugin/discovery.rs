//! Plugin search folders and file names.

use crate::config::{Config, PluginSelector};
use std::path::{Path, PathBuf};

/// The file-name prefix of plugin libraries: `libtower_plugin_<name>.so`.
const FILE_PREFIX: &str = "libtower_plugin_";

/// A plugin file found in a search folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginCandidate {
    /// The name derived from the file name (`subprocess`).
    pub name: String,
    /// The file.
    pub path: PathBuf,
}

/// Returns the file name of the plugin called `name` on this platform.
pub fn plugin_file_name(name: &str) -> String {
    format!("{FILE_PREFIX}{}{}", name.replace('-', "_"), std::env::consts::DLL_SUFFIX)
}

/// Returns the search folders: the configured ones, or by default the folder of the running
/// executable, then `<prefix>/lib/tower-host/plugins` when the executable is `<prefix>/bin/…`.
pub fn search_paths(config: &Config) -> Vec<PathBuf> {
    if let Some(paths) = &config.plugins.search_paths {
        return paths.clone();
    }
    let mut paths = Vec::new();
    if let Some(exe_dir) = std::env::current_exe().ok().and_then(|exe| exe.parent().map(Path::to_path_buf)) {
        if exe_dir.file_name().is_some_and(|name| name == "bin") {
            if let Some(prefix) = exe_dir.parent() {
                paths.push(exe_dir.clone());
                paths.push(prefix.join("lib/tower-host/plugins"));
                return paths;
            }
        }
        paths.push(exe_dir);
    }
    paths
}

/// Returns one warning for each search folder that cannot be searched for a plugin file (missing,
/// not a folder, no search permission), or with `listing` also one that cannot be listed. A
/// missing default folder is normal and gets none.
pub fn folder_warnings(config: &Config, folders: &[PathBuf], listing: bool) -> Vec<String> {
    let configured = config.plugins.search_paths.is_some();
    let action = if configured { "fix or remove it in" } else { "set other folders in" };
    let mut warnings = Vec::new();
    for folder in folders {
        // Looking up `folder/.` needs the folder to exist, be a folder and grant search permission.
        let problem = match std::fs::metadata(folder.join(".")) {
            Err(error) if !configured && error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => Some(("search", error)),
            Ok(_) if listing => std::fs::read_dir(folder).err().map(|error| ("list", error)),
            Ok(_) => None,
        };
        if let Some((operation, error)) = problem {
            warnings.push(format!(
                "failed to {operation} plugin folder {}: {error}; {action} `plugins.search_paths` of {}",
                folder.display(),
                config.source
            ));
        }
    }
    warnings
}

/// Resolves the configured plugin to a file: a path as given, or the first search folder that
/// has the plugin's file. On failure, returns the folders that were searched.
pub fn resolve(selector: &PluginSelector, folders: &[PathBuf]) -> Result<PathBuf, Vec<PathBuf>> {
    match selector {
        PluginSelector::Path(path) => Ok(path.clone()),
        PluginSelector::Name(name) => {
            let file_name = plugin_file_name(name);
            folders.iter().map(|folder| folder.join(&file_name)).find(|path| path.exists()).ok_or_else(|| folders.to_vec())
        }
    }
}

/// Lists the plugin files in the search folders, in folder order then by name. A name found in
/// two folders is listed twice; the first one wins when loading by name.
pub fn find_all(folders: &[PathBuf]) -> Vec<PluginCandidate> {
    let mut found = Vec::new();
    for folder in folders {
        let Ok(entries) = std::fs::read_dir(folder) else { continue };
        let mut in_folder: Vec<_> = entries
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let file_name = entry.file_name().into_string().ok()?;
                let name = file_name.strip_prefix(FILE_PREFIX)?.strip_suffix(std::env::consts::DLL_SUFFIX)?;
                Some(PluginCandidate { name: name.replace('_', "-"), path: entry.path() })
            })
            .collect();
        in_folder.sort_by(|left, right| left.name.cmp(&right.name));
        found.extend(in_folder);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_file_name_uses_underscores() {
        assert_eq!(plugin_file_name("my-backend"), format!("libtower_plugin_my_backend{}", std::env::consts::DLL_SUFFIX));
    }

    #[test]
    fn find_all_lists_only_plugin_files() {
        let dir = tempfile::tempdir().unwrap();
        for file in [plugin_file_name("zeta"), plugin_file_name("alpha"), "libother.so".to_string(), "README".to_string()] {
            std::fs::write(dir.path().join(file), b"").unwrap();
        }
        let names: Vec<_> = find_all(&[dir.path().to_path_buf()]).into_iter().map(|c| c.name).collect();
        assert_eq!(names, ["alpha", "zeta"]);
    }

    #[test]
    fn folder_warnings_name_configured_missing_folder() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let mut config = Config::parse("[backend]\nplugin = \"subprocess\"\n", "test.toml").unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"").unwrap();
        let folders = vec![dir.path().to_path_buf(), missing.clone()];
        assert_eq!(folder_warnings(&config, &folders, true), Vec::<String>::new(), "a missing default folder is normal");

        config.plugins.search_paths = Some(vec![dir.path().to_path_buf(), missing.clone(), file.clone()]);
        let warnings = folder_warnings(&config, config.plugins.search_paths.as_deref().unwrap(), false);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains(&format!("failed to search plugin folder {}", missing.display())), "{warnings:?}");
        assert!(warnings[1].contains(&format!("failed to search plugin folder {}", file.display())), "{warnings:?}");
        assert!(warnings[0].contains("fix or remove it in `plugins.search_paths` of test.toml"), "{warnings:?}");
    }

    #[test]
    fn resolve_reports_searched_folders() {
        let dir = tempfile::tempdir().unwrap();
        let folders = vec![dir.path().to_path_buf()];
        let searched = resolve(&PluginSelector::Name("missing".into()), &folders).unwrap_err();
        assert_eq!(searched, folders);
    }
}
