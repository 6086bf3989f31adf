//! uv, which prepares Python apps: finding or installing it, and the commands that create the
//! virtual environment and install the dependencies.

use crate::environment::find_executable;
use crate::process::CommandLine;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

/// Folder under the plugin's cache folder where the plugin installs uv with pip.
pub const UV_INSTALL_DIR_NAME: &str = "uv-install";

/// Folder of the virtual environment, inside the app's working folder. `uv sync` uses this
/// folder for a project by default.
pub const VENV_DIR_NAME: &str = ".venv";

/// The Python interpreter used to install uv with pip.
pub const PYTHON_FOR_PIP: &str = "python3";

/// Returns the path of the uv that the plugin installs under `cache_dir`.
pub fn installed_uv(cache_dir: &Path) -> PathBuf {
    cache_dir.join(UV_INSTALL_DIR_NAME).join("bin").join("uv")
}

/// Finds uv: the `uv` setting (a path, or a name on `path_var`), else a uv the plugin installed
/// earlier under `cache_dir`.
pub fn locate(setting: &str, path_var: Option<&OsStr>, cache_dir: &Path) -> Option<PathBuf> {
    find_executable(setting, path_var).or_else(|| {
        let installed = installed_uv(cache_dir);
        find_executable(installed.to_str()?, None)
    })
}

/// Returns `python3 -m pip install --target <target> uv`, run in `cwd`.
pub fn pip_install_command(python: PathBuf, target: &Path, cwd: &Path) -> CommandLine {
    let args = ["-m", "pip", "install", "--no-input", "--disable-pip-version-check", "--target"]
        .into_iter()
        .map(OsString::from)
        .chain([target.as_os_str().to_owned(), OsString::from("uv")])
        .collect();
    CommandLine { program: python, args, cwd: cwd.to_path_buf() }
}

/// Tells how to make uv available, for the message of an execution that has none.
pub fn missing_uv_help(setting: &str) -> String {
    format!(
        "uv was not found (setting `uv` = {setting:?}, looked up on PATH and in the plugin's cache); \
         install uv (for example `python3 -m pip install uv`), set `uv` to its path, \
         or set `install_uv = true` with python3 and pip available"
    )
}

/// One step of preparing a Python app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetupStep {
    /// `uv venv`: creates `.venv` in the working folder.
    CreateVenv,
    /// `uv sync`: installs the dependencies of `pyproject.toml`.
    Sync,
    /// `uv pip install -r requirements.txt`.
    InstallRequirements,
}

impl SetupStep {
    /// Names the step as its uv command, for messages.
    pub fn name(self) -> &'static str {
        match self {
            SetupStep::CreateVenv => "uv venv",
            SetupStep::Sync => "uv sync",
            SetupStep::InstallRequirements => "uv pip install -r requirements.txt",
        }
    }
}

/// Lists the steps for an app in `working_dir`: the virtual environment, then `uv sync` when
/// `pyproject.toml` exists, else `uv pip install` when `requirements.txt` exists.
pub fn plan(working_dir: &Path) -> Vec<SetupStep> {
    let mut steps = vec![SetupStep::CreateVenv];
    if working_dir.join("pyproject.toml").is_file() {
        steps.push(SetupStep::Sync);
    } else if working_dir.join("requirements.txt").is_file() {
        steps.push(SetupStep::InstallRequirements);
    }
    steps
}

/// The options every uv command of one execution shares.
#[derive(Debug, Clone)]
pub struct UvInvocation {
    /// The uv binary.
    pub uv: PathBuf,
    /// The cache folder passed as `--cache-dir`.
    pub cache_dir: PathBuf,
    /// The `uv_args` setting, appended to every command.
    pub extra_args: Vec<String>,
    /// The Python version requested by the spec, passed to `uv venv --python`.
    pub python_version: Option<String>,
}

impl UvInvocation {
    /// Builds the command of `step`, run in `working_dir`.
    pub fn command(&self, step: SetupStep, working_dir: &Path) -> CommandLine {
        let mut args: Vec<OsString> = match step {
            SetupStep::CreateVenv => vec!["venv".into(), VENV_DIR_NAME.into()],
            SetupStep::Sync => vec!["sync".into()],
            SetupStep::InstallRequirements => vec!["pip".into(), "install".into(), "-r".into(), "requirements.txt".into()],
        };
        args.extend(["--color", "never", "--no-progress", "--cache-dir"].map(OsString::from));
        args.push(self.cache_dir.as_os_str().to_owned());
        if step == SetupStep::CreateVenv {
            if let Some(version) = &self.python_version {
                args.extend(["--python".into(), version.into()]);
            }
        }
        args.extend(self.extra_args.iter().map(OsString::from));
        CommandLine { program: self.uv.clone(), args, cwd: working_dir.to_path_buf() }
    }
}

/// Environment variables set for uv commands only: uv never downloads a Python interpreter,
/// so an app runs on a Python the machine already has.
pub const UV_ENVIRONMENT: [(&str, &str); 2] = [("UV_PYTHON_DOWNLOADS", "never"), ("UV_NO_PROGRESS", "1")];

#[cfg(test)]
mod tests {
    use super::*;

    fn invocation() -> UvInvocation {
        UvInvocation {
            uv: "/opt/uv".into(),
            cache_dir: "/cache/uv".into(),
            extra_args: vec!["--offline".into()],
            python_version: Some("3.11".into()),
        }
    }

    fn args(command: &CommandLine) -> Vec<String> {
        command.args.iter().map(|arg| arg.to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn venv_command_has_cache_version_and_extra_args() {
        let command = invocation().command(SetupStep::CreateVenv, Path::new("/w"));
        assert_eq!(command.program, Path::new("/opt/uv"));
        assert_eq!(command.cwd, Path::new("/w"));
        assert_eq!(
            args(&command),
            ["venv", ".venv", "--color", "never", "--no-progress", "--cache-dir", "/cache/uv", "--python", "3.11", "--offline"]
        );
    }

    #[test]
    fn install_requirements_command_names_file() {
        let command = invocation().command(SetupStep::InstallRequirements, Path::new("/w"));
        assert_eq!(&args(&command)[..4], ["pip", "install", "-r", "requirements.txt"]);
        assert!(!args(&command).contains(&"--python".to_string()));
    }

    #[test]
    fn plan_prefers_pyproject_over_requirements() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(plan(dir.path()), [SetupStep::CreateVenv]);
        std::fs::write(dir.path().join("requirements.txt"), "").unwrap();
        assert_eq!(plan(dir.path()), [SetupStep::CreateVenv, SetupStep::InstallRequirements]);
        std::fs::write(dir.path().join("pyproject.toml"), "").unwrap();
        assert_eq!(plan(dir.path()), [SetupStep::CreateVenv, SetupStep::Sync]);
    }

    #[test]
    fn pip_install_targets_folder() {
        let command = pip_install_command("/usr/bin/python3".into(), Path::new("/c/uv-install.tmp"), Path::new("/c"));
        assert_eq!(args(&command).last().unwrap(), "uv");
        assert!(args(&command).contains(&"/c/uv-install.tmp".to_string()));
    }

    #[test]
    fn missing_uv_help_names_settings() {
        let help = missing_uv_help("uv");
        assert!(help.contains("`uv`"), "{help}");
        assert!(help.contains("install_uv"), "{help}");
    }
}
