//! Errors of the frontend side.

use thiserror::Error;

use crate::memory::MemoryError;
use crate::message::ReadError;
use crate::sys::unix::ConnectionError;

/// What can go wrong driving a backend.
///
/// # Example
/// ```
/// use vhost_user_sync::frontend::FrontendError;
/// let e = FrontendError::Nack { request: "SET_MEM_TABLE", value: 1 };
/// assert_eq!(e.to_string(), "backend refused SET_MEM_TABLE (ack 1)");
/// ```
#[derive(Debug, Error)]
pub enum FrontendError {
    /// Socket failure.
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    /// The backend's reply could not be read.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The backend answered with a non-zero REPLY_ACK.
    #[error("backend refused {request} (ack {value})")]
    Nack {
        /// The request.
        request: &'static str,
        /// The ack value.
        value: u64,
    },
    /// The reply does not match the request.
    #[error("bad reply to {request}: {why}")]
    BadReply {
        /// The request.
        request: &'static str,
        /// What is wrong.
        why: String,
    },
    /// Guest memory access failed.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Setting up memory or eventfds failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The queue has no free descriptors.
    #[error("queue full")]
    QueueFull,
    /// The backend used a buffer id that is not outstanding.
    #[error("backend used buffer id {id}, which is not outstanding")]
    BadUsed {
        /// The id.
        id: u16,
    },
    /// Nothing was used before the timeout.
    #[error("timed out waiting for the backend")]
    Timeout,
}
