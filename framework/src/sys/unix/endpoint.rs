//! `Endpoint`: where frontend connections come from, at the socket level (a listening
//! socket at a path, an inherited fd, or a frontend we connect to), and the socket file
//! it owns.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use log::{info, warn};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use thiserror::Error;

use super::Shutdown;

/// Default mode of a socket file created by [`Endpoint::bind`].
pub const DEFAULT_SOCKET_MODE: u32 = 0o600;

/// Errors of an endpoint.
#[derive(Debug, Error)]
pub enum EndpointError {
    /// Something that is not a socket (or a symlink) sits at the socket path.
    #[error("{path}: exists and is not a socket; refusing to replace it")]
    PathInUse {
        /// The path.
        path: PathBuf,
    },
    /// Binding, accepting or connecting failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was tried.
        what: &'static str,
        /// The path (or fd number).
        path: String,
        /// The error.
        source: io::Error,
    },
}

fn io_err(what: &'static str, path: impl Into<String>) -> impl FnOnce(io::Error) -> EndpointError {
    let path = path.into();
    move |source| EndpointError::Io { what, path, source }
}

enum Source {
    /// A listening socket: accept one frontend at a time.
    Listening(UnixListener),
    /// An already connected socket (`--fd` of a connected stream): one connection.
    Connected(Option<UnixStream>),
    /// Connect to a frontend that listens, retrying until it is there.
    Client { path: PathBuf, retry: Duration },
}

/// Owns the socket file of an endpoint; dropping it removes the file. Returned by
/// [`Endpoint::take_parent_process_resources`] so that a parent can clean up after a
/// sandboxed child that runs the device.
#[derive(Debug)]
pub struct ParentResources {
    path: PathBuf,
}

impl Drop for ParentResources {
    fn drop(&mut self) {
        remove_socket_file(&self.path);
    }
}

