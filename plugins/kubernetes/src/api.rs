//! Calls to the Kubernetes API with bounded retries, and API errors turned into plugin errors.

use std::future::Future;
use std::time::Duration;
use tower_plugin_api::{ErrorKind, PluginError};

/// Attempts of a call that fails with a server error or a broken connection.
const MAX_ATTEMPTS: u32 = 5;
/// Wait before the first retry; doubled for each further one.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);

/// Tells whether a failed call may succeed when repeated: server errors, throttling, and
/// connection failures.
pub fn is_transient(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => status.code >= 500 || status.code == 429,
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

/// Returns the HTTP status code of an API error.
pub fn status_code(error: &kube::Error) -> Option<u16> {
    match error {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

/// Runs `call` until it succeeds, fails for good, or runs out of attempts. Retries are logged at
/// debug level, because they are expected now and then.
pub async fn with_retries<T, F, Fut>(what: &str, mut call: F) -> Result<T, kube::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, kube::Error>>,
{
    let mut backoff = FIRST_BACKOFF;
    let mut attempt = 1;
    loop {
        match call().await {
            Ok(value) => return Ok(value),
            Err(error) if is_transient(&error) && attempt < MAX_ATTEMPTS => {
                tracing::debug!(%error, attempt, "{what} failed, retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff *= 2;
                attempt += 1;
            }
            Err(error) => return Err(error),
        }
    }
}

/// Returns an API error as one readable line: the API's message with its code and reason.
pub fn describe(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => format!("{} ({} {})", status.message, status.code, status.reason),
        other => other.to_string(),
    }
}

/// Converts an API error into a plugin error that names the operation; a 403 keeps the API's
/// message, which names the verb, the resource and the service account.
pub fn to_plugin_error(what: &str, error: &kube::Error) -> PluginError {
    let kind = match error {
        kube::Error::Api(status) => match status.code {
            403 => ErrorKind::PermissionDenied,
            404 => ErrorKind::NotFound,
            400 | 409 | 422 => ErrorKind::InvalidSpec,
            _ => ErrorKind::Unavailable,
        },
        _ => ErrorKind::Unavailable,
    };
    PluginError::new(kind, format!("failed to {what}: {}", describe(error)))
}
