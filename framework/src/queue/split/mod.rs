//! Split virtqueues: the ring layout of virtio 1.0 (descriptor table, avail ring, used
//! ring), device side.

pub mod layout;
pub(crate) mod ring_view;

use std::collections::VecDeque;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

use self::layout as l;
use self::ring_view::RingView;
use super::{DescriptorChain, Popped, QueueError, RingState, SplitInflight, Taken};
use crate::memory::{DirtyLog, MemoryTable};

/// Guest-physical addresses of a ring's three parts (split: descriptor table, avail
/// ring, used ring; packed: descriptor ring, driver and device event suppression areas).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RingAddrs {
    /// Descriptor table (ring).
    pub desc: u64,
    /// Available ring (packed: driver event suppression area).
    pub avail: u64,
    /// Used ring (packed: device event suppression area).
    pub used: u64,
}

impl RingAddrs {
    /// Checks that the three parts, `lengths` bytes long, lie in `mem` and are aligned to
    /// `aligns` (powers of two), in the order descriptors, driver part, device part.
    pub(crate) fn check_parts(
        &self,
        mem: &MemoryTable,
        lengths: [u64; 3],
        aligns: [u64; 3],
    ) -> Result<(), QueueError> {
        let parts = [self.desc, self.avail, self.used];
        for (at, len) in parts.into_iter().zip(lengths) {
            mem.check_range(at, len)?;
        }
        if parts
            .into_iter()
            .zip(aligns)
            .any(|(at, a)| !at.is_multiple_of(a))
        {
            return Err(QueueError::Misaligned {
                desc: self.desc,
                driver: self.avail,
                device: self.used,
            });
        }
        Ok(())
    }
}

/// The device's side of a split ring: where it is in the avail and used rings, and what
/// it last signalled.
///
/// All guest memory accesses go through the [`MemoryTable`] passed to each call and are
/// bounds-checked; ring indices use acquire/release ordering and the notification checks
/// are fenced as the virtio spec requires. Which chains are in flight is kept by the
/// [`Virtqueue`](super::Virtqueue) that owns the ring.
///
/// # Example
/// ```
/// # use vhost_user_sync::queue::{Popped, RingAddrs, SplitRing};
/// # use vhost_user_sync::memory::MemoryTable;
/// # use vhost_user_sync::protocol::payload::MemoryRegionDesc;
/// # let fd = nix::sys::memfd::memfd_create("g", nix::sys::memfd::MFdFlags::empty()).unwrap();
/// # let file = std::fs::File::from(fd); file.set_len(0x10000).unwrap();
/// # let mem = MemoryTable::from_regions(&[MemoryRegionDesc { guest_phys_addr: 0, memory_size: 0x10000, userspace_addr: 0, mmap_offset: 0 }], vec![file]).unwrap();
/// let addrs = RingAddrs { desc: 0x0, avail: 0x1000, used: 0x2000 };
/// let mut ring = SplitRing::new(&mem, 16, addrs, 0, false, false).unwrap();
/// assert!(ring.next(&mem).unwrap().is_none()); // the guest has offered nothing yet
/// ```
#[derive(Debug, Clone)]
pub struct SplitRing {
    size: u16,
    addrs: RingAddrs,
    next_avail: u16,
    /// The guest's avail index as last read: entries up to it are known to be there.
    avail_seen: u16,
    next_used: u16,
    /// The used index the guest can see: used entries are published in batches.
    used_published: u16,
    event_idx: bool,
    indirect: bool,
    signalled_used: Option<u16>,
    /// Dirty log and the used ring's guest-physical address to log at (VHOST_VRING_F_LOG
    /// with VHOST_F_LOG_ALL acked).
    used_log: Option<(Arc<DirtyLog>, u64)>,
    /// Host addresses of the ring parts in the table last used (when they fit).
    view: Option<RingView>,
    /// Id of the table `view` was worked out for.
    view_table: Option<u64>,
    /// `VRING_USED_F_NO_NOTIFY` was stored by `disable_notification` and not cleared
    /// since (without EVENT_IDX).
    no_notify_set: bool,
    /// The ring's part of the in-flight area (INFLIGHT_SHMFD), when the frontend
    /// shared one.
    inflight: Option<Box<SplitInflight>>,
    /// Heads found in flight when the ring started, oldest first: taken before the
    /// avail ring is read.
    resubmit: VecDeque<u16>,
}

