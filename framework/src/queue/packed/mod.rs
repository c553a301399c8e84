//! Packed virtqueues (virtio 1.1): one descriptor ring that the driver and the device
//! both write, with wrap counters instead of indices, device side.

pub mod layout;
mod ring_view;

use std::collections::VecDeque;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

use self::layout as l;
use self::layout::PackedDescriptor;
use self::ring_view::DescRingView;
use super::{
    Descriptor, DescriptorChain, PackedInflight, Popped, QueueError, RingAddrs, RingState, Taken,
};
use crate::memory::{DirtyLog, MemoryTable};

/// The device's side of a packed ring: where it reads the next available descriptor and
/// writes the next used one, each with its wrap counter.
///
/// `addrs.desc` is the descriptor ring, `addrs.avail` the driver's event suppression
/// area (read here), `addrs.used` the device's (written here). Every descriptor is copied
/// out of guest memory before it is checked; a chain whose extent is unknowable (longer
/// than the ring) or whose buffer id is outside the ring breaks the ring, any other bad
/// chain is refused with its extent known, so the ring stays in step with the driver.
///
/// # Example
/// ```
/// # use vhost_user_sync::queue::{PackedRing, RingAddrs, RingState};
/// # use vhost_user_sync::memory::MemoryTable;
/// # use vhost_user_sync::protocol::payload::MemoryRegionDesc;
/// # let fd = nix::sys::memfd::memfd_create("g", nix::sys::memfd::MFdFlags::empty()).unwrap();
/// # let file = std::fs::File::from(fd); file.set_len(0x10000).unwrap();
/// # let mem = MemoryTable::from_regions(&[MemoryRegionDesc { guest_phys_addr: 0, memory_size: 0x10000, userspace_addr: 0, mmap_offset: 0 }], vec![file]).unwrap();
/// let addrs = RingAddrs { desc: 0x0, avail: 0x1000, used: 0x2000 };
/// let mut ring = PackedRing::new(&mem, 256, addrs, RingState::initial(true), false, false).unwrap();
/// assert!(ring.next(&mem).unwrap().is_none()); // a zeroed ring offers nothing
/// ```
#[derive(Debug, Clone)]
pub struct PackedRing {
    size: u16,
    addrs: RingAddrs,
    next_avail: u16,
    avail_wrap: bool,
    next_used: u16,
    used_wrap: bool,
    event_idx: bool,
    indirect: bool,
    /// The first used descriptor of the current batch: its flags are written when the
    /// batch is published, after the others, so the driver sees the batch whole (a
    /// merged RX frame's first buffer names how many follow).
    held_flags: Option<(u16, u16)>,
    /// Used descriptors written since the batch began.
    batch: u16,
    /// The used position at the last notification decision, and whether anything was
    /// used since.
    signalled: (u16, bool),
    used_since_signal: bool,
    /// Dirty log for the device's writes into the ring (descriptors and its event area),
    /// logged at their own guest-physical addresses.
    log: Option<Arc<DirtyLog>>,
    /// DISABLE is stored in the device area and not cleared since.
    disabled: bool,
    /// The descriptors of the chain being walked (kept to reuse its allocation).
    scratch: Vec<PackedDescriptor>,
    /// Host address of the descriptor ring in the table last used (when it fits).
    view: Option<DescRingView>,
    /// Id of the table `view` was worked out for.
    view_table: Option<u64>,
    /// The ring's part of the in-flight area (INFLIGHT_SHMFD), when there is one.
    inflight: Option<Box<PackedInflight>>,
    /// Chains found in flight when the ring started, oldest first, as copied into the
    /// area: taken before the ring is read.
    resubmit: VecDeque<(u16, Vec<PackedDescriptor>)>,
}

