//! `PackedInflight`: one packed ring's part of the in-flight area, in the spec's packed
//! layout. A packed ring's slots are overwritten by used descriptors, so each chain
//! taken is copied into the area, one entry per ring slot it took, and a chain still
//! in flight after a crash is rebuilt from its copies.
//!
//! - A chain taken: entries are taken from the free entries, each gets a copy of one
//!   descriptor (linked by `next`); the first holds `num`, `last` and `counter`, then
//!   `inflight` is set to 1.
//! - A chain used: its entries are pushed onto the area's `free_head` list (`next` of
//!   its last entry is the old `free_head`, then `free_head` is its first entry) and
//!   `used_idx` / `used_wrap_counter` take the position after its used descriptor,
//!   before the batch is handed to the driver. Once it is, each first entry of the
//!   batch gets `inflight` 0, then `old_used_idx` / `old_used_wrap_counter` take the
//!   current values and the list is emptied (`free_head` is set back to the end marker,
//!   the queue size, which `old_free_head` always holds).
//! - On a new start: if the used position differs from the old one, the batch was
//!   handed over exactly when the descriptor at the old position carries the used bit
//!   of the old wrap counter (a later lap's buffer carries it too); then the batch's
//!   entries, found from `free_head` to `old_free_head`, are cleared and the used
//!   position kept, otherwise the old position is. The chains still in flight are
//!   resubmitted from their copies in `counter` order (each one's `last` set from its
//!   links), the free entries are linked again from scratch, and the ring reads the
//!   driver's next descriptor after the slots of the chains in flight.

use std::sync::atomic::Ordering;

use super::layout::{self, packed as l};
use super::queue_region::QueueRegion;
use super::InflightError;
use crate::memory::MemoryTable;
use crate::queue::packed::layout::{self as ring_layout, PackedDescriptor};

/// Where a packed ring resumes after recovery: the chains in flight, oldest first (their
/// descriptors as copied), and the device's used and avail positions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PackedResume {
    /// Each chain in flight: its buffer id and its descriptors.
    pub chains: Vec<(u16, Vec<PackedDescriptor>)>,
    /// The next used slot and its wrap counter.
    pub used: (u16, bool),
    /// The next avail slot and its wrap counter.
    pub avail: (u16, bool),
}

/// One packed ring's in-flight records.
///
/// # Example
/// ```
/// use vhost_user_sync::queue::InflightArea;
/// use vhost_user_sync::queue::packed::layout::PackedDescriptor;
/// let (area, _fd) = InflightArea::create(1, 8, true, None).unwrap();
/// let mut q = area.packed_queue(0).unwrap();
/// assert!(q.recover(8, (0, true), |_| None).unwrap().is_none()); // a new area
/// let d = PackedDescriptor { addr: 0x4000, len: 64, id: 5, flags: 0x80 | 2 };
/// q.mark(5, &[d]).unwrap();
/// // A process started again finds buffer 5 in flight, to be read again from its copy.
/// let again = area.packed_queue(0).unwrap().recover(8, (0, true), |_| None).unwrap().unwrap();
/// assert_eq!(again.chains, vec![(5, vec![d])]);
/// assert_eq!(again.avail, (1, true));
/// ```
#[derive(Debug, Clone)]
pub struct PackedInflight {
    region: QueueRegion,
    queue: u16,
    capacity: u16,
    ring_size: u16,
    counter: u64,
    /// Free entries (this process's own list: the area's links are not trusted).
    free: Vec<u16>,
    /// Per buffer id: the first entry of its chain and the entries it holds.
    chains: Vec<Vec<u16>>,
    /// The area's `free_head` as last written.
    free_head: u16,
    /// First entries of the chains used since the last hand-over.
    batch: Vec<u16>,
}

impl PackedInflight {
    pub(super) fn new(mem: MemoryTable, base: u64, queue: u16, capacity: u16) -> Self {
        PackedInflight {
            region: QueueRegion::new(mem, base),
            queue,
            capacity,
            ring_size: capacity,
            counter: 1,
            free: Vec::new(),
            chains: Vec::new(),
            free_head: capacity,
            batch: Vec::new(),
        }
    }

