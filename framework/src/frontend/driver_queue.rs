//! `DriverQueue`: the driver side of a split virtqueue, over [`FrontendMemory`].

use std::fs::File;
use std::os::fd::AsFd;
use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};

use super::packed_driver::PackedDriver;
use super::{Frontend, FrontendError, FrontendMemory};
use crate::memory::MemoryTable;
use crate::protocol::payload::VringAddr;
use crate::protocol::{virtio, FrontendRequest};
use crate::queue::packed::layout as pl;
use crate::queue::split::layout as l;
use crate::queue::{Descriptor, RingState};

/// A used-ring entry: which chain came back and how many bytes the device wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsedElem {
    /// Head index of the chain.
    pub id: u16,
    /// Bytes written by the device.
    pub len: u32,
}

/// A virtqueue as a virtio driver runs it: posts buffers, kicks, reaps used entries and
/// waits for calls, honouring EVENT_IDX and the device's notification suppression like a
/// guest driver. Split rings by [`Self::new`], packed rings by [`Self::new_packed`] (with
/// [`Frontend::negotiate_packed`]); the methods are the same for both.
///
/// See the [module example](super) for use.
#[derive(Debug)]
pub struct DriverQueue {
    index: u16,
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    free: Vec<u16>,
    /// Descriptors per outstanding head (to free them when used).
    chain_len: Vec<u16>,
    avail_idx: u16,
    /// The avail index at the previous notification decision (EVENT_IDX's "old").
    kick_checked: u16,
    last_used: u16,
    event_idx: bool,
    kick: File,
    call: File,
    kicks: u64,
    /// A packed ring's driver state (None: split).
    packed: Option<PackedDriver>,
}

impl DriverQueue {
    /// Allocates a ring of `size` entries for queue `index` in `mem`.
    pub fn new(mem: &FrontendMemory, index: u16, size: u16) -> Result<Self, FrontendError> {
        let lens = [
            l::desc_table_len(size),
            l::avail_len(size),
            l::used_len(size),
        ];
        let desc = mem.alloc(lens[0], 4096)?;
        let avail = mem.alloc(lens[1], 64)?;
        let used = mem.alloc(lens[2], 4096)?;
        let t = mem.table();
        for (at, len) in [desc, avail, used].into_iter().zip(lens) {
            t.write(at, &vec![0u8; len as usize])?;
        }
        let new_eventfd = || -> Result<File, FrontendError> {
            let fd =
                EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
                    .map_err(std::io::Error::from)?;
            Ok(File::from(std::os::fd::OwnedFd::from(fd)))
        };
        Ok(DriverQueue {
            index,
            size,
            desc,
            avail,
            used,
            free: (0..size).rev().collect(),
            chain_len: vec![0; size.into()],
            avail_idx: 0,
            kick_checked: 0,
            last_used: 0,
            event_idx: false,
            kick: new_eventfd()?,
            call: new_eventfd()?,
            kicks: 0,
            packed: None,
        })
    }

    /// Allocates a packed ring of `size` entries (1 to 32768) for queue `index` in `mem`.
    pub fn new_packed(mem: &FrontendMemory, index: u16, size: u16) -> Result<Self, FrontendError> {
        let desc = mem.alloc(pl::desc_ring_len(size), 4096)?;
        let driver = mem.alloc(pl::EVENT_AREA_LEN, 64)?;
        let device = mem.alloc(pl::EVENT_AREA_LEN, 64)?;
        let t = mem.table();
        t.write(desc, &vec![0u8; pl::desc_ring_len(size) as usize])?;
        t.write(driver, &[0; 4])?;
        t.write(device, &[0; 4])?;
        let mut q = Self::new(mem, index, 1)?;
        q.size = size;
        (q.desc, q.avail, q.used) = (desc, driver, device);
        q.free = Vec::new();
        q.chain_len = Vec::new();
        q.packed = Some(PackedDriver::new(size, desc, driver, device));
        Ok(q)
    }

    /// Whether this is a packed ring.
    pub fn is_packed(&self) -> bool {
        self.packed.is_some()
    }

    /// What SET_VRING_BASE carries for this ring now.
    pub fn ring_state(&self) -> RingState {
        match &self.packed {
            Some(p) => p.state(),
            None => RingState::Split {
                next_avail: self.avail_idx,
            },
        }
    }

