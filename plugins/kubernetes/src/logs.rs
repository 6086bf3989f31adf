//! Following the logs of the pod's containers, in order, for as long as the pod lives.
//!
//! Each line is requested with its timestamp. When a stream breaks while the container still runs,
//! the follower reconnects from the last timestamp it saw. The API takes `sinceTime` in whole
//! seconds, so the new stream repeats lines; the cursor drops lines older than the last one
//! delivered, and of the lines with exactly that timestamp, as many as were already delivered.

use crate::api::{describe, is_transient, status_code};
use crate::pod_view::{ContainerProgress, PodView};
use futures_util::AsyncBufReadExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, LogParams};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tower_plugin_api::sdk::{EventSink, LogLine};
use tower_plugin_api::{Channel, LogFlags, Stream, Timestamp};

/// Lines of each container kept for the message of a failed init container.
const TAIL_LINES: usize = 20;
/// Failed log requests in a row before the follower gives up on a container.
const MAX_FAILED_REQUESTS: u32 = 10;
/// Wait between log requests after a failure or a broken stream.
const RETRY_DELAY: Duration = Duration::from_millis(300);

/// The last lines of each container, for failure messages.
#[derive(Default, Clone)]
pub struct Tails(Arc<Mutex<Vec<(String, VecDeque<String>)>>>);

impl Tails {
    fn push(&self, container: &str, line: &str) {
        let mut tails = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let index = match tails.iter().position(|(name, _)| name == container) {
            Some(index) => index,
            None => {
                tails.push((container.to_string(), VecDeque::new()));
                tails.len() - 1
            }
        };
        let tail = &mut tails[index].1;
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line.to_string());
    }

    /// Returns the last lines of a container, joined by newlines.
    pub fn of(&self, container: &str) -> String {
        let tails = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        tails.iter().find(|(name, _)| name == container).map(|(_, lines)| Vec::from(lines.clone()).join("\n")).unwrap_or_default()
    }
}

/// The follower's position in one container's log.
#[derive(Debug, Default)]
struct Cursor {
    /// Timestamp (ns since the epoch) of the last line delivered.
    last: Option<i64>,
    /// How many lines with timestamp `last` were delivered.
    delivered_at_last: usize,
    /// How many lines with timestamp `last` the current stream has shown.
    seen_at_last: usize,
    /// Whether the rest of the current (split) line is being dropped as a repeat.
    dropping_line: bool,
}

impl Cursor {
    /// Starts a new stream.
    fn reconnect(&mut self) {
        self.seen_at_last = 0;
        self.dropping_line = false;
    }

    /// Decides whether a line with this timestamp is new, and records it if so.
    fn accept(&mut self, stamp: i64) -> bool {
        match self.last {
            Some(last) if stamp < last => false,
            Some(last) if stamp == last => {
                self.seen_at_last += 1;
                if self.seen_at_last <= self.delivered_at_last {
                    return false;
                }
                self.delivered_at_last = self.seen_at_last;
                true
            }
            _ => {
                self.last = Some(stamp);
                self.delivered_at_last = 1;
                self.seen_at_last = 1;
                true
            }
        }
    }

    /// Returns the `sinceTime` of the next request: the last timestamp rounded down to a second.
    fn since(&self) -> Option<jiff::Timestamp> {
        let seconds = self.last?.div_euclid(1_000_000_000);
        jiff::Timestamp::from_second(seconds).ok()
    }
}

/// Follows the logs of the pod's containers in order, delivering them to `events`.
pub struct LogFollower {
    /// The pods API of the namespace.
    pub pods: Api<Pod>,
    /// The pod.
    pub pod: String,
    /// The containers in order, with the channel of each.
    pub containers: Vec<(String, Channel)>,
    /// The pod as the watch last saw it.
    pub view: watch::Receiver<PodView>,
    /// The sink of the lines.
    pub events: EventSink,
    /// Last lines per container.
    pub tails: Tails,
}

impl LogFollower {
    /// Follows every container to the end of its log.
    pub async fn run(mut self) {
        for (container, channel) in self.containers.clone() {
            if let Err(error) = self.follow(&container, channel).await {
                let notice = format!("tower-host: lost the rest of the log of container `{container}`: {error}");
                tracing::warn!(pod = %self.pod, %container, %error, "gave up following a container log");
                let mut line = LogLine::new(Stream::Stderr, channel, notice);
                line.flags = LogFlags::TRUNCATED;
                self.events.log(vec![line]).await;
            }
        }
    }

