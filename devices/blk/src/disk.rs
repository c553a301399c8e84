//! The host side: a raw image file or a block device, its size, and the operations the
//! requests need beyond plain reads and writes (flush, discard, zeroing).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use nix::sys::eventfd::EventFd;
use parking_lot::Mutex;

use nix::fcntl::{fallocate, FallocateFlags};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

use crate::image_lock::lock_image;
use crate::request::SECTOR_SIZE;

/// How to open the image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskOptions {
    /// Open read-only (the guest sees a read-only disk).
    pub read_only: bool,
    /// Bypass the host page cache (`O_DIRECT`).
    pub direct: bool,
    /// Leave the image unlocked (see [`crate::image_lock`]): for an image that is shared
    /// on purpose, such as two backends on shared storage during a migration. By default
    /// the image is locked and a second writer is refused.
    pub skip_lock: bool,
}

/// An open disk image, shared by every connection and worker (reads and writes are
/// positional, so no lock is needed).
///
/// # Example
/// ```
/// use vhost_user_sync_blk::{DiskImage, DiskOptions};
/// let path = std::env::temp_dir().join(format!("disk-doc-{}.img", std::process::id()));
/// std::fs::File::create(&path).unwrap().set_len(1 << 20).unwrap();
/// let disk = DiskImage::open(&path, DiskOptions::default()).unwrap();
/// assert_eq!(disk.capacity(), 2048); // sectors
/// # std::fs::remove_file(&path).unwrap();
/// ```
#[derive(Debug)]
pub struct DiskImage {
    file: File,
    path: PathBuf,
    options: DiskOptions,
    block_device: bool,
    in_memory: bool,
    /// Size in sectors, refreshed by [`Self::refresh_capacity`].
    capacity: AtomicU64,
    /// Alignment `O_DIRECT` needs of offsets and lengths (also the logical block size
    /// offered to the guest).
    block_size: u32,
    /// Alignment `O_DIRECT` needs of memory buffers.
    memory_align: u32,
    /// Readable when another program may have resized the image.
    resize_watch: Option<Inotify>,
    /// Eventfds of the devices serving this image, written after a resize.
    resize_subscribers: Mutex<Vec<Weak<EventFd>>>,
}

nix::ioctl_read!(blk_get_size64, 0x12, 114, u64);
nix::ioctl_read_bad!(blk_sector_size, 0x1268, nix::libc::c_int);

