//! Object metadata helpers: timestamps in the API's formats, name rules, and access to the
//! `metadata` fields of objects kept as JSON.

use k8s_openapi::jiff::Timestamp;
use serde_json::Value;

/// Returns the current time. k8s-openapi builds jiff without its `std` feature, so the clock is
/// read through `SystemTime`.
pub fn now() -> Timestamp {
    from_system_time(std::time::SystemTime::now())
}

/// Converts a host clock reading; times before 1970 become the epoch.
pub fn from_system_time(time: std::time::SystemTime) -> Timestamp {
    let since_epoch = time
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp::new(
        since_epoch.as_secs() as i64,
        since_epoch.subsec_nanos() as i32,
    )
    .unwrap_or(Timestamp::UNIX_EPOCH)
}

/// Shifts a time by a signed number of seconds, saturating at jiff's range.
pub fn add_seconds(time: Timestamp, seconds: i64) -> Timestamp {
    let shifted = time.as_second().saturating_add(seconds);
    Timestamp::new(shifted, time.subsec_nanosecond()).unwrap_or(time)
}

/// Formats a time as the API's `Time` does: RFC 3339 in UTC with whole seconds.
pub fn format_seconds(time: Timestamp) -> String {
    time.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Formats a time with nine fraction digits, the fixed-width RFC 3339 form the kubelet puts in
/// front of each log line when `timestamps=true`.
pub fn format_nanos(time: Timestamp) -> String {
    format!(
        "{}.{:09}Z",
        time.strftime("%Y-%m-%dT%H:%M:%S"),
        time.subsec_nanosecond()
    )
}

const DNS1123_LABEL_DETAIL: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1123_SUBDOMAIN_DETAIL: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const DNS1035_LABEL_DETAIL: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";

fn is_label_body(text: &str) -> bool {
    let bytes = text.as_bytes();
    !bytes.is_empty()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// Checks an RFC 1123 label (container and port names); returns the problem, if any.
pub fn check_dns1123_label(name: &str) -> Option<String> {
    if name.len() > 63 {
        return Some("must be no more than 63 characters".to_owned());
    }
    (!is_label_body(name)).then(|| DNS1123_LABEL_DETAIL.to_owned())
}

/// Checks an RFC 1123 subdomain (pod and secret names); returns the problem, if any.
pub fn check_dns1123_subdomain(name: &str) -> Option<String> {
    if name.len() > 253 {
        return Some("must be no more than 253 characters".to_owned());
    }
    (!name.split('.').all(is_label_body)).then(|| DNS1123_SUBDOMAIN_DETAIL.to_owned())
}

/// Checks an RFC 1035 label (service names); returns the problem, if any.
pub fn check_dns1035_label(name: &str) -> Option<String> {
    if name.len() > 63 {
        return Some("must be no more than 63 characters".to_owned());
    }
    let starts_with_letter = name.as_bytes().first().is_some_and(u8::is_ascii_lowercase);
    (!is_label_body(name) || !starts_with_letter).then(|| DNS1035_LABEL_DETAIL.to_owned())
}

/// Returns `metadata.<field>` as a string, or "" when it is missing.
pub fn meta_str<'a>(object: &'a Value, field: &str) -> &'a str {
    object["metadata"][field].as_str().unwrap_or("")
}

pub fn name(object: &Value) -> &str {
    meta_str(object, "name")
}

pub fn uid(object: &Value) -> &str {
    meta_str(object, "uid")
}

/// Returns the object's `metadata`, creating an empty one when it is missing or not an object.
pub fn metadata_mut(object: &mut Value) -> &mut serde_json::Map<String, Value> {
    if !object["metadata"].is_object() {
        object["metadata"] = Value::Object(Default::default());
    }
    object["metadata"]
        .as_object_mut()
        .expect("metadata was just made an object")
}

/// Returns the finalizers of the object.
pub fn finalizers(object: &Value) -> Vec<String> {
    object["metadata"]["finalizers"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|f| f.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Returns whether a delete has been requested for the object.
pub fn is_deleting(object: &Value) -> bool {
    object["metadata"]["deletionTimestamp"].is_string()
}

/// Appends five random characters to `generateName`, as the API server does for objects
/// created without a name.
pub fn generate_name(prefix: &str) -> String {
    // The API server's alphabet for generated suffixes leaves out vowels and look-alike digits.
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let random = uuid::Uuid::new_v4();
    let suffix: String = random.as_bytes()[..5]
        .iter()
        .map(|byte| ALPHABET[*byte as usize % ALPHABET.len()] as char)
        .collect();
    // A generated name keeps at most 58 characters of the prefix so the result fits 63.
    let prefix: String = prefix.chars().take(58).collect();
    format!("{prefix}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_rules() {
        assert!(check_dns1123_label("app-1").is_none());
        assert!(check_dns1123_label("App").is_some());
        assert!(check_dns1123_label(&"a".repeat(64)).is_some());
        assert!(check_dns1123_subdomain("run.a-1").is_none());
        assert!(check_dns1123_subdomain("run..a").is_some());
        assert!(check_dns1123_subdomain("bad_name").is_some());
        assert!(check_dns1035_label("svc-1").is_none());
        assert!(check_dns1035_label("1svc").is_some());
    }

    #[test]
    fn nanosecond_timestamps_have_nine_digits() {
        let time: Timestamp = "2024-05-06T07:08:09.5Z".parse().unwrap();
        assert_eq!(format_nanos(time), "2024-05-06T07:08:09.500000000Z");
        assert_eq!(format_seconds(time), "2024-05-06T07:08:09Z");
    }
}
