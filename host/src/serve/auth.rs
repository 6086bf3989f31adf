//! Bearer-token authentication of TCP requests. The token comes from a file, is compared in
//! constant time, and is never logged.

use super::error::ApiError;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Shortest accepted token, in bytes.
pub const MIN_TOKEN_BYTES: usize = 16;
/// Permission bits: written by group or others.
const GROUP_OR_OTHER_WRITE: u32 = 0o022;

/// A failure to load the token file.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The file could not be read.
    #[error("failed to read the token file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is writable by others, so anyone could replace the token.
    #[error("the token file {path} is writable by group or others (mode {mode:o}); fix it with `chmod go-w {path}`")]
    Writable {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The token is too short or not text.
    #[error("the token in {path} must be at least {MIN_TOKEN_BYTES} bytes of text (surrounding whitespace is ignored)")]
    Invalid {
        /// The file.
        path: PathBuf,
    },
}

/// The bearer token that TCP requests must carry.
pub struct BearerToken(Vec<u8>);

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(***)")
    }
}

impl BearerToken {
    /// Reads the token from a file: its content without surrounding whitespace.
    pub fn load(path: &Path) -> Result<Self, AuthError> {
        let read_error = |source| AuthError::Read { path: path.to_path_buf(), source };
        let metadata = std::fs::metadata(path).map_err(read_error)?;
        if metadata.mode() & GROUP_OR_OTHER_WRITE != 0 {
            return Err(AuthError::Writable { path: path.to_path_buf(), mode: metadata.mode() & 0o7777 });
        }
        let bytes = std::fs::read(path).map_err(read_error)?;
        let text = std::str::from_utf8(&bytes).map_err(|_| AuthError::Invalid { path: path.to_path_buf() })?;
        let token = text.trim();
        if token.len() < MIN_TOKEN_BYTES {
            return Err(AuthError::Invalid { path: path.to_path_buf() });
        }
        if metadata.mode() & 0o044 != 0 {
            tracing::warn!(path = %path.display(), "the token file is readable by group or others; consider `chmod 600`");
        }
        Ok(Self(token.as_bytes().to_vec()))
    }

    /// Compares a presented token in time that depends only on the lengths.
    pub fn matches(&self, presented: &[u8]) -> bool {
        if presented.len() != self.0.len() {
            return false;
        }
        presented.iter().zip(&self.0).fold(0u8, |difference, (left, right)| difference | (left ^ right)) == 0
    }
}

/// Rejects requests without `Authorization: Bearer <token>` matching the configured token.
pub async fn require_bearer(State(token): State<Arc<BearerToken>>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.as_bytes().strip_prefix(b"Bearer "))
        .map(|value| value.trim_ascii());
    match presented {
        Some(value) if token.matches(value) => next.run(request).await,
        Some(_) => ApiError::Unauthorized("the bearer token is not valid".to_string()).into_response(),
        None => ApiError::Unauthorized("this listener requires `Authorization: Bearer <token>`".to_string()).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn token_file(content: &str, mode: u32) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        (dir, path)
    }

    #[test]
    fn token_is_trimmed_and_compared() {
        let (_dir, path) = token_file("0123456789abcdef0123\n", 0o600);
        let token = BearerToken::load(&path).unwrap();
        assert!(token.matches(b"0123456789abcdef0123"));
        assert!(!token.matches(b"0123456789abcdef0124"));
        assert!(!token.matches(b"0123"));
        assert_eq!(format!("{token:?}"), "BearerToken(***)");
    }

    #[test]
    fn short_token_is_rejected() {
        let (_dir, path) = token_file("short", 0o600);
        assert!(BearerToken::load(&path).unwrap_err().to_string().contains("at least 16 bytes"));
    }

    #[test]
    fn writable_token_file_is_rejected() {
        let (_dir, path) = token_file("0123456789abcdef0123", 0o622);
        assert!(BearerToken::load(&path).unwrap_err().to_string().contains("chmod go-w"));
    }
}
