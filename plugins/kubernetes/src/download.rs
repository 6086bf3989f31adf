//! Downloading a URL package, so the plugin can check it before the pod downloads it too.

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::io::Write;
use tower_plugin_api::{ErrorKind, PluginError};

/// Largest package the plugin downloads: the unpacked-size limit of the package format is far
/// above Tower's 50 MiB package limit, so this leaves room while bounding the disk used.
const MAX_DOWNLOAD_BYTES: u64 = 1024 * 1024 * 1024;

/// Downloads `url` into a temp file. Redirects are not followed. The URL is never logged or put
/// into messages whole, because signed URLs carry credentials; messages name its host only.
pub async fn fetch(url: &str) -> Result<tempfile::TempPath, PluginError> {
    let uri: hyper::Uri = url.parse().map_err(|_| PluginError::invalid_spec("the package URL is not a valid URL"))?;
    let host = uri.host().unwrap_or("?").to_string();
    let failed = |what: String| PluginError::new(ErrorKind::Unavailable, format!("failed to download the package from {host}: {what}"));

    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .map_err(|error| PluginError::internal(format!("failed to load the system's TLS roots: {error}")))?
        .https_or_http()
        .enable_http1()
        .build();
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let response = client.get(uri).await.map_err(|error| failed(error.to_string()))?;
    if !response.status().is_success() {
        return Err(failed(format!("HTTP status {}", response.status())));
    }

    let mut file = tempfile::Builder::new().prefix("tower-k8s-download-").tempfile().map_err(|error| PluginError::internal(error.to_string()))?;
    let mut body = response.into_body();
    let mut received = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| failed(error.to_string()))?;
        if let Some(data) = frame.data_ref() {
            received += data.len() as u64;
            if received > MAX_DOWNLOAD_BYTES {
                return Err(PluginError::invalid_package(format!("the package from {host} is larger than {MAX_DOWNLOAD_BYTES} bytes")));
            }
            file.write_all(data).map_err(|error| PluginError::internal(format!("failed to store the download: {error}")))?;
        }
    }
    Ok(file.into_temp_path())
}
