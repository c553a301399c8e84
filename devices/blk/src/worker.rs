//! Queue events: each request is parsed and checked, then done straight between guest
//! memory and the image: through the worker's io_uring (reads, writes and flushes,
//! completed out of order when the kernel answers; the engine is in `uring.rs`) or with a
//! blocking `preadv`/`pwritev` (the synchronous engine, and requests the ring does not
//! take: unaligned `O_DIRECT` buffers, discard, write-zeroes, GET_ID), then completed
//! with its status byte. Worker 0 also watches the image for a resize.

use std::io::{self, Read, Write};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use nix::sys::eventfd::{EfdFlags, EventFd};
use thiserror::Error;
use vhost_user_sync::device::{DeviceError, FdRegistry, Queue, QueueWorker, Queues};
use vhost_user_sync::memory::MemoryTable;
use vhost_user_sync::queue::{ChainReader, ChainWriter, DescriptorChain};

use crate::device::{Aio, Shared};
use crate::request::{
    kind, Limits, Request, RequestError, RequestHeader, Segment, Status, HEADER_SIZE, ID_BYTES,
    SECTOR_SIZE, SEGMENT_SIZE, SEGMENT_UNMAP,
};
use crate::uring::{Finished, Op, Ranges, Submission, UringEngine};

/// Bytes moved per step when guest buffers must go through an aligned copy.
const BOUNCE_SIZE: usize = 1 << 20;
/// Device fd token of the image's resize watch.
const RESIZE_WATCH_TOKEN: usize = 0;
/// Device fd token of this connection's resize news.
const RESIZE_KICK_TOKEN: usize = 1;
/// Device fd token of the io_uring's completions.
const URING_TOKEN: usize = 2;

/// Why a checked request failed on the host.
#[derive(Debug, Error)]
pub enum BlkError {
    /// The request was malformed or unsupported.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The host refused the operation.
    #[error("{op} of {len} bytes at byte {offset}: {source}")]
    Io {
        /// What was done.
        op: &'static str,
        /// Byte offset in the image.
        offset: u64,
        /// Bytes asked for.
        len: u64,
        /// The error.
        source: io::Error,
    },
    /// The image ended early (it shrank underneath the device).
    #[error("{op} at byte {offset}: the image ended after {done} of {len} bytes")]
    ShortTransfer {
        /// What was done.
        op: &'static str,
        /// Byte offset in the image.
        offset: u64,
        /// Bytes moved.
        done: u64,
        /// Bytes asked for.
        len: u64,
    },
    /// With `O_DIRECT`, the disk range is not in whole blocks.
    #[error("{op} at byte {offset} of {len} bytes is not in whole {block}-byte blocks")]
    Unaligned {
        /// What was done.
        op: &'static str,
        /// Byte offset in the image.
        offset: u64,
        /// Bytes asked for.
        len: u64,
        /// The block size `O_DIRECT` needs.
        block: u32,
    },
}

impl BlkError {
    fn status(&self) -> Status {
        match self {
            BlkError::Request(e) => e.status(),
            _ => Status::IoErr,
        }
    }
}

/// The data path of one worker of a block device.
#[derive(Debug)]
pub struct BlkWorker {
    shared: Arc<Shared>,
    /// An aligned copy area for `O_DIRECT` with unaligned guest buffers (made on first
    /// use).
    bounce: Vec<u8>,
    resize: Option<ResizeWatch>,
    /// The io_uring engine (None: every request is done synchronously).
    uring: Option<UringEngine>,
}

#[derive(Debug)]
struct ResizeWatch {
    /// The capacity this connection's frontend was last told of.
    announced: u64,
    /// Written by whichever worker read the capacity again.
    kick: Arc<EventFd>,
}

