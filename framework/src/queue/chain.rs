//! `DescriptorChain`: a validated, copied chain of buffers.

use super::split::ring_view::RingView;
use super::{ChainReader, ChainWriter, Descriptor, QueueError};
use crate::memory::MemoryTable;

/// The buffers of one available-ring entry, walked, copied and checked.
///
/// Walking follows `next` links (and one level of indirect table), bounded by the table
/// size so loops end; every buffer is checked to lie in guest memory; readable buffers
/// must precede writable ones. The descriptors are copies: the guest can no longer
/// change what the device sees.
///
/// # Example
/// ```
/// # use vhost_user_sync::queue::{Descriptor, DescriptorChain};
/// # use vhost_user_sync::memory::MemoryTable;
/// # use vhost_user_sync::protocol::payload::MemoryRegionDesc;
/// # let fd = nix::sys::memfd::memfd_create("g", nix::sys::memfd::MFdFlags::empty()).unwrap();
/// # let file = std::fs::File::from(fd); file.set_len(0x10000).unwrap();
/// # let mem = MemoryTable::from_regions(&[MemoryRegionDesc { guest_phys_addr: 0, memory_size: 0x10000, userspace_addr: 0, mmap_offset: 0 }], vec![file]).unwrap();
/// // Descriptor 0 at table 0x0: a 64-byte device-writable buffer at 0x1000.
/// let d = Descriptor { addr: 0x1000, len: 64, flags: Descriptor::F_WRITE, next: 0 };
/// mem.write(0, &d.to_bytes()).unwrap();
/// let chain = DescriptorChain::walk(&mem, 0, 16, 0, false).unwrap();
/// assert_eq!((chain.id(), chain.writable_len(), chain.readable_len()), (0, 64, 0));
/// ```
///
/// A chain popped from a queue carries its identity: the ring it came from (one value
/// per ring start, never reused in the process), its place in the order chains were made
/// available, and its buffer id. The queue checks it whenever the chain is used or handed
/// back, so a chain used twice, handed back after use, or used on another ring is an
/// error rather than a corrupted ring.
#[derive(Debug, Clone)]
pub struct DescriptorChain {
    head: u16,
    pub(crate) token: ChainToken,
    descs: ChainDescs,
    first_writable: usize,
    readable_len: u32,
    writable_len: u32,
    /// How far into the writable buffers guest memory may have been written: what a
    /// [`ChainWriter`] wrote, or handed to the kernel to fill (a `readv`, an io_uring
    /// read), whatever the used length says later. The dirty log covers at least this
    /// much when the chain is used or handed back.
    reach: std::cell::Cell<u32>,
}

impl DescriptorChain {
    /// Walks the chain starting at `head` in the table at `table` of `size` entries.
    pub fn walk(
        mem: &MemoryTable,
        table: u64,
        size: u16,
        head: u16,
        indirect_allowed: bool,
    ) -> Result<Self, QueueError> {
        Self::walk_in(mem, table, None, size, head, indirect_allowed)
    }

    /// [`Self::walk`], reading the ring's own table through `view` when there is one.
    pub(crate) fn walk_in(
        mem: &MemoryTable,
        table: u64,
        view: Option<&RingView>,
        size: u16,
        head: u16,
        indirect_allowed: bool,
    ) -> Result<Self, QueueError> {
        let mut chain = DescriptorChain::start(head);
        chain.fill_split(mem, table, view, size, head, indirect_allowed)?;
        Ok(chain)
    }

    /// Walks the split-ring chain at `head` into `self` (whatever it held before is
    /// replaced): the ring's hot path builds each chain where it will be kept instead of
    /// moving it out through every layer.
    #[inline]
    pub(crate) fn fill_split(
        &mut self,
        mem: &MemoryTable,
        table: u64,
        view: Option<&RingView>,
        size: u16,
        head: u16,
        indirect_allowed: bool,
    ) -> Result<(), QueueError> {
        self.reset(head);
        self.walk_links(mem, table, view, size, indirect_allowed)?;
        self.check_buffers(mem)
    }

