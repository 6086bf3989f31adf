//! The environment of an execution's processes, built from scratch: never the host's whole
//! environment, only the allowlisted host variables and what the spec sets.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use tower_plugin_api::ExecutionSpec;

/// Errors in the spec's variables that an environment cannot contain.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvironmentError {
    /// A name is empty or contains `=` or NUL, which an environment cannot hold.
    #[error("invalid environment variable name {name:?} in `{field}`: a name must be non-empty and contain neither `=` nor a NUL byte")]
    InvalidName {
        /// The name as given.
        name: String,
        /// The spec field: `parameters`, `secrets` or `env`.
        field: &'static str,
    },
    /// A value contains a NUL byte. The value itself is never shown, since it may be a secret.
    #[error("the value of environment variable `{name}` in `{field}` contains a NUL byte")]
    InvalidValue {
        /// The variable name.
        name: String,
        /// The spec field.
        field: &'static str,
    },
}

/// The variables of one execution's processes. `Debug` shows names only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Environment {
    vars: BTreeMap<OsString, OsString>,
}

impl fmt::Debug for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.vars.keys()).finish()
    }
}

/// Checks every name and value the spec sets.
pub fn validate_spec(spec: &ExecutionSpec) -> Result<(), EnvironmentError> {
    let pairs = spec_pairs(spec);
    for (field, name, value) in pairs {
        if name.is_empty() || name.contains('=') || name.contains('\0') {
            return Err(EnvironmentError::InvalidName { name: name.to_string(), field });
        }
        if value.contains('\0') {
            return Err(EnvironmentError::InvalidValue { name: name.to_string(), field });
        }
    }
    Ok(())
}

/// Lists the spec's variables in the order they are applied (later ones win): parameters,
/// secrets, then extra variables.
fn spec_pairs(spec: &ExecutionSpec) -> Vec<(&'static str, &str, &str)> {
    let parameters = spec.parameters.iter().map(|pair| ("parameters", pair.key.as_str(), pair.value.as_str()));
    let secrets = spec.secrets.iter().map(|secret| ("secrets", secret.name.as_str(), secret.value.expose()));
    let env = spec.env.iter().map(|pair| ("env", pair.key.as_str(), pair.value.as_str()));
    parameters.chain(secrets).chain(env).collect()
}

/// Tells whether a host variable name matches an allowlist of exact names and `PREFIX*` globs.
pub fn is_allowlisted(name: &OsStr, allowlist: &[String]) -> bool {
    let Some(name) = name.to_str() else { return false };
    allowlist.iter().any(|pattern| match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => name == pattern,
    })
}

impl Environment {
    /// Builds the environment of an app. Later steps override earlier ones. First come the
    /// allowlisted host variables, then `TOWER_ENVIRONMENT` (the spec's environment name, as the
    /// Tower CLI sets it), then the spec's parameters, secrets and extra variables, then
    /// `PYTHONUNBUFFERED=1`. Last, `PYTHONPATH` is set to the entries already set, followed by
    /// the manifest's import paths and the working folder.
    pub fn for_app(
        host: impl IntoIterator<Item = (OsString, OsString)>,
        allowlist: &[String],
        spec: &ExecutionSpec,
        import_paths: &[PathBuf],
        working_dir: &Path,
    ) -> Self {
        let mut environment = Self::from_host(host, allowlist);
        if !spec.environment.is_empty() {
            environment.set("TOWER_ENVIRONMENT", spec.environment.as_str());
        }
        for (_, name, value) in spec_pairs(spec) {
            environment.set(name, value);
        }
        environment.set("PYTHONUNBUFFERED", "1");

        let mut python_path: Vec<PathBuf> = environment
            .get("PYTHONPATH")
            .map(|value| std::env::split_paths(value).filter(|entry| !entry.as_os_str().is_empty()).collect())
            .unwrap_or_default();
        python_path.extend(import_paths.iter().cloned());
        python_path.push(working_dir.to_path_buf());
        // The entries come from a `:`-separated value or from package paths checked by
        // tower-package, so a `:` inside one entry is the only failure, and it is dropped.
        python_path.retain(|entry| !entry.as_os_str().as_encoded_bytes().contains(&b':'));
        if let Ok(joined) = std::env::join_paths(&python_path) {
            environment.vars.insert("PYTHONPATH".into(), joined);
        }
        environment
    }

    /// Builds an environment of the allowlisted host variables only, for the plugin's own tools.
    pub fn from_host(host: impl IntoIterator<Item = (OsString, OsString)>, allowlist: &[String]) -> Self {
        let vars = host.into_iter().filter(|(name, _)| is_allowlisted(name, allowlist)).collect();
        Self { vars }
    }

    /// Returns a copy that activates the virtual environment at `venv`: `VIRTUAL_ENV` is set
    /// and its `bin` folder comes first on `PATH`.
    pub fn with_virtualenv(&self, venv: &Path) -> Self {
        let mut environment = self.clone();
        let mut path = vec![venv.join("bin")];
        if let Some(existing) = self.get("PATH") {
            path.extend(std::env::split_paths(existing));
        }
        if let Ok(joined) = std::env::join_paths(&path) {
            environment.vars.insert("PATH".into(), joined);
        }
        environment.vars.insert("VIRTUAL_ENV".into(), venv.as_os_str().to_owned());
        environment
    }

    /// Sets a variable.
    pub fn set(&mut self, name: impl Into<OsString>, value: impl Into<OsString>) {
        self.vars.insert(name.into(), value.into());
    }

    /// Returns a variable's value.
    pub fn get(&self, name: &str) -> Option<&OsStr> {
        self.vars.get(OsStr::new(name)).map(OsString::as_os_str)
    }

