//! The io_uring engine: reads, writes and flushes submitted to the kernel and completed
//! out of order, so a guest's queue depth reaches the disk.
//!
//! One ring per worker. A kick pops every available request; reads and writes go into
//! the submission queue with the chain's own buffers as iovecs (straight between guest
//! memory and the image), flushes behind `IO_DRAIN` so they follow every write submitted
//! before them, and the batch is submitted with one `io_uring_enter`. The ring signals
//! completions on an eventfd, one of the worker's device fds; each completion writes the
//! request's status and uses its chain, which the engine held since it was popped.
//!
//! Guest memory is kept mapped while the kernel may use it: each request holds the
//! memory table it was submitted against, a stopping queue waits for its requests, and
//! the engine waits for every request before it is dropped.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::Arc;

use io_uring::{opcode, squeue, types, IoUring};
use nix::libc;
use nix::sys::eventfd::{EfdFlags, EventFd};
use vhost_user_sync::device::Queue;
use vhost_user_sync::memory::MemoryTable;
use vhost_user_sync::queue::DescriptorChain;

/// Submission queue entries (the completion queue has twice as many; the kernel keeps
/// what overflows it).
const SQ_ENTRIES: u32 = 256;

/// Whether this process can use io_uring for block I/O: sets up a ring and checks the
/// operations the engine needs, or says why not (an old kernel,
/// `kernel.io_uring_disabled`, a seccomp policy).
///
/// # Example
/// ```
/// match vhost_user_sync_blk::probe_io_uring() {
///     Ok(()) => println!("requests through io_uring"),
///     Err(e) => println!("synchronous I/O: {e}"),
/// }
/// ```
pub fn probe_io_uring() -> io::Result<()> {
    UringEngine::new().map(drop)
}

/// What a submitted request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// Image into guest memory.
    Read,
    /// Guest memory into the image.
    Write,
    /// `fdatasync`, after every write submitted before it.
    Flush,
}

impl Op {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::Flush => "flush",
        }
    }
}

/// A request in the kernel's hands.
struct InFlight {
    queue: u16,
    chain: DescriptorChain,
    op: Op,
    offset: u64,
    len: usize,
    /// The host buffers; their addresses are in the submitted entry, so they must not
    /// move or go until the completion.
    _iovecs: Iovecs,
    /// Keeps the guest memory the iovecs point into mapped.
    _mem: Arc<MemoryTable>,
    /// The kernel's answer, once it came.
    result: Option<i32>,
}

struct Iovecs(#[allow(dead_code)] Vec<libc::iovec>);

// SAFETY: the iovecs are plain addresses into guest memory mappings owned by the
// `MemoryTable` kept beside them; nothing dereferences them on the Rust side, and the
// kernel's use of them is the same whichever thread holds the value.
unsafe impl Send for Iovecs {}

/// A finished request, handed to the device to complete.
pub(crate) struct Finished {
    /// The chain to use.
    pub chain: DescriptorChain,
    /// What it did.
    pub op: Op,
    /// Where in the image.
    pub offset: u64,
    /// Bytes asked for.
    pub len: usize,
    /// The kernel's result: bytes moved, or a negative errno.
    pub result: i32,
}

/// One worker's io_uring.
pub(crate) struct UringEngine {
    ring: IoUring,
    /// Written by the kernel on completions (registered with the ring).
    done: EventFd,
    slots: Vec<Option<InFlight>>,
    free: Vec<usize>,
    /// Entries pushed since the last submit.
    unsubmitted: u32,
    /// Requests submitted and not yet reaped.
    in_kernel: usize,
    /// Finished requests whose queue was not running when they came back.
    parked: Vec<(u16, Finished)>,
}

impl std::fmt::Debug for UringEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringEngine")
            .field("in_kernel", &self.in_kernel)
            .field("held", &(self.slots.len() - self.free.len()))
            .finish()
    }
}