impl DiskImage {
    /// Opens the image at `path` and, unless `options.skip_lock`, locks it against a
    /// second writer (an image in use fails with [`io::ErrorKind::ResourceBusy`] and a
    /// message naming it).
    pub fn open(path: impl AsRef<Path>, options: DiskOptions) -> io::Result<Self> {
        let path = path.as_ref();
        let mut open = OpenOptions::new();
        open.read(true).write(!options.read_only);
        if options.direct {
            open.custom_flags(nix::libc::O_DIRECT);
        }
        let file = open.open(path).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display()))
        })?;
        if !options.skip_lock {
            lock_image(&file, path, options.read_only)?;
        }
        let block_device = file.metadata()?.file_type().is_block_device();
        let in_memory = !block_device && in_memory_filesystem(&file);
        let (block_size, memory_align) = if options.direct {
            direct_alignment(&file, block_device)?
        } else {
            (SECTOR_SIZE as u32, 1)
        };
        let disk = DiskImage {
            file,
            path: path.to_path_buf(),
            options,
            block_device,
            in_memory,
            capacity: AtomicU64::new(0),
            block_size,
            memory_align,
            resize_watch: resize_watch(path),
            resize_subscribers: Mutex::new(Vec::new()),
        };
        disk.refresh_capacity()?;
        Ok(disk)
    }

    /// The image's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open file.
    pub fn file(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Every fd it owns (the image, the resize watch), for a sandbox that keeps only
    /// the fds it is told about.
    pub fn raw_fds(&self) -> Vec<std::os::fd::RawFd> {
        let mut fds = vec![self.file.as_raw_fd()];
        fds.extend(self.resize_watch.as_ref().map(|w| w.as_fd().as_raw_fd()));
        fds
    }

    /// How it was opened.
    pub fn options(&self) -> DiskOptions {
        self.options
    }

    /// Size in 512-byte sectors (a partial last sector is not part of the disk).
    pub fn capacity(&self) -> u64 {
        self.capacity.load(Ordering::Acquire)
    }

    /// Logical block size offered to the guest: 512, or what `O_DIRECT` needs.
    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// Whether the image is a file in memory (tmpfs, ramfs, hugetlbfs): its reads and
    /// writes are copies that never wait for a device.
    ///
    /// ```no_run
    /// use vhost_user_sync_blk::{DiskImage, DiskOptions};
    /// let disk = DiskImage::open("/dev/shm/disk.img", DiskOptions::default())?;
    /// assert!(disk.in_memory());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn in_memory(&self) -> bool {
        self.in_memory
    }

    /// Alignment of guest buffers that can go to the file as they are.
    pub fn memory_align(&self) -> u32 {
        self.memory_align
    }

    /// An fd that becomes readable when another program may have resized the image
    /// (it closed the file after writing, or changed its attributes; the device's own
    /// writes raise neither). One per image, shared by every connection; call
    /// [`Self::resize_check`] when it is.
    pub fn resize_fd(&self) -> Option<BorrowedFd<'_>> {
        self.resize_watch.as_ref().map(|w| w.as_fd())
    }

    /// Empties the resize watch (any worker may do it; the others then find nothing,
    /// which is why the news goes on through [`Self::subscribe_resizes`]).
    fn drain_resize_events(&self) {
        if let Some(w) = &self.resize_watch {
            while matches!(w.read_events(), Ok(events) if !events.is_empty()) {}
        }
    }

    /// Has `kick` written whenever the capacity was read again after a possible resize,
    /// for as long as the caller keeps it alive.
    pub fn subscribe_resizes(&self, kick: &Arc<EventFd>) {
        let mut subs = self.resize_subscribers.lock();
        subs.retain(|w| w.strong_count() > 0);
        subs.push(Arc::downgrade(kick));
    }

    /// Reads the capacity again and tells every subscriber; returns the capacity.
    pub fn resize_check(&self) -> io::Result<u64> {
        self.drain_resize_events();
        let capacity = self.refresh_capacity()?;
        let subs: Vec<Arc<EventFd>> = {
            let mut subs = self.resize_subscribers.lock();
            subs.retain(|w| w.strong_count() > 0);
            subs.iter().filter_map(Weak::upgrade).collect()
        };
        for kick in subs {
            // Never blocks: a full counter already means "look again".
            let _ = kick.write(1);
        }
        Ok(capacity)
    }

    /// Reads the size again (after the image was resized); returns the new capacity.
    pub fn refresh_capacity(&self) -> io::Result<u64> {
        let bytes = if self.block_device {
            let mut size = 0u64;
            // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points at a
            // live local; the fd is an open block device.
            unsafe { blk_get_size64(self.file.as_raw_fd(), &mut size) }.map_err(io::Error::from)?;
            size
        } else {
            self.file.metadata()?.len()
        };
        let sectors = bytes / SECTOR_SIZE;
        self.capacity.store(sectors, Ordering::Release);
        Ok(sectors)
    }

    /// Makes completed writes durable.
    pub fn flush(&self) -> io::Result<()> {
        nix::unistd::fdatasync(&self.file).map_err(io::Error::from)
    }

    /// Deallocates `len` bytes at `offset` (reads return zeroes afterwards). Files or
    /// devices that cannot punch holes keep their data: discard is only a hint.
    pub fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        match self.fallocate(
            FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        ) {
            Err(e) if e.raw_os_error() == Some(nix::libc::EOPNOTSUPP) => Ok(()),
            r => r,
        }
    }

    /// Zeroes `len` bytes at `offset`; with `unmap` the range may be deallocated.
    pub fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        let flags = if unmap {
            FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE
        } else {
            FallocateFlags::FALLOC_FL_ZERO_RANGE | FallocateFlags::FALLOC_FL_KEEP_SIZE
        };
        match self.fallocate(flags, offset, len) {
            Err(e) if e.raw_os_error() == Some(nix::libc::EOPNOTSUPP) => {
                self.write_zero_blocks(offset, len)
            }
            r => r,
        }
    }

    fn fallocate(&self, flags: FallocateFlags, offset: u64, len: u64) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        let off = i64::try_from(offset).map_err(|_| io::Error::from_raw_os_error(22))?;
        let len = i64::try_from(len).map_err(|_| io::Error::from_raw_os_error(22))?;
        fallocate(&self.file, flags, off, len).map_err(io::Error::from)
    }

    /// Zeroing by writing, where the file system cannot zero a range itself.
    fn write_zero_blocks(&self, offset: u64, len: u64) -> io::Result<()> {
        const CHUNK: usize = 1 << 16;
        // An over-sized buffer gives an aligned window for O_DIRECT without unsafe code.
        let align = self.memory_align as usize;
        let buf = vec![0u8; CHUNK + align];
        let start = buf.as_ptr().align_offset(align.max(1));
        let zeroes = &buf[start..start + CHUNK];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(CHUNK as u64) as usize;
            let written = nix::sys::uio::pwrite(&self.file, &zeroes[..n], (offset + done) as i64)
                .map_err(io::Error::from)?;
            if written == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            done += written as u64;
        }
        Ok(())
    }
}

