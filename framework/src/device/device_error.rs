//! Errors a device reports to the framework.

use std::io;
use thiserror::Error;

use crate::queue::QueueError;

/// An error of device code. The framework logs it with the device's name; the queue
/// stays usable unless the error says the ring is broken.
///
/// # Example
/// ```
/// use vhost_user_sync::device::DeviceError;
/// let e = DeviceError::ReadOnlyConfig { offset: 4 };
/// assert_eq!(e.to_string(), "config space is read-only (write at offset 4)");
/// ```
#[derive(Debug, Error)]
pub enum DeviceError {
    /// I/O on the device's backing (file, tap, entropy source) failed.
    #[error("device I/O failed: {0}")]
    Io(#[from] io::Error),
    /// The guest's ring or a chain broke the rules.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The config space cannot be written there.
    #[error("config space is read-only (write at offset {offset})")]
    ReadOnlyConfig {
        /// Where the write was aimed.
        offset: u32,
    },
    /// Anything else, with a description.
    #[error("{0}")]
    Other(String),
}