impl UringEngine {
    /// A ring, or why there is none (an old kernel, `kernel.io_uring_disabled`, a
    /// seccomp policy).
    pub(crate) fn new() -> io::Result<Self> {
        let ring = IoUring::builder()
            .setup_cqsize(SQ_ENTRIES * 2)
            .build(SQ_ENTRIES)?;
        let done = EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)?;
        ring.submitter()
            .register_eventfd(done.as_fd().as_raw_fd())?;
        let mut probe = io_uring::Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        for code in [
            opcode::Readv::CODE,
            opcode::Writev::CODE,
            opcode::Fsync::CODE,
        ] {
            if !probe.is_supported(code) {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("io_uring lacks opcode {code}"),
                ));
            }
        }
        Ok(UringEngine {
            ring,
            done,
            slots: Vec::new(),
            free: Vec::new(),
            unsubmitted: 0,
            in_kernel: 0,
            parked: Vec::new(),
        })
    }

    /// The completion eventfd, to watch.
    pub(crate) fn done_fd(&self) -> BorrowedFd<'_> {
        self.done.as_fd()
    }

    /// Queues a read or write of `len` bytes at `offset` of `file` through `iovecs` (which
    /// must cover exactly `len` bytes of guest memory in `mem`), or a flush, for `chain`
    /// of queue `queue`. Submitted by [`Self::submit`]. A refused entry gives the chain
    /// back.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn push(
        &mut self,
        file: BorrowedFd<'_>,
        queue: &Queue<'_>,
        chain: DescriptorChain,
        op: Op,
        offset: u64,
        len: usize,
        iovecs: Vec<libc::iovec>,
        dsync: bool,
    ) -> Result<(), Box<(io::Error, DescriptorChain)>> {
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        let fd = types::Fd(file.as_raw_fd());
        // The entry points at the Vec's heap buffer, which stays put when the Vec moves
        // into the slot below.
        let (iov, count) = (iovecs.as_ptr(), iovecs.len() as u32);
        let entry = match op {
            Op::Read => opcode::Readv::new(fd, iov, count).offset(offset).build(),
            Op::Write => opcode::Writev::new(fd, iov, count)
                .offset(offset)
                .rw_flags(if dsync { libc::RWF_DSYNC } else { 0 })
                .build(),
            Op::Flush => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build()
                .flags(squeue::Flags::IO_DRAIN),
        }
        .user_data(slot as u64);
        loop {
            // SAFETY: the entry's fd is the image, open for the engine's life (the worker
            // holds the disk); its iovec array (heap memory that does not move) goes into
            // the slot right after a successful push, with the memory table its buffers
            // are in, and both stay there until the completion for this user_data is
            // reaped (the engine waits for every one before it is dropped). Nothing is
            // handed to the kernel before `submit`, which comes after the slot is filled.
            let pushed = unsafe { self.ring.submission().push(&entry) };
            if pushed.is_ok() {
                break;
            }
            // Full: hand the kernel what is there and try again.
            if let Err(e) = self.submit() {
                self.free.push(slot);
                return Err(Box::new((e, chain)));
            }
        }
        self.slots[slot] = Some(InFlight {
            queue: queue.index(),
            chain,
            op,
            offset,
            len,
            _iovecs: Iovecs(iovecs),
            _mem: queue.shared_mem(),
            result: None,
        });
        self.unsubmitted += 1;
        Ok(())
    }

    /// Hands the queued entries to the kernel (one `io_uring_enter`).
    pub(crate) fn submit(&mut self) -> io::Result<()> {
        if self.unsubmitted == 0 {
            return Ok(());
        }
        loop {
            match self.ring.submit() {
                Ok(n) => {
                    self.in_kernel += n;
                    self.unsubmitted -= (n as u32).min(self.unsubmitted);
                    if self.unsubmitted == 0 {
                        return Ok(());
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    // The completion queue is backed up: take what is there first.
                    self.reap_into_slots();
                    self.wait_one()?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Whether requests of queue `queue` are still in the kernel.
    fn queue_busy(&self, queue: u16) -> bool {
        self.slots
            .iter()
            .flatten()
            .any(|r| r.queue == queue && r.result.is_none())
    }

    fn wait_one(&mut self) -> io::Result<()> {
        loop {
            match self.ring.submit_and_wait(1) {
                Ok(_) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Moves the kernel's answers into their slots.
    fn reap_into_slots(&mut self) {
        let mut cq = self.ring.completion();
        cq.sync();
        for cqe in &mut cq {
            let Some(Some(r)) = self.slots.get_mut(cqe.user_data() as usize) else {
                log::error!(
                    "blk: io_uring completion for unknown request {}",
                    cqe.user_data()
                );
                continue;
            };
            r.result = Some(cqe.result());
            self.in_kernel = self.in_kernel.saturating_sub(1);
        }
    }

    /// The requests the kernel has finished, for `queue` only or for every queue.
    fn take_finished(&mut self, queue: Option<u16>) -> Vec<(u16, Finished)> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.parked.len() {
            if queue.is_none_or(|q| q == self.parked[i].0) {
                out.push(self.parked.swap_remove(i));
            } else {
                i += 1;
            }
        }
        for (i, slot) in self.slots.iter_mut().enumerate() {
            let done = matches!(slot, Some(r) if r.result.is_some()
                && queue.is_none_or(|q| q == r.queue));
            if done {
                let Some(r) = slot.take() else { continue };
                self.free.push(i);
                out.push((
                    r.queue,
                    Finished {
                        chain: r.chain,
                        op: r.op,
                        offset: r.offset,
                        len: r.len,
                        result: r.result.unwrap_or(-libc::EIO),
                    },
                ));
            }
        }
        out
    }

    /// After the eventfd fired: every finished request, by queue.
    pub(crate) fn completions(&mut self) -> Vec<(u16, Finished)> {
        let _ = self.done.read();
        self.reap_into_slots();
        self.take_finished(None)
    }

    /// A finished request the device could not complete yet (its queue was not
    /// running): kept for later.
    pub(crate) fn put_back(&mut self, queue: u16, f: Finished) {
        self.parked.push((queue, f));
    }

    /// Finished requests of `queue` (those put back, and any the kernel has answered).
    pub(crate) fn finished_for(&mut self, queue: u16) -> Vec<Finished> {
        self.reap_into_slots();
        self.take_finished(Some(queue))
            .into_iter()
            .map(|(_, f)| f)
            .collect()
    }

    /// Waits until the kernel has answered every request of `queue`; returns them.
    pub(crate) fn drain(&mut self, queue: u16) -> Vec<Finished> {
        if let Err(e) = self.submit() {
            log::error!("blk: io_uring submit: {e}");
        }
        loop {
            self.reap_into_slots();
            if !self.queue_busy(queue) || self.in_kernel == 0 {
                break;
            }
            if let Err(e) = self.wait_one() {
                log::error!("blk: waiting for io_uring completions: {e}");
                break;
            }
        }
        let out = self.finished_for(queue);
        if !self.parked.is_empty() || self.slots.iter().flatten().any(|r| r.result.is_some()) {
            // Others' answers were reaped here: let the worker's event see to them.
            let _ = self.done.write(1);
        }
        out
    }

    /// Drops what is held of `queue` (the ring stopped; the framework accounted for it).
    pub(crate) fn forget(&mut self, queue: u16) {
        self.parked.retain(|(q, _)| *q != queue);
        for (i, slot) in self.slots.iter_mut().enumerate() {
            if matches!(slot, Some(r) if r.queue == queue && r.result.is_some()) {
                *slot = None;
                self.free.push(i);
            }
        }
    }
}

impl Drop for UringEngine {
    fn drop(&mut self) {
        // The kernel may still write into guest memory through requests in flight: wait
        // for every one before the mappings they use can go.
        let _ = self.submit();
        while self.in_kernel > 0 {
            self.reap_into_slots();
            if self.in_kernel == 0 {
                break;
            }
            if let Err(e) = self.wait_one() {
                log::error!(
                    "blk: cannot wait for {} io_uring request(s) in flight ({e}): the \
                     kernel finishes them as the ring closes",
                    self.in_kernel
                );
                break;
            }
        }
    }
}