    fn load<T: vm_memory::AtomicAccess + Default>(&self, at: u64) -> T {
        self.region.load(at)
    }

    fn store<T: vm_memory::AtomicAccess>(&self, at: u64, v: T, order: Ordering) {
        self.region.store(at, v, order)
    }

    fn bad(&self, what: &'static str, index: u16) -> InflightError {
        InflightError::BadEntry {
            queue: self.queue,
            what,
            index,
            size: self.capacity,
        }
    }

    /// Prepares the region for a ring of `ring_size` entries whose device positions,
    /// as the frontend set them, are `ring_used`; `flags_at(slot)` reads a descriptor's
    /// flags from the ring. A new region (version 0) is set up and `Ok(None)` returned
    /// (the ring keeps its positions); a region in use is recovered.
    pub fn recover(
        &mut self,
        ring_size: u16,
        ring_used: (u16, bool),
        flags_at: impl Fn(u16) -> Option<u16>,
    ) -> Result<Option<PackedResume>, InflightError> {
        let queue = self.queue;
        if ring_size > self.capacity {
            return Err(InflightError::BadDescNum {
                queue,
                desc_num: self.capacity,
                expected: ring_size,
                why: "the ring is larger than the area's queue size",
            });
        }
        self.ring_size = ring_size;
        self.chains = vec![Vec::new(); usize::from(ring_size)];
        self.batch.clear();
        let version: u16 = self.load(l::VERSION);
        match version {
            0 => {
                for i in 0..self.capacity {
                    self.store::<u8>(l::entry(i, l::E_INFLIGHT), 0, Ordering::Relaxed);
                }
                self.store::<u16>(l::DESC_NUM, self.capacity, Ordering::Relaxed);
                self.write_positions(ring_used, ring_used);
                self.rebuild_free(&vec![false; usize::from(self.capacity)]);
                self.counter = 1;
                self.store::<u16>(l::VERSION, layout::VERSION, Ordering::Release);
                return Ok(None);
            }
            layout::VERSION => {}
            version => return Err(InflightError::BadVersion { queue, version }),
        }
        let desc_num: u16 = self.load(l::DESC_NUM);
        if desc_num != self.capacity {
            return Err(InflightError::BadDescNum {
                queue,
                desc_num,
                expected: self.capacity,
                why: "it does not match the area's queue size",
            });
        }
        let used = self.position(l::USED_IDX, l::USED_WRAP)?;
        let old = self.position(l::OLD_USED_IDX, l::OLD_USED_WRAP)?;
        let committed = if used != old {
            // Handed over when the old slot carries the old lap's used bit (or a later
            // lap's buffer, which the driver posts only after taking the used one).
            let handed = flags_at(old.0).is_some_and(|f| (f & ring_layout::F_USED != 0) == old.1);
            if handed {
                self.clear_last_batch()?;
                used
            } else {
                old
            }
        } else {
            used
        };
        // The chains in flight, from their copies.
        let mut owned = vec![false; usize::from(self.capacity)];
        let mut found: Vec<(u64, u16, Vec<PackedDescriptor>)> = Vec::new();
        let mut slots: u32 = 0;
        for i in 0..self.capacity {
            match self.load::<u8>(l::entry(i, l::E_INFLIGHT)) {
                0 => continue,
                1 => {}
                value => {
                    return Err(InflightError::BadFlag {
                        queue,
                        index: i,
                        value,
                    })
                }
            }
            let num: u16 = self.load(l::entry(i, l::E_NUM));
            if num == 0 || num > ring_size {
                return Err(self.bad("chain length", num));
            }
            let mut entries = Vec::with_capacity(usize::from(num));
            let mut descs = Vec::with_capacity(usize::from(num));
            let mut at = i;
            for k in 0..num {
                if at >= self.capacity || owned[usize::from(at)] {
                    return Err(self.bad("chain entry", at));
                }
                owned[usize::from(at)] = true;
                entries.push(at);
                descs.push(PackedDescriptor {
                    addr: self.load(l::entry(at, l::E_ADDR)),
                    len: self.load(l::entry(at, l::E_LEN)),
                    id: self.load(l::entry(at, l::E_ID)),
                    flags: self.load(l::entry(at, l::E_FLAGS)),
                });
                if k + 1 < num {
                    at = self.load(l::entry(at, l::E_NEXT));
                }
            }
            let id = descs[descs.len() - 1].id;
            if id >= ring_size || !self.chains[usize::from(id)].is_empty() {
                return Err(self.bad("buffer id", id));
            }
            self.chains[usize::from(id)] = entries;
            slots += u32::from(num);
            found.push((self.load(l::entry(i, l::E_COUNTER)), id, descs));
        }
        if slots > u32::from(ring_size) {
            return Err(InflightError::BadBatch {
                queue,
                batch: slots.min(u32::from(u16::MAX)) as u16,
                ring_used: committed.0,
                area_used: old.0,
                size: ring_size,
            });
        }
        found.sort_unstable_by_key(|f| (f.0, f.1));
        self.counter = found.last().map_or(1, |f| f.0.saturating_add(1));
        // Each chain's `last` as found by its links: the area's own was never read, and
        // the batch list goes through it once the chain is used.
        for entries in self.chains.iter().filter(|e| !e.is_empty()) {
            let (head, last) = (entries[0], entries[entries.len() - 1]);
            self.store::<u16>(l::entry(head, l::E_LAST), last, Ordering::Relaxed);
        }
        self.rebuild_free(&owned);
        self.write_positions(committed, committed);
        let avail = ring_layout::advance(committed.0, committed.1, slots as u16, ring_size);
        Ok(Some(PackedResume {
            chains: found.into_iter().map(|(_, id, d)| (id, d)).collect(),
            used: committed,
            avail,
        }))
    }