    fn walk_links(
        &mut self,
        mem: &MemoryTable,
        table: u64,
        view: Option<&RingView>,
        size: u16,
        indirect_allowed: bool,
    ) -> Result<(), QueueError> {
        let head = self.head;
        let mut index = head;
        let mut seen: u32 = 0;
        loop {
            if index >= size {
                return Err(QueueError::BadIndex {
                    index,
                    size: size.into(),
                });
            }
            seen += 1;
            if seen > u32::from(size) {
                return Err(QueueError::ChainTooLong {
                    head,
                    limit: size.into(),
                });
            }
            let desc = match view {
                // `index < size` was checked above.
                Some(v) => v.descriptor(index),
                None => read_desc(mem, table, index)?,
            };
            if desc.is_indirect() {
                if !indirect_allowed || desc.has_next() || !self.descs.as_slice().is_empty() {
                    return Err(QueueError::IndirectNotAllowed { flags: desc.flags });
                }
                return self.walk_indirect(mem, &desc);
            }
            self.push(desc)?;
            if !desc.has_next() {
                return Ok(());
            }
            index = desc.next;
        }
    }

    fn walk_indirect(&mut self, mem: &MemoryTable, table: &Descriptor) -> Result<(), QueueError> {
        let bad = QueueError::BadIndirectTable {
            addr: table.addr,
            len: table.len,
        };
        let count = table.len / Descriptor::SIZE as u32;
        if table.len == 0
            || !table.len.is_multiple_of(Descriptor::SIZE as u32)
            || count > u32::from(u16::MAX)
        {
            return Err(bad);
        }
        mem.check_range(table.addr, table.len.into())?;
        let mut index: u16 = 0;
        let mut seen = 0u32;
        loop {
            if u32::from(index) >= count {
                return Err(QueueError::BadIndex { index, size: count });
            }
            seen += 1;
            if seen > count {
                return Err(QueueError::ChainTooLong {
                    head: self.head,
                    limit: count,
                });
            }
            let desc = read_desc(mem, table.addr, index)?;
            if desc.is_indirect() {
                return Err(QueueError::NestedIndirect { head: self.head });
            }
            self.push(desc)?;
            if !desc.has_next() {
                return Ok(());
            }
            index = desc.next;
        }
    }

    /// An empty chain for buffer `id`, to be filled with [`Self::push`] (a packed ring
    /// builds its chains this way).
    pub(crate) fn start(id: u16) -> Self {
        DescriptorChain {
            head: id,
            token: ChainToken::default(),
            descs: ChainDescs::default(),
            first_writable: 0,
            readable_len: 0,
            writable_len: 0,
            reach: std::cell::Cell::new(0),
        }
    }

    /// Empties the chain for buffer `id`, keeping its allocation.
    #[inline]
    pub(crate) fn reset(&mut self, id: u16) {
        self.head = id;
        self.token = ChainToken::default();
        self.descs.clear();
        self.first_writable = 0;
        self.readable_len = 0;
        self.writable_len = 0;
        self.reach.set(0);
    }

    /// Appends a buffer: readable ones must come before writable ones, and the lengths
    /// must fit in 32 bits.
    #[inline]
    pub(crate) fn push(&mut self, desc: Descriptor) -> Result<(), QueueError> {
        let head = self.head;
        let overflow = || QueueError::ChainLengthOverflow { head };
        if desc.is_write() {
            self.writable_len = self
                .writable_len
                .checked_add(desc.len)
                .ok_or_else(overflow)?;
        } else {
            if self.writable_len > 0 || self.first_writable < self.descs.len {
                return Err(QueueError::ReadableAfterWritable { head });
            }
            self.readable_len = self
                .readable_len
                .checked_add(desc.len)
                .ok_or_else(overflow)?;
            self.first_writable += 1;
        }
        self.descs.push(desc);
        Ok(())
    }

    /// Checks that every buffer lies in `mem`.
    pub(crate) fn check_buffers(&self, mem: &MemoryTable) -> Result<(), QueueError> {
        for d in self.descs.as_slice() {
            mem.check_range(d.addr, d.len.into())?;
        }
        Ok(())
    }

    /// The buffer id: what goes back to the driver in the used entry (a split ring's head
    /// index, a packed ring's buffer id).
    pub fn id(&self) -> u16 {
        self.head
    }

    /// All buffers, readable first.
    pub fn descriptors(&self) -> &[Descriptor] {
        self.descs.as_slice()
    }

    /// The device-readable buffers.
    pub fn readable(&self) -> &[Descriptor] {
        &self.descs.as_slice()[..self.first_writable]
    }

    /// The device-writable buffers.
    pub fn writable(&self) -> &[Descriptor] {
        &self.descs.as_slice()[self.first_writable..]
    }

