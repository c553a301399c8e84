//! Errors of the memory layer.

use thiserror::Error;

/// A memory region or address the backend refuses.
///
/// # Example
/// ```
/// use vhost_user_sync::memory::MemoryError;
/// let e = MemoryError::Unmapped { addr: 0x1000, len: 16 };
/// assert_eq!(e.to_string(), "guest range 0x1000+16 is not mapped");
/// ```
#[derive(Debug, Error)]
pub enum MemoryError {
    /// A new region overlaps one already in the table.
    #[error("region {gpa:#x}+{size:#x} overlaps region {other_gpa:#x}+{other_size:#x}")]
    Overlap {
        /// New region start.
        gpa: u64,
        /// New region size.
        size: u64,
        /// Existing region start.
        other_gpa: u64,
        /// Existing region size.
        other_size: u64,
    },
    /// More regions than the advertised slot count.
    #[error("{count} memory regions exceed the {max} slots")]
    TooManyRegions {
        /// Regions after the change.
        count: usize,
        /// Slots advertised.
        max: usize,
    },
    /// The region reaches past the end of its fd.
    #[error("region needs {need:#x} bytes of its fd, which holds {have:#x}")]
    BeyondFile {
        /// mmap_offset + memory_size.
        need: u64,
        /// The fd's size.
        have: u64,
    },
    /// The region's fd cannot be mapped (not a regular file, memfd or hugetlbfs file).
    #[error("memory fd is not mappable shared memory (mode {mode:#o})")]
    NotMappable {
        /// st_mode of the fd.
        mode: u32,
    },
    /// mmap failed.
    #[error("mmap of {size:#x} bytes failed: {source}")]
    Map {
        /// Bytes asked for.
        size: u64,
        /// The error.
        source: std::io::Error,
    },
    /// The range is not inside one mapped region (or not mapped at all).
    #[error("guest range {addr:#x}+{len} is not mapped")]
    Unmapped {
        /// Start of the range.
        addr: u64,
        /// Length.
        len: u64,
    },
    /// A frontend virtual address that no region covers.
    #[error("frontend address {uaddr:#x}+{len} is not in any region")]
    UnmappedUserAddr {
        /// The address.
        uaddr: u64,
        /// Length of the range.
        len: u64,
    },
    /// REM_MEM_REG named a region that is not in the table.
    #[error("no region at gpa {gpa:#x} size {size:#x} uaddr {uaddr:#x}")]
    NoSuchRegion {
        /// Start.
        gpa: u64,
        /// Size.
        size: u64,
        /// Frontend address.
        uaddr: u64,
    },
    /// A mapping whose faults a connection watches could not be guarded (the process
    /// guards [`MAX_GUARDED`](crate::sys::unix::MAX_GUARDED) at once): mapped unguarded,
    /// a frontend truncating the file could end the process, so it is refused.
    #[error("shared memory of {size:#x} bytes cannot be guarded against truncation (too many guarded mappings)")]
    Unguarded {
        /// The mapping's size.
        size: u64,
    },
    /// A guest memory access failed.
    #[error("guest memory access failed: {0}")]
    Access(String),
}