fn remove_socket_file(path: &Path) {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Where frontend connections come from: [`Endpoint::next_stream`] yields them one at a
/// time, each a connected unix stream. The backend's listener serves a device on each.
///
/// # Example
/// ```
/// use vhost_user_sync::sys::unix::{Endpoint, DEFAULT_SOCKET_MODE};
/// let path = std::env::temp_dir().join(format!("endpoint-doc-{}.sock", std::process::id()));
/// let endpoint = Endpoint::bind(path.to_str().unwrap(), DEFAULT_SOCKET_MODE).unwrap();
/// assert_eq!(endpoint.path(), Some(path.as_path()));
/// drop(endpoint); // removes the socket file
/// assert!(!path.exists());
/// ```
pub struct Endpoint {
    source: Source,
    /// The socket file this endpoint created and removes when dropped.
    owned_path: Option<PathBuf>,
}

impl Endpoint {
    /// Listens on `path` (a stale socket there is replaced; anything else, symlinks
    /// included, is refused), the socket file created with `mode`.
    pub fn bind(path: &str, mode: u32) -> Result<Self, EndpointError> {
        let p = PathBuf::from(path);
        match std::fs::symlink_metadata(&p) {
            Ok(meta) if meta.file_type().is_socket() => {
                std::fs::remove_file(&p).map_err(io_err("removing stale socket", path))?;
            }
            Ok(_) => return Err(EndpointError::PathInUse { path: p }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("inspecting", path)(e)),
        }
        let listener = UnixListener::bind(&p).map_err(io_err("binding", path))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
            .map_err(io_err("setting mode of", path))?;
        Ok(Endpoint {
            source: Source::Listening(listener),
            owned_path: Some(p),
        })
    }

    /// Uses an inherited socket (socket activation, `--fd`): a listening socket is
    /// accepted on; a connected one yields exactly one connection.
    ///
    /// # Safety contract
    /// `fd` must be an open socket that the caller hands over (it is closed when the
    /// endpoint drops). Anything else is refused with an error.
    pub fn from_fd(fd: RawFd) -> Result<Self, EndpointError> {
        let owned = nix::fcntl::fcntl(
            // SAFETY: only used to query flags of the fd the caller named; the borrow
            // does not outlive this call.
            unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
            nix::fcntl::FcntlArg::F_GETFD,
        )
        .map_err(|e| io_err("inspecting fd", fd.to_string())(e.into()))
        // SAFETY: the fd is open (F_GETFD succeeded) and the caller hands it over to us,
        // so the OwnedFd is its only owner.
        .map(|_| unsafe { OwnedFd::from_raw_fd(fd) })?;
        let accepting = nix::sys::socket::getsockopt(&owned, nix::sys::socket::sockopt::AcceptConn)
            .map_err(|e| io_err("inspecting fd", fd.to_string())(e.into()))?;
        let source = if accepting {
            Source::Listening(UnixListener::from(owned))
        } else {
            Source::Connected(Some(UnixStream::from(owned)))
        };
        Ok(Endpoint {
            source,
            owned_path: None,
        })
    }

    /// Connects to a frontend listening on `path` (QEMU `server=on`), retrying every
    /// `retry` until it is there; each further connection connects again.
    pub fn client(path: &str, retry: Duration) -> Self {
        Endpoint {
            source: Source::Client {
                path: path.into(),
                retry,
            },
            owned_path: None,
        }
    }

    /// The fd a sandbox must keep open for this endpoint (the listening socket), if it
    /// has one.
    pub fn raw_fd(&self) -> Option<RawFd> {
        match &self.source {
            Source::Listening(l) => Some(l.as_raw_fd()),
            Source::Connected(s) => s.as_ref().map(|s| s.as_raw_fd()),
            Source::Client { .. } => None,
        }
    }

    /// The listening socket, when this endpoint accepts (for one poll over many
    /// endpoints, see [`VhostUserListener::serve_all`](crate::VhostUserListener::serve_all)).
    pub fn listening_socket(&self) -> Option<&UnixListener> {
        match &self.source {
            Source::Listening(l) => Some(l),
            _ => None,
        }
    }

    /// The socket path this endpoint created, if any.
    pub fn path(&self) -> Option<&Path> {
        self.owned_path.as_deref()
    }

    /// Hands the socket file's removal to the caller (see [`ParentResources`]).
    pub fn take_parent_process_resources(&mut self) -> Option<ParentResources> {
        self.owned_path.take().map(|path| ParentResources { path })
    }

    /// Whether no connection can come any more (an inherited connected socket that was
    /// used).
    pub fn is_spent(&self) -> bool {
        matches!(self.source, Source::Connected(None))
    }

    /// Waits for the next frontend: accepts, connects (retrying), or yields the
    /// inherited connection. `Ok(None)` once `shutdown` is triggered or the endpoint is
    /// spent. The stream returned is blocking.
    pub fn next_stream(
        &mut self,
        shutdown: &Shutdown,
    ) -> Result<Option<UnixStream>, EndpointError> {
        if shutdown.is_triggered() {
            return Ok(None);
        }
        match &mut self.source {
            Source::Connected(s) => Ok(s.take()),
            Source::Listening(l) => accept_or_shutdown(l, shutdown),
            Source::Client { path, retry } => connect_or_shutdown(path, *retry, shutdown),
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        if let Some(p) = &self.owned_path {
            remove_socket_file(p);
        }
    }
}

const LISTENER: Token = Token(0);
const WAKE: Token = Token(1);
/// The first wait before accepting again after an accept failed.
const ACCEPT_RETRY_FIRST: Duration = Duration::from_millis(10);
/// The longest wait between retries of a failing accept.
const ACCEPT_RETRY_MAX: Duration = Duration::from_secs(1);

fn accept_or_shutdown(
    l: &UnixListener,
    shutdown: &Shutdown,
) -> Result<Option<UnixStream>, EndpointError> {
    l.set_nonblocking(true)
        .map_err(io_err("configuring", "listener"))?;
    let mut poll = Poll::new().map_err(io_err("creating poll for", "listener"))?;
    let fd = l.as_raw_fd();
    poll.registry()
        .register(&mut SourceFd(&fd), LISTENER, Interest::READABLE)
        .map_err(io_err("watching", "listener"))?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKE).map_err(io_err("creating waker", ""))?);
    shutdown.watch(&waker);
    let mut events = Events::with_capacity(4);
    // After a failed accept (EMFILE, ENFILE, ENOBUFS...) the connection is still queued,
    // and an edge-triggered poll would not report it again until another one arrives:
    // retry on a timer instead, backing off from 10 ms to 1 s.
    let mut retry: Option<Duration> = None;
    loop {
        if shutdown.is_triggered() {
            return Ok(None);
        }
        match l.accept() {
            Ok((s, _)) => {
                if retry.is_some() {
                    info!("accepting again");
                }
                s.set_nonblocking(false)
                    .map_err(io_err("configuring", "connection"))?;
                return Ok(Some(s));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => retry = None,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let next = match retry {
                    None => {
                        warn!("accept failed: {e}; retrying until it succeeds");
                        ACCEPT_RETRY_FIRST
                    }
                    Some(t) => (t * 2).min(ACCEPT_RETRY_MAX),
                };
                retry = Some(next);
            }
        }
        if let Err(e) = poll.poll(&mut events, retry) {
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(io_err("polling", "listener")(e));
            }
        }
    }
}

fn connect_or_shutdown(
    path: &Path,
    retry: Duration,
    shutdown: &Shutdown,
) -> Result<Option<UnixStream>, EndpointError> {
    let mut poll = Poll::new().map_err(io_err("creating poll for", "client"))?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKE).map_err(io_err("creating waker", ""))?);
    shutdown.watch(&waker);
    let mut events = Events::with_capacity(1);
    let mut logged = false;
    loop {
        if shutdown.is_triggered() {
            return Ok(None);
        }
        match UnixStream::connect(path) {
            Ok(s) => {
                info!("connected to frontend at {}", path.display());
                return Ok(Some(s));
            }
            Err(e) => {
                if !logged {
                    info!("waiting for a frontend at {}: {e}", path.display());
                    logged = true;
                }
            }
        }
        // Back off until the next try, waking early on shutdown.
        let _ = poll.poll(&mut events, Some(retry));
    }
}
