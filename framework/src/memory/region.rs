//! One mapped region of guest memory.

use std::fs::File;
use std::os::fd::AsFd;
use std::sync::Arc;

use nix::sys::mman::{MapFlags, ProtFlags};
use nix::sys::stat::{fstat, SFlag};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{FileOffset, MmapRegion, VolatileMemory, VolatileSlice};

use super::MemoryError;
use crate::protocol::payload::MemoryRegionDesc;
use crate::sys::unix::{FaultGuard, FaultNotice};

/// A region of guest memory mapped from the fd the frontend sent.
///
/// The mapping covers `mmap_offset + memory_size` bytes of the fd and the region is the
/// part from `mmap_offset`. It is unmapped when the last `Arc` holding it drops, which
/// happens only after every worker has switched to a newer table.
///
/// # Example
/// ```
/// use std::io::Write;
/// use vhost_user_sync::memory::GuestRegion;
/// use vhost_user_sync::protocol::payload::MemoryRegionDesc;
/// let fd = nix::sys::memfd::memfd_create("guest", nix::sys::memfd::MFdFlags::empty()).unwrap();
/// let file = std::fs::File::from(fd);
/// file.set_len(0x2000).unwrap();
/// let desc = MemoryRegionDesc { guest_phys_addr: 0x10000, memory_size: 0x1000, userspace_addr: 0x7000_0000, mmap_offset: 0x1000 };
/// let region = GuestRegion::map(desc, file).unwrap();
/// assert_eq!(region.gpa_end(), 0x11000);
/// ```
#[derive(Debug)]
pub struct GuestRegion {
    desc: MemoryRegionDesc,
    /// Declared before `map`: taken out of the fault table before the unmap.
    guard: Option<FaultGuard>,
    map: MmapRegion,
}

impl GuestRegion {
    /// Checks the fd and maps the region, guarded against the file shrinking under the
    /// mapping (see [`FaultGuard`]) with no one to tell.
    pub fn map(desc: MemoryRegionDesc, file: File) -> Result<Self, MemoryError> {
        Self::map_watched(desc, file, None)
    }

    /// [`Self::map`], with a fault in the mapping signalled on `notice`. With a notice,
    /// a mapping that cannot be guarded is refused ([`MemoryError::Unguarded`]).
    pub fn map_watched(
        desc: MemoryRegionDesc,
        file: File,
        notice: Option<Arc<FaultNotice>>,
    ) -> Result<Self, MemoryError> {
        desc.validate("memory region")
            .map_err(|e| MemoryError::Access(e.to_string()))?;
        let st = fstat(file.as_fd()).map_err(|e| MemoryError::Map {
            size: desc.memory_size,
            source: e.into(),
        })?;
        let mode = st.st_mode;
        if SFlag::from_bits_truncate(mode) & SFlag::S_IFMT != SFlag::S_IFREG {
            return Err(MemoryError::NotMappable { mode });
        }
        // validate() proved this does not overflow.
        let need = desc.mmap_offset + desc.memory_size;
        let have = st.st_size as u64;
        if need > have {
            return Err(MemoryError::BeyondFile { need, have });
        }
        let len = usize::try_from(need).map_err(|_| MemoryError::BeyondFile {
            need,
            have: usize::MAX as u64,
        })?;
        let map = MmapRegionBuilder::new(len)
            .with_file_offset(FileOffset::new(file, 0))
            .with_mmap_prot((ProtFlags::PROT_READ | ProtFlags::PROT_WRITE).bits())
            .with_mmap_flags((MapFlags::MAP_SHARED | MapFlags::MAP_NORESERVE).bits())
            .build()
            .map_err(|e| MemoryError::Map {
                size: need,
                source: std::io::Error::other(e.to_string()),
            })?;
        let watched = notice.is_some();
        // SAFETY: `map` is one whole mapping that this region owns and unmaps only after
        // the guard (declared first) has dropped; device code reads guest memory as
        // untrusted bytes, so zeroes after a fault are acceptable.
        let guard = unsafe { FaultGuard::new(map.as_ptr(), map.size(), notice) };
        if watched && guard.is_none() {
            return Err(MemoryError::Unguarded { size: need });
        }
        Ok(GuestRegion { desc, guard, map })
    }

    /// Where the mapping faulted (offset in the region), once the frontend's file shrank
    /// under it or its memory could not be provided; `None` while intact.
    pub fn fault_offset(&self) -> Option<u64> {
        let at = self.guard.as_ref()?.fault_offset()? as u64;
        Some(at.saturating_sub(self.desc.mmap_offset))
    }

    /// The frontend's description of the region.
    pub fn desc(&self) -> &MemoryRegionDesc {
        &self.desc
    }

    /// First guest-physical address.
    pub fn gpa(&self) -> u64 {
        self.desc.guest_phys_addr
    }

    /// One past the last guest-physical address.
    pub fn gpa_end(&self) -> u64 {
        self.desc.guest_phys_addr + self.desc.memory_size
    }

    /// Whether `[gpa, gpa + size)` intersects this region.
    pub fn overlaps(&self, gpa: u64, size: u64) -> bool {
        gpa < self.gpa_end() && self.gpa() < gpa.saturating_add(size)
    }

    /// A checked view of `len` bytes at region offset `offset`.
    pub fn slice(&self, offset: u64, len: usize) -> Result<VolatileSlice<'_>, MemoryError> {
        let start = offset
            .checked_add(self.desc.mmap_offset)
            .and_then(|s| usize::try_from(s).ok())
            .ok_or_else(|| MemoryError::Unmapped {
                addr: self.gpa().wrapping_add(offset),
                len: len as u64,
            })?;
        self.map
            .get_slice(start, len)
            .map_err(|_| MemoryError::Unmapped {
                addr: self.gpa().wrapping_add(offset),
                len: len as u64,
            })
    }
}