    fn position(&self, idx: u64, wrap: u64) -> Result<(u16, bool), InflightError> {
        let at: u16 = self.load(idx);
        let w: u8 = self.load(wrap);
        if at >= self.ring_size {
            return Err(self.bad("used index", at));
        }
        if w > 1 {
            return Err(self.bad("wrap counter", w.into()));
        }
        Ok((at, w == 1))
    }

    fn write_positions(&self, used: (u16, bool), old: (u16, bool)) {
        self.store::<u16>(l::USED_IDX, used.0, Ordering::Relaxed);
        self.store::<u8>(l::USED_WRAP, used.1.into(), Ordering::Relaxed);
        self.store::<u16>(l::OLD_USED_IDX, old.0, Ordering::Relaxed);
        self.store::<u8>(l::OLD_USED_WRAP, old.1.into(), Ordering::Release);
    }

    /// Clears the chains of the batch handed over before the crash: from `free_head`
    /// along the pushed chains to `old_free_head`.
    fn clear_last_batch(&self) -> Result<(), InflightError> {
        let stop: u16 = self.load(l::OLD_FREE_HEAD);
        let mut at: u16 = self.load(l::FREE_HEAD);
        let mut steps = 0;
        while at != stop {
            if at >= self.capacity || steps >= self.ring_size {
                return Err(self.bad("batch link", at));
            }
            let last: u16 = self.load(l::entry(at, l::E_LAST));
            if last >= self.capacity {
                return Err(self.bad("last entry", last));
            }
            self.store::<u8>(l::entry(at, l::E_INFLIGHT), 0, Ordering::Relaxed);
            at = self.load(l::entry(last, l::E_NEXT));
            steps += 1;
        }
        Ok(())
    }

    /// Every entry not `owned` (by a chain in flight) is free; the area's batch list
    /// starts empty.
    fn rebuild_free(&mut self, owned: &[bool]) {
        self.free = (0..self.capacity)
            .rev()
            .filter(|&i| !owned[usize::from(i)])
            .collect();
        // No entry has the index `capacity`: the list of pushed chains is empty.
        self.free_head = self.capacity;
        self.store::<u16>(l::FREE_HEAD, self.capacity, Ordering::Relaxed);
        self.store::<u16>(l::OLD_FREE_HEAD, self.capacity, Ordering::Release);
    }