impl SplitRing {
    /// Sets up a ring of `size` entries (a power of two) starting at avail index `base`.
    /// The used index continues from what the used ring holds.
    pub fn new(
        mem: &MemoryTable,
        size: u16,
        addrs: RingAddrs,
        base: u16,
        event_idx: bool,
        indirect: bool,
    ) -> Result<Self, QueueError> {
        if size == 0 || !size.is_power_of_two() {
            return Err(QueueError::BadIndex {
                index: size,
                size: 0,
            });
        }
        let q = SplitRing {
            size,
            addrs,
            next_avail: base,
            avail_seen: base,
            next_used: 0,
            used_published: 0,
            event_idx,
            indirect,
            signalled_used: None,
            used_log: None,
            view: None,
            view_table: None,
            no_notify_set: false,
            inflight: None,
            resubmit: VecDeque::new(),
        };
        q.check_rings(mem)?;
        let next_used = mem.load::<u16>(addrs.used + l::USED_IDX, Ordering::Acquire)?;
        log::debug!(
            "split ring of {size}: starts reading avail at {}, used index {next_used}",
            q.next_avail
        );
        // Nothing used yet since this start: no interrupt is owed.
        Ok(SplitRing {
            next_used,
            used_published: next_used,
            signalled_used: Some(next_used),
            ..q
        })
    }

    /// Bytes of guest memory each part of a ring of `size` entries takes.
    pub fn part_lengths(size: u16) -> [u64; 3] {
        [
            l::desc_table_len(size),
            l::avail_len(size),
            l::used_len(size),
        ]
    }

    /// Checks that the three ring parts lie in `mem` (after a memory table change).
    pub fn check_rings(&self, mem: &MemoryTable) -> Result<(), QueueError> {
        Self::check_placement(mem, self.size, &self.addrs)
    }

    /// Checks that a ring of `size` entries at `addrs` lies in `mem` and that its parts
    /// are aligned as the spec requires (descriptor table 16, avail ring 2, used ring 4).
    pub fn check_placement(
        mem: &MemoryTable,
        size: u16,
        addrs: &RingAddrs,
    ) -> Result<(), QueueError> {
        addrs.check_parts(mem, Self::part_lengths(size), [16, 2, 4])
    }

    /// Points the ring at new addresses (the same ring after a memory table change).
    pub fn set_addrs(&mut self, addrs: RingAddrs) {
        self.addrs = addrs;
        self.no_notify_set = false;
        self.view = None;
        self.view_table = None;
    }

    /// The ring's host view for `mem`, worked out again when the table changed.
    #[inline]
    fn view(&mut self, mem: &MemoryTable) -> Option<RingView> {
        if self.view_table != Some(mem.id()) {
            self.rebuild_view(mem);
        }
        self.view
    }

    #[cold]
    fn rebuild_view(&mut self, mem: &MemoryTable) {
        self.view = RingView::new(mem, &self.addrs, self.size);
        self.view_table = Some(mem.id());
    }

    /// Logs used-ring writes into `log` at guest-physical `used_gpa` (None: stop).
    pub fn set_used_log(&mut self, log: Option<(Arc<DirtyLog>, u64)>) {
        self.used_log = log;
    }

    /// Records this ring's chains in `inflight` from now on, after recovering what a
    /// previous process left in it: the chains still in flight are taken first, oldest
    /// first, and the avail ring is read again from the used index plus their number.
    /// Returns how many are resubmitted, or `None` for a new area (the ring starts where
    /// SET_VRING_BASE said).
    pub fn attach_inflight(
        &mut self,
        mut inflight: SplitInflight,
    ) -> Result<Option<u16>, QueueError> {
        let resumed = inflight.in_use();
        let heads = inflight.recover(self.size, self.next_used)?;
        if !resumed {
            // A new area: SET_VRING_BASE said where the ring starts.
            self.inflight = Some(Box::new(inflight));
            return Ok(None);
        }
        // recover() returns at most one head per entry of the ring.
        let count = heads.len() as u16;
        self.next_avail = self.next_used.wrapping_add(count);
        self.avail_seen = self.next_avail;
        self.resubmit = heads.into();
        self.inflight = Some(Box::new(inflight));
        Ok(Some(count))
    }