/// An inotify watch on the image file, or `None` (logged) when there can be none.
/// Whether `file` lives on a filesystem kept in memory.
fn in_memory_filesystem(file: &File) -> bool {
    use nix::sys::statfs::{fstatfs, FsType, HUGETLBFS_MAGIC, TMPFS_MAGIC};
    // ramfs has no constant in nix.
    const RAMFS_MAGIC: FsType = FsType(0x8584_58f6);
    match fstatfs(file) {
        Ok(fs) => [TMPFS_MAGIC, RAMFS_MAGIC, HUGETLBFS_MAGIC].contains(&fs.filesystem_type()),
        Err(_) => false,
    }
}

fn resize_watch(path: &Path) -> Option<Inotify> {
    let watch = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).and_then(|w| {
        // A resize by another program ends with IN_CLOSE_WRITE (truncate, qemu-img
        // resize) or IN_ATTRIB.
        w.add_watch(
            path,
            AddWatchFlags::IN_CLOSE_WRITE | AddWatchFlags::IN_ATTRIB,
        )?;
        Ok(w)
    });
    match watch {
        Ok(w) => Some(w),
        Err(e) => {
            log::warn!("cannot watch {} for resizes: {e}", path.display());
            None
        }
    }
}

/// (offset/length alignment, memory alignment) an `O_DIRECT` fd needs.
fn direct_alignment(file: &File, block_device: bool) -> io::Result<(u32, u32)> {
    if block_device {
        let mut size: nix::libc::c_int = 0;
        // SAFETY: BLKSSZGET writes one int through the pointer, which points at a live
        // local; the fd is an open block device.
        unsafe { blk_sector_size(file.as_raw_fd(), &mut size) }.map_err(io::Error::from)?;
        let size = u32::try_from(size).unwrap_or(512).max(512);
        return Ok((size, size));
    }
    // SAFETY: statx only writes the `statx` struct, a zeroed local of the right type; the
    // path is an empty C string and AT_EMPTY_PATH makes it describe the fd itself.
    let mut stx: nix::libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: as above: valid fd, valid NUL-terminated empty path, valid out pointer.
    let r = unsafe {
        nix::libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            nix::libc::AT_EMPTY_PATH,
            nix::libc::STATX_DIOALIGN,
            &mut stx,
        )
    };
    if r == 0 && stx.stx_mask & nix::libc::STATX_DIOALIGN != 0 && stx.stx_dio_offset_align != 0 {
        let offset = stx.stx_dio_offset_align.max(512);
        return Ok((offset, stx.stx_dio_mem_align.max(1)));
    }
    // Kernels without STATX_DIOALIGN: the page size satisfies every file system.
    Ok((4096, 4096))
}
