//! `FrontendMemory`: guest RAM as a VMM would have it, in memfds that can be shared.

use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};

use super::FrontendError;
use crate::memory::MemoryTable;
use crate::protocol::payload::MemoryRegionDesc;

/// Guest memory made of memfd-backed regions, mapped in this process, plus a simple
/// bump allocator for rings and buffers.
///
/// # Example
/// ```
/// use vhost_user_sync::frontend::FrontendMemory;
/// let mem = FrontendMemory::new(&[(0, 1 << 16)]).unwrap();
/// let a = mem.alloc(100, 16).unwrap();
/// mem.table().write(a, b"data").unwrap();
/// assert_eq!(mem.regions().len(), 1);
/// ```
#[derive(Debug)]
pub struct FrontendMemory {
    files: Vec<File>,
    descs: Vec<MemoryRegionDesc>,
    table: MemoryTable,
    next: AtomicU64,
}

impl FrontendMemory {
    /// Creates regions `(guest_phys_addr, size)`, each its own memfd.
    pub fn new(layout: &[(u64, u64)]) -> Result<Self, FrontendError> {
        let mut files = Vec::new();
        let mut descs = Vec::new();
        for (i, &(gpa, size)) in layout.iter().enumerate() {
            let fd = nix::sys::memfd::memfd_create(
                format!("guest-ram-{i}").as_str(),
                nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
            )
            .map_err(std::io::Error::from)?;
            let file = File::from(fd);
            file.set_len(size)?;
            descs.push(MemoryRegionDesc {
                guest_phys_addr: gpa,
                memory_size: size,
                userspace_addr: 0,
                mmap_offset: 0,
            });
            files.push(file);
        }
        let clones = files
            .iter()
            .map(File::try_clone)
            .collect::<Result<Vec<_>, _>>()?;
        let table = MemoryTable::from_regions(&descs, clones)?;
        // Ring addresses are given in the frontend's address space: use where each
        // region really is mapped here, as a VMM would.
        for d in &mut descs {
            let s = table.slice(d.guest_phys_addr, 1)?;
            d.userspace_addr = s.ptr_guard().as_ptr() as u64;
        }
        let next = AtomicU64::new(layout.first().map_or(0, |r| r.0));
        Ok(FrontendMemory {
            files,
            descs,
            table,
            next,
        })
    }

    /// The regions as SET_MEM_TABLE describes them.
    pub fn regions(&self) -> &[MemoryRegionDesc] {
        &self.descs
    }

    /// The region fds, in the same order.
    pub fn files(&self) -> &[File] {
        &self.files
    }

    /// Checked access to the memory.
    pub fn table(&self) -> &MemoryTable {
        &self.table
    }

    /// The frontend address of guest-physical `gpa` (for SET_VRING_ADDR).
    pub fn uaddr(&self, gpa: u64) -> Option<u64> {
        self.descs.iter().find_map(|d| {
            let off = gpa.checked_sub(d.guest_phys_addr)?;
            (off < d.memory_size).then(|| d.userspace_addr + off)
        })
    }

    /// Allocates `len` bytes aligned to `align` in the first region (never freed).
    pub fn alloc(&self, len: u64, align: u64) -> Result<u64, FrontendError> {
        let first = self.descs.first().ok_or(FrontendError::QueueFull)?;
        let end = first.guest_phys_addr + first.memory_size;
        let mut cur = self.next.load(Ordering::Relaxed);
        loop {
            let start = cur.div_ceil(align) * align;
            if start + len > end {
                return Err(FrontendError::QueueFull);
            }
            match self
                .next
                .compare_exchange(cur, start + len, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Ok(start),
                Err(now) => cur = now,
            }
        }
    }
}
