//! `DirtyLog`: the shared bitmap of guest pages written, for live migration.

use std::fs::File;
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use nix::sys::mman::{MapFlags, ProtFlags};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{Bytes, FileOffset, MmapRegion, VolatileMemory};

use super::MemoryError;
use crate::sys::unix::{FaultGuard, FaultNotice};

/// Page size of the dirty log: one bit per 4 KiB of guest-physical memory.
pub const LOG_PAGE_SIZE: u64 = 0x1000;

/// The log the frontend shared with SET_LOG_BASE: bit `page % 8` of byte `page / 8` is
/// set (atomically) for every guest page the backend writes.
///
/// # Example
/// ```
/// use vhost_user_sync::memory::DirtyLog;
/// let fd = nix::sys::memfd::memfd_create("log", nix::sys::memfd::MFdFlags::empty()).unwrap();
/// let file = std::fs::File::from(fd);
/// file.set_len(4096).unwrap();
/// let log = DirtyLog::map(file, 4096, 0).unwrap();
/// log.mark(0x3000, 0x2000); // pages 3 and 4
/// assert_eq!(log.byte(0), 0b0001_1000);
/// ```
#[derive(Debug)]
pub struct DirtyLog {
    /// Declared before `map`: taken out of the fault table before the unmap.
    guard: Option<FaultGuard>,
    map: MmapRegion,
    offset: usize,
    size: u64,
}

impl DirtyLog {
    /// Maps `size` bytes of log at `offset` in `file`, guarded against the file
    /// shrinking under the mapping (see [`FaultGuard`]).
    pub fn map(file: File, size: u64, offset: u64) -> Result<Self, MemoryError> {
        Self::map_watched(file, size, offset, None)
    }

    /// [`Self::map`], with a fault in the mapping signalled on `notice`. With a notice,
    /// a mapping that cannot be guarded is refused ([`MemoryError::Unguarded`]).
    pub fn map_watched(
        file: File,
        size: u64,
        offset: u64,
        notice: Option<Arc<FaultNotice>>,
    ) -> Result<Self, MemoryError> {
        let st = nix::sys::stat::fstat(file.as_fd()).map_err(|e| MemoryError::Map {
            size,
            source: e.into(),
        })?;
        let need = offset.checked_add(size).ok_or(MemoryError::BeyondFile {
            need: u64::MAX,
            have: 0,
        })?;
        if need > st.st_size as u64 {
            return Err(MemoryError::BeyondFile {
                need,
                have: st.st_size as u64,
            });
        }
        let len = usize::try_from(need).map_err(|_| MemoryError::BeyondFile { need, have: 0 })?;
        let map = MmapRegionBuilder::new(len)
            .with_file_offset(FileOffset::new(file, 0))
            .with_mmap_prot((ProtFlags::PROT_READ | ProtFlags::PROT_WRITE).bits())
            .with_mmap_flags(MapFlags::MAP_SHARED.bits())
            .build()
            .map_err(|e| MemoryError::Map {
                size,
                source: std::io::Error::other(e.to_string()),
            })?;
        let watched = notice.is_some();
        // SAFETY: `map` is one whole mapping owned by this log and unmapped only after the
        // guard (declared first) drops; the log is only ever or-ed into, so zeroes after a
        // fault do no harm here.
        let guard = unsafe { FaultGuard::new(map.as_ptr(), map.size(), notice) };
        if watched && guard.is_none() {
            return Err(MemoryError::Unguarded { size: need });
        }
        Ok(DirtyLog {
            guard,
            map,
            offset: offset as usize,
            size,
        })
    }

    /// Marks every page of `[gpa, gpa + len)` dirty. Pages beyond the log are ignored
    /// (the frontend sized the log for its memory).
    pub fn mark(&self, gpa: u64, len: u64) {
        if len == 0 {
            return;
        }
        let first = gpa / LOG_PAGE_SIZE;
        let last = gpa.saturating_add(len - 1) / LOG_PAGE_SIZE;
        for page in first..=last {
            let byte = page / 8;
            if byte >= self.size {
                break;
            }
            let Ok(s) = self.map.get_slice(self.offset + byte as usize, 1) else {
                break;
            };
            let bit = 1u8 << (page % 8);
            if let Ok(r) = s.get_atomic_ref::<std::sync::atomic::AtomicU8>(0) {
                r.fetch_or(bit, Ordering::SeqCst);
            }
        }
    }

    /// Whether the mapping faulted (the frontend's file shrank under it).
    pub fn faulted(&self) -> bool {
        self.guard
            .as_ref()
            .is_some_and(|g| g.fault_offset().is_some())
    }

    /// The log byte at `index` (for tests and diagnostics).
    pub fn byte(&self, index: u64) -> u8 {
        self.map
            .get_slice(self.offset + index as usize, 1)
            .ok()
            .and_then(|s| s.load::<u8>(0, Ordering::SeqCst).ok())
            .unwrap_or(0)
    }
}

/// A 4 KiB log (bits for 128 MiB of guest pages) over a fresh memfd, for unit tests;
/// `dirty_pages` lists the pages of the first 64 marked in it.
#[cfg(test)]
pub(crate) fn test_log() -> std::sync::Arc<DirtyLog> {
    let fd = nix::sys::memfd::memfd_create("log", nix::sys::memfd::MFdFlags::empty()).unwrap();
    let file = File::from(fd);
    file.set_len(4096).unwrap();
    std::sync::Arc::new(DirtyLog::map(file, 4096, 0).unwrap())
}

/// Clears the bits of the first 64 pages in `log`, as a frontend does when it collects
/// the log (an atomic exchange with zero).
#[cfg(test)]
pub(crate) fn collect(log: &DirtyLog) {
    for byte in 0..8 {
        if let Ok(s) = log.map.get_slice(log.offset + byte, 1) {
            if let Ok(r) = s.get_atomic_ref::<std::sync::atomic::AtomicU8>(0) {
                r.swap(0, Ordering::SeqCst);
            }
        }
    }
}

/// The pages among the first 64 that `log` has marked.
#[cfg(test)]
pub(crate) fn dirty_pages(log: &DirtyLog) -> Vec<u64> {
    (0..64)
        .filter(|p| log.byte(p / 8) & (1 << (p % 8)) != 0)
        .collect()
}
