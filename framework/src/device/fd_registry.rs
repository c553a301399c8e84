//! `FdRegistry`: how a worker adds its own fds to the worker's poll loop.

use std::io;
use std::os::fd::RawFd;

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

/// First mio token of device fds; queue kicks use the tokens below.
pub(crate) const DEVICE_TOKEN_BASE: usize = 1 << 16;

/// Registers device fds with the worker's poll (edge-triggered: read until `EAGAIN`).
///
/// # Example
/// ```no_run
/// # use vhost_user_sync::device::FdRegistry;
/// # fn f(registry: &mut FdRegistry<'_>, tap_fd: std::os::fd::RawFd) -> std::io::Result<()> {
/// registry.register_readable(tap_fd, 0)?; // handle_event(0, ..) when the tap has frames
/// # Ok(()) }
/// ```
pub struct FdRegistry<'a> {
    pub(crate) registry: &'a Registry,
}

impl FdRegistry<'_> {
    /// Wakes the worker with `token` when `fd` is readable.
    pub fn register_readable(&mut self, fd: RawFd, token: usize) -> io::Result<()> {
        self.registry.register(
            &mut SourceFd(&fd),
            Token(DEVICE_TOKEN_BASE + token),
            Interest::READABLE,
        )
    }

    /// Wakes the worker with `token` when `fd` is writable.
    pub fn register_writable(&mut self, fd: RawFd, token: usize) -> io::Result<()> {
        self.registry.register(
            &mut SourceFd(&fd),
            Token(DEVICE_TOKEN_BASE + token),
            Interest::WRITABLE,
        )
    }

    /// Stops watching `fd`.
    pub fn deregister(&mut self, fd: RawFd) -> io::Result<()> {
        self.registry.deregister(&mut SourceFd(&fd))
    }
}
