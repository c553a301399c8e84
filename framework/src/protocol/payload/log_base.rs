use super::check_len;
use crate::protocol::wire::{FieldReader, FieldWriter};
use crate::protocol::ProtocolError;

/// SET_LOG_BASE's body: the dirty log's size and offset in the attached fd.
///
/// # Example
/// ```
/// use vhost_user_sync::protocol::payload::LogBase;
/// let l = LogBase { mmap_size: 4096, mmap_offset: 0 };
/// assert_eq!(LogBase::decode(&l.encode()), Ok(l));
/// assert!(LogBase::decode(&LogBase { mmap_size: u64::MAX, mmap_offset: 1 }.encode()).is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogBase {
    /// Bytes of log.
    pub mmap_size: u64,
    /// Where the log starts in the fd.
    pub mmap_offset: u64,
}

impl LogBase {
    /// Wire size.
    pub const SIZE: usize = 16;

    /// Decodes and checks the body.
    pub fn decode(body: &[u8]) -> Result<Self, ProtocolError> {
        const NAME: &str = "SET_LOG_BASE";
        check_len(NAME, body, Self::SIZE)?;
        let r = FieldReader::new(body);
        let log = LogBase {
            mmap_size: r.u64(0),
            mmap_offset: r.u64(8),
        };
        if log.mmap_size == 0 || log.mmap_offset.checked_add(log.mmap_size).is_none() {
            return Err(ProtocolError::BadField {
                request: NAME,
                field: "mmap_size",
                value: log.mmap_size,
                why: "empty, or offset + size overflows",
            });
        }
        Ok(log)
    }

    /// Encodes the body.
    pub fn encode(&self) -> Vec<u8> {
        FieldWriter::default()
            .u64(self.mmap_size)
            .u64(self.mmap_offset)
            .bytes
    }
}
