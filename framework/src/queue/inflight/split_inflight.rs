//! `SplitInflight`: one split ring's part of the in-flight area, kept as the spec's
//! "Inflight I/O tracking" section lays down, so that a process killed at any
//! instruction leaves a region a new process can recover from.
//!
//! - A chain taken from the ring: its head's `counter` is set from a running count,
//!   then `inflight` is set to 1.
//! - A chain used: its head is linked into the last batch (`next` points at the
//!   previous `last_batch_head`, which becomes this head) before the used element is
//!   written. Once the ring's used index is published, each head of the batch gets
//!   `inflight` 0 and `used_idx` takes the published index.
//! - On a new start: if `used_idx` differs from the ring's used index, the last batch
//!   was published but not cleared: its entries (as many as the two indices differ)
//!   are cleared by following the batch links. Every entry still in flight is then
//!   resubmitted in `counter` order, and the ring resumes reading at its used index
//!   plus the number in flight.

use std::sync::atomic::Ordering;

use super::layout::{self, split as l};
use super::queue_region::QueueRegion;
use super::InflightError;
use crate::memory::MemoryTable;

/// One split ring's in-flight records.
///
/// # Example
/// ```
/// use vhost_user_sync::queue::InflightArea;
/// let (area, _fd) = InflightArea::create(1, 8, false, None).unwrap();
/// let mut q = area.split_queue(0).unwrap();
/// assert_eq!(q.recover(8, 0).unwrap(), Vec::<u16>::new()); // a new area
/// q.mark(3);
/// q.mark(5);
/// q.link_used(5); // 5 is used first; the ring publishes used index 1
/// q.published(1);
/// // A process started again sees 3 still in flight.
/// let mut again = area.split_queue(0).unwrap();
/// assert_eq!(again.recover(8, 1).unwrap(), vec![3]);
/// ```
#[derive(Debug, Clone)]
pub struct SplitInflight {
    region: QueueRegion,
    queue: u16,
    /// Entries the region holds (the area's queue size).
    capacity: u16,
    /// The next `counter` value.
    counter: u64,
    /// The head most recently linked into the batch.
    last_batch_head: u16,
    /// Heads used since the last publish, as this process wrote them (the region's
    /// links are only read back after a crash).
    batch: Vec<u16>,
}

impl SplitInflight {
    pub(super) fn new(mem: MemoryTable, base: u64, queue: u16, capacity: u16) -> Self {
        SplitInflight {
            region: QueueRegion::new(mem, base),
            queue,
            capacity,
            counter: 1,
            last_batch_head: 0,
            batch: Vec::new(),
        }
    }

    fn load<T: vm_memory::AtomicAccess + Default>(&self, at: u64) -> T {
        self.region.load(at)
    }

    fn store<T: vm_memory::AtomicAccess>(&self, at: u64, v: T, order: Ordering) {
        self.region.store(at, v, order)
    }

    /// Whether a backend has set the region up before (its version is not 0): the ring
    /// resumes from a previous process rather than starting afresh.
    pub fn in_use(&self) -> bool {
        self.load::<u16>(l::VERSION) != 0
    }

