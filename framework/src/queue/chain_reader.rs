//! `ChainReader`: the device-readable buffers of a chain as one byte stream.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use super::chain_cursor::ChainCursor;
use super::Descriptor;

/// The most iovecs one `readv`/`writev` takes on Linux.
pub(crate) const IOV_MAX: usize = 1024;
use crate::memory::MemoryTable;

/// Reads a chain's device-readable buffers in order, as `io::Read`, or hands them to a
/// file descriptor without a copy ([`ChainReader::write_to_fd`]).
///
/// # Example
/// ```
/// # use std::io::Read;
/// # use vhost_user_sync::queue::{ChainReader, Descriptor};
/// # use vhost_user_sync::memory::MemoryTable;
/// # use vhost_user_sync::protocol::payload::MemoryRegionDesc;
/// # let fd = nix::sys::memfd::memfd_create("g", nix::sys::memfd::MFdFlags::empty()).unwrap();
/// # let file = std::fs::File::from(fd); file.set_len(0x10000).unwrap();
/// # let mem = MemoryTable::from_regions(&[MemoryRegionDesc { guest_phys_addr: 0, memory_size: 0x10000, userspace_addr: 0, mmap_offset: 0 }], vec![file]).unwrap();
/// mem.write(0x100, b"hello").unwrap();
/// mem.write(0x200, b" world").unwrap();
/// let descs = [
///     Descriptor { addr: 0x100, len: 5, flags: 0, next: 0 },
///     Descriptor { addr: 0x200, len: 6, flags: 0, next: 0 },
/// ];
/// let mut s = String::new();
/// ChainReader::new(&mem, &descs).read_to_string(&mut s).unwrap();
/// assert_eq!(s, "hello world");
/// ```
#[derive(Debug)]
pub struct ChainReader<'a> {
    mem: &'a MemoryTable,
    cursor: ChainCursor<'a>,
    consumed: usize,
}

impl<'a> ChainReader<'a> {
    /// A reader over `descs` (which the chain already checked against `mem`).
    pub fn new(mem: &'a MemoryTable, descs: &'a [Descriptor]) -> Self {
        ChainReader {
            mem,
            cursor: ChainCursor::new(descs),
            consumed: 0,
        }
    }

    /// Bytes left to read.
    pub fn remaining(&self) -> usize {
        self.cursor.remaining()
    }

    /// Bytes read so far.
    pub fn consumed(&self) -> usize {
        self.consumed
    }

    /// Skips `n` bytes (for example a header already parsed by the caller).
    pub fn skip(&mut self, n: usize) -> io::Result<usize> {
        let moved = self.cursor.advance(n);
        self.consumed += moved;
        Ok(moved)
    }

    /// Copies exactly `buf.len()` bytes or fails with `UnexpectedEof`.
    pub fn read_exact_bytes(&mut self, buf: &mut [u8]) -> io::Result<()> {
        // The common case (a header inside the current buffer, in one region) in one
        // copy, without counting the bytes left in the whole chain.
        if let Some(s) = self.cursor.current_slice(self.mem, buf.len()) {
            s.copy_to(buf);
            self.skip(buf.len())?;
            return Ok(());
        }
        if self.remaining() < buf.len() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        io::Read::read_exact(self, buf)
    }

    /// Writes up to `max` bytes of the chain to `fd` with one `writev(2)` straight from
    /// guest memory; advances by what the fd took.
    pub fn write_to_fd(&mut self, fd: BorrowedFd<'_>, max: usize) -> io::Result<usize> {
        self.write_to_fd_with_prefix(fd, &[], max)
    }

    /// Like [`Self::write_to_fd`], with `prefix` (bytes the device owns, such as a header
    /// it copied and checked) written first in the same `writev(2)`. Returns the bytes
    /// written including the prefix; the reader advances by the chain bytes taken.
    pub fn write_to_fd_with_prefix(
        &mut self,
        fd: BorrowedFd<'_>,
        prefix: &[u8],
        max: usize,
    ) -> io::Result<usize> {
        let (want, n) =
            self.cursor
                .with_iovecs(self.mem, max, IOV_MAX - 1, false, prefix, |iovs| {
                    // SAFETY: every iovec points at memory that stays valid for the call:
                    // `prefix` is borrowed, and the guest pieces are in a live mapping kept
                    // by the borrowed table, each exactly `iov_len` bytes. writev only reads
                    // them. The count is at most IOV_MAX.
                    byte_count(unsafe {
                        nix::libc::writev(fd.as_raw_fd(), iovs.as_ptr(), iovs.len() as i32)
                    })
                })?;
        let n = n?;
        // Advance by what was really taken from the chain.
        self.skip(n.saturating_sub(prefix.len()).min(want))?;
        Ok(n)
    }

