//! `VhostUserListener`: where frontends come from (a socket path, an inherited fd, or a
//! frontend we connect to), and the serve loop that runs a device for each of them.

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

use super::SocketPlatformConnection;
use crate::backend::{serve_connection_with, ServeError, ServeOptions, Shutdown};
use crate::device::Device;

/// Default mode of a socket file created by [`VhostUserListener::new`].
pub const DEFAULT_SOCKET_MODE: u32 = 0o600;

/// Errors of the listener.
#[derive(Debug, Error)]
pub enum ListenerError {
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
    /// A connection ended with an error (after it was served as far as possible).
    #[error(transparent)]
    Serve(#[from] ServeError),
}

fn io_err(what: &'static str, path: impl Into<String>) -> impl FnOnce(io::Error) -> ListenerError {
    let path = path.into();
    move |source| ListenerError::Io { what, path, source }
}

enum Endpoint {
    /// A listening socket: accept one frontend at a time.
    Listening(UnixListener),
    /// An already connected socket (`--fd` of a connected stream): one connection.
    Connected(Option<UnixStream>),
    /// Connect to a frontend that listens, retrying until it is there.
    Client { path: PathBuf, retry: Duration },
}

/// Owns the socket file of a listener; dropping it removes the file. Returned by
/// [`VhostUserListener::take_parent_process_resources`] so that a parent can clean up
/// after a sandboxed child that runs the device.
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

/// Accepts frontends and serves a device to each, one connection at a time.
///
/// # Example
/// ```no_run
/// # use vhost_user_sync::VhostUserListener;
/// # fn make_device() -> impl vhost_user_sync::device::Device { unimplemented!() as MyDev }
/// # struct MyDev; impl vhost_user_sync::device::Device for MyDev { type Worker = W; fn info(&self) -> vhost_user_sync::device::DeviceInfo { unimplemented!() } fn create_worker(&mut self, _: usize) -> std::io::Result<W> { unimplemented!() } }
/// # struct W; impl vhost_user_sync::device::QueueWorker for W { fn process_queue(&mut self, _: &mut vhost_user_sync::device::Queue<'_>) -> Result<(), vhost_user_sync::device::DeviceError> { Ok(()) } }
/// let mut listener = VhostUserListener::new("/tmp/dev.sock", None).unwrap();
/// // Serve until shut down; each frontend connection gets a fresh device.
/// listener.serve(make_device).unwrap();
/// ```
pub struct VhostUserListener {
    endpoint: Endpoint,
    /// The socket file this listener created and removes when dropped.
    owned_path: Option<PathBuf>,
    shutdown: Shutdown,
    options: ServeOptions,
}

impl VhostUserListener {
    /// Listens on `path` (a stale socket there is replaced; anything else, symlinks
    /// included, is refused). The file is created with mode 0600. If `keep_rds` is
    /// given, the fds the listener needs are pushed onto it (for a sandbox that closes
    /// all others).
    pub fn new(path: &str, keep_rds: Option<&mut Vec<RawFd>>) -> Result<Self, ListenerError> {
        Self::with_mode(path, DEFAULT_SOCKET_MODE, keep_rds)
    }

    /// Like [`Self::new`] with the socket file's mode given.
    pub fn with_mode(
        path: &str,
        mode: u32,
        keep_rds: Option<&mut Vec<RawFd>>,
    ) -> Result<Self, ListenerError> {
        let p = PathBuf::from(path);
        match std::fs::symlink_metadata(&p) {
            Ok(meta) if meta.file_type().is_socket() => {
                std::fs::remove_file(&p).map_err(io_err("removing stale socket", path))?;
            }
            Ok(_) => return Err(ListenerError::PathInUse { path: p }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("inspecting", path)(e)),
        }
        let listener = UnixListener::bind(&p).map_err(io_err("binding", path))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
            .map_err(io_err("setting mode of", path))?;
        if let Some(keep) = keep_rds {
            keep.push(listener.as_raw_fd());
        }
        Ok(VhostUserListener {
            endpoint: Endpoint::Listening(listener),
            owned_path: Some(p),
            shutdown: Shutdown::new(),
            options: ServeOptions::default(),
        })
    }

