//! `Ring`: a virtqueue's layout, chosen by the negotiated features. Everything that
//! depends on where things lie in guest memory goes through here.

use std::sync::Arc;

use super::{
    DescriptorChain, InflightError, PackedRing, Popped, QueueError, QueueInflight, RingAddrs,
    RingState, SplitRing, Taken,
};
use crate::memory::{DirtyLog, MemoryTable};

/// The device side of one ring in its layout.
///
/// # Example
/// ```
/// # use vhost_user_sync::queue::{Ring, RingAddrs, RingState};
/// # let mem = vhost_user_sync::memory::MemoryTable::empty();
/// // Nothing is mapped: the ring's parts are not in memory.
/// let addrs = RingAddrs { desc: 0, avail: 0x1000, used: 0x2000 };
/// assert!(Ring::new(&mem, 256, addrs, RingState::initial(false), false, false).is_err());
/// ```
#[derive(Debug, Clone)]
pub enum Ring {
    /// A split ring (descriptor table, avail ring, used ring).
    Split(SplitRing),
    /// A packed ring (descriptor ring, driver and device event suppression areas).
    Packed(PackedRing),
}

impl Ring {
    /// A ring of `size` entries at `addrs`, resuming at `state` (whose kind says the
    /// layout), with EVENT_IDX and INDIRECT_DESC as negotiated.
    pub fn new(
        mem: &MemoryTable,
        size: u16,
        addrs: RingAddrs,
        state: RingState,
        event_idx: bool,
        indirect: bool,
    ) -> Result<Self, QueueError> {
        match state {
            RingState::Split { next_avail } => Ok(Ring::Split(SplitRing::new(
                mem, size, addrs, next_avail, event_idx, indirect,
            )?)),
            RingState::Packed { .. } => Ok(Ring::Packed(PackedRing::new(
                mem, size, addrs, state, event_idx, indirect,
            )?)),
        }
    }

    /// Bytes of guest memory the descriptor, driver and device parts of a ring of `size`
    /// entries take.
    pub fn part_lengths(packed: bool, size: u16) -> [u64; 3] {
        if packed {
            PackedRing::part_lengths(size)
        } else {
            SplitRing::part_lengths(size)
        }
    }

    /// Checks that a ring of `size` entries in the given layout, at `addrs`, lies in
    /// `mem` with its parts aligned: what SET_VRING_ADDR is checked against when it
    /// arrives, and a running ring again when the memory table changes.
    pub fn check_placement(
        mem: &MemoryTable,
        packed: bool,
        size: u16,
        addrs: &RingAddrs,
    ) -> Result<(), QueueError> {
        if packed {
            PackedRing::check_placement(mem, size, addrs)
        } else {
            SplitRing::check_placement(mem, size, addrs)
        }
    }

    /// Records the ring's chains in its part of the in-flight area from now on, after
    /// taking back what a previous process left in flight there. Returns how many
    /// chains will be resubmitted when the ring resumes from a previous process, `None`
    /// when the area is new. The part must be in the ring's layout.
    pub fn attach_inflight(
        &mut self,
        mem: &MemoryTable,
        inflight: QueueInflight,
    ) -> Result<Option<u16>, QueueError> {
        match (self, inflight) {
            (Ring::Split(r), QueueInflight::Split(i)) => r.attach_inflight(i),
            (Ring::Packed(r), QueueInflight::Packed(i)) => r.attach_inflight(mem, i),
            _ => Err(QueueError::Inflight(InflightError::NoSuchQueue {
                queue: 0,
                num_queues: 0,
            })),
        }
    }

    /// Whether chains are recorded in an in-flight area.
    pub fn tracks_in_flight(&self) -> bool {
        match self {
            Ring::Split(r) => r.tracks_in_flight(),
            Ring::Packed(r) => r.tracks_in_flight(),
        }
    }

    /// Queue size.
    #[inline]
    pub fn size(&self) -> u16 {
        match self {
            Ring::Split(r) => r.size(),
            Ring::Packed(r) => r.size(),
        }
    }

    /// Where the ring would resume.
    pub fn state(&self) -> RingState {
        match self {
            Ring::Split(r) => r.state(),
            Ring::Packed(r) => r.state(),
        }
    }

    /// Goes back to `position` (of a chain read earlier and not used).
    pub fn rewind(&mut self, position: u16) {
        match self {
            Ring::Split(r) => r.rewind(position),
            Ring::Packed(r) => r.rewind(position),
        }
    }

    /// Checks that the ring's parts lie in `mem`.
    pub fn check_rings(&self, mem: &MemoryTable) -> Result<(), QueueError> {
        match self {
            Ring::Split(r) => r.check_rings(mem),
            Ring::Packed(r) => r.check_rings(mem),
        }
    }

    /// Points the ring at new addresses (after a memory table change).
    pub fn set_addrs(&mut self, addrs: RingAddrs) {
        match self {
            Ring::Split(r) => r.set_addrs(addrs),
            Ring::Packed(r) => r.set_addrs(addrs),
        }
    }

    /// Logs the device's ring writes into `log` at guest-physical `log_gpa`.
    pub fn set_used_log(&mut self, log: Option<(Arc<DirtyLog>, u64)>) {
        match self {
            Ring::Split(r) => r.set_used_log(log),
            // Packed rings have no used ring of their own: what the device writes is
            // logged where it lies.
            Ring::Packed(r) => r.set_log(log.map(|(log, _)| log)),
        }
    }

    /// The next entry the driver made available.
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
        match self {
            Ring::Split(r) => r.next_into(mem, chain),
            Ring::Packed(r) => r.next_into(mem, chain),
        }
    }

    /// Whether the driver made entries available the device has not read.
    #[inline]
    pub fn has_available(&self, mem: &MemoryTable) -> Result<bool, QueueError> {
        match self {
            Ring::Split(r) => r.has_available(mem),
            Ring::Packed(r) => r.has_available(mem),
        }
    }

    /// Writes a used entry for buffer `id` (taking `slots` ring slots) with `len` bytes.
    #[inline]
    pub fn add_used(
        &mut self,
        mem: &MemoryTable,
        id: u16,
        len: u32,
        slots: u16,
    ) -> Result<(), QueueError> {
        match self {
            Ring::Split(r) => r.add_used(mem, id, len),
            Ring::Packed(r) => r.add_used(mem, id, len, slots),
        }
    }

    /// Makes the used entries written so far visible to the driver.
    pub fn publish_used(&mut self, mem: &MemoryTable) -> Result<(), QueueError> {
        match self {
            Ring::Split(r) => r.publish_used(mem),
            Ring::Packed(r) => r.publish_used(mem),
        }
    }

    /// Asks the driver not to kick.
    #[inline]
    pub fn disable_notification(&mut self, mem: &MemoryTable) -> Result<(), QueueError> {
        match self {
            Ring::Split(r) => r.disable_notification(mem),
            Ring::Packed(r) => r.disable_notification(mem),
        }
    }

    /// Asks the driver to kick again; true if entries arrived meanwhile.
    pub fn enable_notification(&mut self, mem: &MemoryTable) -> Result<bool, QueueError> {
        match self {
            Ring::Split(r) => r.enable_notification(mem),
            Ring::Packed(r) => r.enable_notification(mem),
        }
    }

    /// Whether the driver wants an interrupt now (records it).
    pub fn needs_notification(&mut self, mem: &MemoryTable) -> Result<bool, QueueError> {
        match self {
            Ring::Split(r) => r.needs_notification(mem),
            Ring::Packed(r) => r.needs_notification(mem),
        }
    }
}
