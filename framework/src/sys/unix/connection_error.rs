//! Errors of the socket layer.

use std::io;
use thiserror::Error;

/// What can go wrong moving bytes and fds over the socket.
///
/// # Example
/// ```
/// use vhost_user_sync::sys::unix::ConnectionError;
/// let e = ConnectionError::TooManyFds { got: 9, max: 8 };
/// assert_eq!(e.to_string(), "peer attached 9 file descriptors, at most 8 allowed");
/// ```
#[derive(Debug, Error)]
pub enum ConnectionError {
    /// The peer closed the connection.
    #[error("peer disconnected")]
    Disconnect,
    /// A temporary failure (signal, resource shortage) that outlasted the retries.
    #[error("temporary socket failure: {0}")]
    SocketRetry(#[source] io::Error),
    /// The socket is broken (reset, timed out mid-message, or the peer stopped reading).
    #[error("socket broken: {0}")]
    SocketBroken(#[source] io::Error),
    /// Any other socket error.
    #[error("socket error: {0}")]
    SocketError(#[source] io::Error),
    /// More fds arrived than a message may carry; all of them were closed.
    #[error("peer attached {got} file descriptors, at most {max} allowed")]
    TooManyFds {
        /// How many arrived.
        got: usize,
        /// The limit.
        max: usize,
    },
    /// Fds arrived where none may (after the first byte of a message); they were closed.
    #[error("peer attached {got} file descriptor(s) in the middle of a message")]
    UnexpectedFds {
        /// How many arrived.
        got: usize,
    },
    /// The caller tried to send more fds than a message may carry.
    #[error("cannot send {got} file descriptors, at most {max}")]
    SendTooManyFds {
        /// How many were given.
        got: usize,
        /// The limit.
        max: usize,
    },
}

impl ConnectionError {
    pub(crate) fn from_errno(e: nix::errno::Errno) -> Self {
        use nix::errno::Errno;
        let io = io::Error::from(e);
        match e {
            Errno::ECONNRESET | Errno::EPIPE | Errno::ENOTCONN | Errno::ESHUTDOWN => {
                ConnectionError::SocketBroken(io)
            }
            Errno::EINTR | Errno::EAGAIN | Errno::ENOBUFS | Errno::ENOMEM => {
                ConnectionError::SocketRetry(io)
            }
            _ => ConnectionError::SocketError(io),
        }
    }

    /// Whether the error is the peer going away (as opposed to a protocol fault).
    pub fn is_disconnect(&self) -> bool {
        matches!(
            self,
            ConnectionError::Disconnect | ConnectionError::SocketBroken(_)
        )
    }
}