impl BlkWorker {
    pub(crate) fn new(shared: Arc<Shared>, aio: Aio) -> Self {
        let uring = match aio.wants_io_uring(&shared.disk) {
            false => None,
            true => match UringEngine::new() {
                Ok(engine) => Some(engine),
                Err(e) => {
                    log::warn!("blk: io_uring is not available ({e}): synchronous I/O");
                    None
                }
            },
        };
        BlkWorker {
            shared,
            bounce: Vec::new(),
            resize: None,
            uring,
        }
    }

    /// Also follows the image's size: when another program resizes it, the capacity is
    /// read again and this connection's frontend is told (CONFIG_CHANGE_MSG).
    pub(crate) fn with_resize_watch(mut self) -> io::Result<Self> {
        let kick = Arc::new(EventFd::from_flags(
            EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC,
        )?);
        self.shared.disk.subscribe_resizes(&kick);
        self.resize = Some(ResizeWatch {
            announced: self.shared.disk.capacity(),
            kick,
        });
        Ok(self)
    }

    /// The io_uring answered: use every finished request on its queue (one call per
    /// queue, so the guest is signalled once per batch). A queue that is not running
    /// (disabled) keeps its requests until it runs again.
    fn completions(&mut self, queues: &mut Queues<'_>) {
        let Some(engine) = &mut self.uring else {
            return;
        };
        let mut finished = engine.completions();
        finished.sort_by_key(|(q, _)| *q);
        let mut rest = finished.into_iter().peekable();
        while let Some((index, first)) = rest.next() {
            let mut batch = vec![first];
            while let Some((_, f)) = rest.next_if(|(q, _)| *q == index) {
                batch.push(f);
            }
            let mut left = Some(batch);
            queues.with_queue(index, |q| {
                if let Some(batch) = left.take() {
                    self.use_finished(q, batch);
                }
            });
            if let (Some(batch), Some(engine)) = (left, &mut self.uring) {
                log::debug!(
                    "blk: queue {index} is not running: {} finished request(s) kept until it runs",
                    batch.len()
                );
                for f in batch {
                    engine.put_back(index, f);
                }
            }
        }
    }

    /// The image's watch fired here (every connection's worker 0 watches it, and only
    /// one finds the events): read the size and tell every connection.
    fn resize_watch_event(&mut self) {
        if let Err(e) = self.shared.disk.resize_check() {
            log::warn!(
                "blk: cannot read the size of {}: {e}",
                self.shared.disk.path().display()
            );
        }
    }

    /// The capacity was read again: announce it if this frontend has not seen it.
    fn resize_kick_event(&mut self) {
        let Some(watch) = &mut self.resize else {
            return;
        };
        let _ = watch.kick.read();
        let disk = &self.shared.disk;
        let capacity = disk.capacity();
        if capacity == watch.announced {
            return;
        }
        log::info!(
            "blk: {} resized: {} -> {capacity} sectors",
            disk.path().display(),
            watch.announced
        );
        watch.announced = capacity;
        let channel = self.shared.channel.lock().clone();
        match channel.map(|c| c.config_changed()) {
            Some(Err(e)) => log::warn!("blk: CONFIG_CHANGE_MSG failed: {e}"),
            Some(Ok(_)) => {}
            None => log::info!("blk: no backend channel to announce the new size on"),
        }
    }

    /// Does one request and writes its status; returns the used length.
    fn complete(&mut self, chain: &DescriptorChain, mem: &MemoryTable, limits: &Limits) -> u32 {
        let result = self.run(chain, mem, limits);
        self.report(chain, mem, result)
    }

    /// Submits a request to the io_uring if it is one the ring takes (the chain is then
    /// held until it completes), else does it now and uses its chain.
    fn start(&mut self, chain: DescriptorChain, queue: &mut Queue<'_>, limits: &Limits) {
        let mem = queue.mem();
        let (chain, result) = match parse(&chain, mem, limits) {
            Err(e) => (chain, Err(e)),
            Ok((header, request)) => match self.ring_request(&chain, mem, limits, &request) {
                Err(e) => (chain, Err(e)),
                Ok(io) => {
                    let chain = match io {
                        Some(io) => match self.submit_to_ring(chain, queue, io) {
                            Some(refused) => refused,
                            None => return,
                        },
                        None => chain,
                    };
                    let result = self.execute(&chain, mem, limits, &header, request);
                    (chain, result)
                }
            },
        };
        let used = self.report(&chain, mem, result);
        use_chain(queue, &chain, used);
    }

