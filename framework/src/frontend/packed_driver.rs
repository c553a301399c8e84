//! The driver side of a packed ring, for [`super::DriverQueue`]: posting chains into the
//! descriptor ring and reaping used descriptors, with the wrap counters a guest driver
//! keeps.

use std::sync::atomic::{fence, Ordering};

use super::FrontendError;
use crate::memory::MemoryTable;
use crate::queue::packed::layout::{self as l, PackedDescriptor};
use crate::queue::RingState;

/// A packed ring's driver state.
#[derive(Debug)]
pub(crate) struct PackedDriver {
    size: u16,
    desc: u64,
    driver_area: u64,
    device_area: u64,
    next_avail: u16,
    avail_wrap: bool,
    next_used: u16,
    used_wrap: bool,
    free_ids: Vec<u16>,
    /// Ring slots taken by each outstanding buffer id (0: not outstanding).
    slots: Vec<u16>,
    free_slots: u16,
    /// The read position at the previous kick decision (EVENT_IDX's "old").
    kick_checked: u16,
    pub(crate) event_idx: bool,
}

impl PackedDriver {
    pub(crate) fn new(size: u16, desc: u64, driver_area: u64, device_area: u64) -> Self {
        PackedDriver {
            size,
            desc,
            driver_area,
            device_area,
            next_avail: 0,
            avail_wrap: true,
            next_used: 0,
            used_wrap: true,
            free_ids: (0..size).rev().collect(),
            slots: vec![0; usize::from(size)],
            free_slots: size,
            kick_checked: 0,
            event_idx: false,
        }
    }

    /// The ring state to send in SET_VRING_BASE.
    pub(crate) fn state(&self) -> RingState {
        RingState::Packed {
            next_avail: self.next_avail,
            avail_wrap: self.avail_wrap,
            next_used: self.next_used,
            used_wrap: self.used_wrap,
        }
    }

    pub(crate) fn free_descriptors(&self) -> usize {
        usize::from(self.free_slots)
    }

    /// Writes `descs` into consecutive slots as buffer `id`; the first descriptor's flags
    /// are written last, behind a release fence, so the device sees the chain whole.
    fn post(
        &mut self,
        mem: &MemoryTable,
        descs: &[PackedDescriptor],
        id: u16,
    ) -> Result<(), FrontendError> {
        let (mut slot, mut wrap) = (self.next_avail, self.avail_wrap);
        let mut head_flags = 0;
        for (k, d) in descs.iter().enumerate() {
            let last = k + 1 == descs.len();
            let flags = d.flags | l::avail_bits(wrap) | if last { 0 } else { l::F_NEXT };
            let entry = PackedDescriptor { flags: 0, id, ..*d };
            let at = self.desc + l::desc_entry(slot);
            mem.write(at, &entry.to_bytes()[..14])?;
            if k == 0 {
                head_flags = flags;
            } else {
                mem.store::<u16>(at + l::DESC_FLAGS, flags, Ordering::Relaxed)?;
            }
            (slot, wrap) = l::advance(slot, wrap, 1, self.size);
        }
        fence(Ordering::Release);
        let head = self.desc + l::desc_entry(self.next_avail) + l::DESC_FLAGS;
        mem.store::<u16>(head, head_flags, Ordering::Release)?;
        self.slots[usize::from(id)] = descs.len() as u16;
        self.free_slots -= descs.len() as u16;
        (self.next_avail, self.avail_wrap) = (slot, wrap);
        Ok(())
    }

    /// Posts a chain of buffers `(gpa, len, device_writable)`; returns its buffer id.
    pub(crate) fn add(
        &mut self,
        mem: &MemoryTable,
        bufs: &[(u64, u32, bool)],
    ) -> Result<u16, FrontendError> {
        if bufs.is_empty() || bufs.len() > usize::from(self.free_slots) {
            return Err(FrontendError::QueueFull);
        }
        let id = self.free_ids.pop().ok_or(FrontendError::QueueFull)?;
        let descs: Vec<PackedDescriptor> = bufs
            .iter()
            .map(|&(addr, len, write)| PackedDescriptor {
                addr,
                len,
                id,
                flags: if write { l::F_WRITE } else { 0 },
            })
            .collect();
        self.post(mem, &descs, id)?;
        Ok(id)
    }

