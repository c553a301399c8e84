//! `TapRing`: TX frames to the tap a batch per system call, through io_uring.
//!
//! A tap takes one frame per `write`, so a frame per system call is what `writev` costs,
//! and on a machine with the CPU's user/kernel boundary mitigations on, the crossing is a
//! large part of a small frame's cost. The ring takes a whole batch in one
//! `io_uring_enter`: each frame is one `WRITEV` entry straight from guest memory (the
//! checked header copy first), linked to the next so that they reach the tap in ring
//! order and a frame that fails stops the ones after it, which go back to the ring.
//! The tap is non-blocking, so every write completes inside the call; the call waits for
//! every answer before it returns, and nothing outlives it.

use std::io;
use std::os::fd::{BorrowedFd, RawFd};

use io_uring::{opcode, squeue, types, IoUring};
use nix::libc;

use crate::request::NET_HDR_LEN;

/// Frames per batch at most (the worker takes 32 chains at a time).
const ENTRIES: u32 = 32;

/// Buffer pieces of one frame at most, its header included (IOV_MAX).
const MAX_PIECES: usize = 1024;

/// One frame of the batch being made.
#[derive(Default)]
struct Slot {
    /// Index of the frame's chain in the caller's batch.
    chain: usize,
    header: [u8; NET_HDR_LEN],
    iovs: Vec<libc::iovec>,
    fd: RawFd,
}

// SAFETY: a slot's iovecs are plain addresses (its own header, guest memory) that only
// the kernel reads, and only inside `TapRing::write_batch` on the thread that calls it;
// nothing on the Rust side dereferences them, and between batches they are stale values
// that are overwritten before the next use. Moving the slot to another thread changes
// none of that.
unsafe impl Send for Slot {}

/// How a frame of a batch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FrameWrite {
    /// The tap took the frame (bytes, header included).
    Written(usize),
    /// The tap was full: this frame and the rest of the batch were not written.
    Full,
    /// The tap refused the frame (errno).
    Failed(i32),
    /// Not written because an earlier frame of the batch failed.
    NotTried,
}

/// An io_uring for a worker's tap writes.
pub(crate) struct TapRing {
    ring: IoUring,
    /// Made disabled on the connection thread; the worker's first batch enables it.
    disabled: bool,
    slots: Vec<Slot>,
    /// Slots in use in the batch being made.
    used: usize,
}

impl std::fmt::Debug for TapRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TapRing").field("used", &self.used).finish()
    }
}

impl TapRing {
    /// A ring, or why there is none (an old kernel, `kernel.io_uring_disabled`, a seccomp
    /// policy). Made on the connection thread, disabled; only the worker thread that
    /// enables it may enter it then (where the kernel has single-issuer rings, 6.0+).
    pub(crate) fn new() -> io::Result<TapRing> {
        let (ring, disabled) = match IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_r_disabled()
            .build(ENTRIES)
        {
            Ok(ring) => (ring, true),
            // Before Linux 6.1 (no DEFER_TASKRUN) or 6.0 (no SINGLE_ISSUER).
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                (IoUring::builder().build(ENTRIES)?, false)
            }
            Err(e) => return Err(e),
        };
        let mut probe = io_uring::Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        if !probe.is_supported(opcode::Writev::CODE) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "io_uring without WRITEV",
            ));
        }
        Ok(TapRing {
            ring,
            disabled,
            slots: Vec::new(),
            used: 0,
        })
    }

    /// Whether the batch being made is full.
    pub(crate) fn is_full(&self) -> bool {
        self.used == ENTRIES as usize
    }

    /// Adds a frame for `fd`: `header` (the device's checked copy) and then the next
    /// `frame_len` bytes of `frame`, the chain at index `chain` of the caller's batch.
    pub(crate) fn push(
        &mut self,
        chain: usize,
        fd: BorrowedFd<'_>,
        header: &[u8; NET_HDR_LEN],
        frame: &vhost_user_sync::queue::ChainReader<'_>,
        frame_len: usize,
    ) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        if self.is_full() {
            return Err(io::Error::other("tap ring batch full"));
        }
        if self.slots.len() == self.used {
            self.slots.push(Slot::default());
        }
        let slot = &mut self.slots[self.used];
        slot.chain = chain;
        slot.fd = fd.as_raw_fd();
        slot.header = *header;
        slot.iovs.clear();
        // The header's place; its address is filled in at submission, once the slot
        // stays where it is.
        slot.iovs.push(libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: NET_HDR_LEN,
        });
        frame.append_host_iovecs(frame_len, MAX_PIECES - 1, &mut slot.iovs)?;
        self.used += 1;
        Ok(())
    }

    /// Writes the batch made so far, in order, and calls `done` for each frame with the
    /// index of its chain and how it ended, in the order the frames were pushed. Returns
    /// only once the kernel has answered every entry.
    ///
    /// The guest memory the frames point into must stay mapped for the call (the caller
    /// holds the queue's memory table).
    pub(crate) fn write_batch(
        &mut self,
        mut done: impl FnMut(usize, FrameWrite),
    ) -> io::Result<()> {
        let count = self.used;
        self.used = 0;
        if count == 0 {
            return Ok(());
        }
        if self.disabled {
            self.ring.submitter().register_enable_rings()?;
            self.disabled = false;
        }
        {
            let mut sq = self.ring.submission();
            for (i, slot) in self.slots[..count].iter_mut().enumerate() {
                slot.iovs[0].iov_base = slot.header.as_mut_ptr().cast();
                let mut entry = opcode::Writev::new(
                    types::Fd(slot.fd),
                    slot.iovs.as_ptr(),
                    slot.iovs.len() as u32,
                )
                .build()
                .user_data(i as u64);
                if i + 1 < count {
                    entry = entry.flags(squeue::Flags::IO_LINK);
                }
                // SAFETY: the entry reads `iovs` (each iovec exactly `iov_len` bytes: the
                // slot's header, or guest memory the caller keeps mapped for this call)
                // and writes nothing of ours. The slots are not touched again before
                // every entry has answered below, so all of it outlives the entry's use.
                // At most ENTRIES entries go into a ring of ENTRIES, which was empty.
                unsafe { sq.push(&entry) }.map_err(|_| io::Error::other("io_uring full"))?;
            }
        }
        let mut results = [0i32; ENTRIES as usize];
        let mut answered = 0;
        while answered < count {
            match self.ring.submit_and_wait(count - answered) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => {
                    // The entries taken so far are answered once the ring goes; none
                    // writes our memory, and the frames' pieces are only read.
                    return Err(e);
                }
            }
            for cqe in self.ring.completion() {
                if let Some(r) = results.get_mut(cqe.user_data() as usize) {
                    *r = cqe.result();
                    answered += 1;
                }
            }
        }
        let mut stop = false;
        for (i, slot) in self.slots[..count].iter().enumerate() {
            let outcome = match results[i] {
                _ if stop => FrameWrite::NotTried,
                n if n >= 0 => FrameWrite::Written(n as usize),
                n if -n == libc::EAGAIN => {
                    stop = true;
                    FrameWrite::Full
                }
                n if -n == libc::ECANCELED => FrameWrite::NotTried,
                n => FrameWrite::Failed(-n),
            };
            done(slot.chain, outcome);
        }
        Ok(())
    }
}