    /// Queue index.
    pub fn index(&self) -> u16 {
        self.index
    }

    /// Kicks actually written (suppressed ones not counted).
    pub fn kicks(&self) -> u64 {
        self.kicks
    }

    /// Free descriptors.
    pub fn free_descriptors(&self) -> usize {
        if let Some(p) = &self.packed {
            return p.free_descriptors();
        }
        self.free.len()
    }

    /// The ring's addresses as SET_VRING_ADDR carries them.
    pub fn vring_addr(&self, mem: &FrontendMemory) -> VringAddr {
        let u = |gpa| mem.uaddr(gpa).unwrap_or(0);
        VringAddr {
            index: self.index.into(),
            flags: 0,
            desc: u(self.desc),
            used: u(self.used),
            avail: u(self.avail),
            log: 0,
        }
    }

    /// Sets the ring up on the backend: NUM, BASE, ADDR, KICK, CALL, and ENABLE when
    /// PROTOCOL_FEATURES was negotiated. Call after SET_MEM_TABLE.
    pub fn attach(&mut self, fe: &mut Frontend, mem: &FrontendMemory) -> Result<(), FrontendError> {
        let state = self.ring_state();
        self.attach_at(fe, mem, state)
    }

    /// Sets the ring up on a backend that replaces one that ended without answering
    /// GET_VRING_BASE (it crashed): a split ring resumes at the used index the old
    /// backend left in guest memory, as QEMU does. A backend with in-flight tracking
    /// then takes the chains it had in flight first. A packed ring has no used index in
    /// memory: its base is what the driver knows, and a backend with in-flight tracking
    /// resumes at the positions its area holds.
    pub fn attach_after_loss(
        &mut self,
        fe: &mut Frontend,
        mem: &FrontendMemory,
    ) -> Result<(), FrontendError> {
        if self.packed.is_some() {
            return self.attach(fe, mem);
        }
        let used = mem
            .table()
            .load::<u16>(self.used + l::USED_IDX, Ordering::Acquire)?;
        self.attach_at(fe, mem, RingState::Split { next_avail: used })
    }

    fn attach_at(
        &mut self,
        fe: &mut Frontend,
        mem: &FrontendMemory,
        state: RingState,
    ) -> Result<(), FrontendError> {
        self.event_idx = fe.features() & virtio::RING_EVENT_IDX != 0;
        if let Some(p) = &mut self.packed {
            p.event_idx = self.event_idx;
        }
        let packed = fe.features() & virtio::RING_PACKED != 0;
        if packed != self.packed.is_some() {
            return Err(FrontendError::Io(std::io::Error::other(
                "the ring layout does not match the negotiated VIRTIO_F_RING_PACKED",
            )));
        }
        let i = u32::from(self.index);
        fe.set_vring_num(i, self.size.into())?;
        fe.set_vring_base(i, state.encode())?;
        fe.set_vring_addr(&self.vring_addr(mem))?;
        fe.set_vring_fd(
            FrontendRequest::SET_VRING_CALL,
            self.index as u8,
            Some(&self.call),
        )?;
        fe.set_vring_fd(
            FrontendRequest::SET_VRING_KICK,
            self.index as u8,
            Some(&self.kick),
        )?;
        if fe.features() & virtio::PROTOCOL_FEATURES != 0 {
            fe.set_vring_enable(i, true)?;
        }
        Ok(())
    }

    /// Guest-physical address of the used ring (where used-ring writes are logged); of
    /// a packed ring, its device event suppression area.
    pub fn used_gpa(&self) -> u64 {
        self.used
    }

    /// Guest-physical address of the descriptor table (a packed ring's descriptor ring,
    /// where the device writes used descriptors).
    pub fn desc_gpa(&self) -> u64 {
        self.desc
    }

    /// The kick eventfd (for a VMM that hands it elsewhere).
    pub fn kick_fd(&self) -> &File {
        &self.kick
    }

    /// The call eventfd.
    pub fn call_fd(&self) -> &File {
        &self.call
    }

