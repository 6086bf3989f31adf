//! Image references. No image is pulled or run; the kubelet only checks that a reference parses,
//! as the container runtime would before pulling.

fn is_path_component(component: &str) -> bool {
    // A component is lowercase alphanumeric runs joined by one of `.`, `_`, `__` or dashes.
    let bytes = component.as_bytes();
    if bytes.is_empty()
        || !bytes[0].is_ascii_alphanumeric()
        || !bytes[bytes.len() - 1].is_ascii_alphanumeric()
    {
        return false;
    }
    let mut index = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        if byte.is_ascii_lowercase() || byte.is_ascii_digit() {
            index += 1;
            continue;
        }
        let start = index;
        while index < bytes.len()
            && !(bytes[index].is_ascii_lowercase() || bytes[index].is_ascii_digit())
        {
            index += 1;
        }
        let separator = &component[start..index];
        let valid = separator == "."
            || separator == "_"
            || separator == "__"
            || separator.bytes().all(|b| b == b'-');
        if !valid {
            return false;
        }
    }
    true
}

fn is_domain(domain: &str) -> bool {
    let (host, port) = match domain.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (domain, None),
    };
    let host_valid = !host.is_empty()
        && host.split('.').all(|part| {
            !part.is_empty()
                && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        });
    host_valid && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

fn is_tag(tag: &str) -> bool {
    let bytes = tag.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && (bytes[0].is_ascii_alphanumeric() || bytes[0] == b'_')
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn is_digest(digest: &str) -> bool {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return false;
    };
    !algorithm.is_empty()
        && algorithm
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'.' | b'-' | b'_'))
        && hex.len() >= 32
        && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Checks an image reference (`[domain/]path[:tag][@digest]`); returns the kubelet's
/// `InvalidImageName` message when it does not parse.
pub fn check_reference(image: &str) -> Result<(), String> {
    let invalid = || {
        Err(format!(
            "Failed to apply default image tag \"{image}\": couldn't parse image name \"{image}\": invalid reference format"
        ))
    };
    let (rest, digest) = match image.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (image, None),
    };
    if digest.is_some_and(|d| !is_digest(d)) {
        return invalid();
    }

    // A tag follows the last colon that comes after the last slash.
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(colon) => (
            &rest[..last_slash + colon],
            Some(&rest[last_slash + colon + 1..]),
        ),
        None => (rest, None),
    };
    if tag.is_some_and(|t| !is_tag(t)) || name.is_empty() || name.len() > 255 {
        return invalid();
    }

    let mut components: Vec<&str> = name.split('/').collect();
    let first = components[0];
    let has_domain = components.len() > 1
        && (first.contains('.') || first.contains(':') || first == "localhost");
    if has_domain {
        if !is_domain(first) {
            return invalid();
        }
        components.remove(0);
    }
    if components
        .iter()
        .all(|component| is_path_component(component))
    {
        Ok(())
    } else {
        invalid()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        for valid in [
            "python:3.12-slim",
            "busybox",
            "ghcr.io/tower/runner:1.0",
            "localhost:5000/a/b_c__d.e-f",
            "registry.example:443/app@sha256:0123456789abcdef0123456789abcdef",
        ] {
            assert!(check_reference(valid).is_ok(), "{valid}");
        }
        for invalid in [
            "Python:3",
            "bad image",
            "a:b:c",
            "app:",
            "",
            "-a",
            "a//b",
            "app@sha256:xyz",
        ] {
            assert!(check_reference(invalid).is_err(), "{invalid}");
        }
    }
}
