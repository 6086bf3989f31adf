//! A watch on one pod that survives the ends of watch streams.
//!
//! A watch can end at any time (the server's timeout, a proxy closing idle connections, `410
//! Gone`). None of these is an error: the watcher resumes from the last resourceVersion, or reads
//! the pod afresh and starts over when the version is gone.

use crate::api::with_retries;
use crate::pod_view::PodView;
use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, WatchEvent, WatchParams};
use std::time::Duration;

/// Seconds the server keeps one watch request open; below the usual 300 s proxy limits.
const WATCH_TIMEOUT_SECONDS: u32 = 240;
/// Wait after a failed watch request before the next one.
const REWATCH_DELAY: Duration = Duration::from_millis(500);

/// Watches the pod `name` and publishes every change in `view` until the pod is deleted or nobody
/// reads `view` any more. A deleted pod keeps its last seen state, with `gone` set.
pub async fn watch_pod(pods: Api<Pod>, name: String, view: tokio::sync::watch::Sender<PodView>) {
    let update = |pod: Pod| {
        view.send_modify(|current| current.pod = Some(pod));
        !view.is_closed()
    };
    let deleted = || view.send_modify(|current| current.gone = true);
    let params = WatchParams::default().fields(&format!("metadata.name={name}")).timeout(WATCH_TIMEOUT_SECONDS);
    'relist: loop {
        // A fresh read: the starting point, and the truth after a 410.
        let pod = match with_retries("read the pod", || pods.get_opt(&name)).await {
            Ok(Some(pod)) => pod,
            Ok(None) => return deleted(),
            Err(error) => {
                tracing::debug!(pod = %name, %error, "reading the pod failed; trying again");
                tokio::time::sleep(REWATCH_DELAY).await;
                continue 'relist;
            }
        };
        let mut version = pod.metadata.resource_version.clone().unwrap_or_default();
        if !update(pod) {
            return;
        }

        loop {
            let stream = match pods.watch(&params, &version).await {
                Ok(stream) => stream,
                Err(error) => {
                    tracing::debug!(pod = %name, %error, "watch request failed; reading the pod afresh");
                    tokio::time::sleep(REWATCH_DELAY).await;
                    continue 'relist;
                }
            };
            let mut stream = stream.boxed();
            loop {
                match stream.try_next().await {
                    Ok(Some(WatchEvent::Added(pod) | WatchEvent::Modified(pod))) => {
                        version = pod.metadata.resource_version.clone().unwrap_or(version);
                        if !update(pod) {
                            return;
                        }
                    }
                    Ok(Some(WatchEvent::Deleted(_))) => return deleted(),
                    Ok(Some(WatchEvent::Bookmark(bookmark))) => version = bookmark.metadata.resource_version,
                    Ok(Some(WatchEvent::Error(status))) => {
                        tracing::debug!(pod = %name, code = status.code, message = %status.message, "watch ended with an error; reading the pod afresh");
                        continue 'relist;
                    }
                    // The server closed the stream: resume from the last version seen.
                    Ok(None) => break,
                    Err(error) => {
                        tracing::debug!(pod = %name, %error, "watch stream broke; reading the pod afresh");
                        continue 'relist;
                    }
                }
            }
        }
    }
}
