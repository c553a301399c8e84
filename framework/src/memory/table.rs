//! `MemoryTable`: the set of regions a frontend shared, and translation into it.

use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use vm_memory::bytes::AtomicAccess;
use vm_memory::{Bytes, VolatileSlice};

use super::{GuestRegion, MemoryError};
use crate::protocol::payload::MemoryRegionDesc;
use crate::sys::unix::FaultNotice;

/// Memory slots advertised through GET_MAX_MEM_SLOTS.
pub const MAX_MEM_SLOTS: usize = 509;

/// An immutable snapshot of guest memory: regions sorted by guest-physical address.
///
/// Changes (SET_MEM_TABLE, ADD_MEM_REG, REM_MEM_REG) build a new table that shares the
/// unchanged regions; workers hold an `Arc<MemoryTable>` and switch to the new one
/// before the frontend gets its reply.
///
/// # Example
/// ```
/// use vhost_user_sync::memory::MemoryTable;
/// use vhost_user_sync::protocol::payload::MemoryRegionDesc;
/// let fd = nix::sys::memfd::memfd_create("guest", nix::sys::memfd::MFdFlags::empty()).unwrap();
/// let file = std::fs::File::from(fd);
/// file.set_len(0x10000).unwrap();
/// let desc = MemoryRegionDesc { guest_phys_addr: 0, memory_size: 0x10000, userspace_addr: 0x4000_0000, mmap_offset: 0 };
/// let table = MemoryTable::from_regions(&[desc], vec![file]).unwrap();
/// table.write(0x100, b"hello").unwrap();
/// let mut buf = [0u8; 5];
/// table.read(0x100, &mut buf).unwrap();
/// assert_eq!(&buf, b"hello");
/// assert_eq!(table.uaddr_to_gpa(0x4000_0100, 16).unwrap(), 0x100);
/// ```
#[derive(Debug, Default, Clone)]
pub struct MemoryTable {
    regions: Vec<Arc<GuestRegion>>,
    /// Where the regions of this table, and of the tables made from it, signal a fault.
    notice: Option<Arc<FaultNotice>>,
    /// Unique per set of regions (0: the empty table): host addresses taken from a table
    /// stay valid while any table with the same id is alive.
    id: u64,
}

/// Source of table ids; 0 is the empty table's.
static NEXT_TABLE_ID: AtomicU64 = AtomicU64::new(1);

/// The most bytes [`MemoryTable::prefetch_for_write`] asks for at once.
pub const PREFETCH_MAX: usize = 256;

impl MemoryTable {
    /// An empty table (no guest memory yet).
    pub fn empty() -> Self {
        MemoryTable::default()
    }

    /// An empty table whose regions (and those of every table made from it with
    /// [`Self::with_region`] or [`Self::replaced`]) signal `notice` when a fault hits
    /// them: the frontend's file shrank under the mapping (see
    /// [`FaultGuard`](crate::sys::unix::FaultGuard)).
    ///
    /// # Example
    /// ```
    /// use vhost_user_sync::memory::MemoryTable;
    /// use vhost_user_sync::protocol::payload::MemoryRegionDesc;
    /// use vhost_user_sync::sys::unix::FaultNotice;
    /// let fd = nix::sys::memfd::memfd_create("guest", nix::sys::memfd::MFdFlags::empty()).unwrap();
    /// let file = std::fs::File::from(fd);
    /// file.set_len(0x2000).unwrap();
    /// let notice = FaultNotice::new().unwrap();
    /// let desc = MemoryRegionDesc { guest_phys_addr: 0, memory_size: 0x2000, userspace_addr: 0, mmap_offset: 0 };
    /// let table = MemoryTable::watched(notice.clone()).replaced(&[desc], vec![file.try_clone().unwrap()]).unwrap();
    /// file.set_len(0).unwrap();
    /// let mut buf = [1u8; 4];
    /// table.read(0x1000, &mut buf).unwrap();
    /// assert_eq!(buf, [0; 4]);
    /// assert!(notice.take());
    /// assert_eq!(table.faults().collect::<Vec<_>>(), vec![(0, 0x1000)]);
    /// ```
    pub fn watched(notice: Arc<FaultNotice>) -> Self {
        MemoryTable {
            notice: Some(notice),
            ..MemoryTable::default()
        }
    }

    /// Maps every region of a SET_MEM_TABLE, one fd each, refusing overlaps.
    pub fn from_regions(descs: &[MemoryRegionDesc], files: Vec<File>) -> Result<Self, MemoryError> {
        MemoryTable::empty().replaced(descs, files)
    }

