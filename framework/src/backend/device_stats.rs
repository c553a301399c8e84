//! `DeviceStats`: the counters of the device a listener serves, for whoever wants to read
//! them while it runs (a statistics endpoint, a log line on a signal).

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::queue::{QueueCounters, QueueStats};

/// A handle on the counters of the device served on one listener: the queues of the
/// connection being served, and totals over the listener's life. Clones share the
/// counters. Only connecting, disconnecting and reading take its lock; the data path
/// counts into per-queue [`QueueStats`] without one.
///
/// # Example
/// ```
/// use vhost_user_sync::backend::DeviceStats;
/// let stats = DeviceStats::new();
/// let s = stats.snapshot();
/// assert_eq!((s.connected, s.connections, s.queues.len()), (false, 0, 0));
/// ```
#[derive(Debug, Clone)]
pub struct DeviceStats(Arc<Mutex<Inner>>);

#[derive(Debug)]
struct Inner {
    started: Instant,
    connections: u64,
    /// Empty until a frontend connected.
    device: String,
    queues: Vec<Arc<QueueStats>>,
    /// Totals of the connections that ended.
    past: Vec<QueueCounters>,
}

/// What [`DeviceStats::snapshot`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSnapshot {
    /// The device's name (its `DeviceInfo::name`), once a frontend has connected.
    pub device: Option<String>,
    /// Whether a frontend is connected now.
    pub connected: bool,
    /// Frontends served so far, the current one included.
    pub connections: u64,
    /// Since the handle was made.
    pub uptime: Duration,
    /// Per queue: the current connection's counters plus those of the connections that
    /// ended (gauges, `in_flight` and `broken`, are the current connection's).
    pub queues: Vec<QueueCounters>,
}

impl Default for DeviceStats {
    fn default() -> Self {
        Self::new()
    }
}

impl PartialEq for DeviceStats {
    /// The same counters (one handle and its clones).
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for DeviceStats {}

impl DeviceStats {
    /// A handle with nothing counted yet.
    ///
    /// Its storage is made here, with room for a device name and a few queues, and
    /// reused by every connection: an allocation a connection made and left behind would
    /// sit among that connection's freed memory and keep the allocator from giving its
    /// page back after the frontend leaves (hundreds of idle devices, one pinned page
    /// each).
    pub fn new() -> Self {
        const ROOM: usize = 8;
        DeviceStats(Arc::new(Mutex::new(Inner {
            started: Instant::now(),
            connections: 0,
            device: String::with_capacity(32),
            queues: Vec::with_capacity(ROOM),
            past: Vec::with_capacity(ROOM),
        })))
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> DeviceSnapshot {
        let inner = self.0.lock();
        let n = inner.queues.len().max(inner.past.len());
        let queues = (0..n)
            .map(|i| {
                let past = inner.past.get(i).copied().unwrap_or_default();
                match inner.queues.get(i) {
                    Some(q) => sum(&past, &q.snapshot()),
                    None => QueueCounters {
                        in_flight: 0,
                        broken: 0,
                        ..past
                    },
                }
            })
            .collect();
        DeviceSnapshot {
            device: (!inner.device.is_empty()).then(|| inner.device.clone()),
            connected: !inner.queues.is_empty(),
            connections: inner.connections,
            uptime: inner.started.elapsed(),
            queues,
        }
    }

    /// A connection of `device` with these queues' counters starts.
    pub(crate) fn connected(&self, device: &str, queues: &[Arc<QueueStats>]) {
        let mut inner = self.0.lock();
        inner.connections += 1;
        if inner.device != device {
            inner.device.clear();
            inner.device.push_str(device);
        }
        inner.queues.clear();
        inner.queues.extend(queues.iter().cloned());
    }

    /// The current connection ended: its counts go into the totals.
    pub(crate) fn disconnected(&self) {
        let mut inner = self.0.lock();
        let inner = &mut *inner;
        for (i, q) in inner.queues.drain(..).enumerate() {
            if inner.past.len() <= i {
                inner.past.push(QueueCounters::default());
            }
            let total = sum(&inner.past[i], &q.snapshot());
            inner.past[i] = total;
            inner.past[i].in_flight = 0;
            inner.past[i].broken = 0;
        }
    }
}

/// Counters added up; the gauges are `now`'s.
fn sum(past: &QueueCounters, now: &QueueCounters) -> QueueCounters {
    QueueCounters {
        kicks: past.kicks + now.kicks,
        calls: past.calls + now.calls,
        chains: past.chains + now.chains,
        used: past.used + now.used,
        bytes_read: past.bytes_read + now.bytes_read,
        bytes_written: past.bytes_written + now.bytes_written,
        malformed: past.malformed + now.malformed,
        in_flight: now.in_flight,
        broken: now.broken,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_carry_over_connections_and_gauges_do_not() {
        let stats = DeviceStats::new();
        let q = Arc::new(QueueStats::default());
        stats.connected("rng", std::slice::from_ref(&q));
        q.taken();
        q.completed(0, 64);
        q.set_in_flight(3);
        let s = stats.snapshot();
        assert!(s.connected);
        assert_eq!(s.device.as_deref(), Some("rng"));
        assert_eq!((s.queues[0].chains, s.queues[0].in_flight), (1, 3));
        stats.disconnected();
        let s = stats.snapshot();
        assert!(!s.connected);
        assert_eq!((s.queues[0].chains, s.queues[0].in_flight), (1, 0));
        let q2 = Arc::new(QueueStats::default());
        stats.connected("rng", std::slice::from_ref(&q2));
        q2.taken();
        let s = stats.snapshot();
        assert_eq!(
            (s.connections, s.queues[0].chains, s.queues[0].bytes_written),
            (2, 2, 64)
        );
        assert_eq!(stats, stats.clone());
        assert_ne!(stats, DeviceStats::new());
    }
}
