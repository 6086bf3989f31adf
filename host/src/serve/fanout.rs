//! Log and event streams: each consumer reads the journal file on its own from its cursor and is
//! woken when records are committed. So a slow consumer uses one read buffer and never slows the
//! execution or other consumers.

use super::context::ServeContext;
use super::error::ApiError;
use super::journal::{RecordLog, RecordReader};
use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use std::sync::Arc;

/// Media type of the streams.
pub const NDJSON: &str = "application/x-ndjson";

/// The cursor of a stream request: `from` (first sequence number wanted) or `after` (last one
/// seen), and whether to follow until the end.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CursorQuery {
    /// The first sequence number to return. Default 0.
    pub from: Option<u64>,
    /// The last sequence number already seen; the stream starts after it.
    pub after: Option<u64>,
    /// Whether to keep the stream open until the execution's last record.
    #[serde(default)]
    pub follow: bool,
}

impl CursorQuery {
    /// Returns the first sequence number to return.
    pub fn start(&self) -> Result<u64, ApiError> {
        match (self.from, self.after) {
            (Some(_), Some(_)) => Err(ApiError::InvalidRequest("give either `from` or `after`, not both".to_string())),
            (Some(from), None) => Ok(from),
            (None, Some(after)) => Ok(after.saturating_add(1)),
            (None, None) => Ok(0),
        }
    }
}

/// Streams the records of `log` from `from` on as NDJSON.
///
/// The response ends cleanly at the end of the log: at once without `follow`, else after the
/// last record of the finished execution. When the host shuts down or a read fails, the response
/// is aborted instead, so that the client can tell an incomplete stream from a complete one.
pub fn ndjson_stream(ctx: &ServeContext, log: Arc<RecordLog>, from: u64, follow: bool) -> Response {
    let reader = RecordReader::new(log, from);
    let ending = ctx.streams_ending();
    let stream = futures_util::stream::unfold(Some((reader, ending)), move |state| async move {
        let (mut reader, mut ending) = state?;
        if *ending.borrow() {
            return Some((Err(std::io::Error::other("the host is shutting down")), None));
        }
        let chunk = tokio::select! {
            chunk = reader.next_chunk(follow) => Some(chunk),
            _ = ending.wait_for(|ending| *ending) => None,
        };
        match chunk {
            Some(Ok(Some(bytes))) => Some((Ok(bytes), Some((reader, ending)))),
            Some(Ok(None)) => None,
            Some(Err(error)) => {
                tracing::warn!(%error, "failed to read a journal for a stream");
                Some((Err(std::io::Error::other(error.to_string())), None))
            }
            None => Some((Err(std::io::Error::other("the host is shutting down")), None)),
        }
    });
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(NDJSON));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