    /// A table of exactly these regions (SET_MEM_TABLE) in place of this one's, with this
    /// table's fault notice.
    pub fn replaced(
        &self,
        descs: &[MemoryRegionDesc],
        files: Vec<File>,
    ) -> Result<Self, MemoryError> {
        let mut table = MemoryTable {
            regions: Vec::new(),
            notice: self.notice.clone(),
            id: 0,
        };
        for (desc, file) in descs.iter().zip(files) {
            table = table.with_region(*desc, file)?;
        }
        Ok(table)
    }

    /// The regions that faulted: (guest-physical address of the region, offset of the
    /// first fault in it).
    pub fn faults(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.regions
            .iter()
            .filter_map(|r| r.fault_offset().map(|at| (r.gpa(), at)))
    }

    /// A new table with one more region (ADD_MEM_REG).
    pub fn with_region(&self, desc: MemoryRegionDesc, file: File) -> Result<Self, MemoryError> {
        if self.regions.len() >= MAX_MEM_SLOTS {
            return Err(MemoryError::TooManyRegions {
                count: self.regions.len() + 1,
                max: MAX_MEM_SLOTS,
            });
        }
        let gpa = desc.guest_phys_addr;
        let size = desc.memory_size;
        if let Some(other) = self.regions.iter().find(|r| r.overlaps(gpa, size)) {
            return Err(MemoryError::Overlap {
                gpa,
                size,
                other_gpa: other.gpa(),
                other_size: other.desc().memory_size,
            });
        }
        let region = Arc::new(GuestRegion::map_watched(desc, file, self.notice.clone())?);
        let mut regions = self.regions.clone();
        let at = regions.partition_point(|r| r.gpa() < gpa);
        regions.insert(at, region);
        Ok(MemoryTable::with_regions(regions, self.notice.clone()))
    }

    /// A new table without the region matching gpa, size and uaddr (REM_MEM_REG).
    pub fn without_region(&self, desc: &MemoryRegionDesc) -> Result<Self, MemoryError> {
        let pos = self
            .regions
            .iter()
            .position(|r| {
                let d = r.desc();
                d.guest_phys_addr == desc.guest_phys_addr
                    && d.memory_size == desc.memory_size
                    && d.userspace_addr == desc.userspace_addr
            })
            .ok_or(MemoryError::NoSuchRegion {
                gpa: desc.guest_phys_addr,
                size: desc.memory_size,
                uaddr: desc.userspace_addr,
            })?;
        let mut regions = self.regions.clone();
        regions.remove(pos);
        Ok(MemoryTable::with_regions(regions, self.notice.clone()))
    }

    fn with_regions(regions: Vec<Arc<GuestRegion>>, notice: Option<Arc<FaultNotice>>) -> Self {
        MemoryTable {
            regions,
            notice,
            id: NEXT_TABLE_ID.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Identifies this set of regions: two tables with the same id map the same memory
    /// at the same host addresses (a clone shares its regions), and ids are never reused.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The host address of `[gpa, gpa + len)` when it lies in one region. It stays valid
    /// as long as a table with this table's [`Self::id`] is alive.
    pub(crate) fn host_address(&self, gpa: u64, len: usize) -> Option<usize> {
        let s = self.slice(gpa, len).ok()?;
        let addr = s.ptr_guard().as_ptr() as usize;
        Some(addr)
    }

    /// Asks the CPU to start fetching the cache lines of `[gpa, gpa + len)` (at most
    /// [`PREFETCH_MAX`] bytes of it) for writing, so that a store there soon after does
    /// not wait for the line to come from the CPU that last wrote it (the driver's, for a
    /// buffer it just posted). Only a hint: an address outside guest memory is ignored,
    /// nothing is read or written.
    ///
    /// # Example
    /// ```
    /// # let mem = vhost_user_sync::memory::MemoryTable::empty();
    /// mem.prefetch_for_write(0x1000, 76); // no memory: nothing happens
    /// ```
    #[inline]
    pub fn prefetch_for_write(&self, gpa: u64, len: usize) {
        let len = len.min(PREFETCH_MAX);
        let Some(start) = self.host_address(gpa, len) else {
            return;
        };
        super::prefetch::lines_for_write(start, start + len);
    }

    /// Number of regions.
    pub fn len(&self) -> usize {
        self.regions.len()
    }

    /// Whether the table has no regions.
    pub fn is_empty(&self) -> bool {
        self.regions.is_empty()
    }

    /// The regions, sorted by guest-physical address.
    pub fn regions(&self) -> impl Iterator<Item = &GuestRegion> {
        self.regions.iter().map(|r| &**r)
    }

    /// Translates a frontend virtual address range (ring addresses) to guest-physical.
    /// The whole range must lie in one region.
    pub fn uaddr_to_gpa(&self, uaddr: u64, len: u64) -> Result<u64, MemoryError> {
        self.regions
            .iter()
            .find_map(|r| {
                let d = r.desc();
                let off = uaddr.checked_sub(d.userspace_addr)?;
                (off.checked_add(len)? <= d.memory_size).then(|| d.guest_phys_addr + off)
            })
            .ok_or(MemoryError::UnmappedUserAddr { uaddr, len })
    }

    #[inline]
    fn region_for(&self, gpa: u64) -> Option<&GuestRegion> {
        // Most frontends share guest memory as one region.
        if let [only] = self.regions.as_slice() {
            return (only.gpa() <= gpa && gpa < only.gpa_end()).then_some(&**only);
        }
        let i = self.regions.partition_point(|r| r.gpa_end() <= gpa);
        self.regions.get(i).filter(|r| r.gpa() <= gpa).map(|r| &**r)
    }

    /// A checked view of `[gpa, gpa + len)`, which must lie in one region.
    pub fn slice(&self, gpa: u64, len: usize) -> Result<VolatileSlice<'_>, MemoryError> {
        let unmapped = || MemoryError::Unmapped {
            addr: gpa,
            len: len as u64,
        };
        let region = self.region_for(gpa).ok_or_else(unmapped)?;
        let end = gpa.checked_add(len as u64);
        if end.is_none_or(|e| e > region.gpa_end()) {
            return Err(unmapped());
        }
        region.slice(gpa - region.gpa(), len)
    }

    /// Splits `[gpa, gpa + len)` into per-region views (a buffer may straddle regions).
    pub fn slices(&self, gpa: u64, len: u64) -> Result<Vec<VolatileSlice<'_>>, MemoryError> {
        let mut out = Vec::with_capacity(1);
        self.for_each_slice(gpa, len, |s| {
            out.push(s);
            Ok(())
        })?;
        Ok(out)
    }

