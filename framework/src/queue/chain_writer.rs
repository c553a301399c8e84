//! `ChainWriter`: the device-writable buffers of a chain as one byte sink.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use super::chain_cursor::ChainCursor;
use super::chain_reader::{byte_count, file_offset, IOV_MAX};
use super::Descriptor;
use crate::memory::MemoryTable;

/// Writes into a chain's device-writable buffers in order, as `io::Write`, or fills them
/// straight from a file descriptor ([`ChainWriter::read_from_fd`]). [`Self::written`] is
/// what goes into the used ring.
///
/// # Example
/// ```
/// # use std::io::Write;
/// # use vhost_user_sync::queue::{ChainWriter, Descriptor};
/// # use vhost_user_sync::memory::MemoryTable;
/// # use vhost_user_sync::protocol::payload::MemoryRegionDesc;
/// # let fd = nix::sys::memfd::memfd_create("g", nix::sys::memfd::MFdFlags::empty()).unwrap();
/// # let file = std::fs::File::from(fd); file.set_len(0x10000).unwrap();
/// # let mem = MemoryTable::from_regions(&[MemoryRegionDesc { guest_phys_addr: 0, memory_size: 0x10000, userspace_addr: 0, mmap_offset: 0 }], vec![file]).unwrap();
/// let descs = [Descriptor { addr: 0x100, len: 4, flags: Descriptor::F_WRITE, next: 0 }];
/// let mut w = ChainWriter::new(&mem, &descs);
/// assert_eq!(w.write(b"abcdef").unwrap(), 4);
/// assert_eq!(w.written(), 4);
/// ```
#[derive(Debug)]
pub struct ChainWriter<'a> {
    mem: &'a MemoryTable,
    cursor: ChainCursor<'a>,
    written: usize,
    /// The chain's record of how far guest memory may have been written.
    reach: Option<&'a std::cell::Cell<u32>>,
}

impl<'a> ChainWriter<'a> {
    /// A writer over `descs` (which the chain already checked against `mem`).
    pub fn new(mem: &'a MemoryTable, descs: &'a [Descriptor]) -> Self {
        ChainWriter {
            mem,
            cursor: ChainCursor::new(descs),
            written: 0,
            reach: None,
        }
    }

    /// Keeps `reach` at least as far as this writer writes or lets the kernel write.
    pub(crate) fn reaching(mut self, reach: &'a std::cell::Cell<u32>) -> Self {
        self.reach = Some(reach);
        self
    }

    /// Records that the first `bytes` more bytes from here on may be written.
    fn extend_reach(&self, bytes: usize) {
        if let Some(r) = self.reach {
            let to = u32::try_from(self.written.saturating_add(bytes)).unwrap_or(u32::MAX);
            if to > r.get() {
                r.set(to);
            }
        }
    }

    /// Bytes of room left.
    pub fn available(&self) -> usize {
        self.cursor.remaining()
    }

    /// Bytes written so far.
    pub fn written(&self) -> usize {
        self.written
    }

    fn advance(&mut self, n: usize) {
        self.written += self.cursor.advance(n);
    }

    /// Fills up to `max` bytes of the chain from `fd` with one `readv(2)` straight into
    /// guest memory; advances by what was read.
    pub fn read_from_fd(&mut self, fd: BorrowedFd<'_>, max: usize) -> io::Result<usize> {
        self.extend_reach(max.min(self.available()));
        let (want, n) = self
            .cursor
            .with_iovecs(self.mem, max, IOV_MAX, true, &[], |iovs| {
                if iovs.is_empty() {
                    return Ok(0);
                }
                // SAFETY: every iovec covers exactly `iov_len` bytes of a live, writable
                // mapping of guest memory (the borrowed table keeps it mapped for the call);
                // the kernel writes only inside them. At most IOV_MAX of them.
                byte_count(unsafe {
                    nix::libc::readv(fd.as_raw_fd(), iovs.as_ptr(), iovs.len() as i32)
                })
            })?;
        self.finish(want, n)
    }

