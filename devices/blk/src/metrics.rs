//! Counters, readable from any thread.

use std::sync::atomic::{AtomicU64, Ordering};

/// Request and error counters of a block device.
///
/// # Example
/// ```
/// let m = vhost_user_sync_blk::BlkMetrics::default();
/// m.read_ops.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
/// assert_eq!(m.snapshot().read_ops, 1);
/// ```
#[derive(Debug, Default)]
pub struct BlkMetrics {
    /// Completed reads.
    pub read_ops: AtomicU64,
    /// Bytes read.
    pub read_bytes: AtomicU64,
    /// Completed writes.
    pub write_ops: AtomicU64,
    /// Bytes written.
    pub write_bytes: AtomicU64,
    /// Completed flushes.
    pub flush_ops: AtomicU64,
    /// Completed DISCARD and WRITE_ZEROES requests.
    pub discard_ops: AtomicU64,
    /// Requests refused as malformed or unsupported.
    pub malformed: AtomicU64,
    /// Requests that failed on the host (I/O errors).
    pub io_errors: AtomicU64,
    /// Requests through an aligned bounce buffer (`O_DIRECT` with unaligned guest
    /// buffers).
    pub bounced: AtomicU64,
    /// Requests done through io_uring (the others were done synchronously).
    pub ring_ops: AtomicU64,
}

/// A copy of the counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BlkCounters {
    /// See [`BlkMetrics::read_ops`].
    pub read_ops: u64,
    /// See [`BlkMetrics::read_bytes`].
    pub read_bytes: u64,
    /// See [`BlkMetrics::write_ops`].
    pub write_ops: u64,
    /// See [`BlkMetrics::write_bytes`].
    pub write_bytes: u64,
    /// See [`BlkMetrics::flush_ops`].
    pub flush_ops: u64,
    /// See [`BlkMetrics::discard_ops`].
    pub discard_ops: u64,
    /// See [`BlkMetrics::malformed`].
    pub malformed: u64,
    /// See [`BlkMetrics::io_errors`].
    pub io_errors: u64,
    /// See [`BlkMetrics::bounced`].
    pub bounced: u64,
    /// See [`BlkMetrics::ring_ops`].
    pub ring_ops: u64,
}

impl BlkCounters {
    /// The counters' names, in the order of [`Self::values`].
    pub const NAMES: [&'static str; 10] = [
        "reads",
        "read_bytes",
        "writes",
        "write_bytes",
        "flushes",
        "discards",
        "malformed",
        "io_errors",
        "bounced",
        "ring_ops",
    ];

    /// Every counter, in the order of [`Self::NAMES`].
    ///
    /// ```
    /// use vhost_user_sync_blk::BlkCounters;
    /// let c = BlkCounters { write_ops: 2, ..Default::default() };
    /// assert_eq!(BlkCounters::from_values(c.values()), c);
    /// ```
    pub fn values(&self) -> [u64; 10] {
        [
            self.read_ops,
            self.read_bytes,
            self.write_ops,
            self.write_bytes,
            self.flush_ops,
            self.discard_ops,
            self.malformed,
            self.io_errors,
            self.bounced,
            self.ring_ops,
        ]
    }

    /// The counters from [`Self::values`]' order.
    pub fn from_values(v: [u64; 10]) -> Self {
        BlkCounters {
            read_ops: v[0],
            read_bytes: v[1],
            write_ops: v[2],
            write_bytes: v[3],
            flush_ops: v[4],
            discard_ops: v[5],
            malformed: v[6],
            io_errors: v[7],
            bounced: v[8],
            ring_ops: v[9],
        }
    }
}

impl BlkMetrics {
    /// Reads every counter.
    /// Adds `c` to the counters (a device state loaded from another backend: its
    /// counts go on from there).
    pub fn add(&self, c: &BlkCounters) {
        let a = |x: &AtomicU64, v: u64| {
            x.fetch_add(v, Ordering::Relaxed);
        };
        a(&self.read_ops, c.read_ops);
        a(&self.read_bytes, c.read_bytes);
        a(&self.write_ops, c.write_ops);
        a(&self.write_bytes, c.write_bytes);
        a(&self.flush_ops, c.flush_ops);
        a(&self.discard_ops, c.discard_ops);
        a(&self.malformed, c.malformed);
        a(&self.io_errors, c.io_errors);
        a(&self.bounced, c.bounced);
        a(&self.ring_ops, c.ring_ops);
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> BlkCounters {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        BlkCounters {
            read_ops: g(&self.read_ops),
            read_bytes: g(&self.read_bytes),
            write_ops: g(&self.write_ops),
            write_bytes: g(&self.write_bytes),
            flush_ops: g(&self.flush_ops),
            discard_ops: g(&self.discard_ops),
            malformed: g(&self.malformed),
            io_errors: g(&self.io_errors),
            bounced: g(&self.bounced),
            ring_ops: g(&self.ring_ops),
        }
    }

    /// Counts a failed request in `counter`; logs the first few and then every 1000th.
    pub fn failed(&self, counter: &AtomicU64, what: &dyn std::fmt::Display) {
        let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
        if n <= 10 || n.is_multiple_of(1000) {
            log::warn!("blk: request failed (#{n} of its kind): {what}");
        }
    }
}
