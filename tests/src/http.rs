//! A minimal blocking HTTP/1.1 client for the `serve` tests, over a Unix socket or TCP: one
//! connection per request (`Connection: close`), `Content-Length` and chunked bodies, and line by
//! line reading of NDJSON streams.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

/// Maximum wait for any read from the server, so that a hung server fails the test.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the server listens.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// A Unix socket.
    Unix(PathBuf),
    /// A TCP address.
    Tcp(SocketAddr),
}

impl Endpoint {
    /// Parses the address of the host's ready line: `unix:/path` or `tcp:127.0.0.1:8080`.
    pub fn parse(text: &str) -> Self {
        if let Some(path) = text.strip_prefix("unix:") {
            Endpoint::Unix(PathBuf::from(path))
        } else if let Some(address) = text.strip_prefix("tcp:") {
            Endpoint::Tcp(address.parse().expect("a TCP address"))
        } else {
            panic!("unknown endpoint {text:?}")
        }
    }
}

trait Connection: Read + Write + Send {}
impl<T: Read + Write + Send> Connection for T {}

/// The status, the headers, and the connection positioned at the body.
type ResponseHead = (u16, Vec<(String, String)>, BufReader<Box<dyn Connection>>);

/// A client of one endpoint, with an optional bearer token.
#[derive(Debug, Clone)]
pub struct Client {
    /// Where to connect.
    pub endpoint: Endpoint,
    /// Sent as `Authorization: Bearer <token>` when set.
    pub token: Option<String>,
}

/// A complete response.
#[derive(Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Headers, names in lowercase.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// Parses the body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|error| panic!("invalid JSON body ({error}): {}", self.text()))
    }

    /// Returns the body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Returns a header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
    }

    /// Returns the error code of a JSON error body.
    pub fn error_code(&self) -> String {
        self.json()["error"]["code"].as_str().unwrap_or_default().to_string()
    }
}

impl Client {
    /// Creates a client without a token.
    pub fn new(endpoint: Endpoint) -> Self {
        Self { endpoint, token: None }
    }

    /// Returns a copy that sends `token`.
    pub fn with_token(&self, token: Option<&str>) -> Self {
        Self { endpoint: self.endpoint.clone(), token: token.map(str::to_string) }
    }

    fn connect(&self) -> std::io::Result<Box<dyn Connection>> {
        match &self.endpoint {
            Endpoint::Unix(path) => {
                let stream = UnixStream::connect(path)?;
                stream.set_read_timeout(Some(READ_TIMEOUT))?;
                Ok(Box::new(stream))
            }
            Endpoint::Tcp(address) => {
                let stream = TcpStream::connect(address)?;
                stream.set_read_timeout(Some(READ_TIMEOUT))?;
                Ok(Box::new(stream))
            }
        }
    }

    /// Sends a request and returns the connection positioned at the body, with the status and
    /// headers.
    fn send(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> std::io::Result<ResponseHead> {
        let mut connection = self.connect()?;
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: tower-host\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
        if let Some(token) = &self.token {
            head.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        connection.write_all(head.as_bytes())?;
        // The server may send its response (and close) before reading a large body. The response
        // still counts.
        let _ = connection.write_all(body);
        let _ = connection.flush();

        let mut reader = BufReader::new(connection);
        let mut status_line = String::new();
        reader.read_line(&mut status_line)?;
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("invalid status line {status_line:?}")))?;
        let mut response_headers = Vec::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line)?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                response_headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
            }
        }
        Ok((status, response_headers, reader))
    }

    /// Sends a request and reads the whole response.
    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        let (status, headers, mut reader) =
            self.send(method, path, headers, body).unwrap_or_else(|error| panic!("{method} {path} failed: {error}"));
        let mut body = Vec::new();
        let chunked = headers.iter().any(|(name, value)| name == "transfer-encoding" && value.contains("chunked"));
        if chunked {
            ChunkedReader::new(&mut reader).read_to_end(&mut body).unwrap_or_else(|error| panic!("{method} {path}: body: {error}"));
        } else if let Some(length) = headers.iter().find(|(name, _)| name == "content-length").and_then(|(_, value)| value.parse::<usize>().ok()) {
            body.resize(length, 0);
            reader.read_exact(&mut body).unwrap_or_else(|error| panic!("{method} {path}: body: {error}"));
        } else {
            let _ = reader.read_to_end(&mut body);
        }
        Response { status, headers, body }
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> Response {
        self.request("GET", path, &[], b"")
    }

    /// `POST path` with a JSON body.
    pub fn post_json(&self, path: &str, body: &serde_json::Value) -> Response {
        self.request("POST", path, &[("Content-Type", "application/json")], body.to_string().as_bytes())
    }

    /// `DELETE path`.
    pub fn delete(&self, path: &str) -> Response {
        self.request("DELETE", path, &[], b"")
    }

    /// `POST /v1/executions` as `multipart/form-data` with a `spec` part and a `package` part.
    pub fn create_upload(&self, spec: &serde_json::Value, package: &[u8]) -> Response {
        let boundary = "tower-host-test-boundary-7d1f";
        let mut body = Vec::new();
        body.extend_from_slice(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"spec\"\r\nContent-Type: application/json\r\n\r\n").as_bytes());
        body.extend_from_slice(spec.to_string().as_bytes());
        body.extend_from_slice(format!("\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"package\"; filename=\"package.tar.gz\"\r\nContent-Type: application/gzip\r\n\r\n").as_bytes());
        body.extend_from_slice(package);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let content_type = format!("multipart/form-data; boundary={boundary}");
        self.request("POST", "/v1/executions", &[("Content-Type", &content_type)], &body)
    }

    /// Opens a `GET` stream and returns its status and a line reader over its body.
    pub fn stream(&self, path: &str) -> (u16, LineStream) {
        let (status, _, reader) = self.send("GET", path, &[], b"").unwrap_or_else(|error| panic!("GET {path} failed: {error}"));
        (status, LineStream { reader: BufReader::with_capacity(64 * 1024, ChunkedReader::new(reader)) })
    }
}