    /// Whether chains are recorded in an in-flight area.
    pub fn tracks_in_flight(&self) -> bool {
        self.inflight.is_some()
    }

    /// Queue size.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Where the ring would resume: the next avail index the device reads.
    pub fn state(&self) -> RingState {
        RingState::Split {
            next_avail: self.next_avail,
        }
    }

    /// Goes back to avail index `position` (of a chain taken earlier and not used), so
    /// that the chains from there on are read again.
    pub fn rewind(&mut self, position: u16) {
        self.next_avail = position;
    }

    /// The next used index the device will write.
    pub fn next_used(&self) -> u16 {
        self.next_used
    }

    fn avail_idx(&self, mem: &MemoryTable) -> Result<u16, QueueError> {
        match self.view.filter(|v| v.table_id == mem.id()) {
            Some(v) => Ok(v.avail_idx()),
            None => Ok(mem.load::<u16>(self.addrs.avail + l::AVAIL_IDX, Ordering::Acquire)?),
        }
    }

    /// Whether the guest has made entries available that the device has not taken.
    pub fn has_available(&self, mem: &MemoryTable) -> Result<bool, QueueError> {
        Ok(!self.resubmit.is_empty() || self.avail_idx(mem)? != self.next_avail)
    }

    /// Takes the next available entry, or `None` when the ring is empty.
    ///
    /// A chain that breaks the rules (bad descriptor, loop, bad indirect table, buffer
    /// outside memory) comes back as [`Popped::Refused`], for the caller to return with
    /// length 0. An error means the ring itself is broken (index overrun, bad head,
    /// unmapped ring).
    pub fn next(&mut self, mem: &MemoryTable) -> Result<Option<Popped>, QueueError> {
        let mut chain = DescriptorChain::start(0);
        let taken = self.next_into(mem, &mut chain)?;
        Ok(taken.into_popped(chain))
    }

    /// [`Self::next`], walking the chain into `chain`.
    #[inline]
    pub(crate) fn next_into(
        &mut self,
        mem: &MemoryTable,
        chain: &mut DescriptorChain,
    ) -> Result<Taken, QueueError> {
        let view = self.view(mem);
        if !self.resubmit.is_empty() {
            return Ok(self.resubmitted_into(mem, view, chain));
        }
        // The shared avail index is read only when the entries seen are used up: one
        // cache-line transfer per batch, not per chain.
        if self.avail_seen == self.next_avail {
            self.avail_seen = self.avail_idx(mem)?;
        }
        let avail = self.avail_seen;
        let pending = avail.wrapping_sub(self.next_avail);
        if pending == 0 {
            return Ok(Taken::Empty);
        }
        if pending > self.size {
            return Err(QueueError::AvailOverrun {
                avail,
                next: self.next_avail,
                pending,
                size: self.size,
            });
        }
        let position = self.next_avail;
        let head = match &view {
            Some(v) => v.avail_entry(position),
            None => mem.load::<u16>(
                self.addrs.avail + l::avail_entry(self.size, position),
                Ordering::Acquire,
            )?,
        };
        if head >= self.size {
            return Err(QueueError::BadIndex {
                index: head,
                size: self.size.into(),
            });
        }
        self.next_avail = self.next_avail.wrapping_add(1);
        Ok(self.take_head(mem, view, head, position, chain))
    }

    /// Records chain `head` (read at avail `position`) as taken and walks it into
    /// `chain`.
    #[inline]
    fn take_head(
        &mut self,
        mem: &MemoryTable,
        view: Option<RingView>,
        head: u16,
        position: u16,
        chain: &mut DescriptorChain,
    ) -> Taken {
        if let Some(f) = &mut self.inflight {
            f.mark(head);
        }
        let walked = chain.fill_split(
            mem,
            self.addrs.desc,
            view.as_ref(),
            self.size,
            head,
            self.indirect,
        );
        Taken::walked(walked, chain, head, position, 1)
    }

