//! `DescRingView`: the host address of a packed ring's descriptor ring, for the
//! per-chain flag, descriptor and used-descriptor accesses that would otherwise each
//! look up a region.

use std::sync::atomic::{AtomicU16, AtomicU32, Ordering};

use super::layout::{self as l, PackedDescriptor};
use crate::memory::MemoryTable;

/// The descriptor ring of `size` entries at a host address inside the mappings of the
/// table with id `table_id`. Built only when the ring lies whole in one region and is
/// 16-byte aligned; every access below is to one entry of it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DescRingView {
    pub(crate) table_id: u64,
    size: u16,
    desc: usize,
}

impl DescRingView {
    /// The view of the ring at `desc_gpa` in `mem`, or `None` when it straddles regions
    /// or is misaligned (accesses then go through the table).
    pub(crate) fn new(mem: &MemoryTable, desc_gpa: u64, size: u16) -> Option<Self> {
        let desc = mem.host_address(desc_gpa, l::desc_ring_len(size) as usize)?;
        if !desc.is_multiple_of(16) {
            return None;
        }
        Some(DescRingView {
            table_id: mem.id(),
            size,
            desc,
        })
    }

    /// Host address of entry `slot` (taken modulo the size, so it is inside the ring).
    fn entry(&self, slot: u16) -> usize {
        self.desc + l::desc_entry(slot % self.size) as usize
    }

    // SAFETY (for the accessors below): every address is inside one 16-byte entry of the
    // ring `new` checked to lie in one mapping, at an offset aligned for the type (entries
    // are 16-aligned; fields sit at 8, 12 and 14). The mapping lives as long as a table
    // with `table_id` does, and the ring uses a view only while it borrows such a table,
    // so the atomic never outlives its memory (it is used for this one access). The
    // driver touches these fields only with its own atomic or volatile accesses, as the
    // packed ring layout intends.

    /// The flags of entry `slot` (acquire: what the driver wrote before them is visible).
    pub(crate) fn flags(&self, slot: u16) -> u16 {
        // SAFETY: see above.
        unsafe { AtomicU16::from_ptr((self.entry(slot) + 14) as *mut u16) }.load(Ordering::Acquire)
    }

    /// Entry `slot`, read as two 8-byte loads: the address in one, length, id and flags
    /// in the other, so that a driver rewriting the entry meanwhile cannot mix the length
    /// of one version with the flags of another.
    pub(crate) fn descriptor(&self, slot: u16) -> PackedDescriptor {
        let at = self.entry(slot);
        // SAFETY: `at` and `at + 8` are inside one entry of the ring (see above), both
        // 8-aligned. Volatile reads copy what the driver wrote, which is then validated
        // as untrusted data.
        let (lo, hi) = unsafe {
            (
                std::ptr::read_volatile(at as *const u64),
                std::ptr::read_volatile((at + 8) as *const u64),
            )
        };
        let hi = u64::from_le(hi);
        PackedDescriptor {
            addr: u64::from_le(lo),
            len: hi as u32,
            id: (hi >> 32) as u16,
            flags: (hi >> 48) as u16,
        }
    }

    /// Writes the length and buffer id of used entry `slot` (its flags come later).
    pub(crate) fn set_used(&self, slot: u16, len: u32, id: u16) {
        let at = self.entry(slot);
        // SAFETY: see above.
        unsafe { AtomicU32::from_ptr((at + 8) as *mut u32) }.store(len, Ordering::Relaxed);
        // SAFETY: see above.
        unsafe { AtomicU16::from_ptr((at + 12) as *mut u16) }.store(id, Ordering::Relaxed);
    }

    /// Writes the flags of entry `slot` (release: the entry's other fields first).
    pub(crate) fn set_flags(&self, slot: u16, flags: u16) {
        // SAFETY: see above.
        unsafe { AtomicU16::from_ptr((self.entry(slot) + 14) as *mut u16) }
            .store(flags, Ordering::Release);
    }
}
