//! Request classification (the verb and resource, as RBAC names them) and per-verb request
//! counts.

use std::collections::BTreeMap;

use axum::http::Method;
use serde::Serialize;

/// The verb and resource of an API request, such as `create` `pods` or `get` `pods/log`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestInfo {
    pub verb: String,
    /// The plural resource with its subresource (`pods/log`), or the path of a non-resource
    /// request (`/version`).
    pub resource: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

fn query_flag(query: Option<&str>, key: &str) -> bool {
    query.unwrap_or("").split('&').any(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        name == key && (value == "true" || value == "1")
    })
}

/// Classifies a request the way the API server's RBAC layer does.
pub fn classify(method: &Method, path: &str, query: Option<&str>) -> RequestInfo {
    let non_resource = || RequestInfo {
        verb: method.as_str().to_ascii_lowercase(),
        resource: path.to_owned(),
        namespace: None,
        name: None,
    };
    let Some(rest) = path.strip_prefix("/api/v1/") else {
        return non_resource();
    };
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let (namespace, resource_segments) = match segments.as_slice() {
        ["namespaces", namespace] => {
            return RequestInfo {
                verb: if *method == Method::GET {
                    "get"
                } else {
                    "unknown"
                }
                .to_owned(),
                resource: "namespaces".to_owned(),
                namespace: None,
                name: Some((*namespace).to_owned()),
            };
        }
        ["namespaces", namespace, rest @ ..] => (Some((*namespace).to_owned()), rest),
        rest => (None, rest),
    };
    let (resource, name, subresource) = match resource_segments {
        [resource] => (*resource, None, None),
        [resource, name] => (*resource, Some((*name).to_owned()), None),
        [resource, name, subresource] => (*resource, Some((*name).to_owned()), Some(*subresource)),
        _ => return non_resource(),
    };
    let verb = match (method.clone(), name.is_some()) {
        (Method::GET, false) if query_flag(query, "watch") => "watch",
        (Method::GET, false) => "list",
        (Method::GET, true) => "get",
        (Method::POST, _) => "create",
        (Method::PUT, _) => "update",
        (Method::PATCH, _) => "patch",
        (Method::DELETE, false) => "deletecollection",
        (Method::DELETE, true) => "delete",
        _ => "unknown",
    };
    let resource = match subresource {
        Some(subresource) => format!("{resource}/{subresource}"),
        None => resource.to_owned(),
    };
    RequestInfo {
        verb: verb.to_owned(),
        resource,
        namespace,
        name,
    }
}

/// Counts of API requests by verb and resource. Control requests under `/_emulator` are not
/// counted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RequestCounts {
    counts: BTreeMap<(String, String), u64>,
}

impl RequestCounts {
    pub(crate) fn record(&mut self, info: &RequestInfo) {
        *self
            .counts
            .entry((info.verb.clone(), info.resource.clone()))
            .or_default() += 1;
    }

    /// The count for one verb and resource, such as `("watch", "pods")`.
    pub fn get(&self, verb: &str, resource: &str) -> u64 {
        self.counts
            .get(&(verb.to_owned(), resource.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    /// The count of every request to resources (paths under `/api/v1/`), discovery excluded.
    pub fn total_resource_requests(&self) -> u64 {
        self.counts
            .iter()
            .filter(|((_, resource), _)| !resource.starts_with('/'))
            .map(|(_, n)| n)
            .sum()
    }

    /// The count of every request.
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    /// Every verb, resource and count, ordered by verb then resource.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str, u64)> {
        self.counts
            .iter()
            .map(|((verb, resource), count)| (verb.as_str(), resource.as_str(), *count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_resource_requests() {
        let cases = [
            (
                Method::GET,
                "/api/v1/namespaces/ns/pods",
                None,
                "list",
                "pods",
            ),
            (
                Method::GET,
                "/api/v1/namespaces/ns/pods",
                Some("watch=true&x=1"),
                "watch",
                "pods",
            ),
            (
                Method::GET,
                "/api/v1/pods",
                Some("watch=1"),
                "watch",
                "pods",
            ),
            (
                Method::POST,
                "/api/v1/namespaces/ns/pods",
                None,
                "create",
                "pods",
            ),
            (
                Method::GET,
                "/api/v1/namespaces/ns/pods/p/log",
                None,
                "get",
                "pods/log",
            ),
            (
                Method::GET,
                "/api/v1/namespaces/ns/pods/p/attach",
                None,
                "get",
                "pods/attach",
            ),
            (
                Method::DELETE,
                "/api/v1/namespaces/ns/secrets/s",
                None,
                "delete",
                "secrets",
            ),
            (
                Method::PATCH,
                "/api/v1/namespaces/ns/secrets/s",
                None,
                "patch",
                "secrets",
            ),
            (Method::GET, "/version", None, "get", "/version"),
        ];
        for (method, path, query, verb, resource) in cases {
            let info = classify(&method, path, query);
            assert_eq!(
                (info.verb.as_str(), info.resource.as_str()),
                (verb, resource),
                "{method} {path}"
            );
        }
    }
}