    /// Pushes a request to the io_uring; gives the chain back (to be done synchronously)
    /// when the ring refuses it.
    fn submit_to_ring(
        &mut self,
        chain: DescriptorChain,
        queue: &Queue<'_>,
        submission: Submission,
    ) -> Option<DescriptorChain> {
        let engine = self.uring.as_mut()?;
        let refused = engine
            .push(self.shared.disk.file(), queue, chain, submission)
            .err()?;
        let (e, chain) = *refused;
        log::error!("blk: io_uring refused a request ({e}): done synchronously");
        Some(chain)
    }

    /// What the io_uring does for `request`: the operation, and the image range and the
    /// chain's buffers or the segments; None for a request done synchronously.
    fn ring_request(
        &self,
        chain: &DescriptorChain,
        mem: &MemoryTable,
        limits: &Limits,
        request: &Request,
    ) -> Result<Option<Submission>, BlkError> {
        let Some(engine) = &self.uring else {
            return Ok(None);
        };
        let disk = &self.shared.disk;
        let direct = disk.options().direct;
        let align = disk.memory_align() as usize;
        let (op, offset, len) = match *request {
            Request::Read { sector, len } => (Op::Read, sector * SECTOR_SIZE, len as usize),
            Request::Write { sector, len } => (Op::Write, sector * SECTOR_SIZE, len as usize),
            Request::Flush => return Ok(Some(Submission::Flush)),
            // Zeroing in writethrough mode is followed by a flush: done synchronously.
            Request::WriteZeroes { count }
                if engine.takes_fallocate() && !self.shared.writethrough() =>
            {
                let ranges = read_ranges(chain, mem, kind::WRITE_ZEROES, count, limits)?;
                return Ok(Some(Submission::WriteZeroes(ranges)));
            }
            Request::Discard { count } if engine.takes_fallocate() => {
                let ranges = read_ranges(chain, mem, kind::DISCARD, count, limits)?;
                return Ok(Some(Submission::Discard(ranges)));
            }
            _ => return Ok(None),
        };
        if direct {
            check_blocks(op.name(), offset, len, disk.block_size())?;
        }
        let pieces = if op == Op::Read {
            let w = chain.writer(mem);
            if direct
                && !w
                    .is_aligned(len, align)
                    .map_err(|e| io_error("read", offset, len as u64, e))?
            {
                return Ok(None);
            }
            w.host_iovecs(len)
        } else {
            let mut r = chain.reader(mem);
            r.skip(HEADER_SIZE)
                .map_err(|e| io_error("header read", 0, HEADER_SIZE as u64, e))?;
            if direct
                && !r
                    .is_aligned(len, align)
                    .map_err(|e| io_error("write", offset, len as u64, e))?
            {
                return Ok(None);
            }
            r.host_iovecs(len)
        };
        let (iovecs, covered) = pieces.map_err(|e| io_error(op.name(), offset, len as u64, e))?;
        if covered < len {
            // More pieces than one entry takes: the synchronous path loops.
            return Ok(None);
        }
        Ok(Some(if op == Op::Read {
            Submission::Read {
                offset,
                len,
                iovecs,
            }
        } else {
            Submission::Write {
                offset,
                len,
                iovecs,
                dsync: self.shared.writethrough(),
            }
        }))
    }