    /// Total bytes the device may read.
    pub fn readable_len(&self) -> u32 {
        self.readable_len
    }

    /// Total bytes the device may write.
    pub fn writable_len(&self) -> u32 {
        self.writable_len
    }

    /// An `io::Read` over the readable buffers.
    pub fn reader<'a>(&'a self, mem: &'a MemoryTable) -> ChainReader<'a> {
        ChainReader::new(mem, self.readable())
    }

    /// An `io::Write` over the writable buffers. What it writes, or hands to the kernel
    /// to write, is remembered for the dirty log.
    pub fn writer<'a>(&'a self, mem: &'a MemoryTable) -> ChainWriter<'a> {
        ChainWriter::new(mem, self.writable()).reaching(&self.reach)
    }

    /// Bytes of the writable buffers that may have been written (see [`Self::writer`]).
    pub(crate) fn reach(&self) -> u32 {
        self.reach.get()
    }

    /// Forgets the reach (the chain is offered again, unwritten as far as the next
    /// user knows: what was written is logged already).
    pub(crate) fn clear_reach(&self) {
        self.reach.set(0);
    }
}

/// Where a popped chain came from, checked when it is used or handed back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ChainToken {
    /// The ring start it was popped in (0: not popped from a queue).
    pub(crate) generation: u64,
    /// Its place in the order the driver made chains available.
    pub(crate) seq: u64,
    /// The ring position it was read at (split: avail index; packed: slot and wrap
    /// counter in bit 15).
    pub(crate) position: u16,
    /// Ring slots it occupies (packed rings; 1 for split rings).
    pub(crate) slots: u16,
}

/// A chain's descriptors: the first few inline (most chains have one to three), more
/// on the heap, so popping a common chain allocates nothing.
#[derive(Debug, Clone, Default)]
struct ChainDescs {
    inline: [Descriptor; INLINE_DESCS],
    /// Descriptors in the chain: the first `INLINE_DESCS` inline, all of them in
    /// `spill` once there are more.
    len: usize,
    spill: Vec<Descriptor>,
}

const INLINE_DESCS: usize = 4;

impl ChainDescs {
    #[inline]
    fn clear(&mut self) {
        self.len = 0;
        self.spill.clear();
    }

    #[inline]
    fn push(&mut self, d: Descriptor) {
        if self.len < INLINE_DESCS {
            self.inline[self.len] = d;
        } else {
            if self.spill.is_empty() {
                self.spill.extend_from_slice(&self.inline);
            }
            self.spill.push(d);
        }
        self.len += 1;
    }

    #[inline]
    fn as_slice(&self) -> &[Descriptor] {
        if self.len <= INLINE_DESCS {
            &self.inline[..self.len]
        } else {
            &self.spill
        }
    }
}