    /// Calls `f` with per-region views covering `[gpa, gpa + len)`, in order.
    pub fn for_each_slice<'a>(
        &'a self,
        gpa: u64,
        len: u64,
        mut f: impl FnMut(VolatileSlice<'a>) -> Result<(), MemoryError>,
    ) -> Result<(), MemoryError> {
        let unmapped = || MemoryError::Unmapped { addr: gpa, len };
        let end = gpa.checked_add(len).ok_or_else(unmapped)?;
        let mut at = gpa;
        while at < end {
            let region = self.region_for(at).ok_or_else(unmapped)?;
            let chunk = region.gpa_end().min(end) - at;
            let chunk_len = usize::try_from(chunk).map_err(|_| unmapped())?;
            f(region.slice(at - region.gpa(), chunk_len)?)?;
            at += chunk;
        }
        Ok(())
    }

    /// Whether `[gpa, gpa + len)` is entirely mapped (possibly across regions).
    pub fn check_range(&self, gpa: u64, len: u64) -> Result<(), MemoryError> {
        // Fast path: the whole range in one region.
        if let Some(r) = self.region_for(gpa) {
            if gpa.checked_add(len).is_some_and(|end| end <= r.gpa_end()) {
                return Ok(());
            }
        }
        self.for_each_slice(gpa, len, |_| Ok(()))
    }

    /// Copies guest memory at `gpa` into `buf` (across regions if needed).
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        if let Ok(s) = self.slice(gpa, buf.len()) {
            s.copy_to(buf);
            return Ok(());
        }
        let mut done = 0;
        self.for_each_slice(gpa, buf.len() as u64, |s| {
            let n = s.len();
            s.copy_to(&mut buf[done..done + n]);
            done += n;
            Ok(())
        })
    }

    /// Copies `buf` into guest memory at `gpa` (across regions if needed).
    pub fn write(&self, gpa: u64, buf: &[u8]) -> Result<(), MemoryError> {
        if let Ok(s) = self.slice(gpa, buf.len()) {
            s.copy_from(buf);
            return Ok(());
        }
        // Check the whole range before the first byte is copied: a write that runs into
        // a gap fails without having changed the regions before the gap.
        self.check_range(gpa, buf.len() as u64)?;
        let mut done = 0;
        self.for_each_slice(gpa, buf.len() as u64, |s| {
            let n = s.len();
            s.copy_from(&buf[done..done + n]);
            done += n;
            Ok(())
        })
    }

    /// Atomic load of a naturally aligned integer (ring indices and flags).
    pub fn load<T: AtomicAccess>(&self, gpa: u64, order: Ordering) -> Result<T, MemoryError> {
        let s = self.slice(gpa, std::mem::size_of::<T>())?;
        s.load(0, order)
            .map_err(|e| MemoryError::Access(e.to_string()))
    }

    /// Atomic store of a naturally aligned integer.
    pub fn store<T: AtomicAccess>(
        &self,
        gpa: u64,
        val: T,
        order: Ordering,
    ) -> Result<(), MemoryError> {
        let s = self.slice(gpa, std::mem::size_of::<T>())?;
        s.store(val, 0, order)
            .map_err(|e| MemoryError::Access(e.to_string()))
    }
}

