//! Names and labels of the objects an execution creates.
//!
//! Pod names are DNS-1123 labels of at most 63 characters, deterministic per run id, and unique:
//! a readable part of the run id plus a hash of the whole run id.

use sha2::{Digest, Sha256};

/// Label on every object the backend creates.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "tower-host";
/// Label naming the host instance (the `instance` setting).
pub const INSTANCE_LABEL: &str = "tower-host/instance";
/// Label naming the execution; its value is [`execution_label`] of the run id.
pub const EXECUTION_LABEL: &str = "tower-host/execution";
/// Annotation with the full run id.
pub const RUN_ID_ANNOTATION: &str = "tower-host/run-id";
/// Annotation with the app name.
pub const APP_NAME_ANNOTATION: &str = "tower-host/app-name";
/// Annotation with `limits.timeout_seconds`, which the execution's driver turns into the pod's
/// `activeDeadlineSeconds` once the app container starts.
pub const TIMEOUT_ANNOTATION: &str = "tower-host/timeout-seconds";

const MAX_NAME: usize = 63;
const HASH_CHARS: usize = 10;

/// Returns the first characters of the hex sha256 of the run id.
fn run_hash(run_id: &str) -> String {
    let digest = hex::encode(Sha256::digest(run_id.as_bytes()));
    digest[..HASH_CHARS].to_string()
}

/// Returns the pod name of a run: `<prefix><readable part of the run id>-<hash>`.
pub fn pod_name(prefix: &str, run_id: &str) -> String {
    let hash = run_hash(run_id);
    let room = MAX_NAME - prefix.len() - 1 - hash.len();
    let mut readable: String = run_id
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
        .collect();
    readable.truncate(room);
    let readable = readable.trim_matches('-');
    let name = if readable.is_empty() { format!("{prefix}{hash}") } else { format!("{prefix}{readable}-{hash}") };
    name.trim_start_matches('-').to_string()
}

/// Returns the value of the execution label: label values allow fewer characters than run ids.
pub fn execution_label(run_id: &str) -> String {
    if is_label_value(run_id) && !run_id.is_empty() {
        run_id.to_string()
    } else {
        format!("h-{}", run_hash(run_id))
    }
}

/// Tells whether `value` is a valid label value: at most 63 of `[A-Za-z0-9_.-]`, starting and
/// ending with a letter or digit (empty is valid).
pub fn is_label_value(value: &str) -> bool {
    value.len() <= MAX_NAME
        && value.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && value.chars().next().is_none_or(|c| c.is_ascii_alphanumeric())
        && value.chars().last().is_none_or(|c| c.is_ascii_alphanumeric())
}

/// Tells whether `name` is a DNS-1123 label.
pub fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_name_is_dns_label_for_hostile_ids() {
        let long = "X".repeat(300);
        for run_id in ["run-1", "Run_With.Dots", "----", "日本語", long.as_str(), "a/b/c", ""] {
            let name = pod_name("tower-", run_id);
            assert!(is_dns_label(&name), "{run_id:?} -> {name:?}");
        }
    }

    #[test]
    fn pod_name_is_deterministic_and_unique() {
        assert_eq!(pod_name("tower-", "run-1"), pod_name("tower-", "run-1"));
        assert_ne!(pod_name("tower-", "run-1"), pod_name("tower-", "RUN-1"));
        assert_ne!(pod_name("tower-", "run.1"), pod_name("tower-", "run-1"));
        assert!(pod_name("tower-", "run-1").starts_with("tower-run-1-"));
    }

    #[test]
    fn execution_label_is_valid_label_value() {
        assert_eq!(execution_label("run-1"), "run-1");
        let hashed = execution_label(&"x".repeat(100));
        assert!(is_label_value(&hashed), "{hashed}");
        assert!(is_label_value(&execution_label("-bad-")));
    }
}
