//! `ChainCursor`: a position in a list of buffers, shared by chain readers and writers.

use std::io;

use vm_memory::VolatileSlice;

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
    /// most `room` of them (the rest is left for a later call), without moving. Returns
    /// how many chain bytes the iovecs cover and what `op` returned. `for_write` asks for
    /// pointers the kernel may write through (a read into guest memory).
    pub(crate) fn with_iovecs<R>(
        &self,
        mem: &'a MemoryTable,
        max: usize,
        room: usize,
        for_write: bool,
        op: impl FnOnce(&[nix::libc::iovec]) -> R,
    ) -> io::Result<(usize, R)> {
        let mut slices = Vec::new();
        self.visit(mem, max, |s| slices.push(s))?;
        slices.truncate(room);
        let want: usize = slices.iter().map(|s| s.len()).sum();
        let iovec = |ptr: *const u8, len: usize| nix::libc::iovec {
            iov_base: ptr as *mut _,
            iov_len: len,
        };
        // The guards keep each pointer valid while `op` runs (plain mmap regions need
        // nothing more; the guard type is what vm-memory hands out for them).
        let result = if for_write {
            let guards: Vec<_> = slices.iter().map(|s| s.ptr_guard_mut()).collect();
            let iovs: Vec<_> = guards.iter().map(|g| iovec(g.as_ptr(), g.len())).collect();
            op(&iovs)
        } else {
            let guards: Vec<_> = slices.iter().map(|s| s.ptr_guard()).collect();
            let iovs: Vec<_> = guards.iter().map(|g| iovec(g.as_ptr(), g.len())).collect();
            op(&iovs)
        };
        Ok((want, result))
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