    /// A request the kernel has finished: its status written; returns the used length.
    fn finish(&mut self, f: &Finished, mem: &MemoryTable) -> u32 {
        let m = &self.shared.metrics;
        m.ring_ops.fetch_add(1, Ordering::Relaxed);
        let result = if f.result == -nix::libc::EOPNOTSUPP && f.op == Op::WriteZeroes {
            // The file cannot zero a range in place: the synchronous path writes zeroes.
            self.zero_ranges(&f.ranges).inspect(|()| {
                m.discard_ops.fetch_add(1, Ordering::Relaxed);
            })
        } else if f.result < 0 {
            Err(io_error(
                f.op.name(),
                f.offset,
                f.len as u64,
                io::Error::from_raw_os_error(-f.result),
            ))
        } else if matches!(f.op, Op::Read | Op::Write) && (f.result as usize) < f.len {
            Err(short(f.op.name(), f.offset, f.result as usize, f.len))
        } else {
            match f.op {
                Op::Read => {
                    m.read_ops.fetch_add(1, Ordering::Relaxed);
                    m.read_bytes.fetch_add(f.len as u64, Ordering::Relaxed);
                }
                Op::Write => {
                    m.write_ops.fetch_add(1, Ordering::Relaxed);
                    m.write_bytes.fetch_add(f.len as u64, Ordering::Relaxed);
                }
                Op::Flush => {
                    m.flush_ops.fetch_add(1, Ordering::Relaxed);
                }
                Op::Discard | Op::WriteZeroes => {
                    m.discard_ops.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(())
        };
        self.report(&f.chain, mem, result)
    }

    /// Uses finished requests on their queue.
    fn use_finished(&mut self, queue: &mut Queue<'_>, finished: Vec<Finished>) {
        for f in finished {
            let used = self.finish(&f, queue.mem());
            use_chain(queue, &f.chain, used);
        }
    }

    /// Counts and logs a request's outcome and writes its status; returns the used
    /// length.
    fn report(
        &self,
        chain: &DescriptorChain,
        mem: &MemoryTable,
        result: Result<(), BlkError>,
    ) -> u32 {
        let status = match result {
            Ok(()) => Status::Ok,
            Err(e @ BlkError::Request(RequestError::NoStatus)) => {
                let m = &self.shared.metrics;
                m.failed(&m.malformed, &e);
                return 0;
            }
            Err(e) => {
                let m = &self.shared.metrics;
                let counter = match e {
                    BlkError::Request(_) => &m.malformed,
                    _ => &m.io_errors,
                };
                m.failed(counter, &format_args!("chain {}: {e}", chain.id()));
                e.status()
            }
        };
        write_status(chain, mem, status);
        chain.writable_len()
    }

    fn run(
        &mut self,
        chain: &DescriptorChain,
        mem: &MemoryTable,
        limits: &Limits,
    ) -> Result<(), BlkError> {
        let (header, request) = parse(chain, mem, limits)?;
        self.execute(chain, mem, limits, &header, request)
    }

    /// Does a parsed request synchronously.
    fn execute(
        &mut self,
        chain: &DescriptorChain,
        mem: &MemoryTable,
        limits: &Limits,
        header: &RequestHeader,
        request: Request,
    ) -> Result<(), BlkError> {
        let mut reader = chain.reader(mem);
        if chain.readable_len() as usize >= HEADER_SIZE {
            reader
                .skip(HEADER_SIZE)
                .map_err(|e| io_error("header read", 0, HEADER_SIZE as u64, e))?;
        }
        // Counters are read after each operation: the I/O borrows `self` mutably.
        match request {
            Request::Read { sector, len } => {
                self.read(chain.writer(mem), sector * SECTOR_SIZE, len as usize)?;
                let m = &self.shared.metrics;
                m.read_ops.fetch_add(1, Ordering::Relaxed);
                m.read_bytes.fetch_add(len.into(), Ordering::Relaxed);
            }
            Request::Write { sector, len } => {
                self.write(reader, sector * SECTOR_SIZE, len as usize)?;
                if self.shared.writethrough() {
                    self.flush()?;
                }
                let m = &self.shared.metrics;
                m.write_ops.fetch_add(1, Ordering::Relaxed);
                m.write_bytes.fetch_add(len.into(), Ordering::Relaxed);
            }
            Request::Flush => {
                self.flush()?;
                self.shared
                    .metrics
                    .flush_ops
                    .fetch_add(1, Ordering::Relaxed);
            }
            Request::GetId { len } => {
                let n = ID_BYTES.min(len as usize);
                chain
                    .writer(mem)
                    .write_all(&self.shared.id[..n])
                    .map_err(|e| io_error("id write", 0, n as u64, e))?;
            }
            Request::Discard { count } | Request::WriteZeroes { count } => {
                self.discard(header.kind, &mut reader, count, limits)?;
                self.shared
                    .metrics
                    .discard_ops
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    fn read(&mut self, mut dst: ChainWriter<'_>, offset: u64, len: usize) -> Result<(), BlkError> {
        let disk = &self.shared.disk;
        if disk.options().direct {
            check_blocks("read", offset, len, disk.block_size())?;
            let aligned = dst
                .is_aligned(len, disk.memory_align() as usize)
                .map_err(|e| io_error("read", offset, len as u64, e))?;
            if !aligned {
                return self.bounced_read(dst, offset, len);
            }
        }
        let mut done = 0;
        while done < len {
            let at = offset + done as u64;
            let n = dst
                .read_from_file_at(disk.file(), at, len - done)
                .map_err(|e| io_error("read", at, (len - done) as u64, e))?;
            if n == 0 {
                return Err(short("read", offset, done, len));
            }
            done += n;
        }
        Ok(())
    }

    fn write(&mut self, mut src: ChainReader<'_>, offset: u64, len: usize) -> Result<(), BlkError> {
        let disk = &self.shared.disk;
        if disk.options().direct {
            check_blocks("write", offset, len, disk.block_size())?;
            let aligned = src
                .is_aligned(len, disk.memory_align() as usize)
                .map_err(|e| io_error("write", offset, len as u64, e))?;
            if !aligned {
                return self.bounced_write(src, offset, len);
            }
        }
        let mut done = 0;
        while done < len {
            let at = offset + done as u64;
            let n = src
                .write_to_file_at(disk.file(), at, len - done)
                .map_err(|e| io_error("write", at, (len - done) as u64, e))?;
            if n == 0 {
                return Err(short("write", offset, done, len));
            }
            done += n;
        }
        Ok(())
    }

    /// The aligned copy area: `BOUNCE_SIZE` bytes at an address `O_DIRECT` accepts.
    fn bounce_window(&mut self) -> &mut [u8] {
        let align = (self.shared.disk.memory_align() as usize).max(1);
        if self.bounce.is_empty() {
            self.bounce = vec![0u8; BOUNCE_SIZE + align];
        }
        let start = self.bounce.as_ptr().align_offset(align);
        &mut self.bounce[start..start + BOUNCE_SIZE]
    }

    fn bounced_read(
        &mut self,
        mut dst: ChainWriter<'_>,
        offset: u64,
        len: usize,
    ) -> Result<(), BlkError> {
        self.shared.metrics.bounced.fetch_add(1, Ordering::Relaxed);
        let disk = self.shared.disk.clone();
        let window = self.bounce_window();
        let mut done = 0;
        while done < len {
            let step = (len - done).min(BOUNCE_SIZE);
            let at = offset + done as u64;
            let mut got = 0;
            while got < step {
                let n = nix::sys::uio::pread(
                    disk.file(),
                    &mut window[got..step],
                    (at + got as u64) as i64,
                )
                .map_err(|e| io_error("read", at, step as u64, e.into()))?;
                if n == 0 {
                    return Err(short("read", offset, done + got, len));
                }
                got += n;
            }
            dst.write_all(&window[..step])
                .map_err(|e| io_error("read copy", at, step as u64, e))?;
            done += step;
        }
        Ok(())
    }

    fn bounced_write(
        &mut self,
        mut src: ChainReader<'_>,
        offset: u64,
        len: usize,
    ) -> Result<(), BlkError> {
        self.shared.metrics.bounced.fetch_add(1, Ordering::Relaxed);
        let disk = self.shared.disk.clone();
        let window = self.bounce_window();
        let mut done = 0;
        while done < len {
            let step = (len - done).min(BOUNCE_SIZE);
            let at = offset + done as u64;
            src.read_exact(&mut window[..step])
                .map_err(|e| io_error("write copy", at, step as u64, e))?;
            let mut put = 0;
            while put < step {
                let n = nix::sys::uio::pwrite(
                    disk.file(),
                    &window[put..step],
                    (at + put as u64) as i64,
                )
                .map_err(|e| io_error("write", at, step as u64, e.into()))?;
                if n == 0 {
                    return Err(short("write", offset, done + put, len));
                }
                put += n;
            }
            done += step;
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), BlkError> {
        self.shared
            .disk
            .flush()
            .map_err(|e| io_error("flush", 0, 0, e))
    }

    fn discard(
        &self,
        kind: u32,
        reader: &mut ChainReader<'_>,
        count: u32,
        limits: &Limits,
    ) -> Result<(), BlkError> {
        let ranges = segment_ranges(kind, reader, count, limits)?;
        if kind == kind::DISCARD {
            for &(offset, len, _) in &ranges {
                self.shared
                    .disk
                    .discard(offset, len)
                    .map_err(|e| io_error("discard", offset, len, e))?;
            }
            return Ok(());
        }
        self.zero_ranges(&ranges)?;
        if self.shared.writethrough() {
            self.flush()?;
        }
        Ok(())
    }

    /// Zeroes `ranges` of the image (deallocating where a range allows it).
    fn zero_ranges(&self, ranges: &Ranges) -> Result<(), BlkError> {
        for &(offset, len, unmap) in ranges {
            self.shared
                .disk
                .write_zeroes(offset, len, unmap)
                .map_err(|e| io_error("write-zeroes", offset, len, e))?;
        }
        Ok(())
    }
}

/// Reads and checks the `count` segments of a `kind` request (DISCARD or WRITE_ZEROES)
/// that follow the header of `chain`: every one is checked before any is done.
fn read_ranges(
    chain: &DescriptorChain,
    mem: &MemoryTable,
    kind: u32,
    count: u32,
    limits: &Limits,
) -> Result<Ranges, BlkError> {
    let mut reader = chain.reader(mem);
    reader
        .skip(HEADER_SIZE)
        .map_err(|e| io_error("header read", 0, HEADER_SIZE as u64, e))?;
    segment_ranges(kind, &mut reader, count, limits)
}

/// Reads and checks `count` segments from `reader`: byte offset, bytes and UNMAP each.
fn segment_ranges(
    kind: u32,
    reader: &mut ChainReader<'_>,
    count: u32,
    limits: &Limits,
) -> Result<Ranges, BlkError> {
    let mut ranges = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let mut raw = [0u8; SEGMENT_SIZE];
        reader
            .read_exact_bytes(&mut raw)
            .map_err(|e| io_error("segment read", 0, SEGMENT_SIZE as u64, e))?;
        let segment = Segment::from_bytes(&raw);
        segment.check(kind, limits)?;
        let (offset, len) = segment.byte_range();
        ranges.push((offset, len, segment.flags & SEGMENT_UNMAP != 0));
    }
    Ok(ranges)
}

/// Uses a chain whose request went elsewhere than `process_queue`'s own loop (a refusal
/// is logged: the ring is broken, or the chain was handed in twice).
fn use_chain(queue: &mut Queue<'_>, chain: &DescriptorChain, used: u32) {
    if let Err(e) = queue.add_used(chain, used) {
        log::warn!("blk: chain {}: {e}", chain.id());
    }
}

/// Reads and checks a request's header.
fn parse(
    chain: &DescriptorChain,
    mem: &MemoryTable,
    limits: &Limits,
) -> Result<(RequestHeader, Request), BlkError> {
    let mut raw = [0u8; HEADER_SIZE];
    // A short header fails in `Request::parse`, which checks the lengths.
    if chain.readable_len() as usize >= HEADER_SIZE {
        chain
            .reader(mem)
            .read_exact_bytes(&mut raw)
            .map_err(|e| io_error("header read", 0, HEADER_SIZE as u64, e))?;
    }
    let header = RequestHeader::from_bytes(&raw);
    let request = Request::parse(&header, chain.readable_len(), chain.writable_len(), limits)?;
    Ok((header, request))
}

fn io_error(op: &'static str, offset: u64, len: u64, source: io::Error) -> BlkError {
    BlkError::Io {
        op,
        offset,
        len,
        source,
    }
}

fn short(op: &'static str, offset: u64, done: usize, len: usize) -> BlkError {
    BlkError::ShortTransfer {
        op,
        offset,
        done: done as u64,
        len: len as u64,
    }
}

fn check_blocks(op: &'static str, offset: u64, len: usize, block: u32) -> Result<(), BlkError> {
    let b = u64::from(block);
    if !offset.is_multiple_of(b) || !(len as u64).is_multiple_of(b) {
        return Err(BlkError::Unaligned {
            op,
            offset,
            len: len as u64,
            block,
        });
    }
    Ok(())
}

/// Writes the status into the last device-writable byte of the chain.
fn write_status(chain: &DescriptorChain, mem: &MemoryTable, status: Status) {
    let Some(last) = chain.writable().iter().rev().find(|d| d.len > 0) else {
        return;
    };
    if let Err(e) = mem.write(last.addr + u64::from(last.len) - 1, &[status as u8]) {
        log::warn!("blk: chain {}: status write failed: {e}", chain.id());
    }
}

impl QueueWorker for BlkWorker {
    fn process_queue(&mut self, queue: &mut Queue<'_>) -> Result<(), DeviceError> {
        let limits = self.shared.limits();
        if let Some(engine) = &mut self.uring {
            let finished = engine.finished_for(queue.index());
            self.use_finished(queue, finished);
        }
        if self.uring.is_none() {
            while let Some(chain) = queue.pop() {
                let used = self.complete(&chain, queue.mem(), &limits);
                queue.add_used(&chain, used)?;
            }
            return Ok(());
        }
        while let Some(chain) = queue.pop() {
            self.start(chain, queue, &limits);
        }
        if let Some(engine) = &mut self.uring {
            if let Err(e) = engine.submit() {
                log::error!("blk: io_uring submit: {e}");
            }
        }
        Ok(())
    }

    fn queue_stopping(&mut self, queue: &mut Queue<'_>) {
        if let Some(engine) = &mut self.uring {
            let finished = engine.drain(queue.index());
            self.use_finished(queue, finished);
        }
    }

    fn queue_state_changed(&mut self, index: u16, running: bool) {
        if let (Some(engine), false) = (&mut self.uring, running) {
            engine.forget(index);
        }
    }

    fn register_fds(&mut self, registry: &mut FdRegistry<'_>) -> io::Result<()> {
        use std::os::fd::{AsFd, AsRawFd};
        if let Some(w) = &self.resize {
            registry.register_readable(w.kick.as_fd().as_raw_fd(), RESIZE_KICK_TOKEN)?;
            if let Some(fd) = self.shared.disk.resize_fd() {
                registry.register_readable(fd.as_raw_fd(), RESIZE_WATCH_TOKEN)?;
            }
        }
        if let Some(engine) = &self.uring {
            registry.register_readable(engine.done_fd().as_raw_fd(), URING_TOKEN)?;
        }
        Ok(())
    }

    fn handle_event(&mut self, token: usize, queues: &mut Queues<'_>) -> Result<(), DeviceError> {
        match token {
            RESIZE_WATCH_TOKEN => self.resize_watch_event(),
            RESIZE_KICK_TOKEN => self.resize_kick_event(),
            URING_TOKEN => self.completions(queues),
            _ => {}
        }
        Ok(())
    }
}
