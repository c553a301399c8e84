//! `RingView`: host addresses of a split ring's three parts, for the per-packet field
//! accesses that would otherwise each look up a region.

use std::sync::atomic::{AtomicU16, AtomicU32, Ordering};

use super::layout as l;
use super::RingAddrs;
use crate::memory::MemoryTable;
use crate::queue::Descriptor;

/// The ring parts of a queue of `size` entries as host addresses inside the mappings of
/// the table with id `table_id`. Built only when each part lies whole in one region and
/// is aligned as its fields need; then every access below stays inside a part.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RingView {
    pub(crate) table_id: u64,
    size: u16,
    desc: usize,
    avail: usize,
    used: usize,
}

impl RingView {
    /// The view of `addrs` in `mem`, or `None` when a part straddles regions or is
    /// misaligned (accesses then go through the table).
    pub(crate) fn new(mem: &MemoryTable, addrs: &RingAddrs, size: u16) -> Option<Self> {
        let desc = mem.host_address(addrs.desc, l::desc_table_len(size) as usize)?;
        let avail = mem.host_address(addrs.avail, l::avail_len(size) as usize)?;
        let used = mem.host_address(addrs.used, l::used_len(size) as usize)?;
        if !desc.is_multiple_of(8) || !avail.is_multiple_of(2) || !used.is_multiple_of(4) {
            return None;
        }
        Some(RingView {
            table_id: mem.id(),
            size,
            desc,
            avail,
            used,
        })
    }

    // SAFETY (for the four accessors below): callers pass an address inside one ring
    // part (the offsets used are within the lengths `new` checked), aligned for the
    // type (the parts' alignment was checked and the offsets keep it). The mapping lives
    // as long as a table with `table_id` does, and a queue uses a view only while it
    // borrows such a table, so the atomic never outlives its memory (it is used for this
    // one access). The guest touches these fields only with its own atomic or volatile
    // accesses, as the virtio ring layout intends.
    fn load_u16(addr: usize, order: Ordering) -> u16 {
        // SAFETY: see above.
        unsafe { AtomicU16::from_ptr(addr as *mut u16) }.load(order)
    }

    fn store_u16(addr: usize, value: u16, order: Ordering) {
        // SAFETY: see above.
        unsafe { AtomicU16::from_ptr(addr as *mut u16) }.store(value, order)
    }

    fn store_u32(addr: usize, value: u32) {
        // SAFETY: see above (4-aligned: the used ring is, and elements sit at 4 + 8 * n).
        unsafe { AtomicU32::from_ptr(addr as *mut u32) }.store(value, Ordering::Relaxed)
    }

    pub(crate) fn avail_flags(&self) -> u16 {
        Self::load_u16(self.avail + l::AVAIL_FLAGS as usize, Ordering::Acquire)
    }

    pub(crate) fn avail_idx(&self) -> u16 {
        Self::load_u16(self.avail + l::AVAIL_IDX as usize, Ordering::Acquire)
    }

    /// The avail ring entry for free-running index `idx`.
    pub(crate) fn avail_entry(&self, idx: u16) -> u16 {
        let at = self.avail + l::avail_entry(self.size, idx) as usize;
        Self::load_u16(at, Ordering::Acquire)
    }

    pub(crate) fn used_event(&self) -> u16 {
        let at = self.avail + l::used_event(self.size) as usize;
        Self::load_u16(at, Ordering::Acquire)
    }

    pub(crate) fn set_used_flags(&self, flags: u16) {
        Self::store_u16(self.used + l::USED_FLAGS as usize, flags, Ordering::Relaxed);
    }

    pub(crate) fn set_used_idx(&self, idx: u16) {
        Self::store_u16(self.used + l::USED_IDX as usize, idx, Ordering::Release);
    }

    /// Writes the used element for free-running index `idx`.
    pub(crate) fn set_used_elem(&self, idx: u16, head: u16, len: u32) {
        let at = self.used + l::used_elem(self.size, idx) as usize;
        Self::store_u32(at, u32::from(head));
        Self::store_u32(at + 4, len);
    }

    pub(crate) fn set_avail_event(&self, idx: u16) {
        let at = self.used + l::avail_event(self.size) as usize;
        Self::store_u16(at, idx, Ordering::Relaxed);
    }

    /// Descriptor `index` (taken modulo the size) of the table, read as two 8-byte
    /// loads: the address in one, length, flags and next in the other, so that a guest
    /// rewriting the entry meanwhile cannot mix the length of one version with the
    /// flags of another.
    pub(crate) fn descriptor(&self, index: u16) -> Descriptor {
        let at = self.desc + l::desc_entry(l::ring_slot(self.size, index)) as usize;
        // SAFETY: `at` and `at + 8` are inside the descriptor table `new` checked
        // (16 * size bytes), whose mapping lives while the borrowed table does; the table
        // is 8-aligned (checked in `new`) and entries are 16 bytes apart, so both loads
        // are aligned. Volatile reads copy what the guest wrote, which is then validated
        // as untrusted data.
        let (lo, hi) = unsafe {
            (
                std::ptr::read_volatile(at as *const u64),
                std::ptr::read_volatile((at + 8) as *const u64),
            )
        };
        let (addr, hi) = (u64::from_le(lo), u64::from_le(hi));
        Descriptor {
            addr,
            len: hi as u32,
            flags: (hi >> 32) as u16,
            next: (hi >> 48) as u16,
        }
    }
}
