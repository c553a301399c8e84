//! `ServeOptions`: what the operator of a backend program sets for every device it
//! serves, over what the devices themselves ask for.

use std::time::Duration;

/// Settings applied to every connection a listener serves.
///
/// # Example
/// ```
/// use std::time::Duration;
/// use vhost_user_sync::backend::ServeOptions;
/// let opts = ServeOptions { busy_poll: Some(Duration::from_micros(50)) };
/// assert_eq!(ServeOptions::default().busy_poll, None);
/// # let _ = opts;
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServeOptions {
    /// Overrides [`DeviceInfo::busy_poll`](crate::device::DeviceInfo::busy_poll): how
    /// long workers poll their rings after the last chain (`None`: as the device says).
    pub busy_poll: Option<Duration>,
}