    /// Iterates over the variables, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&OsStr, &OsStr)> {
        self.vars.iter().map(|(name, value)| (name.as_os_str(), value.as_os_str()))
    }

    /// Returns the variable names, for logs.
    pub fn names(&self) -> Vec<String> {
        self.vars.keys().map(|name| name.to_string_lossy().into_owned()).collect()
    }
}

/// Finds a program: a value with a `/` is a path, anything else is looked up in the folders of
/// `path_var`. Returns the path only if it is an executable regular file.
pub fn find_executable(program: &str, path_var: Option<&OsStr>) -> Option<PathBuf> {
    if program.contains('/') {
        let path = PathBuf::from(program);
        return is_executable_file(&path).then_some(path);
    }
    std::env::split_paths(path_var?)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable_file(candidate))
}

fn is_executable_file(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|metadata| metadata.is_file() && metadata.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower_plugin_api::{KeyValue, PackageSource, SecretVar};

    fn spec() -> ExecutionSpec {
        ExecutionSpec::new("run-1", PackageSource::file("/p.tar.gz", "00"))
    }

    fn host(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs.iter().map(|(name, value)| (OsString::from(name), OsString::from(value))).collect()
    }

    fn allowlist() -> Vec<String> {
        ["PATH", "HOME", "LC_*"].iter().map(|name| name.to_string()).collect()
    }

    #[test]
    fn only_allowlisted_host_variables_pass() {
        let host = host(&[
            ("PATH", "/usr/bin"),
            ("LC_ALL", "C"),
            ("AWS_SECRET_ACCESS_KEY", "hunter2"),
            ("KUBECONFIG", "/k"),
            ("HOMEX", "x"),
        ]);
        let environment = Environment::for_app(host, &allowlist(), &spec(), &[], Path::new("/w"));
        assert_eq!(environment.get("PATH"), Some(OsStr::new("/usr/bin")));
        assert_eq!(environment.get("LC_ALL"), Some(OsStr::new("C")));
        assert_eq!(environment.get("AWS_SECRET_ACCESS_KEY"), None);
        assert_eq!(environment.get("KUBECONFIG"), None);
        assert_eq!(environment.get("HOMEX"), None);
    }

    #[test]
    fn spec_env_overrides_secrets_and_parameters() {
        let mut spec = spec();
        spec.parameters.push(KeyValue::new("NAME", "param"));
        spec.secrets.push(SecretVar::new("NAME", "secret"));
        spec.secrets.push(SecretVar::new("TOKEN", "s3cr3t"));
        spec.env.push(KeyValue::new("NAME", "env"));
        let environment = Environment::for_app(Vec::new(), &allowlist(), &spec, &[], Path::new("/w"));
        assert_eq!(environment.get("NAME"), Some(OsStr::new("env")));
        assert_eq!(environment.get("TOKEN"), Some(OsStr::new("s3cr3t")));
        assert_eq!(environment.get("PYTHONUNBUFFERED"), Some(OsStr::new("1")));
    }

    #[test]
    fn pythonpath_orders_existing_then_imports_then_working_dir() {
        let mut spec = spec();
        spec.env.push(KeyValue::new("PYTHONPATH", "/a::/b"));
        let imports = [PathBuf::from("/pkg/modules/lib")];
        let environment = Environment::for_app(Vec::new(), &allowlist(), &spec, &imports, Path::new("/pkg/app"));
        assert_eq!(environment.get("PYTHONPATH"), Some(OsStr::new("/a:/b:/pkg/modules/lib:/pkg/app")));
    }

    #[test]
    fn debug_shows_names_but_not_values() {
        let mut spec = spec();
        spec.secrets.push(SecretVar::new("API_TOKEN", "hunter2"));
        let environment = Environment::for_app(Vec::new(), &allowlist(), &spec, &[], Path::new("/w"));
        let debug = format!("{environment:?}");
        assert!(debug.contains("API_TOKEN"), "{debug}");
        assert!(!debug.contains("hunter2"), "{debug}");
    }

    #[test]
    fn virtualenv_comes_first_on_path() {
        let host = host(&[("PATH", "/usr/bin:/bin")]);
        let environment = Environment::for_app(host, &allowlist(), &spec(), &[], Path::new("/w"));
        let activated = environment.with_virtualenv(Path::new("/w/.venv"));
        assert_eq!(activated.get("PATH"), Some(OsStr::new("/w/.venv/bin:/usr/bin:/bin")));
        assert_eq!(activated.get("VIRTUAL_ENV"), Some(OsStr::new("/w/.venv")));
    }

    #[test]
    fn invalid_name_and_value_rejected() {
        let mut spec = spec();
        spec.env.push(KeyValue::new("A=B", "x"));
        assert_eq!(
            validate_spec(&spec),
            Err(EnvironmentError::InvalidName { name: "A=B".into(), field: "env" })
        );

        let mut spec = self::spec();
        spec.secrets.push(SecretVar::new("TOKEN", "bad\0value"));
        let error = validate_spec(&spec).unwrap_err();
        assert!(!error.to_string().contains("bad"), "{error}");
    }

    #[test]
    fn find_executable_searches_path_folders() {
        let found = find_executable("sh", Some(OsStr::new("/nonexistent:/bin:/usr/bin"))).unwrap();
        assert!(found.ends_with("sh"), "{}", found.display());
        assert_eq!(find_executable("sh", Some(OsStr::new("/nonexistent"))), None);
        assert_eq!(find_executable("/nonexistent/sh", None), None);
    }
}