impl PackedRing {
    /// Sets up a ring of `size` entries (1 to 32768) at `addrs`, resuming at `state`.
    pub fn new(
        mem: &MemoryTable,
        size: u16,
        addrs: RingAddrs,
        state: RingState,
        event_idx: bool,
        indirect: bool,
    ) -> Result<Self, QueueError> {
        if size == 0 || size > l::MAX_SIZE {
            return Err(QueueError::BadIndex {
                index: size,
                size: l::MAX_SIZE.into(),
            });
        }
        let RingState::Packed {
            next_avail,
            avail_wrap,
            next_used,
            used_wrap,
        } = state
        else {
            return Err(QueueError::BadRingState {
                num: state.encode(),
                size,
            });
        };
        if next_avail >= size || next_used >= size {
            return Err(QueueError::BadRingState {
                num: state.encode(),
                size,
            });
        }
        let ring = PackedRing {
            size,
            addrs,
            next_avail,
            avail_wrap,
            next_used,
            used_wrap,
            event_idx,
            indirect,
            held_flags: None,
            batch: 0,
            signalled: (next_used, used_wrap),
            used_since_signal: false,
            log: None,
            disabled: false,
            scratch: Vec::new(),
            view: None,
            view_table: None,
            inflight: None,
            resubmit: VecDeque::new(),
        };
        ring.check_rings(mem)?;
        Ok(ring)
    }

    /// Records this ring's chains in `inflight` from now on, after recovering what a
    /// previous process left in it: the chains still in flight are rebuilt from their
    /// copies and taken first, oldest first, and the ring resumes at the positions the
    /// area holds (after a crash the frontend's are not to be trusted: a packed ring
    /// has no used index in guest memory). Returns how many are resubmitted, or `None`
    /// for a new area (the ring starts where SET_VRING_BASE said).
    pub fn attach_inflight(
        &mut self,
        mem: &MemoryTable,
        mut inflight: PackedInflight,
    ) -> Result<Option<u16>, QueueError> {
        let resume = inflight.recover(self.size, (self.next_used, self.used_wrap), |slot| {
            self.load_flags(mem, slot).ok()
        })?;
        let mut count = None;
        if let Some(r) = resume {
            (self.next_used, self.used_wrap) = r.used;
            (self.next_avail, self.avail_wrap) = r.avail;
            self.signalled = r.used;
            count = Some(r.chains.len() as u16);
            self.resubmit = r.chains.into();
        }
        self.inflight = Some(Box::new(inflight));
        Ok(count)
    }

    /// Whether chains are recorded in an in-flight area.
    pub fn tracks_in_flight(&self) -> bool {
        self.inflight.is_some()
    }

    /// Bytes of guest memory the descriptor ring and the two event areas take.
    pub fn part_lengths(size: u16) -> [u64; 3] {
        [l::desc_ring_len(size), l::EVENT_AREA_LEN, l::EVENT_AREA_LEN]
    }

    /// Checks that the ring's parts lie in `mem` and are aligned for their fields.
    pub fn check_rings(&self, mem: &MemoryTable) -> Result<(), QueueError> {
        Self::check_placement(mem, self.size, &self.addrs)
    }

    /// Checks that a ring of `size` entries at `addrs` lies in `mem` and that its parts
    /// are aligned for their fields (descriptor ring 16, event areas 4).
    pub fn check_placement(
        mem: &MemoryTable,
        size: u16,
        addrs: &RingAddrs,
    ) -> Result<(), QueueError> {
        addrs.check_parts(mem, Self::part_lengths(size), [16, 4, 4])
    }

    /// Points the ring at new addresses (the same ring after a memory table change).
    pub fn set_addrs(&mut self, addrs: RingAddrs) {
        self.addrs = addrs;
        self.disabled = false;
        self.view = None;
        self.view_table = None;
    }

    /// Works the descriptor ring's host view out again when the table changed.
    #[inline]
    fn refresh_view(&mut self, mem: &MemoryTable) {
        if self.view_table != Some(mem.id()) {
            self.rebuild_view(mem);
        }
    }

    #[cold]
    fn rebuild_view(&mut self, mem: &MemoryTable) {
        self.view = DescRingView::new(mem, self.addrs.desc, self.size);
        self.view_table = Some(mem.id());
    }

    /// The view, if it was worked out for `mem`.
    #[inline]
    fn view_of(&self, mem: &MemoryTable) -> Option<&DescRingView> {
        self.view.as_ref().filter(|v| v.table_id == mem.id())
    }

    /// Logs the device's ring writes (None: stop).
    pub fn set_log(&mut self, log: Option<Arc<DirtyLog>>) {
        self.log = log;
    }

    /// Queue size.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Where the ring would resume.
    pub fn state(&self) -> RingState {
        RingState::Packed {
            next_avail: self.next_avail,
            avail_wrap: self.avail_wrap,
            next_used: self.next_used,
            used_wrap: self.used_wrap,
        }
    }