    /// The next chain found in flight at the start, walked from its head (the guest
    /// still owns its descriptors: it has not seen the chain used).
    #[cold]
    fn resubmitted_into(
        &mut self,
        mem: &MemoryTable,
        view: Option<RingView>,
        chain: &mut DescriptorChain,
    ) -> Taken {
        let Some(head) = self.resubmit.pop_front() else {
            return Taken::Empty;
        };
        // Its place in the avail ring is not known: chains resubmitted stay in flight in
        // the area when the ring stops, and are never rewound to.
        let position = self.next_avail;
        self.take_head(mem, view, head, position, chain)
    }

    /// Makes the used entries added so far visible to the guest (one release store of
    /// the used index). Called before any notification decision.
    pub fn publish_used(&mut self, mem: &MemoryTable) -> Result<(), QueueError> {
        if self.used_published == self.next_used {
            return Ok(());
        }
        match self.view(mem) {
            Some(v) => v.set_used_idx(self.next_used),
            None => mem.store::<u16>(
                self.addrs.used + l::USED_IDX,
                self.next_used,
                Ordering::Release,
            )?,
        }
        self.used_published = self.next_used;
        if let Some((log, used_gpa)) = &self.used_log {
            log.mark(used_gpa.wrapping_add(l::USED_IDX), 2);
        }
        if let Some(f) = &mut self.inflight {
            f.published(self.next_used);
        }
        Ok(())
    }

    /// Adds a used entry: chain `head` with `len` bytes written by the device. The guest
    /// sees it at the next [`Self::publish_used`] (the framework publishes after every
    /// batch and before every notification decision).
    pub fn add_used(&mut self, mem: &MemoryTable, head: u16, len: u32) -> Result<(), QueueError> {
        if head >= self.size {
            return Err(QueueError::BadUsedHead {
                head,
                size: self.size,
            });
        }
        let elem = l::used_elem(self.size, self.next_used);
        if let Some(f) = &mut self.inflight {
            f.link_used(head);
        }
        match self.view(mem) {
            Some(v) => v.set_used_elem(self.next_used, head, len),
            None => {
                let at = self.addrs.used + elem;
                mem.store::<u32>(at, u32::from(head), Ordering::Relaxed)?;
                mem.store::<u32>(at + 4, len, Ordering::Relaxed)?;
            }
        }
        self.next_used = self.next_used.wrapping_add(1);
        if let Some((log, used_gpa)) = &self.used_log {
            log.mark(used_gpa.wrapping_add(elem), 8);
        }
        // Entries are published in batches; publish well before a ring's worth is
        // pending so the guest keeps getting buffers back under sustained load.
        if self.next_used.wrapping_sub(self.used_published) >= (self.size / 2).max(1) {
            self.publish_used(mem)?;
        }
        Ok(())
    }

    /// Asks the guest not to kick (NO_NOTIFY, or with EVENT_IDX simply not moving
    /// avail_event) while the device drains the ring.
    pub fn disable_notification(&mut self, mem: &MemoryTable) -> Result<(), QueueError> {
        // A polling worker disables on every pass: the flag is stored once, not each
        // time (the store would pull the line away from the guest's CPU for nothing).
        if !self.event_idx && !self.no_notify_set {
            match self.view(mem) {
                Some(v) => v.set_used_flags(l::USED_F_NO_NOTIFY),
                None => mem.store::<u16>(
                    self.addrs.used + l::USED_FLAGS,
                    l::USED_F_NO_NOTIFY,
                    Ordering::Relaxed,
                )?,
            }
            self.no_notify_set = true;
            self.log_used_ring(l::USED_FLAGS, 2);
        }
        Ok(())
    }

    /// Marks `len` bytes at `offset` in the used ring as written (used flags,
    /// avail_event: the other writes log themselves where they happen).
    #[inline]
    fn log_used_ring(&self, offset: u64, len: u64) {
        if let Some((log, used_gpa)) = &self.used_log {
            log.mark(used_gpa.wrapping_add(offset), len);
        }
    }

