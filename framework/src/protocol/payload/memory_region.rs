use super::check_len;
use crate::protocol::wire::{FieldReader, FieldWriter};
use crate::protocol::ProtocolError;

/// One memory region as the frontend describes it.
///
/// # Example
/// ```
/// use vhost_user_sync::protocol::payload::MemoryRegionDesc;
/// let r = MemoryRegionDesc { guest_phys_addr: 0, memory_size: 0x1000, userspace_addr: 0x7f00_0000_0000, mmap_offset: 0 };
/// assert!(r.validate("SET_MEM_TABLE").is_ok());
/// assert!(MemoryRegionDesc { memory_size: 0, ..r }.validate("SET_MEM_TABLE").is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryRegionDesc {
    /// Guest-physical start.
    pub guest_phys_addr: u64,
    /// Length in bytes.
    pub memory_size: u64,
    /// Start in the frontend's address space (what ring addresses are given in).
    pub userspace_addr: u64,
    /// Offset of the region in the fd.
    pub mmap_offset: u64,
}

impl MemoryRegionDesc {
    /// Wire size.
    pub const SIZE: usize = 32;

    pub(crate) fn read(r: &FieldReader<'_>, at: usize) -> Self {
        MemoryRegionDesc {
            guest_phys_addr: r.u64(at),
            memory_size: r.u64(at + 8),
            userspace_addr: r.u64(at + 16),
            mmap_offset: r.u64(at + 24),
        }
    }

    pub(crate) fn write(&self, w: FieldWriter) -> FieldWriter {
        w.u64(self.guest_phys_addr)
            .u64(self.memory_size)
            .u64(self.userspace_addr)
            .u64(self.mmap_offset)
    }

    /// Refuses empty regions and any end that overflows 64 bits.
    pub fn validate(&self, request: &'static str) -> Result<(), ProtocolError> {
        let bad = |field, value, why| ProtocolError::BadField {
            request,
            field,
            value,
            why,
        };
        if self.memory_size == 0 {
            return Err(bad("memory_size", 0, "empty region"));
        }
        if self.guest_phys_addr.checked_add(self.memory_size).is_none() {
            return Err(bad(
                "guest_phys_addr",
                self.guest_phys_addr,
                "gpa + size overflows",
            ));
        }
        if self.userspace_addr.checked_add(self.memory_size).is_none() {
            return Err(bad(
                "userspace_addr",
                self.userspace_addr,
                "uaddr + size overflows",
            ));
        }
        if self.mmap_offset.checked_add(self.memory_size).is_none() {
            return Err(bad(
                "mmap_offset",
                self.mmap_offset,
                "offset + size overflows",
            ));
        }
        Ok(())
    }
}

/// ADD_MEM_REG / REM_MEM_REG body: 8 bytes of padding, then one region.
///
/// # Example
/// ```
/// use vhost_user_sync::protocol::payload::{MemoryRegionDesc, SingleRegion};
/// let region = MemoryRegionDesc { guest_phys_addr: 0x1000, memory_size: 0x1000, userspace_addr: 0, mmap_offset: 0 };
/// let body = SingleRegion(region).encode();
/// assert_eq!(SingleRegion::decode("ADD_MEM_REG", &body), Ok(SingleRegion(region)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SingleRegion(pub MemoryRegionDesc);

impl SingleRegion {
    /// Wire size.
    pub const SIZE: usize = 8 + MemoryRegionDesc::SIZE;

    /// Decodes and validates the body of `request`.
    pub fn decode(request: &'static str, body: &[u8]) -> Result<Self, ProtocolError> {
        check_len(request, body, Self::SIZE)?;
        let region = MemoryRegionDesc::read(&FieldReader::new(body), 8);
        region.validate(request)?;
        Ok(SingleRegion(region))
    }

    /// Encodes the body.
    pub fn encode(&self) -> Vec<u8> {
        self.0.write(FieldWriter::default().u64(0)).bytes
    }
}
