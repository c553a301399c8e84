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