    /// Uses an inherited socket (socket activation, `--fd`): a listening socket is
    /// accepted on; a connected one serves exactly one connection.
    ///
    /// # Safety contract
    /// `fd` must be an open socket that the caller hands over (it is closed when the
    /// listener drops). Anything else is refused with an error.
    pub fn from_fd(fd: RawFd) -> Result<Self, ListenerError> {
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
        let endpoint = if accepting {
            Endpoint::Listening(UnixListener::from(owned))
        } else {
            Endpoint::Connected(Some(UnixStream::from(owned)))
        };
        Ok(VhostUserListener {
            endpoint,
            owned_path: None,
            shutdown: Shutdown::new(),
            options: ServeOptions::default(),
        })
    }

    /// Connects to a frontend listening on `path` (QEMU `server=on`), retrying every
    /// `retry` until it is there; after a disconnect it connects again.
    pub fn client(path: &str, retry: Duration) -> Self {
        VhostUserListener {
            endpoint: Endpoint::Client {
                path: path.into(),
                retry,
            },
            owned_path: None,
            shutdown: Shutdown::new(),
            options: ServeOptions::default(),
        }
    }

    /// The trigger that stops [`Self::serve`] and the connection being served.
    pub fn shutdown_handle(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// Uses `shutdown` (shared with other listeners or a signal thread) instead of the
    /// listener's own trigger.
    pub fn with_shutdown(mut self, shutdown: Shutdown) -> Self {
        self.shutdown = shutdown;
        self
    }

    /// Every device served polls its rings for `time` after the last chain before it
    /// sleeps (see [`DeviceInfo::busy_poll`](crate::device::DeviceInfo::busy_poll));
    /// zero turns polling off whatever the device asks for.
    pub fn with_busy_poll(mut self, time: Duration) -> Self {
        self.options.busy_poll = Some(time);
        self
    }

    /// The socket path this listener created, if any.
    pub fn path(&self) -> Option<&Path> {
        self.owned_path.as_deref()
    }

    /// Hands the socket file's removal to the caller (see [`ParentResources`]).
    pub fn take_parent_process_resources(&mut self) -> Option<ParentResources> {
        self.owned_path.take().map(|path| ParentResources { path })
    }

    /// Waits for the next frontend. `Ok(None)` after shutdown, or when an inherited
    /// connected socket was already used.
    pub fn accept(&mut self) -> Result<Option<SocketPlatformConnection>, ListenerError> {
        if self.shutdown.is_triggered() {
            return Ok(None);
        }
        let stream = match &mut self.endpoint {
            Endpoint::Connected(s) => s.take(),
            Endpoint::Listening(l) => accept_or_shutdown(l, &self.shutdown)?,
            Endpoint::Client { path, retry } => connect_or_shutdown(path, *retry, &self.shutdown)?,
        };
        stream
            .map(|s| SocketPlatformConnection::new(s).map_err(io_err("configuring", "connection")))
            .transpose()
    }

    /// Accepts one frontend and serves `device` until it disconnects.
    pub fn run_device<D: Device>(&mut self, device: D) -> Result<(), ListenerError> {
        match self.accept()? {
            Some(conn) => Ok(serve_connection_with(
                conn,
                device,
                &self.shutdown,
                &self.options,
            )?),
            None => Ok(()),
        }
    }

    /// Serves frontends one after the other, each with a fresh device from `factory`,
    /// until shutdown. A connection that fails is logged; the loop goes on.
    pub fn serve<D: Device, F: FnMut() -> D>(
        &mut self,
        mut factory: F,
    ) -> Result<(), ListenerError> {
        while let Some(conn) = self.accept()? {
            if let Err(e) = serve_connection_with(conn, factory(), &self.shutdown, &self.options) {
                warn!("connection ended with an error: {e}; accepting the next frontend");
            }
            if matches!(self.endpoint, Endpoint::Connected(None)) {
                break;
            }
        }
        Ok(())
    }
}

impl Drop for VhostUserListener {
    fn drop(&mut self) {
        if let Some(p) = &self.owned_path {
            remove_socket_file(p);
        }
    }
}

const LISTENER: Token = Token(0);
const WAKE: Token = Token(1);

fn accept_or_shutdown(
    l: &UnixListener,
    shutdown: &Shutdown,
) -> Result<Option<UnixStream>, ListenerError> {
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
    loop {
        if shutdown.is_triggered() {
            return Ok(None);
        }
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false)
                    .map_err(io_err("configuring", "connection"))?;
                return Ok(Some(s));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // EMFILE and the like: log, wait for the next event rather than spin.
                warn!("accept failed: {e}");
            }
        }
        if let Err(e) = poll.poll(&mut events, None) {
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
) -> Result<Option<UnixStream>, ListenerError> {
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