    /// Fills up to `max` bytes of the chain from the file `fd` at byte `offset` with one
    /// `preadv(2)` straight into guest memory (a disk read); advances by what was read,
    /// which is 0 at the end of the file. Callers loop until the request is done.
    pub fn read_from_file_at(
        &mut self,
        fd: BorrowedFd<'_>,
        offset: u64,
        max: usize,
    ) -> io::Result<usize> {
        let offset = file_offset(offset)?;
        self.extend_reach(max.min(self.available()));
        let (want, n) = self
            .cursor
            .with_iovecs(self.mem, max, IOV_MAX, true, &[], |iovs| {
                if iovs.is_empty() {
                    return Ok(0);
                }
                // SAFETY: as in `read_from_fd`: each iovec is exactly `iov_len` bytes of a
                // live, writable guest mapping kept by the borrowed table; at most IOV_MAX.
                byte_count(unsafe {
                    nix::libc::preadv(fd.as_raw_fd(), iovs.as_ptr(), iovs.len() as i32, offset)
                })
            })?;
        self.finish(want, n)
    }

    /// The host addresses of the next up to `max` bytes of room (without advancing), at
    /// most IOV_MAX (1024) pieces, and how many bytes they cover (less than `max` when
    /// the chain has less, or more pieces). For I/O that runs after this call returns
    /// (a read submitted to io_uring): the addresses stay valid while the memory table
    /// is kept ([`crate::device::Queue::shared_mem`]), and the caller must not let the
    /// kernel use them after that.
    pub fn host_iovecs(&self, max: usize) -> io::Result<(Vec<nix::libc::iovec>, usize)> {
        let (want, iovs) = self
            .cursor
            .with_iovecs(self.mem, max, IOV_MAX, true, &[], |iovs| iovs.to_vec())?;
        // The kernel will write there: the dirty log must cover it when the chain is
        // used, even if the read fails half way.
        self.extend_reach(want);
        Ok((iovs, want))
    }

    /// Whether the next up to `max` bytes of room lie in buffer pieces whose host
    /// addresses and lengths are multiples of `align` (what an `O_DIRECT` read needs).
    pub fn is_aligned(&self, max: usize, align: usize) -> io::Result<bool> {
        self.cursor.is_aligned(self.mem, max, align)
    }

    fn finish(&mut self, want: usize, n: io::Result<usize>) -> io::Result<usize> {
        let n = n?.min(want);
        self.advance(n);
        Ok(n)
    }
}

impl io::Write for ChainWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // The common case (a packet or a header into the current buffer, in one region)
        // without the general walk, nor a count of the room left: it all fits.
        if let Some(s) = self.cursor.current_slice(self.mem, buf.len()) {
            self.extend_reach(buf.len());
            s.copy_from(buf);
            self.advance(buf.len());
            return Ok(buf.len());
        }
        self.extend_reach(buf.len().min(self.available()));
        let mut done = 0;
        let n = self.cursor.visit(self.mem, buf.len(), |s| {
            let n = s.len();
            s.copy_from(&buf[done..done + n]);
            done += n;
        })?;
        self.advance(n);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsFd;

    #[test]
    fn more_buffers_than_iov_max_are_filled_in_several_calls() {
        let mem = crate::memory::test_table(0x10000);
        let descs: Vec<Descriptor> = (0..1500u64)
            .map(|i| Descriptor {
                addr: 0x100 + 4 * i,
                len: 4,
                flags: Descriptor::F_WRITE,
                next: 0,
            })
            .collect();
        let (r, mut w) = std::io::pipe().unwrap();
        w.write_all(&[0xab; 6000]).unwrap();
        let mut writer = ChainWriter::new(&mem, &descs);
        let first = writer.read_from_fd(r.as_fd(), 6000).unwrap();
        assert_eq!(first, 4 * IOV_MAX);
        let second = writer.read_from_fd(r.as_fd(), 6000).unwrap();
        assert_eq!(first + second, 6000);
        let mut back = vec![0u8; 6000];
        mem.read(0x100, &mut back).unwrap();
        assert!(back.iter().all(|&b| b == 0xab));
    }
}