    /// Goes back to `position` (slot and wrap counter, see [`layout::position`]) of a
    /// chain read earlier and not used.
    pub fn rewind(&mut self, position: u16) {
        self.next_avail = position & 0x7fff;
        self.avail_wrap = position & 0x8000 != 0;
    }

    fn desc_at(&self, slot: u16) -> u64 {
        self.addrs.desc + l::desc_entry(slot)
    }

    fn load_flags(&self, mem: &MemoryTable, slot: u16) -> Result<u16, QueueError> {
        match self.view_of(mem) {
            Some(v) => Ok(v.flags(slot)),
            None => Ok(mem.load::<u16>(self.desc_at(slot) + l::DESC_FLAGS, Ordering::Acquire)?),
        }
    }

    fn read_desc(&self, mem: &MemoryTable, slot: u16) -> Result<PackedDescriptor, QueueError> {
        if let Some(v) = self.view_of(mem) {
            return Ok(v.descriptor(slot));
        }
        let mut raw = [0u8; 16];
        mem.read(self.desc_at(slot), &mut raw)?;
        Ok(PackedDescriptor::from_bytes(&raw))
    }

    /// Stores the flags of descriptor `slot` with release ordering.
    fn store_flags(&self, mem: &MemoryTable, slot: u16, flags: u16) -> Result<(), QueueError> {
        match self.view_of(mem) {
            Some(v) => v.set_flags(slot, flags),
            None => {
                mem.store::<u16>(self.desc_at(slot) + l::DESC_FLAGS, flags, Ordering::Release)?
            }
        }
        Ok(())
    }

    /// Whether the driver made a descriptor available at the device's read position.
    pub fn has_available(&self, mem: &MemoryTable) -> Result<bool, QueueError> {
        let flags = self.load_flags(mem, self.next_avail)?;
        Ok(l::is_avail(flags, self.avail_wrap))
    }

    /// Takes the next available chain, or `None` when the driver offered nothing new.
    /// A chain that breaks the rules comes back as [`Popped::Refused`] (its slots are
    /// passed over); an error breaks the ring.
    pub fn next(&mut self, mem: &MemoryTable) -> Result<Option<Popped>, QueueError> {
        let mut chain = DescriptorChain::start(0);
        let taken = self.next_into(mem, &mut chain)?;
        Ok(taken.into_popped(chain))
    }

    /// [`Self::next`], walking the chain into `chain`.
    pub(crate) fn next_into(
        &mut self,
        mem: &MemoryTable,
        chain: &mut DescriptorChain,
    ) -> Result<Taken, QueueError> {
        self.refresh_view(mem);
        if let Some((id, descs)) = self.resubmit.pop_front() {
            return Ok(self.resubmitted_into(mem, id, &descs, chain));
        }
        if !self.has_available(mem)? {
            return Ok(Taken::Empty);
        }
        let position = l::position(self.next_avail, self.avail_wrap);
        let mut descs = std::mem::take(&mut self.scratch);
        let walked = self.walk(mem, self.next_avail, &mut descs, chain);
        let marked = match (&walked, &mut self.inflight) {
            (Ok(_), Some(f)) => f.mark(chain.id(), &descs),
            _ => Ok(()),
        };
        self.scratch = descs;
        let (built, slots) = walked?;
        marked?;
        let (slot, wrap) = l::advance(self.next_avail, self.avail_wrap, slots, self.size);
        self.next_avail = slot;
        self.avail_wrap = wrap;
        let id = chain.id();
        Ok(Taken::walked(built, chain, id, position, slots))
    }

    /// A chain found in flight at the start, rebuilt from its copies (the driver still
    /// owns its buffers and any indirect table: it has not seen the chain used).
    #[cold]
    fn resubmitted_into(
        &mut self,
        mem: &MemoryTable,
        id: u16,
        descs: &[PackedDescriptor],
        chain: &mut DescriptorChain,
    ) -> Taken {
        let position = l::position(self.next_avail, self.avail_wrap);
        let slots = descs.len() as u16;
        chain.reset(id);
        let built = self.build(mem, descs, chain);
        Taken::walked(built, chain, id, position, slots)
    }