/// The lines of a chunked NDJSON response.
pub struct LineStream {
    reader: BufReader<ChunkedReader<BufReader<Box<dyn Connection>>>>,
}

/// What [`LineStream::count_to_end`] read.
#[derive(Debug)]
pub struct StreamCount {
    /// Newlines read.
    pub lines: u64,
    /// Bytes read.
    pub bytes: u64,
    /// When the last bytes arrived.
    pub last_data_at: Option<std::time::Instant>,
    /// How the stream ended.
    pub end: StreamEnd,
}

/// How a stream ended.
#[derive(Debug, PartialEq, Eq)]
pub enum StreamEnd {
    /// The final chunk arrived: the server ended the response on purpose.
    Complete,
    /// The connection ended or failed first.
    Aborted(String),
}

impl LineStream {
    /// Returns the next line without its newline, or how the stream ended.
    pub fn next_line(&mut self) -> Result<String, StreamEnd> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Err(StreamEnd::Complete),
            Ok(_) if line.ends_with('\n') => {
                line.pop();
                Ok(line)
            }
            Ok(_) => Err(StreamEnd::Aborted(format!("the stream ended inside a line: {line:?}"))),
            Err(error) => Err(StreamEnd::Aborted(error.to_string())),
        }
    }

    /// Reads the rest of the stream without parsing it, a consumer as cheap as the stream
    /// allows. Returns the lines and bytes read, when the last bytes arrived, and how the
    /// stream ended.
    pub fn count_to_end(&mut self) -> StreamCount {
        let mut count = StreamCount { lines: 0, bytes: 0, last_data_at: None, end: StreamEnd::Complete };
        loop {
            let read = match self.reader.fill_buf() {
                Ok([]) => return count,
                Ok(buffer) => {
                    count.lines += buffer.iter().filter(|&&byte| byte == b'\n').count() as u64;
                    buffer.len()
                }
                Err(error) => {
                    count.end = StreamEnd::Aborted(error.to_string());
                    return count;
                }
            };
            count.bytes += read as u64;
            count.last_data_at = Some(std::time::Instant::now());
            self.reader.consume(read);
        }
    }

    /// Reads every remaining line as JSON; returns them and how the stream ended.
    pub fn read_all(&mut self) -> (Vec<serde_json::Value>, StreamEnd) {
        let mut values = Vec::new();
        loop {
            match self.next_line() {
                Ok(line) => values.push(serde_json::from_str(&line).unwrap_or_else(|error| panic!("invalid JSON line {line:?}: {error}"))),
                Err(end) => return (values, end),
            }
        }
    }
}

/// Decodes a chunked body; fails when the connection ends before the final chunk.
struct ChunkedReader<R> {
    inner: R,
    left_in_chunk: usize,
    finished: bool,
}

impl<R: BufRead> ChunkedReader<R> {
    fn new(inner: R) -> Self {
        Self { inner, left_in_chunk: 0, finished: false }
    }
}

impl<R: BufRead> Read for ChunkedReader<R> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        if self.finished {
            return Ok(0);
        }
        if self.left_in_chunk == 0 {
            let mut size_line = String::new();
            if self.inner.read_line(&mut size_line)? == 0 {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the connection ended before the final chunk"));
            }
            let size_text = size_line.trim().split(';').next().unwrap_or("");
            let size = usize::from_str_radix(size_text, 16)
                .map_err(|_| std::io::Error::other(format!("invalid chunk size line {size_line:?}")))?;
            if size == 0 {
                self.finished = true;
                return Ok(0);
            }
            self.left_in_chunk = size;
        }
        let length = buffer.len().min(self.left_in_chunk);
        let read = self.inner.read(&mut buffer[..length])?;
        if read == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the connection ended inside a chunk"));
        }
        self.left_in_chunk -= read;
        if self.left_in_chunk == 0 {
            let mut crlf = [0u8; 2];
            self.inner.read_exact(&mut crlf)?;
        }
        Ok(read)
    }
}
