//! `IovecList`: the iovecs of one system call, on the stack for the usual few.

use nix::libc::iovec;

/// Pieces kept inline: a frame with its header, a block request's data buffers.
const INLINE: usize = 8;

/// A list of `iovec`s that lives on the stack while it holds at most eight and moves to
/// the heap beyond that, so that one `readv`/`writev` per packet costs no allocation.
pub(crate) struct IovecList {
    inline: [iovec; INLINE],
    len: usize,
    spill: Vec<iovec>,
}

impl IovecList {
    pub(crate) fn new() -> Self {
        IovecList {
            inline: [iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; INLINE],
            len: 0,
            spill: Vec::new(),
        }
    }

    /// Appends a piece of `len` bytes at `base`.
    #[inline]
    pub(crate) fn push(&mut self, base: *const u8, len: usize) {
        let v = iovec {
            iov_base: base as *mut _,
            iov_len: len,
        };
        if self.len < INLINE {
            self.inline[self.len] = v;
        } else {
            if self.len == INLINE {
                self.spill.reserve(INLINE * 2);
                self.spill.extend_from_slice(&self.inline);
            }
            self.spill.push(v);
        }
        self.len += 1;
    }

    /// How many pieces it holds.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The pieces, in order.
    #[inline]
    pub(crate) fn as_slice(&self) -> &[iovec] {
        if self.len <= INLINE {
            &self.inline[..self.len]
        } else {
            &self.spill
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bases(l: &IovecList) -> Vec<(usize, usize)> {
        l.as_slice()
            .iter()
            .map(|v| (v.iov_base as usize, v.iov_len))
            .collect()
    }

    #[test]
    fn keeps_the_order_below_at_and_past_the_inline_room() {
        for count in [0, 1, INLINE - 1, INLINE, INLINE + 1, 3 * INLINE + 5] {
            let mut l = IovecList::new();
            for i in 0..count {
                l.push((0x1000 * (i + 1)) as *const u8, i + 7);
            }
            assert_eq!(l.len(), count);
            let want: Vec<_> = (0..count).map(|i| (0x1000 * (i + 1), i + 7)).collect();
            assert_eq!(bases(&l), want, "{count} pieces");
        }
    }
}