    /// The chain starting at `slot`, into `chain`: its extent first (ring slots while
    /// NEXT is set, bounded by the ring, copied into `descs`), then its buffers. `Err`
    /// for the ring when the extent or the buffer id cannot be trusted; the inner `Err`
    /// refuses the chain alone (`chain` then names its buffer id).
    fn walk(
        &self,
        mem: &MemoryTable,
        slot: u16,
        descs: &mut Vec<PackedDescriptor>,
        chain: &mut DescriptorChain,
    ) -> Result<(Result<(), QueueError>, u16), QueueError> {
        descs.clear();
        let mut at = slot;
        loop {
            if descs.len() == usize::from(self.size) {
                return Err(QueueError::ChainTooLong {
                    head: slot,
                    limit: self.size.into(),
                });
            }
            let d = self.read_desc(mem, at)?;
            descs.push(d);
            if d.flags & l::F_NEXT == 0 {
                break;
            }
            at = if at + 1 == self.size { 0 } else { at + 1 };
        }
        let slots = descs.len() as u16;
        // The buffer id is in the chain's last descriptor.
        let id = descs[descs.len() - 1].id;
        if id >= self.size {
            return Err(QueueError::BadIndex {
                index: id,
                size: self.size.into(),
            });
        }
        chain.reset(id);
        Ok((self.build(mem, descs, chain), slots))
    }

    fn build(
        &self,
        mem: &MemoryTable,
        descs: &[PackedDescriptor],
        chain: &mut DescriptorChain,
    ) -> Result<(), QueueError> {
        for (k, d) in descs.iter().enumerate() {
            if d.flags & l::F_INDIRECT != 0 {
                // An indirect table is the whole buffer: one descriptor, no NEXT.
                if !self.indirect || descs.len() != 1 || k != 0 {
                    return Err(QueueError::IndirectNotAllowed { flags: d.flags });
                }
                self.walk_indirect(mem, chain, d)?;
                break;
            }
            chain.push(buffer(d))?;
        }
        chain.check_buffers(mem)
    }

    fn walk_indirect(
        &self,
        mem: &MemoryTable,
        chain: &mut DescriptorChain,
        table: &PackedDescriptor,
    ) -> Result<(), QueueError> {
        let count = table.len / l::DESC_SIZE as u32;
        if table.len == 0
            || !table.len.is_multiple_of(l::DESC_SIZE as u32)
            || count > u32::from(u16::MAX)
        {
            return Err(QueueError::BadIndirectTable {
                addr: table.addr,
                len: table.len,
            });
        }
        mem.check_range(table.addr, table.len.into())?;
        for k in 0..u64::from(count) {
            let mut raw = [0u8; 16];
            mem.read(table.addr + l::DESC_SIZE * k, &mut raw)?;
            let d = PackedDescriptor::from_bytes(&raw);
            if d.flags & l::F_INDIRECT != 0 {
                return Err(QueueError::NestedIndirect { head: chain.id() });
            }
            // Inside a table only WRITE means anything; NEXT and the id are ignored.
            chain.push(buffer(&d))?;
        }
        Ok(())
    }

    /// Writes a used descriptor for buffer `id` (its chain took `slots` ring slots) with
    /// `len` bytes at the device's used position. Its flags, which hand it to the
    /// driver, follow the id and length behind a release fence; the first descriptor of
    /// a batch is handed over last, at [`Self::publish_used`].
    pub fn add_used(
        &mut self,
        mem: &MemoryTable,
        id: u16,
        len: u32,
        slots: u16,
    ) -> Result<(), QueueError> {
        if id >= self.size || slots == 0 || slots > self.size {
            return Err(QueueError::BadUsedHead {
                head: id,
                size: self.size,
            });
        }
        self.refresh_view(mem);
        let at = self.desc_at(self.next_used);
        match self.view_of(mem) {
            Some(v) => v.set_used(self.next_used, len, id),
            None => {
                mem.store::<u32>(at + 8, len, Ordering::Relaxed)?;
                mem.store::<u16>(at + 12, id, Ordering::Relaxed)?;
            }
        }
        let flags = l::used_bits(self.used_wrap) | if len > 0 { l::F_WRITE } else { 0 };
        if self.held_flags.is_none() {
            // Its flags, and its log bit, come at publish_used: a bit set before the
            // write could be collected by the frontend before the write lands.
            self.held_flags = Some((self.next_used, flags));
        } else {
            fence(Ordering::Release);
            self.store_flags(mem, self.next_used, flags)?;
            if let Some(log) = &self.log {
                log.mark(at, l::DESC_SIZE);
            }
        }
        let (slot, wrap) = l::advance(self.next_used, self.used_wrap, slots, self.size);
        self.next_used = slot;
        self.used_wrap = wrap;
        if let Some(f) = &mut self.inflight {
            f.link_used(id, (slot, wrap));
        }
        self.used_since_signal = true;
        self.batch += 1;
        if self.batch >= (self.size / 2).max(1) {
            self.publish_used(mem)?;
        }
        Ok(())
    }

