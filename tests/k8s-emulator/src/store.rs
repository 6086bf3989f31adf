//! The object store: every stored object as JSON, one cluster-wide resourceVersion counter that
//! each write increments, and a bounded history of change events for watches.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::watch;

use crate::api_error::ApiError;
use crate::meta;

/// The resource kinds the emulator stores, all in the core `v1` group and namespaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Pod,
    Secret,
    Service,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Pod, Kind::Secret, Kind::Service];

    /// The kind for a plural resource name in a URL path.
    pub fn from_resource(resource: &str) -> Option<Kind> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.resource() == resource)
    }

    /// The plural resource name: `pods`.
    pub fn resource(self) -> &'static str {
        match self {
            Kind::Pod => "pods",
            Kind::Secret => "secrets",
            Kind::Service => "services",
        }
    }

    /// The kind name: `Pod`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Pod => "Pod",
            Kind::Secret => "Secret",
            Kind::Service => "Service",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change, as watches replay it. `previous` is the object before a modification, so a
/// filtered watch can tell when an object starts or stops matching.
#[derive(Clone, Debug)]
pub struct StoredEvent {
    pub resource_version: u64,
    pub kind: Kind,
    pub event_type: EventType,
    pub object: Arc<Value>,
    pub previous: Option<Arc<Value>>,
}

/// A watch asked for changes after a resourceVersion whose events the history no longer has.
#[derive(Debug)]
pub struct Expired {
    pub requested: u64,
    pub oldest: u64,
}

type Key = (Kind, String, String);

pub struct Store {
    resource_version: u64,
    objects: BTreeMap<Key, Value>,
    history: VecDeque<StoredEvent>,
    history_limit: usize,
    /// Changes after this resourceVersion are all in `history`.
    oldest_watchable: u64,
    changed: watch::Sender<u64>,
}

/// The resourceVersion of an empty store; versions below it were never served.
const FIRST_RESOURCE_VERSION: u64 = 100;

impl Store {
    pub fn new(history_limit: usize) -> Self {
        Self {
            resource_version: FIRST_RESOURCE_VERSION,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            history_limit: history_limit.max(1),
            oldest_watchable: FIRST_RESOURCE_VERSION,
            changed: watch::channel(FIRST_RESOURCE_VERSION).0,
        }
    }

    pub fn resource_version(&self) -> u64 {
        self.resource_version
    }

