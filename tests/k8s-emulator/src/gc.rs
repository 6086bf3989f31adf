//! Garbage collection by ownerReferences: when an owner leaves the store, its dependents in the
//! same namespace go too, unless another owner of theirs still exists.
//!
//! Owners are looked up by uid among the kinds the emulator stores. An ownerReference to any
//! other kind (a Job, say) counts as an existing owner, because the emulator cannot tell.
//! Collection runs at once, where the real garbage collector runs a moment later.

use std::sync::Arc;

use serde_json::Value;

use crate::cluster::Cluster;
use crate::meta;
use crate::store::{Kind, Store};

fn owner_exists(store: &Store, namespace: &str, reference: &Value) -> bool {
    let uid = reference["uid"].as_str().unwrap_or("");
    let kind = Kind::ALL
        .into_iter()
        .find(|kind| reference["kind"].as_str() == Some(kind.name()));
    match kind {
        Some(kind) => store.find_by_uid(kind, namespace, uid).is_some(),
        None => true,
    }
}

/// Deletes the dependents of the removed owner `owner_uid`, or drops the reference to it from
/// dependents that have another live owner.
pub fn collect_dependents(cluster: &Arc<Cluster>, namespace: &str, owner_uid: &str) {
    let mut orphans = Vec::new();
    {
        let mut store = cluster.store();
        let mut dependents = Vec::new();
        for kind in Kind::ALL {
            for object in store.list(kind, Some(namespace)) {
                let references = object["metadata"]["ownerReferences"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                if references
                    .iter()
                    .any(|r| r["uid"].as_str() == Some(owner_uid))
                {
                    dependents.push((kind, meta::name(object).to_owned(), references));
                }
            }
        }
        for (kind, name, references) in dependents {
            let others: Vec<&Value> = references
                .iter()
                .filter(|r| r["uid"].as_str() != Some(owner_uid))
                .collect();
            if others
                .iter()
                .any(|reference| owner_exists(&store, namespace, reference))
            {
                let _ = store.update(kind, namespace, &name, |object| {
                    if let Some(list) = object["metadata"]["ownerReferences"].as_array_mut() {
                        list.retain(|r| r["uid"].as_str() != Some(owner_uid));
                    }
                    Ok(())
                });
            } else {
                orphans.push((kind, name));
            }
        }
    }
    for (kind, name) in orphans {
        tracing::info!(
            namespace,
            resource = kind.resource(),
            name,
            owner_uid,
            "garbage collecting a dependent"
        );
        crate::resources::delete_dependent(cluster, kind, namespace, &name);
    }
}

/// Deletes an object whose ownerReferences all name owners that no longer exist.
pub fn collect_if_orphaned(cluster: &Arc<Cluster>, kind: Kind, namespace: &str, name: &str) {
    let orphaned = {
        let store = cluster.store();
        let Some(object) = store.get(kind, namespace, name) else {
            return;
        };
        let references = object["metadata"]["ownerReferences"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        !references.is_empty()
            && references
                .iter()
                .all(|r| !owner_exists(&store, namespace, r))
    };
    if orphaned {
        tracing::info!(
            namespace,
            resource = kind.resource(),
            name,
            "garbage collecting an object whose owners are gone"
        );
        crate::resources::delete_dependent(cluster, kind, namespace, name);
    }
}