/// A table of one memfd-backed region at guest-physical 0, for unit tests.
#[cfg(test)]
pub(crate) fn test_table(size: u64) -> MemoryTable {
    let fd = nix::sys::memfd::memfd_create("test", nix::sys::memfd::MFdFlags::empty()).unwrap();
    let f = File::from(fd);
    f.set_len(size).unwrap();
    let d = MemoryRegionDesc {
        guest_phys_addr: 0,
        memory_size: size,
        userspace_addr: 0,
        mmap_offset: 0,
    };
    MemoryTable::from_regions(&[d], vec![f]).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memfd(len: u64) -> File {
        let fd = nix::sys::memfd::memfd_create("t", nix::sys::memfd::MFdFlags::empty()).unwrap();
        let f = File::from(fd);
        f.set_len(len).unwrap();
        f
    }

    fn desc(gpa: u64, size: u64, uaddr: u64, off: u64) -> MemoryRegionDesc {
        MemoryRegionDesc {
            guest_phys_addr: gpa,
            memory_size: size,
            userspace_addr: uaddr,
            mmap_offset: off,
        }
    }

    #[test]
    fn mmap_offset_is_honoured() {
        let f = memfd(0x3000);
        std::os::unix::fs::FileExt::write_at(&f, b"marker", 0x2000).unwrap();
        let t = MemoryTable::from_regions(&[desc(0x100000, 0x1000, 0, 0x2000)], vec![f]).unwrap();
        let mut b = [0u8; 6];
        t.read(0x100000, &mut b).unwrap();
        assert_eq!(&b, b"marker");
    }

    #[test]
    fn overlapping_regions_are_refused() {
        let t = MemoryTable::from_regions(&[desc(0, 0x2000, 0, 0)], vec![memfd(0x2000)]).unwrap();
        let e = t
            .with_region(desc(0x1000, 0x2000, 0x10000, 0), memfd(0x2000))
            .unwrap_err();
        assert!(matches!(e, MemoryError::Overlap { .. }), "{e}");
    }

    #[test]
    fn region_beyond_its_file_is_refused() {
        let e =
            MemoryTable::from_regions(&[desc(0, 0x10000, 0, 0)], vec![memfd(0x1000)]).unwrap_err();
        assert!(
            matches!(
                e,
                MemoryError::BeyondFile {
                    need: 0x10000,
                    have: 0x1000
                }
            ),
            "{e}"
        );
        let e =
            MemoryTable::from_regions(&[desc(0, 0x1000, 0, u64::MAX - 10)], vec![memfd(0x1000)])
                .unwrap_err();
        assert!(matches!(e, MemoryError::Access(_)), "{e}");
    }

    #[test]
    fn non_file_fds_are_refused() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let f = File::from(std::os::fd::OwnedFd::from(a));
        let e = MemoryTable::from_regions(&[desc(0, 0x1000, 0, 0)], vec![f]).unwrap_err();
        assert!(matches!(e, MemoryError::NotMappable { .. }), "{e}");
    }

    #[test]
    fn accesses_straddle_regions_but_never_gaps() {
        let t = MemoryTable::from_regions(
            &[
                desc(0, 0x1000, 0x10000, 0),
                desc(0x1000, 0x1000, 0x50000, 0),
                desc(0x3000, 0x1000, 0x90000, 0),
            ],
            vec![memfd(0x1000), memfd(0x1000), memfd(0x1000)],
        )
        .unwrap();
        t.write(0xffc, b"abcdefgh").unwrap();
        let mut b = [0u8; 8];
        t.read(0xffc, &mut b).unwrap();
        assert_eq!(&b, b"abcdefgh");
        assert_eq!(t.slices(0xffc, 8).unwrap().len(), 2);
        assert!(t.slice(0xffc, 8).is_err());
        assert!(t.check_range(0x1ffc, 8).is_err());
        assert!(t.check_range(u64::MAX - 2, 8).is_err());
        assert!(t.uaddr_to_gpa(0x50ff0, 0x20).is_err());
        assert_eq!(t.uaddr_to_gpa(0x50ff0, 0x10).unwrap(), 0x1ff0);
    }

    #[test]
    fn remove_matches_gpa_size_and_uaddr() {
        let t =
            MemoryTable::from_regions(&[desc(0, 0x1000, 0x10000, 0)], vec![memfd(0x1000)]).unwrap();
        assert!(t.without_region(&desc(0, 0x1000, 0x20000, 0)).is_err());
        let t2 = t.without_region(&desc(0, 0x1000, 0x10000, 0x77)).unwrap();
        assert!(t2.is_empty());
    }
}
