//! `QueueStats`: one ring's counters, kept by the thread that runs the ring and read by
//! any other without a lock.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of one virtqueue over a connection (they carry on across ring restarts).
///
/// Each counter has one writer at a time, the thread that owns the ring, which adds with
/// a plain load and store (no locked instruction on the data path); readers load.
///
/// # Example
/// ```
/// use vhost_user_sync::queue::QueueStats;
/// let stats = QueueStats::default();
/// assert_eq!(stats.snapshot().chains, 0);
/// ```
#[derive(Debug, Default)]
pub struct QueueStats {
    kicks: AtomicU64,
    calls: AtomicU64,
    chains: AtomicU64,
    used: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    malformed: AtomicU64,
    in_flight: AtomicU64,
    broken: AtomicU64,
}

/// A copy of a queue's counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct QueueCounters {
    /// Kicks taken from the kick eventfd (several kicks before a read count once).
    pub kicks: u64,
    /// Call eventfd writes (interrupts asked for).
    pub calls: u64,
    /// Chains taken from the ring.
    pub chains: u64,
    /// Chains returned used.
    pub used: u64,
    /// Bytes of the used chains' device-readable buffers (driver to device).
    pub bytes_read: u64,
    /// Bytes the device wrote into used chains (device to driver).
    pub bytes_written: u64,
    /// Chains refused as malformed (returned with length 0).
    pub malformed: u64,
    /// Chains the device holds, as of the end of its last run.
    pub in_flight: u64,
    /// 1 when the ring is broken (stopped until restarted), else 0.
    pub broken: u64,
}

/// Adds `n` to a counter only its owner writes.
#[inline]
fn add(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

impl QueueStats {
    /// Reads every counter.
    pub fn snapshot(&self) -> QueueCounters {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        QueueCounters {
            kicks: g(&self.kicks),
            calls: g(&self.calls),
            chains: g(&self.chains),
            used: g(&self.used),
            bytes_read: g(&self.bytes_read),
            bytes_written: g(&self.bytes_written),
            malformed: g(&self.malformed),
            in_flight: g(&self.in_flight),
            broken: g(&self.broken),
        }
    }

    /// Chains refused as malformed so far.
    pub fn malformed(&self) -> u64 {
        self.malformed.load(Ordering::Relaxed)
    }

    #[inline]
    pub(crate) fn kicked(&self) {
        add(&self.kicks, 1);
    }

    #[inline]
    pub(crate) fn called(&self) {
        add(&self.calls, 1);
    }

    #[inline]
    pub(crate) fn taken(&self) {
        add(&self.chains, 1);
    }

    #[inline]
    pub(crate) fn completed(&self, read: u32, written: u32) {
        add(&self.used, 1);
        add(&self.bytes_read, read.into());
        add(&self.bytes_written, written.into());
    }

    pub(crate) fn refused(&self) {
        add(&self.malformed, 1);
    }

    #[inline]
    pub(crate) fn set_in_flight(&self, n: u32) {
        self.in_flight.store(n.into(), Ordering::Relaxed);
    }

    pub(crate) fn set_broken(&self, broken: bool) {
        self.broken.store(broken.into(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_add_up_and_gauges_hold_the_last_value() {
        let s = QueueStats::default();
        s.kicked();
        s.kicked();
        s.called();
        s.taken();
        s.taken();
        s.completed(12, 64);
        s.refused();
        s.set_in_flight(1);
        s.set_broken(true);
        assert_eq!(
            s.snapshot(),
            QueueCounters {
                kicks: 2,
                calls: 1,
                chains: 2,
                used: 1,
                bytes_read: 12,
                bytes_written: 64,
                malformed: 1,
                in_flight: 1,
                broken: 1,
            }
        );
        s.set_in_flight(0);
        assert_eq!(s.snapshot().in_flight, 0);
    }

    #[test]
    fn a_reader_on_another_thread_sees_the_counts() {
        let s = std::sync::Arc::new(QueueStats::default());
        let w = s.clone();
        std::thread::spawn(move || {
            for _ in 0..1000 {
                w.taken();
            }
        })
        .join()
        .unwrap();
        assert_eq!(s.snapshot().chains, 1000);
    }
}
