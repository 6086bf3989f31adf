//! Sending the package to the pod's `unpack` init container over an attach stream.
//!
//! The stream goes through the API server, so it needs no route from the host to the pod and has
//! no size limit. The container reads exactly the package's size, so the transfer ends without
//! relying on a half-close of stdin; if fewer bytes arrive, it fails with a message saying so.

use crate::pod_view::{ContainerProgress, PodView};
use crate::status_map::UNPACK_CONTAINER;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, AttachParams};
use std::path::Path;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

/// A failed transfer.
#[derive(Debug)]
pub struct TransferError {
    /// Whether the pod no longer exists, which the pod's watch reports on its own.
    pub pod_missing: bool,
    /// What failed.
    pub message: String,
}

impl From<String> for TransferError {
    fn from(message: String) -> Self {
        Self { pod_missing: false, message }
    }
}

/// Waits until the `unpack` container runs, then streams the archive into its stdin.
pub async fn send_package(pods: Api<Pod>, pod: String, archive: &Path, mut view: watch::Receiver<PodView>) -> Result<u64, TransferError> {
    loop {
        match view.borrow().progress(UNPACK_CONTAINER) {
            ContainerProgress::Running => break,
            ContainerProgress::Ended | ContainerProgress::NeverStarts => {
                let pod_missing = view.borrow().gone;
                return Err(TransferError { pod_missing, message: "the unpack container ended before the package was sent".to_string() });
            }
            ContainerProgress::NotStarted => {}
        }
        if view.changed().await.is_err() {
            return Err("stopped watching the pod before the package was sent".to_string().into());
        }
    }

    let params = AttachParams::default().container(UNPACK_CONTAINER).stdin(true).stdout(false).stderr(false);
    let mut attached = pods.attach(&pod, &params).await.map_err(|error| TransferError {
        pod_missing: crate::api::status_code(&error) == Some(404),
        message: format!("failed to attach to container `{UNPACK_CONTAINER}`: {error}"),
    })?;
    let mut stdin = attached.stdin().ok_or_else(|| "the attach stream has no stdin".to_string())?;
    let mut file = tokio::fs::File::open(archive).await.map_err(|error| format!("failed to open {}: {error}", archive.display()))?;
    let sent = tokio::io::copy(&mut file, &mut stdin).await.map_err(|error| format!("failed to send the package: {error}"))?;
    stdin.flush().await.map_err(|error| format!("failed to send the package: {error}"))?;
    drop(stdin);
    // The container ends the stream once it has read the whole package; wait for that in the
    // background, because its outcome arrives through the pod's status.
    tokio::spawn(async move {
        if let Err(error) = attached.join().await {
            tracing::debug!(%error, "attach stream ended with an error");
        }
    });
    Ok(sent)
}