    /// Hands the batch's first used descriptor to the driver (its flags, after a release
    /// fence): from here on the driver sees every used descriptor written so far.
    pub fn publish_used(&mut self, mem: &MemoryTable) -> Result<(), QueueError> {
        self.batch = 0;
        let Some((slot, flags)) = self.held_flags.take() else {
            return Ok(());
        };
        fence(Ordering::Release);
        self.store_flags(mem, slot, flags)?;
        // Logged after the store: the whole descriptor (its id and length were written
        // at add_used).
        if let Some(log) = &self.log {
            log.mark(self.desc_at(slot), l::DESC_SIZE);
        }
        if let Some(f) = &mut self.inflight {
            f.published((self.next_used, self.used_wrap));
        }
        Ok(())
    }

    fn write_device_event(
        &mut self,
        mem: &MemoryTable,
        off_wrap: Option<u16>,
        flags: u16,
    ) -> Result<(), QueueError> {
        if let Some(off_wrap) = off_wrap {
            mem.store::<u16>(
                self.addrs.used + l::EVENT_OFF_WRAP,
                off_wrap,
                Ordering::Relaxed,
            )?;
        }
        mem.store::<u16>(self.addrs.used + l::EVENT_FLAGS, flags, Ordering::Release)?;
        if let Some(log) = &self.log {
            log.mark(self.addrs.used, l::EVENT_AREA_LEN);
        }
        Ok(())
    }

    /// Asks the driver not to kick (DISABLE in the device area, stored once).
    pub fn disable_notification(&mut self, mem: &MemoryTable) -> Result<(), QueueError> {
        if !self.disabled {
            self.write_device_event(mem, None, l::EVENT_DISABLE)?;
            self.disabled = true;
        }
        Ok(())
    }

    /// Asks the driver to kick for the next descriptor (ENABLE, or with EVENT_IDX the
    /// read position in the device area); returns whether descriptors arrived in the
    /// meantime.
    pub fn enable_notification(&mut self, mem: &MemoryTable) -> Result<bool, QueueError> {
        self.publish_used(mem)?;
        if self.event_idx {
            let at = l::position(self.next_avail, self.avail_wrap);
            self.write_device_event(mem, Some(at), l::EVENT_DESC)?;
        } else {
            self.write_device_event(mem, None, l::EVENT_ENABLE)?;
        }
        self.disabled = false;
        fence(Ordering::SeqCst);
        self.has_available(mem)
    }

    /// Whether the driver wants an interrupt for what was used since the last one, by its
    /// event suppression area. Records the decision.
    pub fn needs_notification(&mut self, mem: &MemoryTable) -> Result<bool, QueueError> {
        self.publish_used(mem)?;
        fence(Ordering::SeqCst);
        if !self.used_since_signal {
            return Ok(false);
        }
        let flags = mem.load::<u16>(self.addrs.avail + l::EVENT_FLAGS, Ordering::Acquire)?;
        let need = match flags & 3 {
            l::EVENT_DISABLE => false,
            l::EVENT_DESC if self.event_idx => {
                let off_wrap =
                    mem.load::<u16>(self.addrs.avail + l::EVENT_OFF_WRAP, Ordering::Acquire)?;
                let (old, _) = self.signalled;
                l::need_event(off_wrap, self.next_used, old, self.used_wrap, self.size)
            }
            _ => true,
        };
        // Like the driver's side of the rule, the next decision covers what is used
        // from here on.
        self.signalled = (self.next_used, self.used_wrap);
        self.used_since_signal = false;
        Ok(need)
    }
}

