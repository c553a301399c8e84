//! Counters, readable from any thread.

use std::sync::atomic::{AtomicU64, Ordering};

/// Traffic and error counters of a net device.
///
/// # Example
/// ```
/// let m = vhost_user_sync_net::NetMetrics::default();
/// m.tx_packets.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
/// assert_eq!(m.snapshot().tx_packets, 1);
/// ```
#[derive(Debug, Default)]
pub struct NetMetrics {
    /// Frames taken from the guest.
    pub tx_packets: AtomicU64,
    /// Bytes taken from the guest (without headers).
    pub tx_bytes: AtomicU64,
    /// Frames given to the guest.
    pub rx_packets: AtomicU64,
    /// Bytes given to the guest (without headers).
    pub rx_bytes: AtomicU64,
    /// Guest frames dropped as malformed.
    pub tx_malformed: AtomicU64,
    /// RX buffers refused as malformed (too small for the header).
    pub rx_malformed: AtomicU64,
    /// Control commands refused.
    pub ctrl_errors: AtomicU64,
    /// TX frames the tap took through the tap ring (a batch per system call); the rest
    /// of `tx_packets` went one `writev` each, or to no tap at all.
    pub tx_ring_frames: AtomicU64,
}

/// A copy of the counters.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NetCounters {
    /// See [`NetMetrics::tx_packets`].
    pub tx_packets: u64,
    /// See [`NetMetrics::tx_bytes`].
    pub tx_bytes: u64,
    /// See [`NetMetrics::rx_packets`].
    pub rx_packets: u64,
    /// See [`NetMetrics::rx_bytes`].
    pub rx_bytes: u64,
    /// See [`NetMetrics::tx_malformed`].
    pub tx_malformed: u64,
    /// See [`NetMetrics::rx_malformed`].
    pub rx_malformed: u64,
    /// See [`NetMetrics::ctrl_errors`].
    pub ctrl_errors: u64,
    /// See [`NetMetrics::tx_ring_frames`].
    pub tx_ring_frames: u64,
}

impl NetMetrics {
    /// Reads every counter.
    pub fn snapshot(&self) -> NetCounters {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        NetCounters {
            tx_packets: g(&self.tx_packets),
            tx_bytes: g(&self.tx_bytes),
            rx_packets: g(&self.rx_packets),
            rx_bytes: g(&self.rx_bytes),
            tx_malformed: g(&self.tx_malformed),
            rx_malformed: g(&self.rx_malformed),
            ctrl_errors: g(&self.ctrl_errors),
            tx_ring_frames: g(&self.tx_ring_frames),
        }
    }

    /// Counts a malformed guest frame; logs the first few and then every 1000th.
    pub fn malformed(&self, counter: &AtomicU64, what: &dyn std::fmt::Display) {
        let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
        if n <= 10 || n.is_multiple_of(1000) {
            log::warn!("net: dropped malformed frame #{n}: {what}");
        }
    }
}