fn read_desc(mem: &MemoryTable, table: u64, index: u16) -> Result<Descriptor, QueueError> {
    let mut raw = [0u8; 16];
    let at = table
        .checked_add(u64::from(index) * Descriptor::SIZE)
        .ok_or(QueueError::BadIndex { index, size: 0 })?;
    mem.read(at, &mut raw)?;
    Ok(Descriptor::from_bytes(&raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> MemoryTable {
        crate::memory::test_table(0x10000)
    }

    fn d(addr: u64, len: u32, flags: u16, next: u16) -> Descriptor {
        Descriptor {
            addr,
            len,
            flags,
            next,
        }
    }

    fn put(m: &MemoryTable, table: u64, i: u16, d: Descriptor) {
        m.write(table + 16 * u64::from(i), &d.to_bytes()).unwrap();
    }

    const R: u16 = 0;
    const W: u16 = Descriptor::F_WRITE;
    const N: u16 = Descriptor::F_NEXT;
    const I: u16 = Descriptor::F_INDIRECT;

    #[test]
    fn follows_next_links_readable_then_writable() {
        let m = mem();
        put(&m, 0, 0, d(0x1000, 16, R | N, 2));
        put(&m, 0, 2, d(0x2000, 100, W, 0));
        let c = DescriptorChain::walk(&m, 0, 4, 0, false).unwrap();
        assert_eq!(
            (c.readable_len(), c.writable_len(), c.descriptors().len()),
            (16, 100, 2)
        );
    }

    #[test]
    fn loops_are_bounded_by_the_table_size() {
        let m = mem();
        put(&m, 0, 0, d(0x1000, 1, N, 1));
        put(&m, 0, 1, d(0x1000, 1, N, 0));
        let e = DescriptorChain::walk(&m, 0, 4, 0, false).unwrap_err();
        assert!(
            matches!(e, QueueError::ChainTooLong { head: 0, limit: 4 }),
            "{e}"
        );
    }

    #[test]
    fn next_outside_the_table_is_refused() {
        let m = mem();
        put(&m, 0, 0, d(0x1000, 1, N, 9));
        assert!(matches!(
            DescriptorChain::walk(&m, 0, 4, 0, false),
            Err(QueueError::BadIndex { index: 9, .. })
        ));
    }

    #[test]
    fn buffers_outside_memory_are_refused() {
        let m = mem();
        put(&m, 0, 0, d(0xfff0, 0x20, W, 0));
        assert!(matches!(
            DescriptorChain::walk(&m, 0, 4, 0, false),
            Err(QueueError::Memory(_))
        ));
        put(&m, 0, 0, d(u64::MAX - 4, 0x20, W, 0));
        assert!(matches!(
            DescriptorChain::walk(&m, 0, 4, 0, false),
            Err(QueueError::Memory(_))
        ));
    }

    #[test]
    fn readable_after_writable_is_refused() {
        let m = mem();
        put(&m, 0, 0, d(0x1000, 1, W | N, 1));
        put(&m, 0, 1, d(0x1000, 1, R, 0));
        assert!(matches!(
            DescriptorChain::walk(&m, 0, 4, 0, false),
            Err(QueueError::ReadableAfterWritable { head: 0 })
        ));
    }

    #[test]
    fn chain_length_overflow_is_refused() {
        let m = mem();
        put(&m, 0, 0, d(0, u32::MAX, W | N, 1));
        put(&m, 0, 1, d(0, 2, W, 0));
        assert!(DescriptorChain::walk(&m, 0, 4, 0, false).is_err());
    }

    #[test]
    fn indirect_tables_are_walked_once_and_checked() {
        let m = mem();
        let table = 0x4000;
        put(&m, table, 0, d(0x1000, 8, R | N, 1));
        put(&m, table, 1, d(0x2000, 64, W, 0));
        put(&m, 0, 0, d(table, 32, I, 0));
        let c = DescriptorChain::walk(&m, 0, 4, 0, true).unwrap();
        assert_eq!((c.readable_len(), c.writable_len()), (8, 64));
        // Not negotiated.
        assert!(matches!(
            DescriptorChain::walk(&m, 0, 4, 0, false),
            Err(QueueError::IndirectNotAllowed { .. })
        ));
        // INDIRECT together with NEXT.
        put(&m, 0, 0, d(table, 32, I | N, 1));
        assert!(matches!(
            DescriptorChain::walk(&m, 0, 4, 0, true),
            Err(QueueError::IndirectNotAllowed { .. })
        ));
        // Empty, ragged and unmapped tables.
        for (addr, len) in [(table, 0u32), (table, 20), (0xfff0, 32)] {
            put(
                &m,
                0,
                0,
                Descriptor {
                    addr,
                    len,
                    flags: I,
                    next: 0,
                },
            );
            assert!(
                DescriptorChain::walk(&m, 0, 4, 0, true).is_err(),
                "{addr:#x}+{len}"
            );
        }
        // Nested indirect.
        put(&m, table, 1, d(table, 32, I, 0));
        put(&m, 0, 0, d(table, 32, I, 0));
        assert!(matches!(
            DescriptorChain::walk(&m, 0, 4, 0, true),
            Err(QueueError::NestedIndirect { head: 0 })
        ));
        // A loop inside the table.
        put(&m, table, 1, d(0x1000, 1, W | N, 1));
        assert!(matches!(
            DescriptorChain::walk(&m, 0, 4, 0, true),
            Err(QueueError::ChainTooLong { .. })
        ));
    }

    #[test]
    fn the_chain_is_a_copy() {
        let m = mem();
        put(&m, 0, 0, d(0x1000, 16, W, 0));
        let c = DescriptorChain::walk(&m, 0, 4, 0, false).unwrap();
        // The guest rewrites the descriptor after the walk: the device does not see it.
        put(&m, 0, 0, d(0xffff_0000, 0xffff, W, 0));
        assert_eq!(c.writable()[0], d(0x1000, 16, W, 0));
    }
}
