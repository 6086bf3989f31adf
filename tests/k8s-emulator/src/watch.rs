//! Watch requests (`?watch=true`): newline-delimited JSON events `{"type": ..., "object": ...}`
//! replayed from the store's history after the requested resourceVersion, then streamed live.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::api_error::ApiError;
use crate::cluster::Cluster;
use crate::faults::Fault;
use crate::selectors::{FieldSelector, LabelSelector};
use crate::store::{EventType, Kind, StoredEvent};

/// How long a watch without `timeoutSeconds` stays open; the API server picks a random time
/// of this order.
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(30 * 60);

struct Filter {
    namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    fn matches(&self, object: &Value) -> bool {
        let namespace = object["metadata"]["namespace"].as_str();
        self.namespace
            .as_deref()
            .is_none_or(|wanted| namespace == Some(wanted))
            && self.labels.matches(object)
            && self.fields.matches(object)
    }

    /// Translates a change into the event a filtered watch sends. An object that starts
    /// matching arrives as ADDED, and one that stops matching as DELETED.
    fn translate(&self, event: &StoredEvent) -> Option<(EventType, Arc<Value>)> {
        let now = self.matches(&event.object);
        match event.event_type {
            EventType::Added | EventType::Deleted => {
                now.then(|| (event.event_type, event.object.clone()))
            }
            EventType::Modified => {
                let before = event
                    .previous
                    .as_ref()
                    .is_some_and(|previous| self.matches(previous));
                match (before, now) {
                    (true, true) => Some((EventType::Modified, event.object.clone())),
                    (false, true) => Some((EventType::Added, event.object.clone())),
                    (true, false) => Some((EventType::Deleted, event.object.clone())),
                    (false, false) => None,
                }
            }
        }
    }
}

fn event_line(event_type: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": event_type, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

fn bookmark(kind: Kind, resource_version: u64, initial_events_end: bool) -> Bytes {
    let mut metadata = json!({"resourceVersion": resource_version.to_string()});
    if initial_events_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    event_line(
        "BOOKMARK",
        &json!({"kind": kind.name(), "apiVersion": "v1", "metadata": metadata}),
    )
}

fn expired_event(requested: u64, oldest: u64) -> Bytes {
    let status =
        ApiError::expired(format!("too old resource version: {requested} ({oldest})")).to_status();
    event_line("ERROR", &status)
}

fn flag(query: &HashMap<String, String>, key: &str) -> bool {
    query.get(key).is_some_and(|v| v == "true" || v == "1")
}

/// Starts a watch. A resourceVersion older than the kept history gets an `ERROR` event with
/// a 410 `Expired` Status, as the API server sends for a compacted one.
pub async fn watch(
    cluster: Arc<Cluster>,
    kind: Kind,
    namespace: Option<String>,
    query: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let filter = Filter {
        namespace,
        labels: LabelSelector::parse(query.get("labelSelector").map(String::as_str).unwrap_or(""))?,
        fields: FieldSelector::parse(
            kind,
            query.get("fieldSelector").map(String::as_str).unwrap_or(""),
        )?,
    };
    let bookmarks = flag(query, "allowWatchBookmarks");
    let send_initial_events = flag(query, "sendInitialEvents");
    let timeout = match query.get("timeoutSeconds") {
        Some(text) => Duration::from_secs(
            text.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds {text:?}")))?,
        ),
        None => DEFAULT_WATCH_TIMEOUT,
    };
    let requested = match query.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => None,
        Some(text) => Some(
            text.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version {text:?}")))?,
        ),
    };

    let gone = cluster.fire_fault(|fault| match fault {
        Fault::WatchGone { resource, .. } => {
            resource.as_deref().is_none_or(|r| r == kind.resource())
        }
        _ => false,
    });
    let mut initial: Vec<Bytes> = Vec::new();
    let mut changes = cluster.store().subscribe();
    let cursor = {
        let store = cluster.store();
        let current = store.resource_version();
        if let Some((_, Fault::WatchGone { http, .. })) = gone {
            let requested = requested.unwrap_or(current);
            if http {
                return Err(ApiError::expired(format!(
                    "too old resource version: {requested} ({current})"
                )));
            }
            initial.push(expired_event(requested, current));
            None
        } else if let Some(requested) = requested {
            match store.check_watchable(requested) {
                Ok(()) => Some(requested),
                Err(expired) => {
                    initial.push(expired_event(expired.requested, expired.oldest));
                    None
                }
            }
        } else {
            // Without a resourceVersion, or with "0", a watch starts with the current state.
            for object in store.list(kind, filter.namespace.as_deref()) {
                if filter.matches(object) {
                    initial.push(event_line(EventType::Added.as_str(), object));
                }
            }
            if send_initial_events && bookmarks {
                initial.push(bookmark(kind, current, true));
            }
            Some(current)
        }
    };

    let (sender, receiver) = mpsc::channel::<Bytes>(64);
    let bookmark_interval = cluster.options.bookmark_interval;
    tokio::spawn(async move {
        for line in initial {
            if sender.send(line).await.is_err() {
                return;
            }
        }
        let Some(mut cursor) = cursor else {
            return;
        };
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut ticker = tokio::time::interval(bookmark_interval);
        ticker.tick().await;
        loop {
            let events = cluster.store().events_after(cursor);
            match events {
                Err(expired) => {
                    let _ = sender
                        .send(expired_event(expired.requested, expired.oldest))
                        .await;
                    return;
                }
                Ok(events) => {
                    for event in events {
                        cursor = event.resource_version;
                        if event.kind != kind {
                            continue;
                        }
                        if let Some((event_type, object)) = filter.translate(&event) {
                            if sender
                                .send(event_line(event_type.as_str(), &object))
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                    }
                }
            }
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                _ = ticker.tick(), if bookmarks => {
                    // Every change up to the cursor has been sent, whatever its kind.
                    if sender.send(bookmark(kind, cursor, false)).await.is_err() {
                        return;
                    }
                }
                () = &mut deadline => return,
                () = sender.closed() => return,
            }
        }
    });
    let body = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver
            .recv()
            .await
            .map(|line| (Ok::<_, std::convert::Infallible>(line), receiver))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(body),
    )
        .into_response())
}