    /// Records chain `id`, taken from the ring as `descs` (one per ring slot). An id
    /// whose chain is still recorded (held, or used and not yet handed over) is refused
    /// and the area left as it is: recording it again would leave two chains with one
    /// id, or free the new chain's entries when the old one is handed over.
    pub fn mark(&mut self, id: u16, descs: &[PackedDescriptor]) -> Result<(), InflightError> {
        let n = descs.len();
        let recorded = self
            .chains
            .get(usize::from(id))
            .is_none_or(|entries| !entries.is_empty());
        if n == 0 || n > self.free.len() || recorded {
            return Err(self.bad("chain for buffer", id));
        }
        let entries: Vec<u16> = self.free.split_off(self.free.len() - n);
        for (k, (&e, d)) in entries.iter().zip(descs).enumerate() {
            self.store::<u64>(l::entry(e, l::E_ADDR), d.addr, Ordering::Relaxed);
            self.store::<u32>(l::entry(e, l::E_LEN), d.len, Ordering::Relaxed);
            self.store::<u16>(l::entry(e, l::E_ID), d.id, Ordering::Relaxed);
            self.store::<u16>(l::entry(e, l::E_FLAGS), d.flags, Ordering::Relaxed);
            if let Some(&next) = entries.get(k + 1) {
                self.store::<u16>(l::entry(e, l::E_NEXT), next, Ordering::Relaxed);
            }
        }
        let head = entries[0];
        self.store::<u16>(l::entry(head, l::E_NUM), n as u16, Ordering::Relaxed);
        self.store::<u16>(l::entry(head, l::E_LAST), entries[n - 1], Ordering::Relaxed);
        self.store::<u64>(
            l::entry(head, l::E_COUNTER),
            self.counter,
            Ordering::Relaxed,
        );
        self.store::<u8>(l::entry(head, l::E_INFLIGHT), 1, Ordering::Release);
        self.counter = self.counter.wrapping_add(1);
        self.chains[usize::from(id)] = entries;
        Ok(())
    }

    /// Chain `id` is being used; `after` is the used position after its descriptor.
    /// Called before the batch is handed to the driver.
    pub fn link_used(&mut self, id: u16, after: (u16, bool)) {
        let Some(entries) = self.chains.get(usize::from(id)).filter(|e| !e.is_empty()) else {
            return;
        };
        let (head, last) = (entries[0], entries[entries.len() - 1]);
        self.store::<u16>(l::entry(last, l::E_NEXT), self.free_head, Ordering::Relaxed);
        self.store::<u16>(l::FREE_HEAD, head, Ordering::Relaxed);
        self.store::<u16>(l::USED_IDX, after.0, Ordering::Relaxed);
        self.store::<u8>(l::USED_WRAP, after.1.into(), Ordering::Release);
        self.free_head = head;
        self.batch.push(id);
    }

    /// The batch was handed to the driver.
    pub fn published(&mut self, used: (u16, bool)) {
        if self.batch.is_empty() {
            return;
        }
        for &id in &self.batch {
            if let Some(&head) = self.chains[usize::from(id)].first() {
                self.store::<u8>(l::entry(head, l::E_INFLIGHT), 0, Ordering::Relaxed);
            }
        }
        self.store::<u16>(l::OLD_USED_IDX, used.0, Ordering::Relaxed);
        self.store::<u8>(l::OLD_USED_WRAP, used.1.into(), Ordering::Relaxed);
        // The list of pushed chains starts empty again (`old_free_head` stays at the end
        // marker): its entries go back to the free list and are taken again, and an
        // entry kept as the end of the list would cut a later batch short or loop it.
        self.free_head = self.capacity;
        self.store::<u16>(l::FREE_HEAD, self.capacity, Ordering::Release);
        for id in std::mem::take(&mut self.batch) {
            let entries = std::mem::take(&mut self.chains[usize::from(id)]);
            self.free.extend(entries);
        }
    }
}

#[cfg(test)]
#[path = "packed_inflight_tests.rs"]
mod tests;