    /// A receiver that sees the current resourceVersion each time the store changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<&Value> {
        self.objects
            .get(&(kind, namespace.to_owned(), name.to_owned()))
    }

    /// Every object of `kind`, in one namespace or in all, ordered by namespace and name.
    pub fn list(&self, kind: Kind, namespace: Option<&str>) -> Vec<&Value> {
        self.objects
            .iter()
            .filter(|((k, ns, _), _)| *k == kind && namespace.is_none_or(|wanted| ns == wanted))
            .map(|(_, object)| object)
            .collect()
    }

    /// Finds an object by uid, as ownerReferences name owners.
    pub fn find_by_uid(&self, kind: Kind, namespace: &str, uid: &str) -> Option<&Value> {
        self.list(kind, Some(namespace))
            .into_iter()
            .find(|object| meta::uid(object) == uid)
    }

    fn next_version(&mut self) -> u64 {
        self.resource_version += 1;
        self.resource_version
    }

    fn record(&mut self, event: StoredEvent) {
        self.history.push_back(event);
        while self.history.len() > self.history_limit {
            let dropped = self
                .history
                .pop_front()
                .expect("history is longer than its limit");
            self.oldest_watchable = dropped.resource_version;
        }
        self.changed.send_replace(self.resource_version);
    }

    /// Stores a new object; its metadata must already carry the name and namespace.
    pub fn insert(&mut self, kind: Kind, mut object: Value) -> Result<Value, ApiError> {
        let namespace = meta::meta_str(&object, "namespace").to_owned();
        let name = meta::name(&object).to_owned();
        let key = (kind, namespace, name.clone());
        if self.objects.contains_key(&key) {
            return Err(ApiError::already_exists(kind.resource(), &name));
        }
        let version = self.next_version();
        meta::metadata_mut(&mut object)
            .insert("resourceVersion".into(), Value::String(version.to_string()));
        self.objects.insert(key, object.clone());
        self.record(StoredEvent {
            resource_version: version,
            kind,
            event_type: EventType::Added,
            object: Arc::new(object.clone()),
            previous: None,
        });
        Ok(object)
    }

    /// Changes an object through `change`. A change that leaves the object as it was keeps its
    /// resourceVersion and sends no event, as the API server does for a no-op update.
    pub fn update(
        &mut self,
        kind: Kind,
        namespace: &str,
        name: &str,
        change: impl FnOnce(&mut Value) -> Result<(), ApiError>,
    ) -> Result<Value, ApiError> {
        let key = (kind, namespace.to_owned(), name.to_owned());
        let Some(current) = self.objects.get(&key) else {
            return Err(ApiError::not_found(kind.resource(), name));
        };
        let mut updated = current.clone();
        change(&mut updated)?;
        // The resourceVersion is the store's to set; a change to it is not a change.
        updated["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
        if updated == *current {
            return Ok(updated);
        }
        let previous = Arc::new(current.clone());
        let version = self.next_version();
        updated["metadata"]["resourceVersion"] = Value::String(version.to_string());
        self.objects.insert(key, updated.clone());
        self.record(StoredEvent {
            resource_version: version,
            kind,
            event_type: EventType::Modified,
            object: Arc::new(updated.clone()),
            previous: Some(previous),
        });
        Ok(updated)
    }

    /// Removes an object; the DELETED event carries it with the resourceVersion of the removal.
    pub fn remove(&mut self, kind: Kind, namespace: &str, name: &str) -> Option<Value> {
        let mut object = self
            .objects
            .remove(&(kind, namespace.to_owned(), name.to_owned()))?;
        let version = self.next_version();
        object["metadata"]["resourceVersion"] = Value::String(version.to_string());
        self.record(StoredEvent {
            resource_version: version,
            kind,
            event_type: EventType::Deleted,
            object: Arc::new(object.clone()),
            previous: None,
        });
        Some(object)
    }

    /// Checks that changes after `resource_version` can still be replayed.
    pub fn check_watchable(&self, resource_version: u64) -> Result<(), Expired> {
        if resource_version < self.oldest_watchable {
            return Err(Expired {
                requested: resource_version,
                oldest: self.oldest_watchable,
            });
        }
        Ok(())
    }

    /// Returns the events after `resource_version`, oldest first.
    pub fn events_after(&self, resource_version: u64) -> Result<Vec<StoredEvent>, Expired> {
        self.check_watchable(resource_version)?;
        Ok(self
            .history
            .iter()
            .filter(|event| event.resource_version > resource_version)
            .cloned()
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn secret(name: &str) -> Value {
        json!({"metadata": {"name": name, "namespace": "ns"}})
    }

    #[test]
    fn writes_increment_resource_version() {
        let mut store = Store::new(10);
        let first = store.insert(Kind::Secret, secret("a")).unwrap();
        assert_eq!(first["metadata"]["resourceVersion"], "101");
        let unchanged = store.update(Kind::Secret, "ns", "a", |_| Ok(())).unwrap();
        assert_eq!(unchanged["metadata"]["resourceVersion"], "101");
        let changed = store
            .update(Kind::Secret, "ns", "a", |o| {
                o["data"] = json!({});
                Ok(())
            })
            .unwrap();
        assert_eq!(changed["metadata"]["resourceVersion"], "102");
        assert_eq!(store.events_after(100).unwrap().len(), 2);
    }

    #[test]
    fn history_drops_oldest_events() {
        let mut store = Store::new(2);
        for name in ["a", "b", "c"] {
            store.insert(Kind::Secret, secret(name)).unwrap();
        }
        assert!(store.events_after(100).is_err());
        assert_eq!(store.events_after(101).unwrap().len(), 2);
    }

    #[test]
    fn insert_rejects_taken_name() {
        let mut store = Store::new(10);
        store.insert(Kind::Secret, secret("a")).unwrap();
        let error = store.insert(Kind::Secret, secret("a")).unwrap_err();
        assert_eq!(error.code, 409);
        assert_eq!(error.reason, "AlreadyExists");
    }
}