    /// Prepares the region for a ring of `ring_size` entries whose used ring holds
    /// `ring_used` as its index: a new region (version 0) is set up; a region in use
    /// is recovered. Returns the heads still in flight, oldest first (to be taken
    /// again before anything new); the ring resumes reading the avail ring at
    /// `ring_used` plus their number.
    pub fn recover(&mut self, ring_size: u16, ring_used: u16) -> Result<Vec<u16>, InflightError> {
        let queue = self.queue;
        let version: u16 = self.load(l::VERSION);
        let desc_num: u16 = self.load(l::DESC_NUM);
        if ring_size > self.capacity {
            return Err(InflightError::BadDescNum {
                queue,
                desc_num: self.capacity,
                expected: ring_size,
                why: "the ring is larger than the area's queue size",
            });
        }
        match version {
            0 => {
                // A new region: nothing in flight. Entries are cleared (a frontend's
                // memfd need not be zeroed), then the header, the version last.
                for i in 0..self.capacity {
                    self.store::<u8>(l::entry(i, l::E_INFLIGHT), 0, Ordering::Relaxed);
                }
                self.store::<u16>(l::DESC_NUM, self.capacity, Ordering::Relaxed);
                self.store::<u16>(l::LAST_BATCH_HEAD, 0, Ordering::Relaxed);
                self.store::<u16>(l::USED_IDX, ring_used, Ordering::Relaxed);
                self.store::<u16>(l::VERSION, layout::VERSION, Ordering::Release);
                self.counter = 1;
                self.last_batch_head = 0;
                self.batch.clear();
                return Ok(Vec::new());
            }
            layout::VERSION => {}
            version => return Err(InflightError::BadVersion { queue, version }),
        }
        if desc_num != self.capacity {
            return Err(InflightError::BadDescNum {
                queue,
                desc_num,
                expected: self.capacity,
                why: "it does not match the area's queue size",
            });
        }
        let area_used: u16 = self.load(l::USED_IDX);
        let last: u16 = self.load(l::LAST_BATCH_HEAD);
        if area_used != ring_used {
            // The last batch reached the guest but its entries were not all cleared.
            let batch = ring_used.wrapping_sub(area_used);
            if batch > ring_size {
                return Err(InflightError::BadBatch {
                    queue,
                    batch,
                    ring_used,
                    area_used,
                    size: ring_size,
                });
            }
            let mut heads = Vec::with_capacity(usize::from(batch));
            let mut at = last;
            for _ in 0..batch {
                if at >= ring_size {
                    return Err(InflightError::BadEntry {
                        queue,
                        what: "batch link",
                        index: at,
                        size: ring_size,
                    });
                }
                heads.push(at);
                at = self.load(l::entry(at, l::E_NEXT));
            }
            for h in heads {
                self.store::<u8>(l::entry(h, l::E_INFLIGHT), 0, Ordering::Relaxed);
            }
            self.store::<u16>(l::USED_IDX, ring_used, Ordering::Release);
        }
        let mut pending: Vec<(u64, u16)> = Vec::new();
        for i in 0..desc_num {
            match self.load::<u8>(l::entry(i, l::E_INFLIGHT)) {
                0 => {}
                1 if i < ring_size => pending.push((self.load(l::entry(i, l::E_COUNTER)), i)),
                1 => {
                    return Err(InflightError::BadEntry {
                        queue,
                        what: "in-flight head",
                        index: i,
                        size: ring_size,
                    })
                }
                value => {
                    return Err(InflightError::BadFlag {
                        queue,
                        index: i,
                        value,
                    })
                }
            }
        }
        pending.sort_unstable();
        self.counter = pending.last().map_or(1, |&(c, _)| c.saturating_add(1));
        self.last_batch_head = last.min(ring_size - 1);
        self.batch.clear();
        Ok(pending.into_iter().map(|(_, head)| head).collect())
    }

    /// Records chain `head` as taken from the ring: its counter, then its flag.
    #[inline]
    pub fn mark(&mut self, head: u16) {
        self.store::<u64>(
            l::entry(head, l::E_COUNTER),
            self.counter,
            Ordering::Relaxed,
        );
        self.store::<u8>(l::entry(head, l::E_INFLIGHT), 1, Ordering::Release);
        self.counter = self.counter.wrapping_add(1);
    }

    /// Links chain `head` into the batch being used; called before its used element
    /// is written.
    #[inline]
    pub fn link_used(&mut self, head: u16) {
        self.store::<u16>(
            l::entry(head, l::E_NEXT),
            self.last_batch_head,
            Ordering::Relaxed,
        );
        self.store::<u16>(l::LAST_BATCH_HEAD, head, Ordering::Release);
        self.last_batch_head = head;
        self.batch.push(head);
    }

    /// The ring published used index `used_idx`: the batch is no longer in flight.
    #[inline]
    pub fn published(&mut self, used_idx: u16) {
        if self.batch.is_empty() {
            return;
        }
        for &h in &self.batch {
            self.store::<u8>(l::entry(h, l::E_INFLIGHT), 0, Ordering::Relaxed);
        }
        self.store::<u16>(l::USED_IDX, used_idx, Ordering::Release);
        self.batch.clear();
    }
}

#[cfg(test)]
mod tests;