    /// Posts buffers through one indirect descriptor whose table lives at `table`.
    pub(crate) fn add_indirect(
        &mut self,
        mem: &MemoryTable,
        table: u64,
        bufs: &[(u64, u32, bool)],
    ) -> Result<u16, FrontendError> {
        if self.free_slots == 0 {
            return Err(FrontendError::QueueFull);
        }
        let id = self.free_ids.pop().ok_or(FrontendError::QueueFull)?;
        for (k, &(addr, len, write)) in bufs.iter().enumerate() {
            let d = PackedDescriptor {
                addr,
                len,
                id: 0,
                flags: if write { l::F_WRITE } else { 0 },
            };
            mem.write(table + l::DESC_SIZE * k as u64, &d.to_bytes())?;
        }
        let d = PackedDescriptor {
            addr: table,
            len: (l::DESC_SIZE as usize * bufs.len()) as u32,
            id,
            flags: l::F_INDIRECT,
        };
        self.post(mem, &[d], id)?;
        Ok(id)
    }

    /// Writes raw descriptors into the next slots without any check (hostile tests):
    /// the flags given are written as they are, the first one last.
    pub(crate) fn post_raw(
        &mut self,
        mem: &MemoryTable,
        descs: &[PackedDescriptor],
    ) -> Result<(), FrontendError> {
        let (mut slot, mut wrap) = (self.next_avail, self.avail_wrap);
        for d in descs.iter().skip(1) {
            (slot, wrap) = l::advance(slot, wrap, 1, self.size);
            mem.write(self.desc + l::desc_entry(slot), &d.to_bytes())?;
        }
        if let Some(first) = descs.first() {
            let at = self.desc + l::desc_entry(self.next_avail);
            mem.write(at, &first.to_bytes()[..14])?;
            fence(Ordering::Release);
            mem.store::<u16>(at + l::DESC_FLAGS, first.flags, Ordering::Release)?;
        }
        (self.next_avail, self.avail_wrap) = l::advance(slot, wrap, 1, self.size);
        // Track the buffer the device will return (its id is in the last descriptor),
        // so that reaping it works; an id out of range or already outstanding is the
        // caller's hostile choice and is not tracked.
        if let Some(last) = descs.last() {
            let id = last.id;
            if self.slots.get(usize::from(id)) == Some(&0) {
                let n = descs.len() as u16;
                self.slots[usize::from(id)] = n;
                self.free_ids.retain(|&f| f != id);
                self.free_slots = self.free_slots.saturating_sub(n);
            }
        }
        Ok(())
    }

    /// The avail bits of the next slot the driver writes (for hostile tests).
    pub(crate) fn next_avail_bits(&self) -> u16 {
        l::avail_bits(self.avail_wrap)
    }

    /// Whether the device wants a kick for what was posted since the last decision.
    pub(crate) fn kick_wanted(&mut self, mem: &MemoryTable) -> Result<bool, FrontendError> {
        fence(Ordering::SeqCst);
        let flags = mem.load::<u16>(self.device_area + l::EVENT_FLAGS, Ordering::Acquire)?;
        let want = match flags & 3 {
            l::EVENT_DISABLE => false,
            l::EVENT_DESC if self.event_idx => {
                let off_wrap =
                    mem.load::<u16>(self.device_area + l::EVENT_OFF_WRAP, Ordering::Acquire)?;
                l::need_event(
                    off_wrap,
                    self.next_avail,
                    self.kick_checked,
                    self.avail_wrap,
                    self.size,
                )
            }
            _ => true,
        };
        self.kick_checked = self.next_avail;
        Ok(want)
    }

    /// Reaps one used descriptor: (buffer id, length).
    pub(crate) fn pop_used(
        &mut self,
        mem: &MemoryTable,
    ) -> Result<Option<(u16, u32)>, FrontendError> {
        let at = self.desc + l::desc_entry(self.next_used);
        let flags = mem.load::<u16>(at + l::DESC_FLAGS, Ordering::Acquire)?;
        if !l::is_used(flags, self.used_wrap) {
            return Ok(None);
        }
        let mut raw = [0u8; 16];
        mem.read(at, &mut raw)?;
        let d = PackedDescriptor::from_bytes(&raw);
        let slots = match self.slots.get(usize::from(d.id)) {
            Some(&n) if n > 0 => n,
            _ => return Err(FrontendError::BadUsed { id: d.id }),
        };
        self.slots[usize::from(d.id)] = 0;
        self.free_ids.push(d.id);
        self.free_slots += slots;
        (self.next_used, self.used_wrap) =
            l::advance(self.next_used, self.used_wrap, slots, self.size);
        let len = if flags & l::F_WRITE != 0 { d.len } else { 0 };
        if self.event_idx {
            // Ask for a call when the next descriptor is used.
            let at = l::position(self.next_used, self.used_wrap);
            mem.store::<u16>(self.driver_area + l::EVENT_OFF_WRAP, at, Ordering::Relaxed)?;
            mem.store::<u16>(
                self.driver_area + l::EVENT_FLAGS,
                l::EVENT_DESC,
                Ordering::Release,
            )?;
        }
        Ok(Some((d.id, len)))
    }
}
