use super::MemoryRegionDesc;
use crate::protocol::wire::{FieldReader, FieldWriter};
use crate::protocol::ProtocolError;

/// SET_MEM_TABLE's body: `{u32 num, u32 padding, region[num]}`, 1 to 8 regions.
///
/// Decoding checks that `num` matches the body size and validates every region; overlap
/// between regions is checked when the table is mapped.
///
/// # Example
/// ```
/// use vhost_user_sync::protocol::payload::{MemoryRegionDesc, MemoryTableDesc};
/// let r = MemoryRegionDesc { guest_phys_addr: 0, memory_size: 0x10000, userspace_addr: 0x1000_0000, mmap_offset: 0 };
/// let t = MemoryTableDesc { regions: vec![r] };
/// assert_eq!(MemoryTableDesc::decode(&t.encode()), Ok(t));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryTableDesc {
    /// The regions, in fd order.
    pub regions: Vec<MemoryRegionDesc>,
}

impl MemoryTableDesc {
    /// The most regions one SET_MEM_TABLE may carry.
    pub const MAX_REGIONS: usize = 8;

    /// Decodes and validates the body.
    pub fn decode(body: &[u8]) -> Result<Self, ProtocolError> {
        const NAME: &str = "SET_MEM_TABLE";
        let r = FieldReader::new(body);
        let num = r.u32(0) as usize;
        if num == 0 || num > Self::MAX_REGIONS {
            return Err(ProtocolError::BadField {
                request: NAME,
                field: "num",
                value: num as u64,
                why: "must be 1 to 8",
            });
        }
        let expected = 8 + num * MemoryRegionDesc::SIZE;
        if body.len() != expected {
            return Err(ProtocolError::WrongSize {
                request: NAME,
                expected,
                got: body.len(),
            });
        }
        let regions = (0..num)
            .map(|i| MemoryRegionDesc::read(&r, 8 + i * MemoryRegionDesc::SIZE))
            .collect::<Vec<_>>();
        for region in &regions {
            region.validate(NAME)?;
        }
        Ok(MemoryTableDesc { regions })
    }

    /// Encodes the body.
    pub fn encode(&self) -> Vec<u8> {
        let w = FieldWriter::default().u32(self.regions.len() as u32).u32(0);
        self.regions.iter().fold(w, |w, r| r.write(w)).bytes
    }
}