/// The buffer a packed descriptor describes, as a chain holds it: only its direction
/// is kept of the flags.
fn buffer(d: &PackedDescriptor) -> Descriptor {
    Descriptor {
        addr: d.addr,
        len: d.len,
        flags: d.flags & l::F_WRITE,
        next: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frontend::packed_driver::PackedDriver;
    use crate::queue::Ring;
    use crate::queue::Virtqueue;

    const A: RingAddrs = RingAddrs {
        desc: 0,
        avail: 0x1000,
        used: 0x1010,
    };

    fn setup(size: u16, event_idx: bool, indirect: bool) -> (MemoryTable, PackedDriver, Virtqueue) {
        let m = crate::memory::test_table(0x10000);
        let mut d = PackedDriver::new(size, A.desc, A.avail, A.used);
        d.event_idx = event_idx;
        let ring = Ring::new(&m, size, A, RingState::initial(true), event_idx, indirect).unwrap();
        (m, d, Virtqueue::new(0, ring, false))
    }

    fn buf(k: u64, len: u32, write: bool) -> (u64, u32, bool) {
        (0x4000 + 0x100 * k, len, write)
    }

    #[test]
    fn chains_round_trip_over_many_laps() {
        // A ring of 5 (not a power of two) with 2- and 3-slot chains: every lap wraps
        // in the middle of a chain.
        let (m, mut d, mut vq) = setup(5, false, false);
        for round in 0..20u32 {
            let n = 2 + (round % 2) as usize;
            let bufs: Vec<_> = (0..n).map(|k| buf(k as u64, 16, k + 1 == n)).collect();
            let id = d.add(&m, &bufs).unwrap();
            let c = vq.pop(&m).unwrap().expect("chain");
            assert_eq!(c.id(), id);
            assert_eq!((c.readable().len(), c.writable().len()), (n - 1, 1));
            assert!(vq.pop(&m).unwrap().is_none());
            vq.add_used(&m, &c, 16).unwrap();
            assert_eq!(d.pop_used(&m).unwrap(), None, "held until published");
            vq.signal(&m);
            assert_eq!(d.pop_used(&m).unwrap(), Some((id, 16)), "round {round}");
        }
        assert_eq!(d.free_descriptors(), 5);
    }

    #[test]
    fn a_used_descriptor_is_logged_after_its_flags_are_written() {
        // The first used descriptor of a batch gets its flags at publish time. A
        // frontend that collects the log in between must find the page marked again
        // once the flags are there, or the destination gets the descriptor unused.
        let (m, mut d, mut vq) = setup(8, false, false);
        let log = crate::memory::test_log();
        vq.set_ring_log(Some((log.clone(), 0)));
        let id = d.add(&m, &[buf(0, 8, true)]).unwrap();
        let c = vq.pop(&m).unwrap().unwrap();
        vq.add_used(&m, &c, 8).unwrap();
        crate::memory::collect(&log);
        vq.signal(&m);
        assert_eq!(d.pop_used(&m).unwrap(), Some((id, 8)));
        assert!(
            crate::memory::dirty_pages(&log).contains(&(A.desc / 4096)),
            "the descriptor ring's page is not marked after the flags were written"
        );
    }

    #[test]
    fn device_event_area_writes_are_logged() {
        // The device's event suppression area (flags, and off_wrap with EVENT_IDX) is
        // device-written guest memory like the descriptors: each write marks its page.
        for event_idx in [false, true] {
            let (m, _d, mut vq) = setup(8, event_idx, false);
            let log = crate::memory::test_log();
            vq.set_ring_log(Some((log.clone(), 0)));
            let event_page = A.used / 4096;
            assert_ne!(event_page, A.desc / 4096);
            vq.disable_notification(&m).unwrap();
            assert!(
                crate::memory::dirty_pages(&log).contains(&event_page),
                "flags set to DISABLE (event_idx {event_idx})"
            );
            crate::memory::collect(&log);
            vq.enable_notification(&m).unwrap();
            assert_eq!(
                crate::memory::dirty_pages(&log),
                vec![event_page],
                "flags set to ENABLE or DESC with off_wrap (event_idx {event_idx}), nothing else"
            );
        }
    }

    #[test]
    fn out_of_order_completion_of_chains_of_different_lengths() {
        let (m, mut d, mut vq) = setup(8, false, false);
        let a = d.add(&m, &[buf(0, 8, false), buf(1, 8, true)]).unwrap();
        let b = d.add(&m, &[buf(2, 8, true)]).unwrap();
        let ca = vq.pop(&m).unwrap().unwrap();
        let cb = vq.pop(&m).unwrap().unwrap();
        vq.add_used(&m, &cb, 8).unwrap();
        vq.add_used(&m, &ca, 4).unwrap();
        vq.signal(&m);
        assert_eq!(d.pop_used(&m).unwrap(), Some((b, 8)));
        assert_eq!(d.pop_used(&m).unwrap(), Some((a, 4)));
        assert_eq!(d.free_descriptors(), 8);
        // The next chain starts after all three slots.
        let c = d.add(&m, &[buf(3, 8, true)]).unwrap();
        assert_eq!(vq.pop(&m).unwrap().unwrap().id(), c);
    }

    #[test]
    fn indirect_tables_are_walked_and_checked() {
        let (m, mut d, mut vq) = setup(8, false, true);
        let id = d
            .add_indirect(&m, 0x8000, &[buf(0, 8, false), buf(1, 32, true)])
            .unwrap();
        let c = vq.pop(&m).unwrap().unwrap();
        assert_eq!((c.id(), c.readable_len(), c.writable_len()), (id, 8, 32));
        // Indirect not negotiated: the chain is refused, the ring stays usable.
        let (m, mut d, mut vq) = setup(8, false, false);
        d.add_indirect(&m, 0x8000, &[buf(0, 8, true)]).unwrap();
        let ok = d.add(&m, &[buf(1, 8, true)]).unwrap();
        assert_eq!(vq.pop(&m).unwrap().unwrap().id(), ok);
        assert_eq!(vq.invalid_chains(), 1);
        // A nested table and a ragged one are refused too.
        let (m, mut d, mut vq) = setup(8, false, true);
        let nested = PackedDescriptor {
            addr: 0x8000,
            len: 16,
            id: 0,
            flags: l::F_INDIRECT,
        };
        m.write(0x9000, &nested.to_bytes()).unwrap();
        let bits = d.next_avail_bits();
        d.post_raw(
            &m,
            &[PackedDescriptor {
                addr: 0x9000,
                len: 16,
                id: 1,
                flags: l::F_INDIRECT | bits,
            }],
        )
        .unwrap();
        let bits = d.next_avail_bits();
        d.post_raw(
            &m,
            &[PackedDescriptor {
                addr: 0x9000,
                len: 20,
                id: 2,
                flags: l::F_INDIRECT | bits,
            }],
        )
        .unwrap();
        assert!(vq.pop(&m).unwrap().is_none());
        assert_eq!(vq.invalid_chains(), 2);
        assert!(vq.broken().is_none());
    }

    fn raw(d: &mut PackedDriver, m: &MemoryTable, id: u16, flags: u16) {
        let bits = d.next_avail_bits();
        d.post_raw(
            m,
            &[PackedDescriptor {
                addr: 0x4000,
                len: 8,
                id,
                flags: flags | bits,
            }],
        )
        .unwrap();
    }

    #[test]
    fn hostile_ids_and_chains_break_the_ring() {
        // A buffer id outside the ring.
        let (m, mut d, mut vq) = setup(4, false, false);
        raw(&mut d, &m, 4, l::F_WRITE);
        assert!(vq.pop(&m).is_err());
        assert!(matches!(
            vq.broken(),
            Some(QueueError::BadIndex { index: 4, .. })
        ));
        // An id reused while the device holds it.
        let (m, mut d, mut vq) = setup(4, false, false);
        raw(&mut d, &m, 1, l::F_WRITE);
        raw(&mut d, &m, 1, l::F_WRITE);
        let _held = vq.pop(&m).unwrap().unwrap();
        assert!(vq.pop(&m).is_err());
        assert!(matches!(
            vq.broken(),
            Some(QueueError::IdInFlight { id: 1 })
        ));
        // A chain that never ends: every slot has NEXT (and the driver keeps its wrap
        // bits right, so every slot looks available).
        let (m, mut d, mut vq) = setup(4, false, false);
        for _ in 0..4 {
            raw(&mut d, &m, 0, l::F_NEXT | l::F_WRITE);
        }
        assert!(vq.pop(&m).is_err());
        assert!(matches!(vq.broken(), Some(QueueError::ChainTooLong { .. })));
        // A descriptor with stale wrap bits is not available at all.
        let (m, mut d, mut vq) = setup(4, false, false);
        d.post_raw(
            &m,
            &[PackedDescriptor {
                addr: 0x4000,
                len: 8,
                id: 0,
                flags: l::avail_bits(false),
            }],
        )
        .unwrap();
        assert!(vq.pop(&m).unwrap().is_none());
    }

    #[test]
    fn event_suppression_both_ways() {
        let (m, mut d, mut vq) = setup(8, false, false);
        // Device area: DISABLE while draining, ENABLE after.
        vq.disable_notification(&m).unwrap();
        assert!(!d.kick_wanted(&m).unwrap());
        assert!(!vq.enable_notification(&m).unwrap());
        assert!(d.kick_wanted(&m).unwrap());
        // Driver area: DISABLE means no call.
        let id = d.add(&m, &[buf(0, 8, true)]).unwrap();
        let c = vq.pop(&m).unwrap().unwrap();
        m.store::<u16>(
            A.avail + l::EVENT_FLAGS,
            l::EVENT_DISABLE,
            Ordering::Release,
        )
        .unwrap();
        vq.add_used(&m, &c, 8).unwrap();
        let Ring::Packed(r) = &mut vq.ring_mut() else {
            unreachable!()
        };
        assert!(!r.needs_notification(&m).unwrap());
        assert_eq!(d.pop_used(&m).unwrap(), Some((id, 8)));

        // With EVENT_IDX: the device asks for a kick at its read position, and calls
        // once the driver's event slot is used.
        let (m, mut d, mut vq) = setup(8, true, false);
        assert!(!vq.enable_notification(&m).unwrap());
        assert_eq!(
            m.load::<u16>(A.used + l::EVENT_FLAGS, Ordering::Acquire)
                .unwrap(),
            l::EVENT_DESC
        );
        let ids: Vec<u16> = (0..3)
            .map(|k| d.add(&m, &[buf(k, 8, true)]).unwrap())
            .collect();
        assert!(d.kick_wanted(&m).unwrap(), "slot 0 was asked for");
        // The driver wants a call when slot 1 is used.
        m.store::<u16>(
            A.avail + l::EVENT_OFF_WRAP,
            l::position(1, true),
            Ordering::Relaxed,
        )
        .unwrap();
        m.store::<u16>(A.avail + l::EVENT_FLAGS, l::EVENT_DESC, Ordering::Release)
            .unwrap();
        let chains: Vec<_> = (0..3).map(|_| vq.pop(&m).unwrap().unwrap()).collect();
        let Ring::Packed(_) = vq.ring() else {
            unreachable!()
        };
        vq.add_used(&m, &chains[0], 8).unwrap();
        assert!(!packed(&mut vq).needs_notification(&m).unwrap());
        vq.add_used(&m, &chains[1], 8).unwrap();
        assert!(packed(&mut vq).needs_notification(&m).unwrap());
        vq.add_used(&m, &chains[2], 8).unwrap();
        assert!(!packed(&mut vq).needs_notification(&m).unwrap());
        let got: Vec<u16> = std::iter::from_fn(|| d.pop_used(&m).unwrap().map(|u| u.0)).collect();
        assert_eq!(got, ids);
    }

    fn packed(vq: &mut Virtqueue) -> &mut PackedRing {
        match vq.ring_mut() {
            Ring::Packed(r) => r,
            Ring::Split(_) => unreachable!(),
        }
    }

    #[test]
    fn a_stop_resumes_at_the_unused_tail_in_a_new_ring() {
        let (m, mut d, mut vq) = setup(4, false, false);
        let a = d.add(&m, &[buf(0, 8, true)]).unwrap();
        let b = d.add(&m, &[buf(1, 8, false), buf(2, 8, true)]).unwrap();
        let ca = vq.pop(&m).unwrap().unwrap();
        let _cb = vq.pop(&m).unwrap().unwrap();
        vq.add_used(&m, &ca, 8).unwrap();
        let (state, account) = vq.stop(&m);
        assert_eq!(account.rewound, 1);
        assert_eq!(
            state,
            RingState::Packed {
                next_avail: 1,
                avail_wrap: true,
                next_used: 1,
                used_wrap: true
            }
        );
        assert_eq!(d.pop_used(&m).unwrap(), Some((a, 8)));
        // The state travels as GET/SET_VRING_BASE's number into a new ring.
        let state = RingState::decode(state.encode(), true, 4).unwrap();
        let ring = Ring::new(&m, 4, A, state, false, false).unwrap();
        let mut vq = Virtqueue::new(0, ring, false);
        let again = vq.pop(&m).unwrap().unwrap();
        assert_eq!(again.id(), b);
        vq.add_used(&m, &again, 8).unwrap();
        vq.signal(&m);
        assert_eq!(d.pop_used(&m).unwrap(), Some((b, 8)));
    }
}
