//! `ServeOptions`: what the operator of a backend program sets for every device it
//! serves, over what the devices themselves ask for.

use std::time::Duration;

/// Settings applied to every connection a listener serves.
///
/// # Example
/// ```
/// use std::time::Duration;
/// use vhost_user_sync::backend::ServeOptions;
/// let opts = ServeOptions { busy_poll: Some(Duration::from_micros(50)), ..Default::default() };
/// assert_eq!(ServeOptions::default().busy_poll, None);
/// assert_eq!(opts.worker_timeout(), ServeOptions::WORKER_TIMEOUT);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServeOptions {
    /// Overrides [`DeviceInfo::busy_poll`](crate::device::DeviceInfo::busy_poll): how
    /// long workers poll their rings after the last chain (`None`: as the device says).
    pub busy_poll: Option<Duration>,
    /// How long the connection thread waits for a worker to carry out a command (stop a
    /// ring, switch memory, enable a ring) and to exit, before it gives the device up as
    /// stuck and closes the connection (`None`: [`Self::WORKER_TIMEOUT`]).
    pub worker_timeout: Option<Duration>,
    /// Where the connections served count their queues' work (`None`: counted only for
    /// the connection itself).
    pub stats: Option<super::DeviceStats>,
}

impl ServeOptions {
    /// The default bound on waiting for a worker.
    pub const WORKER_TIMEOUT: Duration = Duration::from_secs(10);

    /// The bound on waiting for a worker in force.
    pub fn worker_timeout(&self) -> Duration {
        self.worker_timeout.unwrap_or(Self::WORKER_TIMEOUT)
    }
}
