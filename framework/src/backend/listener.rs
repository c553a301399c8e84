//! `VhostUserListener`: the serve loop. It takes frontend connections from an
//! [`Endpoint`] one at a time and serves a fresh device on each.

use std::os::fd::RawFd;
use std::path::Path;
use std::time::Duration;

use log::warn;

use super::{serve_connection_with, DeviceStats, ListenerError, ServeOptions};
use crate::device::Device;
use crate::sys::unix::{
    Endpoint, ParentResources, Shutdown, SocketPlatformConnection, DEFAULT_SOCKET_MODE,
};

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
    pub(super) endpoint: Endpoint,
    pub(super) shutdown: Shutdown,
    pub(super) options: ServeOptions,
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
        let endpoint = Endpoint::bind(path, mode)?;
        if let (Some(keep), Some(fd)) = (keep_rds, endpoint.raw_fd()) {
            keep.push(fd);
        }
        Ok(Self::on(endpoint))
    }

    /// Uses an inherited socket (socket activation, `--fd`): a listening socket is
    /// accepted on; a connected one serves exactly one connection.
    ///
    /// # Safety contract
    /// `fd` must be an open socket that the caller hands over (it is closed when the
    /// listener drops). Anything else is refused with an error.
    pub fn from_fd(fd: RawFd) -> Result<Self, ListenerError> {
        Ok(Self::on(Endpoint::from_fd(fd)?))
    }

    /// Connects to a frontend listening on `path` (QEMU `server=on`), retrying every
    /// `retry` until it is there; after a disconnect it connects again.
    pub fn client(path: &str, retry: Duration) -> Self {
        Self::on(Endpoint::client(path, retry))
    }

    /// Serves the connections of `endpoint`.
    pub fn on(endpoint: Endpoint) -> Self {
        VhostUserListener {
            endpoint,
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

    /// Every connection gives up on a worker that has not carried out a command (or
    /// exited) within `time`: a device stuck in `process_queue` ends its own connection
    /// (see [`ServeOptions::worker_timeout`]).
    pub fn with_worker_timeout(mut self, time: Duration) -> Self {
        self.options.worker_timeout = Some(time);
        self
    }

    /// Counts the work of every connection served into `stats` (read it from any
    /// thread with [`DeviceStats::snapshot`]).
    ///
    /// ```no_run
    /// use vhost_user_sync::backend::DeviceStats;
    /// use vhost_user_sync::VhostUserListener;
    /// let stats = DeviceStats::new();
    /// let listener = VhostUserListener::new("/tmp/dev.sock", None)?.with_stats(stats.clone());
    /// println!("{:?}", stats.snapshot());
    /// # Ok::<(), vhost_user_sync::backend::ListenerError>(())
    /// ```
    pub fn with_stats(mut self, stats: DeviceStats) -> Self {
        self.options.stats = Some(stats);
        self
    }

    /// The counters set with [`Self::with_stats`].
    pub fn stats(&self) -> Option<&DeviceStats> {
        self.options.stats.as_ref()
    }

    /// The socket the listener accepts on (or the inherited connection), for a sandbox
    /// that keeps only the fds it is told about; `None` for a `--client` listener, which
    /// opens a new socket per connection.
    pub fn raw_fd(&self) -> Option<RawFd> {
        self.endpoint.raw_fd()
    }

    /// The socket path this listener created, if any.
    pub fn path(&self) -> Option<&Path> {
        self.endpoint.path()
    }

    /// Hands the socket file's removal to the caller (see [`ParentResources`]).
    pub fn take_parent_process_resources(&mut self) -> Option<ParentResources> {
        self.endpoint.take_parent_process_resources()
    }

    /// Waits for the next frontend. `Ok(None)` after shutdown, or when an inherited
    /// connected socket was already used.
    pub fn accept(&mut self) -> Result<Option<SocketPlatformConnection>, ListenerError> {
        let Some(stream) = self.endpoint.next_stream(&self.shutdown)? else {
            return Ok(None);
        };
        Ok(Some(SocketPlatformConnection::new(stream).map_err(
            |source| crate::sys::unix::EndpointError::Io {
                what: "configuring",
                path: "connection".into(),
                source,
            },
        )?))
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
            if self.endpoint.is_spent() {
                break;
            }
        }
        Ok(())
    }
}