    /// Posts a chain of buffers `(gpa, len, device_writable)`; returns its head.
    pub fn add(
        &mut self,
        mem: &MemoryTable,
        bufs: &[(u64, u32, bool)],
    ) -> Result<u16, FrontendError> {
        if let Some(p) = &mut self.packed {
            return p.add(mem, bufs);
        }
        if bufs.is_empty() || bufs.len() > self.free.len() {
            return Err(FrontendError::QueueFull);
        }
        let ids: Vec<u16> = (0..bufs.len()).filter_map(|_| self.free.pop()).collect();
        for (k, (&(addr, len, write), &id)) in bufs.iter().zip(&ids).enumerate() {
            let last = k + 1 == bufs.len();
            let d = Descriptor {
                addr,
                len,
                flags: if write { Descriptor::F_WRITE } else { 0 }
                    | if last { 0 } else { Descriptor::F_NEXT },
                next: if last { 0 } else { ids[k + 1] },
            };
            mem.write(self.desc + l::desc_entry(id), &d.to_bytes())?;
        }
        self.chain_len[usize::from(ids[0])] = ids.len() as u16;
        self.publish(mem, ids[0])?;
        Ok(ids[0])
    }

    /// Posts buffers through one indirect descriptor whose table lives at `table`
    /// (16 bytes per buffer, allocated by the caller).
    pub fn add_indirect(
        &mut self,
        mem: &MemoryTable,
        table: u64,
        bufs: &[(u64, u32, bool)],
    ) -> Result<u16, FrontendError> {
        if let Some(p) = &mut self.packed {
            return p.add_indirect(mem, table, bufs);
        }
        let id = self.free.pop().ok_or(FrontendError::QueueFull)?;
        for (k, &(addr, len, write)) in bufs.iter().enumerate() {
            let last = k + 1 == bufs.len();
            let d = Descriptor {
                addr,
                len,
                flags: if write { Descriptor::F_WRITE } else { 0 }
                    | if last { 0 } else { Descriptor::F_NEXT },
                next: if last { 0 } else { k as u16 + 1 },
            };
            mem.write(table + 16 * k as u64, &d.to_bytes())?;
        }
        let d = Descriptor {
            addr: table,
            len: 16 * bufs.len() as u32,
            flags: Descriptor::F_INDIRECT,
            next: 0,
        };
        mem.write(self.desc + l::desc_entry(id), &d.to_bytes())?;
        self.chain_len[usize::from(id)] = 1;
        self.publish(mem, id)?;
        Ok(id)
    }

    /// Writes a raw descriptor (for tests that build hostile tables).
    pub fn write_descriptor(
        &self,
        mem: &MemoryTable,
        index: u16,
        d: &Descriptor,
    ) -> Result<(), FrontendError> {
        Ok(mem.write(self.desc + l::desc_entry(index % self.size), &d.to_bytes())?)
    }

    /// Writes raw packed descriptors into the next slots, the first one's flags last,
    /// without any check (hostile tests of packed rings). The AVAIL/USED bits are the
    /// caller's: [`Self::packed_avail_bits`] gives the ones that mean "available".
    pub fn post_packed_raw(
        &mut self,
        mem: &MemoryTable,
        descs: &[pl::PackedDescriptor],
    ) -> Result<(), FrontendError> {
        match &mut self.packed {
            Some(p) => p.post_raw(mem, descs),
            None => Err(FrontendError::Io(std::io::Error::other(
                "not a packed ring",
            ))),
        }
    }

    /// The AVAIL/USED bits that make a descriptor in the next slot available (packed).
    pub fn packed_avail_bits(&self) -> u16 {
        self.packed
            .as_ref()
            .map_or(0, PackedDriver::next_avail_bits)
    }

    /// Makes head `head` available without touching descriptors (hostile tests).
    pub fn publish_raw(&mut self, mem: &MemoryTable, head: u16) -> Result<(), FrontendError> {
        self.publish(mem, head)
    }

    fn publish(&mut self, mem: &MemoryTable, head: u16) -> Result<(), FrontendError> {
        let entry = self.avail + l::avail_entry(self.size, self.avail_idx);
        mem.store::<u16>(entry, head, Ordering::Relaxed)?;
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.store::<u16>(self.avail + l::AVAIL_IDX, self.avail_idx, Ordering::Release)?;
        Ok(())
    }

