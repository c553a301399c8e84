use super::check_len;
use crate::protocol::wire::{FieldReader, FieldWriter};
use crate::protocol::ProtocolError;

/// GET/SET_INFLIGHT_FD body: the shared in-flight area's size, offset and geometry.
///
/// # Example
/// ```
/// use vhost_user_sync::protocol::payload::InflightInfo;
/// let i = InflightInfo { mmap_size: 8192, mmap_offset: 0, num_queues: 2, queue_size: 256 };
/// assert_eq!(InflightInfo::decode("SET_INFLIGHT_FD", &i.encode()), Ok(i));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InflightInfo {
    /// Bytes of the area.
    pub mmap_size: u64,
    /// Where it starts in the fd.
    pub mmap_offset: u64,
    /// Queues described.
    pub num_queues: u16,
    /// Entries per queue.
    pub queue_size: u16,
}

impl InflightInfo {
    /// Wire size (20 bytes of fields, padded to 24).
    pub const SIZE: usize = 24;

    /// Decodes the body of `request`, refusing an offset + size that overflows.
    pub fn decode(request: &'static str, body: &[u8]) -> Result<Self, ProtocolError> {
        check_len(request, body, Self::SIZE)?;
        let r = FieldReader::new(body);
        let info = InflightInfo {
            mmap_size: r.u64(0),
            mmap_offset: r.u64(8),
            num_queues: r.u16(16),
            queue_size: r.u16(18),
        };
        if info.mmap_offset.checked_add(info.mmap_size).is_none() {
            return Err(ProtocolError::BadField {
                request,
                field: "mmap_offset",
                value: info.mmap_offset,
                why: "offset + size overflows",
            });
        }
        Ok(info)
    }

    /// Encodes the body.
    pub fn encode(&self) -> Vec<u8> {
        FieldWriter::default()
            .u64(self.mmap_size)
            .u64(self.mmap_offset)
            .u16(self.num_queues)
            .u16(self.queue_size)
            .u32(0)
            .bytes
    }
}
