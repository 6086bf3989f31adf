//! The Towerfile: the TOML file that describes an app folder.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::PackageError;
use crate::manifest::Parameter;

/// The `[app]` table of a Towerfile.
///
/// Every field defaults to empty, and unknown keys are ignored, as in the Tower CLI.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct App {
    /// App name. Required.
    #[serde(default)]
    pub name: String,
    /// Script to run, relative to the app folder, for example `./main.py` or `run.sh`. Required.
    #[serde(default)]
    pub script: String,
    /// Glob patterns, relative to the app folder, that select the files to pack.
    /// Empty means every file in the folder.
    #[serde(default)]
    pub source: Vec<String>,
    /// Cron schedule. Packing does not copy it into the MANIFEST.
    #[serde(default)]
    pub schedule: String,
    /// Human-readable description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Folders, relative to the app folder, that are packed under `modules/<folder name>`
    /// and added to `PYTHONPATH` at run time.
    #[serde(default)]
    pub import_paths: Vec<String>,
}

/// Contents of a Towerfile.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Towerfile {
    /// The `[app]` table.
    pub app: App,
    /// The `[[parameters]]` tables.
    #[serde(default)]
    pub parameters: Vec<Parameter>,
}

impl Towerfile {
    /// Reads and checks a Towerfile.
    ///
    /// Fails when the file is missing, is not UTF-8 TOML (the message gives the line and
    /// column), lacks `app.name` or `app.script`, or has an empty import path or one that
    /// contains `:` or `;`, which would split the `PYTHONPATH` entry.
    pub fn from_path(path: &Path) -> Result<Towerfile, PackageError> {
        let bytes = std::fs::read(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                PackageError::TowerfileNotFound {
                    path: path.to_path_buf(),
                }
            } else {
                PackageError::io("read", path, source)
            }
        })?;
        Towerfile::from_slice_at(&bytes, path)
    }

    pub(crate) fn from_slice_at(bytes: &[u8], path: &Path) -> Result<Towerfile, PackageError> {
        let text = std::str::from_utf8(bytes).map_err(|error| PackageError::InvalidTowerfile {
            path: path.to_path_buf(),
            message: format!("the file is not valid UTF-8: {error}"),
        })?;
        let towerfile: Towerfile =
            toml::from_str(text).map_err(|error| PackageError::InvalidTowerfile {
                path: path.to_path_buf(),
                message: error.to_string().trim_end().to_string(),
            })?;
        towerfile.validate(path)?;
        Ok(towerfile)
    }

    fn validate(&self, path: &Path) -> Result<(), PackageError> {
        let field_error = |field: &str, reason: String| PackageError::InvalidTowerfileField {
            path: path.to_path_buf(),
            field: field.to_string(),
            reason,
        };

        if self.app.name.is_empty() {
            return Err(field_error("app.name", "is missing or empty".into()));
        }
        if self.app.script.is_empty() {
            return Err(field_error("app.script", "is missing or empty".into()));
        }
        for import_path in &self.app.import_paths {
            if import_path.is_empty() {
                return Err(field_error(
                    "app.import_paths",
                    "contains an empty entry".into(),
                ));
            }
            if import_path.contains([':', ';']) {
                return Err(field_error(
                    "app.import_paths",
                    format!("entry {import_path:?} contains ':' or ';', which separate PYTHONPATH entries"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Towerfile, PackageError> {
        Towerfile::from_slice_at(text.as_bytes(), Path::new("/app/Towerfile"))
    }

    #[test]
    fn towerfile_parses_all_fields() {
        let towerfile = parse(
            r#"
[app]
name = "demo"
script = "./main.py"
source = ["*.py", "lib/**/*.py"]
import_paths = ["../shared"]
description = "Demo app"

[[parameters]]
name = "GREETING"
description = "What to say"
default = "hello"
"#,
        )
        .unwrap();

        assert_eq!(towerfile.app.name, "demo");
        assert_eq!(towerfile.app.script, "./main.py");
        assert_eq!(towerfile.app.source, ["*.py", "lib/**/*.py"]);
        assert_eq!(towerfile.app.import_paths, ["../shared"]);
        assert_eq!(towerfile.app.description.as_deref(), Some("Demo app"));
        assert_eq!(towerfile.parameters.len(), 1);
        assert_eq!(towerfile.parameters[0].default, "hello");
        assert!(!towerfile.parameters[0].hidden);
    }

    #[test]
    fn towerfile_ignores_unknown_keys() {
        let towerfile = parse(
            "[app]\nname = \"x\"\nscript = \"main.py\"\nfuture_key = 1\n\n[other]\nkey = true\n",
        )
        .unwrap();
        assert_eq!(towerfile.app.name, "x");
    }

    #[test]
    fn towerfile_missing_script_names_field() {
        let error = parse("[app]\nname = \"x\"\n").unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid Towerfile /app/Towerfile: field app.script is missing or empty"
        );
    }

    #[test]
    fn towerfile_missing_name_names_field() {
        let error = parse("[app]\nscript = \"main.py\"\n").unwrap_err();
        assert!(error.to_string().contains("field app.name"), "{error}");
    }

    #[test]
    fn towerfile_missing_app_table_is_rejected() {
        let error = parse("[[parameters]]\nname = \"x\"\n").unwrap_err();
        assert!(error.to_string().contains("missing field `app`"), "{error}");
    }

    #[test]
    fn towerfile_syntax_error_reports_line_and_column() {
        let error = parse("[app]\nname = \"x\"\nscript = = \"main.py\"\n").unwrap_err();
        let message = error.to_string();
        assert!(
            message.starts_with("invalid Towerfile /app/Towerfile:"),
            "{message}"
        );
        assert!(message.contains("line 3, column"), "{message}");
    }

    #[test]
    fn towerfile_rejects_import_path_with_separator() {
        let error = parse("[app]\nname = \"x\"\nscript = \"m.py\"\nimport_paths = [\"a:b\"]\n")
            .unwrap_err();
        assert!(error.to_string().contains("\"a:b\""), "{error}");

        let error =
            parse("[app]\nname = \"x\"\nscript = \"m.py\"\nimport_paths = [\"\"]\n").unwrap_err();
        assert!(error.to_string().contains("empty entry"), "{error}");
    }

    #[test]
    fn towerfile_missing_file_names_path() {
        let error = Towerfile::from_path(Path::new("/nonexistent/Towerfile")).unwrap_err();
        assert!(matches!(error, PackageError::TowerfileNotFound { .. }));
        assert!(
            error.to_string().contains("/nonexistent/Towerfile"),
            "{error}"
        );
    }
}