    /// Notifies the backend unless it asked not to be (NO_NOTIFY, or avail_event with
    /// EVENT_IDX). Returns whether a kick was written.
    pub fn kick(&mut self, mem: &MemoryTable) -> Result<bool, FrontendError> {
        fence(Ordering::SeqCst);
        let want = if let Some(p) = &mut self.packed {
            p.kick_wanted(mem)?
        } else if self.event_idx {
            let event =
                mem.load::<u16>(self.used + l::avail_event(self.size), Ordering::Acquire)?;
            // Kick when avail_event lies in what was published since the previous
            // decision.
            l::need_event(event, self.avail_idx, self.kick_checked)
        } else {
            let flags = mem.load::<u16>(self.used + l::USED_FLAGS, Ordering::Acquire)?;
            flags & l::USED_F_NO_NOTIFY == 0
        };
        self.kick_checked = self.avail_idx;
        if want {
            self.kick_now()?;
        }
        Ok(want)
    }

    /// Writes the kick eventfd unconditionally.
    pub fn kick_now(&mut self) -> Result<(), FrontendError> {
        nix::unistd::write(&self.kick, &1u64.to_ne_bytes()).map_err(std::io::Error::from)?;
        self.kicks += 1;
        Ok(())
    }

    /// Reaps one used entry, if any, freeing its descriptors.
    pub fn pop_used(&mut self, mem: &MemoryTable) -> Result<Option<UsedElem>, FrontendError> {
        if let Some(p) = &mut self.packed {
            return Ok(p.pop_used(mem)?.map(|(id, len)| UsedElem { id, len }));
        }
        let used_idx = mem.load::<u16>(self.used + l::USED_IDX, Ordering::Acquire)?;
        if used_idx == self.last_used {
            return Ok(None);
        }
        let elem = self.used + l::used_elem(self.size, self.last_used);
        let id = mem.load::<u32>(elem, Ordering::Relaxed)?;
        let len = mem.load::<u32>(elem + 4, Ordering::Relaxed)?;
        self.last_used = self.last_used.wrapping_add(1);
        if self.event_idx {
            // Ask for a call when the next entry is used.
            mem.store::<u16>(
                self.avail + l::used_event(self.size),
                self.last_used,
                Ordering::Release,
            )?;
        }
        let id = (id as u16) % self.size;
        self.free_chain(mem, id)?;
        Ok(Some(UsedElem { id, len }))
    }

    fn free_chain(&mut self, mem: &MemoryTable, head: u16) -> Result<(), FrontendError> {
        let n = std::mem::take(&mut self.chain_len[usize::from(head)]);
        let mut id = head;
        for _ in 0..n {
            self.free.push(id);
            let mut raw = [0u8; 16];
            mem.read(self.desc + l::desc_entry(id), &mut raw)?;
            id = Descriptor::from_bytes(&raw).next;
        }
        Ok(())
    }

    /// Waits up to `timeout` for the call eventfd; true if it fired (and clears it).
    pub fn wait_call(&self, timeout: Duration) -> Result<bool, FrontendError> {
        let mut fds = [PollFd::new(self.call.as_fd(), PollFlags::POLLIN)];
        let t = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
        let n = poll(&mut fds, t).map_err(std::io::Error::from)?;
        if n == 0 {
            return Ok(false);
        }
        let mut b = [0u8; 8];
        let _ = nix::unistd::read(&self.call, &mut b);
        Ok(true)
    }

    /// Waits (on calls) until a used entry arrives, up to `timeout`.
    pub fn wait_used(
        &mut self,
        mem: &MemoryTable,
        timeout: Duration,
    ) -> Result<UsedElem, FrontendError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(u) = self.pop_used(mem)? {
                return Ok(u);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(FrontendError::Timeout);
            }
            self.wait_call(left)?;
        }
    }

    /// The driver's avail index (how many chains were posted, mod 2^16).
    pub fn avail_idx(&self) -> u16 {
        self.avail_idx
    }

    /// Continues after a GET_VRING_BASE/restart: the next chains are posted from here.
    pub fn used_idx(&self) -> u16 {
        self.last_used
    }
}
