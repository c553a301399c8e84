//! `ChainCursor`: a position in a list of buffers, shared by chain readers and writers.

use std::io;

use vm_memory::VolatileSlice;

use super::iovec_list::IovecList;
use super::Descriptor;
use crate::memory::MemoryTable;

/// Where a reader or writer is in its buffers: descriptor index and offset in it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChainCursor<'a> {
    descs: &'a [Descriptor],
    at: (usize, u32),
}

impl<'a> ChainCursor<'a> {
    pub(crate) fn new(descs: &'a [Descriptor]) -> Self {
        ChainCursor { descs, at: (0, 0) }
    }

    /// The guest address of the next byte and the bytes left in its buffer, if any.
    #[inline]
    pub(crate) fn current(&self) -> Option<(u64, usize)> {
        let (i, off) = self.at;
        let d = self.descs.get(i)?;
        Some((d.addr.wrapping_add(u64::from(off)), (d.len - off) as usize))
    }

    /// The guest memory of the next `len` bytes when they lie in the current buffer and
    /// in one region (the common case of a header or a small packet: one copy, no walk).
    #[inline]
    pub(crate) fn current_slice(
        &self,
        mem: &'a MemoryTable,
        len: usize,
    ) -> Option<VolatileSlice<'a>> {
        let (gpa, left) = self.current()?;
        if len > left {
            return None;
        }
        mem.slice(gpa, len).ok()
    }

    /// Bytes from here to the end of the buffers.
    pub(crate) fn remaining(&self) -> usize {
        let (i, off) = self.at;
        self.descs
            .iter()
            .skip(i)
            .map(|d| d.len as usize)
            .sum::<usize>()
            - off as usize
    }

    /// Calls `f` with the guest memory of the next up to `max` bytes, split at buffer
    /// and region edges, without moving; returns how many bytes were visited.
    pub(crate) fn visit(
        &self,
        mem: &'a MemoryTable,
        max: usize,
        mut f: impl FnMut(VolatileSlice<'a>),
    ) -> io::Result<usize> {
        let mut done = 0;
        let (mut i, mut off) = self.at;
        while done < max {
            let Some(d) = self.descs.get(i) else { break };
            let left = (d.len - off) as usize;
            if left == 0 {
                i += 1;
                off = 0;
                continue;
            }
            let n = left.min(max - done);
            mem.for_each_slice(d.addr + u64::from(off), n as u64, |s| {
                f(s);
                Ok(())
            })
            .map_err(io::Error::other)?;
            done += n;
            off += n as u32;
        }
        Ok(done)
    }

    /// Calls `op` with iovecs over the guest memory of the next up to `max` bytes, at
    /// most `room` of them (the rest is left for a later call), without moving; `prefix`
    /// (bytes of the caller's, read only) goes first when it is not empty. Returns how
    /// many chain bytes the iovecs cover and what `op` returned. `for_write` asks for
    /// pointers the kernel may write through (a read into guest memory). The iovecs of
    /// a short chain live on the stack: no allocation per call.
    pub(crate) fn with_iovecs<R>(
        &self,
        mem: &'a MemoryTable,
        max: usize,
        room: usize,
        for_write: bool,
        prefix: &[u8],
        op: impl FnOnce(&[nix::libc::iovec]) -> R,
    ) -> io::Result<(usize, R)> {
        let mut iovs = IovecList::new();
        if !prefix.is_empty() {
            iovs.push(prefix.as_ptr(), prefix.len());
        }
        let limit = room + iovs.len();
        let mut want = 0;
        // Without vm-memory's `xen` feature (not enabled here) a pointer guard holds
        // nothing and releases nothing: the host address of a plain mmap region stays
        // valid for as long as the region is mapped, which the borrowed table ensures
        // for the whole of `op`.
        self.visit(mem, max, |s| {
            if iovs.len() < limit {
                want += s.len();
                let ptr = if for_write {
                    s.ptr_guard_mut().as_ptr()
                } else {
                    s.ptr_guard().as_ptr()
                };
                iovs.push(ptr, s.len());
            }
        })?;
        Ok((want, op(iovs.as_slice())))
    }

    /// Whether every guest buffer piece of the next up to `max` bytes starts at a host
    /// address and has a length that are multiples of `align` (what `O_DIRECT` needs).
    pub(crate) fn is_aligned(
        &self,
        mem: &'a MemoryTable,
        max: usize,
        align: usize,
    ) -> io::Result<bool> {
        let mut aligned = true;
        self.visit(mem, max, |s| {
            let addr = s.ptr_guard().as_ptr() as usize;
            aligned &= addr.is_multiple_of(align) && s.len().is_multiple_of(align);
        })?;
        Ok(aligned)
    }

    /// Moves forward by up to `n` bytes; returns how far it moved.
    pub(crate) fn advance(&mut self, n: usize) -> usize {
        let mut left_to_move = n;
        while left_to_move > 0 {
            let Some(d) = self.descs.get(self.at.0) else {
                break;
            };
            let left = (d.len - self.at.1) as usize;
            let step = left.min(left_to_move);
            left_to_move -= step;
            if step == left {
                self.at = (self.at.0 + 1, 0);
            } else {
                self.at.1 += step as u32;
            }
        }
        n - left_to_move
    }
}