    /// Asks the guest to kick for the next entry; returns whether entries arrived in the
    /// meantime (the caller must then process again, or a kick is lost).
    pub fn enable_notification(&mut self, mem: &MemoryTable) -> Result<bool, QueueError> {
        self.publish_used(mem)?;
        match (self.view(mem), self.event_idx) {
            (Some(v), true) => v.set_avail_event(self.next_avail),
            (Some(v), false) => v.set_used_flags(0),
            (None, true) => {
                let at = self.addrs.used + l::avail_event(self.size);
                mem.store::<u16>(at, self.next_avail, Ordering::Relaxed)?;
            }
            (None, false) => {
                mem.store::<u16>(self.addrs.used + l::USED_FLAGS, 0, Ordering::Relaxed)?
            }
        }
        if self.event_idx {
            self.log_used_ring(l::avail_event(self.size), 2);
        } else {
            self.log_used_ring(l::USED_FLAGS, 2);
        }
        self.no_notify_set = false;
        fence(Ordering::SeqCst);
        self.has_available(mem)
    }

    /// Whether the guest wants an interrupt for the entries used since the last one
    /// (used_event with EVENT_IDX, NO_INTERRUPT without). Records the signal.
    pub fn needs_notification(&mut self, mem: &MemoryTable) -> Result<bool, QueueError> {
        self.publish_used(mem)?;
        fence(Ordering::SeqCst);
        let new = self.next_used;
        let view = self.view(mem);
        let need = if self.event_idx {
            let used_event = match &view {
                Some(v) => v.used_event(),
                None => mem.load::<u16>(
                    self.addrs.avail + l::used_event(self.size),
                    Ordering::Acquire,
                )?,
            };
            let old = self.signalled_used.unwrap_or(new.wrapping_sub(1));
            l::need_event(used_event, new, old)
        } else {
            let flags = match &view {
                Some(v) => v.avail_flags(),
                None => mem.load::<u16>(self.addrs.avail + l::AVAIL_FLAGS, Ordering::Acquire)?,
            };
            flags & l::AVAIL_F_NO_INTERRUPT == 0 && self.signalled_used != Some(new)
        };
        if need {
            self.signalled_used = Some(new);
        }
        Ok(need)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::Descriptor;

    /// The next entry, which must be a valid chain.
    fn pop(m: &MemoryTable, q: &mut SplitRing) -> DescriptorChain {
        match q.next(m).unwrap() {
            Some(Popped::Chain(c)) => c,
            other => panic!("expected a chain, got {other:?}"),
        }
    }

    fn mem() -> MemoryTable {
        crate::memory::test_table(0x10000)
    }

    const A: RingAddrs = RingAddrs {
        desc: 0,
        avail: 0x1000,
        used: 0x2000,
    };

    /// An 8-byte device-writable buffer in memory.
    const WRITABLE: Descriptor = Descriptor {
        addr: 0x3000,
        len: 8,
        flags: Descriptor::F_WRITE,
        next: 0,
    };

    /// A buffer outside memory: its chain is refused.
    const OUTSIDE: Descriptor = Descriptor {
        addr: 0xffff_0000,
        len: 8,
        flags: 0,
        next: 0,
    };

    fn offer(m: &MemoryTable, slot: u16, head: u16, idx: u16) {
        m.store::<u16>(A.avail + 4 + 2 * u64::from(slot), head, Ordering::Relaxed)
            .unwrap();
        m.store::<u16>(A.avail + 2, idx, Ordering::Release).unwrap();
    }

    #[test]
    fn pop_add_used_and_base() {
        let m = mem();
        m.write(0, &WRITABLE.to_bytes()).unwrap();
        let mut q = SplitRing::new(&m, 8, A, 0, false, false).unwrap();
        offer(&m, 0, 0, 1);
        let c = pop(&m, &mut q);
        q.add_used(&m, c.id(), 8).unwrap();
        // Used entries become visible in batches.
        assert_eq!(m.load::<u16>(A.used + 2, Ordering::Acquire).unwrap(), 0);
        q.publish_used(&m).unwrap();
        assert_eq!(m.load::<u16>(A.used + 2, Ordering::Acquire).unwrap(), 1);
        assert_eq!(m.load::<u32>(A.used + 8, Ordering::Acquire).unwrap(), 8);
        assert_eq!(q.state(), RingState::Split { next_avail: 1 });
        assert!(q.next(&m).unwrap().is_none());
        q.rewind(0);
        assert_eq!(pop(&m, &mut q).id(), 0, "read again after a rewind");
    }

    /// A dirty log over the test memory, for ring `q`'s used ring (at its gpa).
    fn used_logging(q: &mut SplitRing) -> Arc<DirtyLog> {
        let log = crate::memory::test_log();
        q.set_used_log(Some((log.clone(), A.used)));
        log
    }

    fn page_dirty(log: &DirtyLog, gpa: u64) -> bool {
        crate::memory::dirty_pages(log).contains(&(gpa / 4096))
    }

    #[test]
    fn used_flags_writes_are_logged() {
        let m = mem();
        let mut q = SplitRing::new(&m, 8, A, 0, false, false).unwrap();
        let log = used_logging(&mut q);
        q.disable_notification(&m).unwrap();
        assert!(page_dirty(&log, A.used), "NO_NOTIFY set");
        let log = used_logging(&mut q);
        q.enable_notification(&m).unwrap();
        assert!(page_dirty(&log, A.used), "NO_NOTIFY cleared");
    }

    #[test]
    fn avail_event_writes_are_logged() {
        // 1024 entries: avail_event sits two pages past the used ring's start.
        let m = crate::memory::test_table(0x20000);
        let addrs = RingAddrs {
            desc: 0x8000,
            avail: 0x1000,
            used: 0x10000,
        };
        let mut q = SplitRing::new(&m, 1024, addrs, 0, true, false).unwrap();
        let log = crate::memory::test_log();
        q.set_used_log(Some((log.clone(), addrs.used)));
        let at = addrs.used + l::avail_event(1024);
        assert_eq!(at / 4096, addrs.used / 4096 + 2);
        q.enable_notification(&m).unwrap();
        assert!(page_dirty(&log, at), "avail_event's page");
        assert!(!page_dirty(&log, addrs.used), "nothing else was written");
    }

    /// Two tables over the same guest-physical range, each with its own memfd.
    fn split_table(boundary: u64) -> MemoryTable {
        let region = |gpa: u64, size: u64| {
            let fd =
                nix::sys::memfd::memfd_create("t", nix::sys::memfd::MFdFlags::empty()).unwrap();
            let f = std::fs::File::from(fd);
            f.set_len(size).unwrap();
            (
                crate::protocol::payload::MemoryRegionDesc {
                    guest_phys_addr: gpa,
                    memory_size: size,
                    userspace_addr: 0x1000_0000 + gpa,
                    mmap_offset: 0,
                },
                f,
            )
        };
        let (a, fa) = region(0, boundary);
        let (b, fb) = region(boundary, 0x10000 - boundary);
        MemoryTable::from_regions(&[a, b], vec![fa, fb]).unwrap()
    }

    fn one_round(m: &MemoryTable, q: &mut SplitRing, idx: u16) {
        offer(m, idx - 1, 0, idx);
        let c = pop(m, q);
        q.add_used(m, c.id(), 8).unwrap();
        q.publish_used(m).unwrap();
        assert_eq!(m.load::<u16>(A.used + 2, Ordering::Acquire).unwrap(), idx);
    }

    #[test]
    fn a_ring_across_two_regions_and_a_new_table_are_both_followed() {
        let d = WRITABLE;
        // The used ring straddles the two regions: every access goes through the table.
        let straddling = split_table(A.used + 0x20);
        straddling.write(0, &d.to_bytes()).unwrap();
        let mut q = SplitRing::new(&straddling, 8, A, 0, false, false).unwrap();
        one_round(&straddling, &mut q, 1);
        // The same queue on a new table (other memfds, other host addresses): what it
        // reads and writes is in the new memory, not in the old mapping.
        let moved = mem();
        moved.write(0, &d.to_bytes()).unwrap();
        moved
            .store::<u16>(A.used + 2, 1, Ordering::Release)
            .unwrap();
        one_round(&moved, &mut q, 2);
        assert_eq!(
            straddling
                .load::<u16>(A.used + 2, Ordering::Acquire)
                .unwrap(),
            1,
            "the old table is untouched"
        );
        // And back to a table where the ring lies in one region.
        let whole = split_table(0x8000);
        whole.write(0, &d.to_bytes()).unwrap();
        whole
            .store::<u16>(A.used + 2, 2, Ordering::Release)
            .unwrap();
        one_round(&whole, &mut q, 3);
        assert_eq!(moved.load::<u16>(A.used + 2, Ordering::Acquire).unwrap(), 2);
    }

    #[test]
    fn avail_index_running_ahead_is_a_broken_ring() {
        let m = mem();
        let mut q = SplitRing::new(&m, 8, A, 0, false, false).unwrap();
        offer(&m, 0, 0, 9);
        assert!(matches!(
            q.next(&m),
            Err(QueueError::AvailOverrun { pending: 9, .. })
        ));
    }

    #[test]
    fn bad_head_is_a_broken_ring_and_bad_chain_is_refused() {
        let m = mem();
        let mut q = SplitRing::new(&m, 8, A, 0, false, false).unwrap();
        offer(&m, 0, 8, 1);
        assert!(matches!(
            q.next(&m),
            Err(QueueError::BadIndex { index: 8, .. })
        ));
        let mut q = SplitRing::new(&m, 8, A, 0, false, false).unwrap();
        m.write(0, &OUTSIDE.to_bytes()).unwrap();
        offer(&m, 0, 0, 1);
        assert!(matches!(
            q.next(&m).unwrap(),
            Some(Popped::Refused {
                id: 0,
                position: 0,
                slots: 1,
                error: QueueError::Memory(_)
            })
        ));
        // The ring writes nothing for it by itself.
        q.publish_used(&m).unwrap();
        assert_eq!(m.load::<u16>(A.used + 2, Ordering::Acquire).unwrap(), 0);
    }

    #[test]
    fn rings_outside_memory_are_refused() {
        let m = mem();
        let bad = RingAddrs { used: 0xfff8, ..A };
        assert!(SplitRing::new(&m, 8, bad, 0, false, false).is_err());
        assert!(SplitRing::new(&m, 6, A, 0, false, false).is_err());
        assert!(SplitRing::new(&m, 0, A, 0, false, false).is_err());
    }

    #[test]
    fn event_idx_notification_follows_used_event() {
        let m = mem();
        m.write(0, &WRITABLE.to_bytes()).unwrap();
        let mut q = SplitRing::new(&m, 8, A, 0, true, false).unwrap();
        assert!(!q.needs_notification(&m).unwrap(), "nothing used yet");
        let used_event = A.avail + 4 + 2 * 8;
        // The driver wants a call once entry 1 (the second) is used.
        m.store::<u16>(used_event, 1, Ordering::Release).unwrap();
        q.add_used(&m, 0, 8).unwrap();
        assert!(!q.needs_notification(&m).unwrap());
        q.add_used(&m, 0, 8).unwrap();
        assert!(q.needs_notification(&m).unwrap());
        assert!(!q.needs_notification(&m).unwrap(), "already signalled");
        // avail_event is published when notifications are re-enabled.
        q.enable_notification(&m).unwrap();
        assert_eq!(
            RingState::Split {
                next_avail: m
                    .load::<u16>(A.used + 4 + 8 * 8, Ordering::Acquire)
                    .unwrap()
            },
            q.state()
        );
    }

    #[test]
    fn no_interrupt_and_no_notify_without_event_idx() {
        let m = mem();
        let mut q = SplitRing::new(&m, 8, A, 0, false, false).unwrap();
        q.disable_notification(&m).unwrap();
        assert_eq!(m.load::<u16>(A.used, Ordering::Acquire).unwrap(), 1);
        assert!(!q.enable_notification(&m).unwrap());
        assert_eq!(m.load::<u16>(A.used, Ordering::Acquire).unwrap(), 0);
        m.store::<u16>(A.avail, 1, Ordering::Release).unwrap(); // NO_INTERRUPT
        q.add_used(&m, 0, 0).unwrap();
        assert!(!q.needs_notification(&m).unwrap());
        m.store::<u16>(A.avail, 0, Ordering::Release).unwrap();
        assert!(q.needs_notification(&m).unwrap());
    }

    #[test]
    fn used_entries_are_published_by_half_a_ring_at_the_latest() {
        let m = mem();
        let mut q = SplitRing::new(&m, 8, A, 0, false, false).unwrap();
        for i in 1..=4u16 {
            q.add_used(&m, 0, 0).unwrap();
            let seen = m.load::<u16>(A.used + 2, Ordering::Acquire).unwrap();
            assert_eq!(seen, if i < 4 { 0 } else { 4 });
        }
        assert!(q.needs_notification(&m).unwrap());
    }
}