    async fn follow(&mut self, container: &str, channel: Channel) -> Result<(), String> {
        if !self.wait_for_start(container).await {
            return Ok(());
        }
        let mut cursor = Cursor::default();
        let mut failures = 0;
        loop {
            let params = LogParams { container: Some(container.to_string()), follow: true, timestamps: true, since_time: cursor.since(), ..LogParams::default() };
            cursor.reconnect();
            match self.pods.log_stream(&self.pod, &params).await {
                Ok(reader) => {
                    failures = 0;
                    let delivered = self.read(reader, container, channel, &mut cursor).await;
                    if self.view.borrow().progress(container) != ContainerProgress::Running {
                        // The container ended (or the pod is gone): one more request proves that
                        // nothing is left after the last line.
                        if delivered == 0 {
                            return Ok(());
                        }
                        continue;
                    }
                    tracing::debug!(pod = %self.pod, %container, "log stream ended while the container runs; reconnecting");
                }
                Err(error) if status_code(&error) == Some(404) || self.view.borrow().gone => return Ok(()),
                // A container that the pod's end kept from starting has no log. Its request fails
                // with 400 ("waiting to start"), also once its status is terminated.
                Err(error)
                    if self.view.borrow().progress(container) == ContainerProgress::NeverStarts
                        || (status_code(&error) == Some(400) && self.view.borrow().progress(container) != ContainerProgress::Running) =>
                {
                    tracing::debug!(pod = %self.pod, %container, error = %describe(&error), "the container ended without a log");
                    return Ok(());
                }
                Err(error) => {
                    failures += 1;
                    if failures >= MAX_FAILED_REQUESTS && !is_transient(&error) {
                        return Err(describe(&error));
                    }
                    if failures >= MAX_FAILED_REQUESTS * 3 {
                        return Err(describe(&error));
                    }
                    tracing::debug!(pod = %self.pod, %container, %error, "log request failed; retrying");
                }
            }
            tokio::time::sleep(RETRY_DELAY).await;
        }
    }

    /// Waits until the container has started; returns `false` when it never will.
    async fn wait_for_start(&mut self, container: &str) -> bool {
        loop {
            match self.view.borrow().progress(container) {
                ContainerProgress::Running | ContainerProgress::Ended => return true,
                ContainerProgress::NeverStarts => return false,
                ContainerProgress::NotStarted => {}
            }
            if self.view.changed().await.is_err() {
                return false;
            }
        }
    }

    /// Reads one stream to its end and returns how many new records it delivered.
    ///
    /// Container runtimes cut long lines into pieces (16 KiB for containerd and Docker), and the
    /// log endpoint gives each piece its own timestamp, in the middle of the line. So the stream
    /// is read piece by piece: a timestamp, then up to [`PIECE_BYTES`] of text up to a newline.
    /// A piece that ends without a newline is flagged `SPLIT` when more follows, and
    /// `NO_NEWLINE` when the stream ends there.
    async fn read(&self, reader: impl futures_util::AsyncBufRead + Unpin, container: &str, channel: Channel, cursor: &mut Cursor) -> usize {
        let mut reader = reader;
        let mut delivered = 0;
        let mut mid_line = false;
        // Bytes of a character that the runtime cut in two, carried into the next piece.
        let mut carry = Vec::new();
        loop {
            let mut piece = match read_piece(&mut reader).await {
                Ok(Some(piece)) => piece,
                Ok(None) => return delivered,
                Err(error) => {
                    tracing::debug!(pod = %self.pod, %container, %error, "log stream broke");
                    return delivered;
                }
            };
            if !carry.is_empty() {
                carry.append(&mut piece.text);
                piece.text = std::mem::take(&mut carry);
            }
            if !piece.complete && !piece.at_end {
                carry = split_off_cut_character(&mut piece.text);
            }
            let continuation = mid_line;
            mid_line = !piece.complete;
            let Some(record) = self.record(piece, continuation, channel, cursor) else { continue };
            self.tails.push(container, &record.line);
            delivered += 1;
            self.events.log(vec![record]).await;
        }
    }

    /// Turns a piece into a record, or `None` for a repeated one.
    fn record(&self, piece: Piece, continuation: bool, channel: Channel, cursor: &mut Cursor) -> Option<LogLine> {
        // A piece with a timestamp decides for itself; one without one follows its line's start.
        match piece.timestamp {
            Some(stamp) => cursor.dropping_line = !cursor.accept(stamp.unix_nanos),
            None if !continuation => cursor.dropping_line = false,
            None => {}
        }
        if cursor.dropping_line {
            return None;
        }
        let text = String::from_utf8_lossy(&piece.text);
        let mut flags = LogFlags::default();
        if matches!(text, std::borrow::Cow::Owned(_)) {
            flags |= LogFlags::INVALID_UTF8;
        }
        if !piece.complete {
            flags |= if piece.at_end { LogFlags::NO_NEWLINE } else { LogFlags::SPLIT };
        }
        let mut record = LogLine::new(Stream::Stdout, channel, text.into_owned());
        record.flags = flags;
        record.timestamp = piece.timestamp;
        Some(record)
    }
}

