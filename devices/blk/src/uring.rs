//! The io_uring engine: reads, writes and flushes submitted to the kernel and completed
//! out of order, so a guest's queue depth reaches the disk.
//!
//! One ring per worker. A kick pops every available request; reads and writes go into
//! the submission queue with the chain's own buffers as iovecs (straight between guest
//! memory and the image), flushes behind `IO_DRAIN` so they follow every write submitted
//! before them, discards and write-zeroes as one `fallocate` entry per segment. Entries
//! are handed to the kernel in groups of [`SUBMIT_GROUP`] (one `io_uring_enter` each)
//! while the kick's requests are still being parsed, and the rest at the end of the
//! batch. The ring signals completions on an eventfd, one of the worker's device fds;
//! each completion writes the request's status and uses its chain, which the engine held
//! since it was popped.
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

/// Entries handed to the kernel together while a batch is still being parsed. A whole
/// kick's worth in one `io_uring_enter` reaches the disk as one burst that completes as
/// one, so the guest refills the ring in bursts too and the disk idles between them;
/// groups of four start the disk on the first requests of a kick while the rest are
/// parsed, at a quarter of the system calls of one per request (4 KiB random reads at
/// queue depth 32 on a virtio disk with `O_DIRECT`: about 15 % more requests per second
/// than one entry per kick, level with one per request).
const SUBMIT_GROUP: u32 = 4;

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
    /// Holes punched in the image, one `fallocate` per segment.
    Discard,
    /// Ranges of the image zeroed, one `fallocate` per segment.
    WriteZeroes,
}

impl Op {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::Flush => "flush",
            Op::Discard => "discard",
            Op::WriteZeroes => "write-zeroes",
        }
    }
}

/// Image ranges of a discard or write-zeroes request: byte offset, bytes, and whether
/// zeroed blocks may be deallocated (the segment's UNMAP flag).
pub(crate) type Ranges = Vec<(u64, u64, bool)>;

/// What one request asks of the ring.
pub(crate) enum Submission {
    /// `len` bytes at image offset `offset` into `iovecs` (exactly `len` bytes of guest
    /// memory).
    Read {
        offset: u64,
        len: usize,
        iovecs: Vec<libc::iovec>,
    },
    /// `len` bytes from `iovecs` to image offset `offset`; `dsync`: durable before it
    /// completes (writethrough).
    Write {
        offset: u64,
        len: usize,
        iovecs: Vec<libc::iovec>,
        dsync: bool,
    },
    /// `fdatasync`, after every write submitted before it.
    Flush,
    /// Holes punched over the ranges.
    Discard(Ranges),
    /// The ranges zeroed (holes punched where the range allows deallocation).
    WriteZeroes(Ranges),
}

/// One `fallocate` entry per range, in the mode `mode` gives for the range's UNMAP flag
/// (the image's size kept).
fn fallocate_entries(
    fd: types::Fd,
    ranges: &Ranges,
    mode: impl Fn(bool) -> i32,
) -> Vec<squeue::Entry> {
    ranges
        .iter()
        .map(|&(offset, len, unmap)| {
            opcode::Fallocate::new(fd, len)
                .offset(offset)
                .mode(mode(unmap) | libc::FALLOC_FL_KEEP_SIZE)
                .build()
        })
        .collect()
}

/// A request in the kernel's hands.
struct InFlight {
    queue: u16,
    chain: DescriptorChain,
    op: Op,
    offset: u64,
    len: usize,
    ranges: Ranges,
    /// The host buffers; their addresses are in the submitted entry, so they must not
    /// move or go until the completion.
    _iovecs: Iovecs,
    /// Keeps the guest memory the iovecs point into mapped.
    _mem: Arc<MemoryTable>,
    /// Entries of the request whose answer has not come yet (one per segment of a
    /// discard or write-zeroes, else one).
    parts: u32,
    /// The kernel's answer so far: the last entry's, or the first failure.
    result: i32,
}

impl InFlight {
    fn finished(&self) -> bool {
        self.parts == 0
    }
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
    /// The segments of a discard or write-zeroes (empty for other operations).
    pub ranges: Ranges,
    /// The kernel's result: bytes moved (0 for flush, discard and write-zeroes), or a
    /// negative errno (the first, for a request of several entries).
    pub result: i32,
}