    /// Writes up to `max` bytes of the chain to the file `fd` at byte `offset` with one
    /// `pwritev(2)` straight from guest memory (a disk write); advances by what was
    /// written. Callers loop until the request is done: one call takes at most IOV_MAX
    /// buffer pieces, and the kernel may write less.
    pub fn write_to_file_at(
        &mut self,
        fd: BorrowedFd<'_>,
        offset: u64,
        max: usize,
    ) -> io::Result<usize> {
        let offset = file_offset(offset)?;
        let (want, n) = self
            .cursor
            .with_iovecs(self.mem, max, IOV_MAX, false, &[], |iovs| {
                if iovs.is_empty() {
                    return Ok(0);
                }
                // SAFETY: the iovecs cover live guest memory kept mapped by the borrowed
                // table, each exactly `iov_len` bytes, at most IOV_MAX of them; pwritev only
                // reads them.
                byte_count(unsafe {
                    nix::libc::pwritev(fd.as_raw_fd(), iovs.as_ptr(), iovs.len() as i32, offset)
                })
            })?;
        let n = n?.min(want);
        self.skip(n)?;
        Ok(n)
    }

    /// The host addresses of the next up to `max` bytes to read (without advancing), at
    /// most IOV_MAX (1024) pieces, and how many bytes they cover (less than `max` when
    /// the chain has less, or more pieces). For I/O that runs after this call returns
    /// (a write submitted to io_uring): the addresses stay valid while the memory table
    /// is kept ([`crate::device::Queue::shared_mem`]), and the caller must not let the
    /// kernel use them after that.
    pub fn host_iovecs(&self, max: usize) -> io::Result<(Vec<nix::libc::iovec>, usize)> {
        let (want, iovs) = self
            .cursor
            .with_iovecs(self.mem, max, IOV_MAX, false, &[], |iovs| iovs.to_vec())?;
        Ok((iovs, want))
    }

    /// [`Self::host_iovecs`] appended to `out` (whose storage a caller reuses from one
    /// request to the next), at most `room` pieces; returns how many bytes they cover.
    ///
    /// # Example
    /// ```no_run
    /// # fn f(r: &vhost_user_sync::queue::ChainReader<'_>) -> std::io::Result<()> {
    /// let mut iovs = Vec::new();
    /// let covered = r.append_host_iovecs(usize::MAX, 1023, &mut iovs)?;
    /// assert_eq!(covered, iovs.iter().map(|v| v.iov_len).sum::<usize>());
    /// # Ok(()) }
    /// ```
    pub fn append_host_iovecs(
        &self,
        max: usize,
        room: usize,
        out: &mut Vec<nix::libc::iovec>,
    ) -> io::Result<usize> {
        let (want, ()) =
            self.cursor
                .with_iovecs(self.mem, max, room.min(IOV_MAX), false, &[], |iovs| {
                    out.extend_from_slice(iovs)
                })?;
        Ok(want)
    }

    /// Whether the next up to `max` bytes lie in buffer pieces whose host addresses and
    /// lengths are multiples of `align` (so they can go to an `O_DIRECT` file as they are).
    pub fn is_aligned(&self, max: usize, align: usize) -> io::Result<bool> {
        self.cursor.is_aligned(self.mem, max, align)
    }
}

/// The result of a byte-count syscall, with errno read at once.
pub(crate) fn byte_count(r: isize) -> io::Result<usize> {
    usize::try_from(r).map_err(|_| io::Error::last_os_error())
}

/// A file offset as `off_t`, refusing ones past its range.
pub(crate) fn file_offset(offset: u64) -> io::Result<nix::libc::off_t> {
    nix::libc::off_t::try_from(offset).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("file offset {offset} too large"),
        )
    })
}

impl io::Read for ChainReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut done = 0;
        let n = self.cursor.visit(self.mem, buf.len(), |s| {
            let n = s.len();
            s.copy_to(&mut buf[done..done + n]);
            done += n;
        })?;
        self.skip(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(addr: u64, len: u32) -> Descriptor {
        Descriptor {
            addr,
            len,
            flags: 0,
            next: 0,
        }
    }

    #[test]
    fn exact_reads_inside_and_across_buffers_and_past_the_end() {
        let mem = crate::memory::test_table(0x10000);
        let bytes: Vec<u8> = (0..32u8).collect();
        mem.write(0x100, &bytes[..5]).unwrap();
        mem.write(0x200, &bytes[5..20]).unwrap();
        mem.write(0x300, &bytes[20..]).unwrap();
        let descs = [desc(0x100, 5), desc(0x200, 15), desc(0x300, 12)];
        let mut r = ChainReader::new(&mem, &descs);
        // Inside the first buffer, then across the first two, then inside the second.
        let mut a = [0u8; 3];
        r.read_exact_bytes(&mut a).unwrap();
        assert_eq!(a, [0, 1, 2]);
        let mut b = [0u8; 6];
        r.read_exact_bytes(&mut b).unwrap();
        assert_eq!(b, [3, 4, 5, 6, 7, 8]);
        let mut c = [0u8; 11];
        r.read_exact_bytes(&mut c).unwrap();
        assert_eq!(c.to_vec(), (9..20).collect::<Vec<u8>>());
        assert_eq!((r.consumed(), r.remaining()), (20, 12));
        // More than is left: refused, nothing taken.
        let mut d = [0u8; 13];
        let e = r.read_exact_bytes(&mut d).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!((r.consumed(), r.remaining()), (20, 12));
        let mut rest = [0u8; 12];
        r.read_exact_bytes(&mut rest).unwrap();
        assert_eq!(rest.to_vec(), (20..32).collect::<Vec<u8>>());
        assert_eq!(r.remaining(), 0);
    }
}
