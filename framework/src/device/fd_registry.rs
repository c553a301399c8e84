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

/// Device tokens must stay below this.
pub const MAX_DEVICE_TOKEN: usize = 1 << 20;

impl FdRegistry<'_> {
    fn token(token: usize) -> io::Result<Token> {
        if token < MAX_DEVICE_TOKEN {
            Ok(Token(DEVICE_TOKEN_BASE + token))
        } else {
            Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("device token {token} too large"),
            ))
        }
    }

    /// Wakes the worker with `token` (below [`MAX_DEVICE_TOKEN`]) when `fd` is readable.
    pub fn register_readable(&mut self, fd: RawFd, token: usize) -> io::Result<()> {
        self.registry
            .register(&mut SourceFd(&fd), Self::token(token)?, Interest::READABLE)
    }

    /// Wakes the worker with `token` (below [`MAX_DEVICE_TOKEN`]) when `fd` is writable.
    pub fn register_writable(&mut self, fd: RawFd, token: usize) -> io::Result<()> {
        self.registry
            .register(&mut SourceFd(&fd), Self::token(token)?, Interest::WRITABLE)
    }

    /// Wakes the worker with `token` when `fd` becomes readable or writable.
    pub fn register_readable_writable(&mut self, fd: RawFd, token: usize) -> io::Result<()> {
        self.registry.register(
            &mut SourceFd(&fd),
            Self::token(token)?,
            Interest::READABLE | Interest::WRITABLE,
        )
    }

    /// Stops watching `fd`.
    pub fn deregister(&mut self, fd: RawFd) -> io::Result<()> {
        self.registry.deregister(&mut SourceFd(&fd))
    }
}
