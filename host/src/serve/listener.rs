//! The listening socket and the HTTP/1.1 connections on it.
//!
//! The Unix socket is bound inside a fresh private folder, made mode 0600 and then renamed into
//! place, so it is never reachable with wider permissions. A stale socket file (no process
//! accepts on it) is removed at start. A live one is left alone, and the start fails.

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

/// Longest path of a Unix socket on Linux, in bytes (`sun_path` less its final NUL).
const SOCKET_PATH_MAX: usize = 107;
/// Mode of the socket file: read and write for the owner only.
const SOCKET_MODE: u32 = 0o600;
/// Maximum time a client may take to send a request's line and headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Most headers one request may have.
const MAX_HEADERS: usize = 100;
/// Maximum wait for open connections to finish their responses at shutdown.
pub const CONNECTION_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failed accept (such as too many open files), so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// A failure to listen.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// The socket path is too long for a Unix socket.
    #[error("the socket path {path} is {length} bytes, but a Unix socket path may have at most {SOCKET_PATH_MAX}; set a shorter `serve.socket`")]
    PathTooLong {
        /// The path.
        path: PathBuf,
        /// Its length in bytes.
        length: usize,
    },
    /// Another process accepts connections on the socket.
    #[error("another process listens on {path}; stop it, or set another `serve.socket` or `serve.state_dir`")]
    InUse {
        /// The socket.
        path: PathBuf,
    },
    /// The socket path exists and is not a socket.
    #[error("{path} exists and is not a socket; remove it or set another `serve.socket`")]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// A file operation failed.
    #[error("failed to {action} {path}: {source}")]
    Io {
        /// The operation.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Binding the TCP address failed.
    #[error("failed to listen on {address}: {source}")]
    Tcp {
        /// The address.
        address: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// Limits of the HTTP layer.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Maximum size of a request's line and headers.
    pub max_header_bytes: usize,
    /// Maximum number of connections served at once.
    pub max_connections: usize,
}

/// A bound listener.
pub enum Listener {
    /// A Unix socket and its path.
    Unix(UnixListener, PathBuf),
    /// A TCP socket.
    Tcp(TcpListener),
}

impl Listener {
    /// Describes where it listens: `unix:/path` or `tcp:127.0.0.1:8080`.
    pub fn describe(&self) -> String {
        match self {
            Listener::Unix(_, path) => format!("unix:{}", path.display()),
            Listener::Tcp(listener) => match listener.local_addr() {
                Ok(address) => format!("tcp:{address}"),
                Err(_) => "tcp:?".to_string(),
            },
        }
    }
}

/// Binds the Unix socket at `path` with mode 0600, removing a stale socket file first.
pub fn bind_unix(path: &Path) -> Result<Listener, ListenError> {
    let length = path.as_os_str().as_bytes().len();
    if length > SOCKET_PATH_MAX {
        return Err(ListenError::PathTooLong { path: path.to_path_buf(), length });
    }
    let io_error = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| ListenError::Io { action, path, source }
    };
    if let Ok(metadata) = std::fs::symlink_metadata(path) {
        if !metadata.file_type().is_socket() {
            return Err(ListenError::NotASocket { path: path.to_path_buf() });
        }
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => return Err(ListenError::InUse { path: path.to_path_buf() }),
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionRefused => {
                tracing::info!(path = %path.display(), "removing a stale socket file");
                std::fs::remove_file(path).map_err(io_error("remove the stale socket", path))?;
            }
            Err(error) => return Err(ListenError::Io { action: "probe the existing socket", path: path.to_path_buf(), source: error }),
        }
    }
    let parent = path.parent().filter(|parent| !parent.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io_error("create the socket's folder", parent))?;

    // tempfile creates the folder with mode 0700, so no other user can reach the socket inside it.
    let private = tempfile::Builder::new().prefix(".").rand_bytes(6).tempdir_in(parent).map_err(io_error("create a private folder in", parent))?;
    let staged = private.path().join("s");
    let staged_length = staged.as_os_str().as_bytes().len();
    if staged_length > SOCKET_PATH_MAX {
        return Err(ListenError::PathTooLong { path: staged, length: staged_length });
    }
    let listener = UnixListener::bind(&staged).map_err(io_error("bind", &staged))?;
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(SOCKET_MODE)).map_err(io_error("set the mode of", &staged))?;
    std::fs::rename(&staged, path).map_err(io_error("move the socket to", path))?;
    Ok(Listener::Unix(listener, path.to_path_buf()))
}

/// Binds a TCP address.
pub async fn bind_tcp(address: SocketAddr) -> Result<Listener, ListenError> {
    let listener = TcpListener::bind(address).await.map_err(|source| ListenError::Tcp { address, source })?;
    Ok(Listener::Tcp(listener))
}

/// Serves HTTP/1.1 connections until `stop` turns true, then waits up to
/// [`CONNECTION_DRAIN_TIMEOUT`] for open connections to finish.
pub async fn serve(listener: Listener, router: Router, limits: HttpLimits, mut stop: watch::Receiver<bool>) {
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&permits).acquire_owned() => permit.expect("the connection semaphore is never closed"),
            _ = stop.wait_for(|stop| *stop) => break,
        };
        let accepted = tokio::select! {
            accepted = accept(&listener) => accepted,
            _ = stop.wait_for(|stop| *stop) => break,
        };
        match accepted {
            Ok(Accepted::Unix(stream)) => spawn_connection(stream, router.clone(), limits, &graceful, permit),
            Ok(Accepted::Tcp(stream)) => {
                let _ = stream.set_nodelay(true);
                spawn_connection(stream, router.clone(), limits, &graceful, permit)
            }
            Err(error) => {
                tracing::warn!(%error, "failed to accept a connection");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(CONNECTION_DRAIN_TIMEOUT, graceful.shutdown()).await.is_err() {
        tracing::warn!(timeout_ms = CONNECTION_DRAIN_TIMEOUT.as_millis() as u64, "connections still open after the drain timeout; closing them");
    }
}

enum Accepted {
    Unix(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream),
}

async fn accept(listener: &Listener) -> std::io::Result<Accepted> {
    match listener {
        Listener::Unix(listener, _) => listener.accept().await.map(|(stream, _)| Accepted::Unix(stream)),
        Listener::Tcp(listener) => listener.accept().await.map(|(stream, _)| Accepted::Tcp(stream)),
    }
}

fn spawn_connection<S>(stream: S, router: Router, limits: HttpLimits, graceful: &GracefulShutdown, permit: OwnedSemaphorePermit)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(router);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(limits.max_header_bytes)
        .max_headers(MAX_HEADERS);
    let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "connection ended with an error");
        }
        drop(permit);
    });
}
