//! Counters, readable from any thread.

use std::sync::atomic::{AtomicU64, Ordering};

/// Requests served and bytes delivered.
///
/// # Example
/// ```
/// let m = vhost_user_sync_rng::RngMetrics::default();
/// m.record(32);
/// assert_eq!((m.requests(), m.bytes()), (1, 32));
/// ```
#[derive(Debug, Default)]
pub struct RngMetrics {
    requests: AtomicU64,
    bytes: AtomicU64,
}

impl RngMetrics {
    /// Counts one request of `bytes`.
    pub fn record(&self, bytes: usize) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Adds counts served elsewhere (a device state loaded from another backend).
    pub fn add(&self, requests: u64, bytes: u64) {
        self.requests.fetch_add(requests, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Requests served.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Bytes delivered.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}
