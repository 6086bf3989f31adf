//! Checks for relative paths stored inside a package: archive entry names, link targets
//! and the path fields of the MANIFEST.

/// Splits a `/`-separated relative path into its normal components.
///
/// Empty and `.` components are dropped, so `./app//main.py` gives `["app", "main.py"]`.
/// Returns an error message for an absolute path or a `..` component.
pub(crate) fn relative_components(path: &str) -> Result<Vec<&str>, &'static str> {
    if path.starts_with('/') {
        return Err("is an absolute path");
    }

    let mut components = Vec::new();
    for component in path.split('/') {
        match component {
            "" | "." => {}
            ".." => return Err("contains a '..' component"),
            name => components.push(name),
        }
    }
    Ok(components)
}

#[cfg(test)]
mod tests {
    use super::relative_components;

    #[test]
    fn relative_components_drops_empty_and_current_dir() {
        assert_eq!(
            relative_components("./app//main.py"),
            Ok(vec!["app", "main.py"])
        );
        assert_eq!(relative_components("."), Ok(vec![]));
        assert_eq!(
            relative_components("model..v2.py"),
            Ok(vec!["model..v2.py"])
        );
    }

    #[test]
    fn relative_components_rejects_absolute_and_parent() {
        assert_eq!(
            relative_components("/etc/passwd"),
            Err("is an absolute path")
        );
        assert_eq!(
            relative_components("app/../../x"),
            Err("contains a '..' component")
        );
        assert_eq!(relative_components(".."), Err("contains a '..' component"));
    }
}