/// One worker's io_uring.
pub(crate) struct UringEngine {
    ring: IoUring,
    /// Written by the kernel on completions (registered with the ring).
    done: EventFd,
    slots: Vec<Option<InFlight>>,
    free: Vec<usize>,
    /// Entries pushed into the submission queue, ever.
    pushed: u64,
    /// Completions reaped, ever.
    reaped: u64,
    /// Finished requests whose queue was not running when they came back.
    parked: Vec<(u16, Finished)>,
    /// Whether the kernel takes `fallocate` entries (discard and write-zeroes).
    fallocate: bool,
    /// Made disabled (single issuer, deferred completions), to be enabled by the
    /// worker's thread, the one that submits; see [`Self::new`].
    disabled: bool,
}

impl std::fmt::Debug for UringEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringEngine")
            .field("pushed", &self.pushed)
            .field("reaped", &self.reaped)
            .field("held", &(self.slots.len() - self.free.len()))
            .finish()
    }
}

impl UringEngine {
    /// A ring, or why there is none (an old kernel, `kernel.io_uring_disabled`, a
    /// seccomp policy).
    ///
    /// Where the kernel has them (6.1 and later), the ring has a single issuer and
    /// deferred completions: the kernel queues each answer for the worker (and writes the
    /// eventfd) instead of interrupting whatever thread runs to post it, and the worker
    /// takes them all in one `io_uring_enter` when it reaps. 4 KiB random reads at queue
    /// depth 32 on a virtio disk with `O_DIRECT`: more requests per second than without in
    /// each of 8 alternating rounds (median about 5 % more). The ring is made here, on the
    /// connection thread, disabled, and enabled by the worker's first use; only that
    /// thread may enter it then, and every call of the engine's is on it (the worker owns
    /// the engine and drops it there).
    pub(crate) fn new() -> io::Result<Self> {
        let (ring, disabled) = match IoUring::builder()
            .setup_cqsize(SQ_ENTRIES * 2)
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_taskrun_flag()
            .setup_r_disabled()
            .build(SQ_ENTRIES)
        {
            Ok(ring) => (ring, true),
            // Before Linux 6.1 (no DEFER_TASKRUN) or 6.0 (no SINGLE_ISSUER).
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                log::debug!("blk: io_uring without deferred completions ({e})");
                let ring = IoUring::builder()
                    .setup_cqsize(SQ_ENTRIES * 2)
                    .build(SQ_ENTRIES)?;
                (ring, false)
            }
            Err(e) => return Err(e),
        };
        let done = EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)?;
        ring.submitter()
            .register_eventfd(done.as_fd().as_raw_fd())?;
        let mut probe = io_uring::Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        let fallocate = probe.is_supported(opcode::Fallocate::CODE);
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
            pushed: 0,
            reaped: 0,
            parked: Vec::new(),
            fallocate,
            disabled,
        })
    }

    /// A ring made disabled is enabled by the first call on the worker's thread, which is
    /// then the only one that may enter it.
    fn enable(&mut self) {
        if self.disabled {
            if let Err(e) = self.ring.submitter().register_enable_rings() {
                log::error!("blk: io_uring enable: {e}");
            }
            self.disabled = false;
        }
    }

    /// Whether discards and write-zeroes can go through the ring.
    pub(crate) fn takes_fallocate(&self) -> bool {
        self.fallocate
    }

    /// The completion eventfd, to watch.
    pub(crate) fn done_fd(&self) -> BorrowedFd<'_> {
        self.done.as_fd()
    }

    /// Queues `submission` on `file` for `chain` of queue `queue`: one entry, or one
    /// `fallocate` entry per range of a discard or write-zeroes (the request finished
    /// when all have answered). Submitted by [`Self::submit`] or with the next group. A
    /// refused request gives the chain back.
    pub(crate) fn push(
        &mut self,
        file: BorrowedFd<'_>,
        queue: &Queue<'_>,
        chain: DescriptorChain,
        submission: Submission,
    ) -> Result<(), Box<(io::Error, DescriptorChain)>> {
        self.enable();
        let fd = types::Fd(file.as_raw_fd());
        let request = |op, offset, len, iovecs, ranges| InFlight {
            queue: queue.index(),
            chain,
            op,
            offset,
            len,
            ranges,
            _iovecs: Iovecs(iovecs),
            _mem: queue.shared_mem(),
            parts: 0,
            result: 0,
        };
        // A read's or write's entry points at the Vec's heap buffer, which stays put when
        // the Vec moves into the slot.
        match submission {
            Submission::Read {
                offset,
                len,
                iovecs,
            } => {
                let entry = opcode::Readv::new(fd, iovecs.as_ptr(), iovecs.len() as u32)
                    .offset(offset)
                    .build();
                self.enqueue(request(Op::Read, offset, len, iovecs, Vec::new()), &[entry])
            }
            Submission::Write {
                offset,
                len,
                iovecs,
                dsync,
            } => {
                let entry = opcode::Writev::new(fd, iovecs.as_ptr(), iovecs.len() as u32)
                    .offset(offset)
                    .rw_flags(if dsync { libc::RWF_DSYNC } else { 0 })
                    .build();
                self.enqueue(
                    request(Op::Write, offset, len, iovecs, Vec::new()),
                    &[entry],
                )
            }
            Submission::Flush => {
                let entry = opcode::Fsync::new(fd)
                    .flags(types::FsyncFlags::DATASYNC)
                    .build()
                    .flags(squeue::Flags::IO_DRAIN);
                self.enqueue(request(Op::Flush, 0, 0, Vec::new(), Vec::new()), &[entry])
            }
            Submission::Discard(ranges) => {
                let entries = fallocate_entries(fd, &ranges, |_| libc::FALLOC_FL_PUNCH_HOLE);
                let len = ranges.iter().map(|r| r.1 as usize).sum();
                let offset = ranges.first().map_or(0, |r| r.0);
                self.enqueue(
                    request(Op::Discard, offset, len, Vec::new(), ranges),
                    &entries,
                )
            }
            Submission::WriteZeroes(ranges) => {
                let entries = fallocate_entries(fd, &ranges, |unmap| {
                    if unmap {
                        libc::FALLOC_FL_PUNCH_HOLE
                    } else {
                        libc::FALLOC_FL_ZERO_RANGE
                    }
                });
                let len = ranges.iter().map(|r| r.1 as usize).sum();
                let offset = ranges.first().map_or(0, |r| r.0);
                self.enqueue(
                    request(Op::WriteZeroes, offset, len, Vec::new(), ranges),
                    &entries,
                )
            }
        }
    }

    /// Puts `request`'s entries into the submission queue under one slot. When none could
    /// be pushed the chain comes back; when the queue refuses a later one, the request
    /// waits for the entries already pushed and then fails with EIO.
    fn enqueue(
        &mut self,
        request: InFlight,
        entries: &[squeue::Entry],
    ) -> Result<(), Box<(io::Error, DescriptorChain)>> {
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        // In its slot before the kernel can answer any of its entries (a full queue is
        // submitted, and answers reaped, in the middle of the loop).
        self.slots[slot] = Some(request);
        for entry in entries {
            let entry = entry.clone().user_data(slot as u64);
            loop {
                // SAFETY: the entry's fd is the image, open for the engine's life (the
                // worker holds the disk); its iovec array (heap memory that does not
                // move) and the memory table its buffers are in are held by the request
                // in slot `slot`, which stays there until every completion for this
                // user_data is reaped (the engine waits for every one before it is
                // dropped).
                if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                    if let Some(r) = &mut self.slots[slot] {
                        r.parts += 1;
                    }
                    self.pushed += 1;
                    break;
                }
                // Full: hand the kernel what is there and try again.
                if let Err(e) = self.submit() {
                    return self.refuse(slot, e);
                }
            }
        }
        if self.unsubmitted() >= SUBMIT_GROUP as usize {
            if let Err(e) = self.submit() {
                log::error!("blk: io_uring submit: {e}");
            }
        }
        Ok(())
    }

    /// The submission queue could not take all of the request in `slot`: with none of its
    /// entries pushed its chain comes back, else it fails once those are answered.
    fn refuse(
        &mut self,
        slot: usize,
        e: io::Error,
    ) -> Result<(), Box<(io::Error, DescriptorChain)>> {
        match self.slots[slot].take() {
            Some(r) if r.parts == 0 => {
                self.free.push(slot);
                Err(Box::new((e, r.chain)))
            }
            Some(mut r) => {
                log::error!(
                    "blk: io_uring refused part of a {} ({e}): it fails",
                    r.op.name()
                );
                r.result = -libc::EIO;
                self.slots[slot] = Some(r);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Entries in the submission queue the kernel has not taken yet. Counted from the
    /// ring itself, so that whichever `io_uring_enter` hands them over (a submit, a wait,
    /// a run of deferred completions) they are accounted for.
    fn unsubmitted(&mut self) -> usize {
        self.ring.submission().len()
    }

    /// Requests' entries the kernel has taken and not answered yet.
    fn in_kernel(&mut self) -> u64 {
        let submitted = self.pushed - self.unsubmitted() as u64;
        submitted.saturating_sub(self.reaped)
    }

    /// Hands the queued entries to the kernel (one `io_uring_enter`).
    pub(crate) fn submit(&mut self) -> io::Result<()> {
        while self.unsubmitted() > 0 {
            match self.ring.submit() {
                Ok(n) if n > 0 => {}
                // Nothing taken and no error: wait for an answer to make room, as long
                // as there is one to wait for.
                Ok(_) if self.in_kernel() > 0 => {
                    self.reap_into_slots();
                    self.wait_one()?;
                }
                Ok(_) => {
                    return Err(io::Error::other(
                        "io_uring took no entry and has none in flight",
                    ))
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
        Ok(())
    }

    /// Whether requests of queue `queue` are still in the kernel.
    fn queue_busy(&self, queue: u16) -> bool {
        self.slots
            .iter()
            .flatten()
            .any(|r| r.queue == queue && !r.finished())
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

    /// Moves the kernel's answers into their slots; deferred ones are posted first (one
    /// `io_uring_enter`, when the kernel flags that it holds some).
    fn reap_into_slots(&mut self) {
        self.enable();
        if self.ring.submission().taskrun() {
            let _ = self.ring.submitter().submit();
        }
        let mut cq = self.ring.completion();
        cq.sync();
        for cqe in &mut cq {
            self.reaped += 1;
            let Some(Some(r)) = self.slots.get_mut(cqe.user_data() as usize) else {
                log::error!(
                    "blk: io_uring completion for unknown request {}",
                    cqe.user_data()
                );
                continue;
            };
            if r.parts == 0 {
                log::error!(
                    "blk: io_uring completion for finished request {}",
                    cqe.user_data()
                );
                continue;
            }
            r.parts -= 1;
            let result = match cqe.result() {
                // As the synchronous path: a file that cannot punch holes keeps its data,
                // which a discard allows.
                e if e == -libc::EOPNOTSUPP && r.op == Op::Discard => 0,
                result => result,
            };
            if r.result >= 0 {
                r.result = result;
            }
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
            let done = matches!(slot, Some(r) if r.finished()
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
                        ranges: r.ranges,
                        result: r.result,
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
            if !self.queue_busy(queue) || self.in_kernel() == 0 {
                break;
            }
            if let Err(e) = self.wait_one() {
                log::error!("blk: waiting for io_uring completions: {e}");
                break;
            }
        }
        let out = self.finished_for(queue);
        if !self.parked.is_empty() || self.slots.iter().flatten().any(InFlight::finished) {
            // Others' answers were reaped here: let the worker's event see to them.
            let _ = self.done.write(1);
        }
        out
    }

    /// Drops what is held of `queue` (the ring stopped; the framework accounted for it).
    pub(crate) fn forget(&mut self, queue: u16) {
        self.parked.retain(|(q, _)| *q != queue);
        for (i, slot) in self.slots.iter_mut().enumerate() {
            if matches!(slot, Some(r) if r.queue == queue && r.finished()) {
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
        while self.in_kernel() > 0 {
            self.reap_into_slots();
            if self.in_kernel() == 0 {
                break;
            }
            if let Err(e) = self.wait_one() {
                log::error!(
                    "blk: cannot wait for {} io_uring request(s) in flight ({e}): the \
                     kernel finishes them as the ring closes",
                    self.in_kernel()
                );
                break;
            }
        }
    }
}