/// Removes and returns the bytes of a UTF-8 character cut off at the end of `text`, if any.
fn split_off_cut_character(text: &mut Vec<u8>) -> Vec<u8> {
    match std::str::from_utf8(text) {
        // `error_len() == None` means the bytes at the end are the start of a valid character.
        Err(error) if error.error_len().is_none() => text.split_off(error.valid_up_to()),
        _ => Vec::new(),
    }
}

/// Maximum bytes of text read as one record; runtimes cut lines at 16 KiB, so one runtime piece
/// fits in one record.
const PIECE_BYTES: u64 = 16 * 1024;
/// Maximum length of a timestamp the log endpoint writes (`2006-01-02T15:04:05.999999999Z07:00`), with room.
const MAX_TIMESTAMP_BYTES: u64 = 40;

/// One piece of a log line as the endpoint sends it.
struct Piece {
    /// The piece's timestamp, when it starts with one.
    timestamp: Option<Timestamp>,
    /// The text, without the newline.
    text: Vec<u8>,
    /// Whether a newline ended the piece.
    complete: bool,
    /// Whether the stream ended right after the piece.
    at_end: bool,
}

/// Reads the next piece: a timestamp and its space (when the piece has one), then text up to and
/// including a newline, at most [`PIECE_BYTES`]. Returns `None` at the end of the stream.
async fn read_piece(reader: &mut (impl futures_util::AsyncBufRead + Unpin)) -> std::io::Result<Option<Piece>> {
    use futures_util::AsyncReadExt;

    // The head: bytes up to the first space or newline, at most a timestamp's length.
    let mut head = Vec::new();
    loop {
        let buffer = reader.fill_buf().await?;
        if buffer.is_empty() {
            break;
        }
        let room = MAX_TIMESTAMP_BYTES as usize - head.len();
        let window = &buffer[..buffer.len().min(room)];
        if let Some(end) = window.iter().position(|byte| *byte == b' ' || *byte == b'\n') {
            head.extend_from_slice(&window[..=end]);
            reader.consume_unpin(end + 1);
            break;
        }
        let taken = window.len();
        head.extend_from_slice(window);
        reader.consume_unpin(taken);
        if head.len() >= MAX_TIMESTAMP_BYTES as usize {
            break;
        }
    }
    if head.is_empty() {
        return Ok(None);
    }

    let timestamp = head
        .strip_suffix(b" ")
        .and_then(|stamp| std::str::from_utf8(stamp).ok())
        .and_then(Timestamp::parse_rfc3339);
    let mut text = if timestamp.is_some() { Vec::new() } else { head };
    if text.last() != Some(&b'\n') {
        let room = PIECE_BYTES.saturating_sub(text.len() as u64);
        (&mut *reader).take(room).read_until(b'\n', &mut text).await?;
    }
    if text.last() == Some(&b'\n') {
        text.pop();
        return Ok(Some(Piece { timestamp, text, complete: true, at_end: false }));
    }
    let at_end = reader.fill_buf().await?.is_empty();
    Ok(Some(Piece { timestamp, text, complete: false, at_end }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_drops_repeats_after_reconnect() {
        let mut cursor = Cursor::default();
        assert!(cursor.accept(10));
        assert!(cursor.accept(20));
        assert!(cursor.accept(20));
        cursor.reconnect();
        assert!(!cursor.accept(10), "older than the last line");
        assert!(!cursor.accept(20), "first repeat of the last timestamp");
        assert!(!cursor.accept(20), "second repeat of the last timestamp");
        assert!(cursor.accept(20), "a third line with the same timestamp is new");
        assert!(cursor.accept(30));
    }

    #[test]
    fn cursor_since_rounds_down_to_second() {
        let mut cursor = Cursor::default();
        cursor.accept(1_700_000_000_900_000_000);
        assert_eq!(cursor.since().unwrap().as_second(), 1_700_000_000);
    }

    #[test]
    fn cut_character_moves_to_next_piece() {
        let mut text = "ab\u{20AC}".as_bytes()[..4].to_vec();
        let carried = split_off_cut_character(&mut text);
        assert_eq!(text, b"ab");
        assert_eq!(carried, vec![0xE2, 0x82]);
    }

    #[test]
    fn whole_characters_stay() {
        let mut text = "ab\u{20AC}".as_bytes().to_vec();
        assert!(split_off_cut_character(&mut text).is_empty());
        assert_eq!(text, "ab\u{20AC}".as_bytes());
    }

    #[test]
    fn tails_keep_last_lines() {
        let tails = Tails::default();
        for index in 0..30 {
            tails.push("setup", &format!("line {index}"));
        }
        let tail = tails.of("setup");
        assert!(tail.starts_with("line 10\n"), "{tail}");
        assert!(tail.ends_with("line 29"), "{tail}");
    }
}
