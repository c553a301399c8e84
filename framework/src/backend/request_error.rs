//! Errors of the request layer: valid messages the backend still refuses.

use thiserror::Error;

use super::WorkerStuck;
use crate::device::DeviceError;
use crate::memory::MemoryError;
use crate::protocol::ProtocolError;
use crate::queue::{InflightError, QueueError};

/// Why a request was refused. The frontend gets a NACK or an error reply where the
/// protocol has one, and the connection goes on, except after the errors for which
/// [`RequestError::ends_connection`] holds, and after a refused ring or memory request
/// the frontend cannot be told about (no REPLY_ACK) or whose only reply would look like
/// success (GET_VRING_BASE).
///
/// # Example
/// ```
/// use vhost_user_sync::backend::RequestError;
/// let e = RequestError::BadRing { request: "SET_VRING_NUM", index: 9, queues: 1 };
/// assert_eq!(e.to_string(), "SET_VRING_NUM: ring 9 does not exist (1 queues)");
/// ```
#[derive(Debug, Error)]
pub enum RequestError {
    /// The message's size, fds or fields are invalid.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// A memory region or ring address is refused.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// A ring could not be set up.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// An in-flight area is refused.
    #[error(transparent)]
    Inflight(#[from] InflightError),
    /// The device refused.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// The request needs a feature that was not negotiated.
    #[error("{request} needs {feature}, which was not negotiated")]
    NotNegotiated {
        /// The request.
        request: &'static str,
        /// The feature.
        feature: &'static str,
    },
    /// The request came in an order the protocol does not allow.
    #[error("{request} out of order: {why}")]
    BadOrder {
        /// The request.
        request: &'static str,
        /// What is missing or wrong.
        why: &'static str,
    },
    /// A ring index beyond the device's queues.
    #[error("{request}: ring {index} does not exist ({queues} queues)")]
    BadRing {
        /// The request.
        request: &'static str,
        /// The index.
        index: u32,
        /// The device's queue count.
        queues: u16,
    },
    /// A value out of range for this device.
    #[error("{request}: {what} = {value:#x} refused")]
    BadValue {
        /// The request.
        request: &'static str,
        /// What the value is.
        what: &'static str,
        /// The value.
        value: u64,
    },
    /// An fd of the wrong kind (not an eventfd, not a socket).
    #[error("{request}: {why}")]
    BadFd {
        /// The request.
        request: &'static str,
        /// What is wrong.
        why: String,
    },
    /// A request this backend does not implement.
    #[error("{0} is not supported")]
    Unsupported(&'static str),
    /// An unknown request number.
    #[error("unknown request number {0}")]
    Unknown(u32),
    /// The device's workers could not be started again (after a reset): the session has
    /// nothing to run its rings on and the connection is closed.
    #[error("{request}: the device's workers could not be started: {source}")]
    NoWorkers {
        /// The request.
        request: &'static str,
        /// Why (the device's `create_worker`, or the thread spawn).
        source: std::io::Error,
    },
    /// A thread the request needs could not be started.
    #[error("{request}: cannot start a thread: {source}")]
    NoThread {
        /// The request.
        request: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// A worker did not carry out a command in time (device code is stuck): the
    /// connection is closed.
    #[error(transparent)]
    WorkerStuck(#[from] WorkerStuck),
}

impl RequestError {
    /// Whether the session cannot go on after this refusal: the connection is closed
    /// once the frontend has been answered.
    pub fn ends_connection(&self) -> bool {
        matches!(
            self,
            RequestError::NoWorkers { .. } | RequestError::WorkerStuck(_)
        )
    }
}
