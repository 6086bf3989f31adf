//! `tower-host serve`: the runner-facing HTTP API. The runner starts it once and hands it
//! executions for as long as it lives. It journals their logs and status on disk and streams them
//! to any number of consumers.
//!
//! Modules: [`config`] (`[serve]`), [`listener`] and [`auth`] (sockets, HTTP/1.1, bearer
//! tokens), [`routes`], [`create`] and [`fanout`] (the API), [`journal`] (files on disk),
//! [`registry`], [`capacity`] and [`supervisor`] (executions), [`metrics`], [`openapi`],
//! [`shutdown`], [`recovery`] and [`retention`] (lifecycle).

pub mod auth;
pub mod capacity;
pub mod config;
pub mod context;
pub mod create;
pub mod error;
pub mod fanout;
pub mod journal;
pub mod listener;
pub mod metrics;
pub mod openapi;
pub mod recovery;
pub mod registry;
pub mod retention;
pub mod routes;
pub mod shutdown;
pub mod supervisor;

use crate::backend_setup::create_backend;
use crate::config::Config;
use crate::failure::{CommandResult, Failure};
use context::ServeContext;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Name of the lock file that keeps two hosts off one state folder.
const LOCK_FILE: &str = "lock";
/// Mode of a state folder the host creates: owner only.
const STATE_DIR_MODE: u32 = 0o700;

/// A failure to start the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The state folder could not be prepared.
    #[error("failed to prepare the state folder {path}: {source}")]
    StateDir {
        /// The folder.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Another host uses the state folder.
    #[error("another tower-host serve uses the state folder {path} (its lock file is held); stop it or set another `serve.state_dir`")]
    Locked {
        /// The folder.
        path: PathBuf,
    },
    /// The token file is unusable.
    #[error(transparent)]
    Token(#[from] auth::AuthError),
    /// The journal could not be loaded.
    #[error("failed to load the journal: {0}")]
    Journal(#[from] journal::JournalError),
    /// The listener could not be bound.
    #[error(transparent)]
    Listen(#[from] listener::ListenError),
    /// Signal handlers could not be installed.
    #[error("failed to listen for signals: {0}")]
    Signals(std::io::Error),
}

/// Runs the server until SIGTERM or SIGINT and the shutdown policy are done.
pub async fn serve(config: &Config) -> CommandResult {
    let settings = config.serve.clone();
    let state_dir = settings.state_dir().map_err(|message| Failure::usage(anyhow::anyhow!("{message}")))?;
    let state_dir = prepare_state_dir(&state_dir).map_err(Failure::host)?;
    let _lock = lock_state_dir(&state_dir).map_err(Failure::host)?;
    raise_open_file_limit();
    let token = match (&settings.tcp, &settings.token_file) {
        (Some(_), Some(file)) => Some(Arc::new(auth::BearerToken::load(file).map_err(|error| Failure::usage(ServeError::from(error)))?)),
        _ => None,
    };

    let backend = create_backend(config).await?;
    let capabilities = backend.capabilities().await.map_err(Failure::host)?;
    let policy = settings.shutdown;
    let limits = listener::HttpLimits { max_header_bytes: settings.max_header_bytes, max_connections: settings.max_connections };
    let socket_path = match settings.tcp {
        Some(_) => None,
        None => Some(settings.socket.clone().unwrap_or_else(|| state_dir.join(config::DEFAULT_SOCKET_NAME))),
    };
    let ctx = Arc::new(ServeContext::new(settings.clone(), state_dir.clone(), backend.clone(), capabilities));

    let report = recovery::load(&ctx).await.map_err(|error| Failure::host(ServeError::from(error)))?;
    tracing::info!(
        finished = report.finished,
        reattaching = report.reattaching,
        unsubmitted = report.unsubmitted,
        unreadable = report.unreadable,
        "journal loaded"
    );

    let mut signals = shutdown::Signals::new().map_err(|error| Failure::host(ServeError::Signals(error)))?;
    let bound = match (settings.tcp, &socket_path) {
        (Some(address), _) => listener::bind_tcp(address).await,
        (None, Some(path)) => listener::bind_unix(path),
        (None, None) => unreachable!("a socket path is set whenever TCP is not"),
    }
    .map_err(|error| Failure::host(ServeError::from(error)))?;
    let listening = bound.describe();
    // The ready line: supervisors and tests wait for it on stdout.
    println!("tower-host: listening on {listening}");
    let _ = std::io::stdout().flush();
    tracing::info!(
        listen = %listening,
        state_dir = %state_dir.display(),
        plugin = %backend.plugin().name,
        max_running = settings.max_running,
        "serving"
    );

    let (stop_server, server_stopped) = tokio::sync::watch::channel(false);
    let router = routes::router(Arc::clone(&ctx), token);
    let server = tokio::spawn(listener::serve(bound, router, limits, server_stopped));
    let sweeper = tokio::spawn(retention::sweep_forever(Arc::clone(&ctx)));

    shutdown::run(&ctx, &mut signals, policy).await;
    ctx.end_streams();
    stop_server.send_replace(true);
    if let Err(error) = server.await {
        tracing::error!(%error, "the HTTP server task failed");
    }
    sweeper.abort();
    if let Some(path) = &socket_path {
        if let Err(error) = std::fs::remove_file(path) {
            tracing::warn!(path = %path.display(), %error, "failed to remove the socket file");
        }
    }
    if let Err(error) = backend.shutdown().await {
        tracing::warn!(%error, "backend shutdown failed");
    }
    tracing::info!("stopped");
    Ok(0)
}

/// Creates the state folder (mode 0700) if needed and returns its absolute path.
fn prepare_state_dir(path: &Path) -> Result<PathBuf, ServeError> {
    let state_error = |source| ServeError::StateDir { path: path.to_path_buf(), source };
    std::fs::DirBuilder::new().recursive(true).mode(STATE_DIR_MODE).create(path).map_err(state_error)?;
    let path = path.canonicalize().map_err(state_error)?;
    let metadata = std::fs::metadata(&path).map_err(state_error)?;
    if metadata.mode() & 0o077 != 0 {
        tracing::warn!(path = %path.display(), mode = format!("{:o}", metadata.mode() & 0o7777), "the state folder is open to group or others; its logs may hold private output");
    }
    Ok(path)
}

/// Takes an exclusive lock on `<state_dir>/lock` for the life of the returned file.
fn lock_state_dir(state_dir: &Path) -> Result<std::fs::File, ServeError> {
    let path = state_dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| ServeError::StateDir { path: path.clone(), source })?;
    // SAFETY: flock on a file descriptor this function owns; it touches no memory.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if locked != 0 {
        return Err(ServeError::Locked { path: state_dir.to_path_buf() });
    }
    Ok(file)
}

/// Raises the soft limit of open files to the hard limit, because each execution keeps journal
/// files open and each consumer a connection and a file.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit read and write only the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            let previous = limit.rlim_cur;
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                tracing::debug!(from = previous, to = limit.rlim_max, "raised the open-file limit");
            }
        }
    }
}
