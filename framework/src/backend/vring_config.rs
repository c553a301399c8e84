//! What the connection thread knows of one ring between requests.

use std::fs::File;
use std::sync::Arc;

use crate::protocol::payload::VringAddr;

/// One ring's configuration as the frontend set it, and its state (started/enabled).
#[derive(Debug, Default)]
pub(crate) struct VringConfig {
    /// SET_VRING_NUM (0: not set).
    pub num: u16,
    /// SET_VRING_ADDR, as frontend addresses.
    pub addr: Option<VringAddr>,
    /// SET_VRING_BASE's `num`, or what GET_VRING_BASE returned (a
    /// [`RingState`](crate::queue::RingState), encoded).
    pub base: u32,
    /// SET_VRING_CALL.
    pub call: Option<Arc<File>>,
    /// SET_VRING_ERR: signalled when the ring breaks.
    pub err: Option<Arc<File>>,
    /// Enabled (SET_VRING_ENABLE, or SET_FEATURES without PROTOCOL_FEATURES).
    pub enabled: bool,
    /// Running on a worker (between SET_VRING_KICK and GET_VRING_BASE).
    pub started: bool,
}
