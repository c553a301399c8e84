use crate::protocol::wire::{FieldReader, FieldWriter};
use crate::protocol::ProtocolError;

/// GET_CONFIG / SET_CONFIG body: `{u32 offset, u32 size, u32 flags, u8 payload[size]}`.
///
/// # Example
/// ```
/// use vhost_user_sync::protocol::payload::ConfigAccess;
/// let c = ConfigAccess { offset: 0, flags: 0, payload: vec![1, 2, 3, 4] };
/// assert_eq!(ConfigAccess::decode("SET_CONFIG", &c.encode()), Ok(c));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigAccess {
    /// Byte offset in the device's config space.
    pub offset: u32,
    /// 0 writable, 1 live migration.
    pub flags: u32,
    /// The bytes (for GET_CONFIG, as many as wanted; their content is ignored).
    pub payload: Vec<u8>,
}

impl ConfigAccess {
    /// Bytes before the payload.
    pub const HEADER_SIZE: usize = 12;
    /// Largest config payload.
    pub const MAX_SIZE: usize = 256;
    /// VHOST_SET_CONFIG_TYPE_MIGRATION.
    pub const FLAG_MIGRATION: u32 = 1;

    /// Decodes and checks the body of `request`.
    pub fn decode(request: &'static str, body: &[u8]) -> Result<Self, ProtocolError> {
        let r = FieldReader::new(body);
        let (offset, size, flags) = (r.u32(0), r.u32(4) as usize, r.u32(8));
        let bad = |field, value: u64, why| ProtocolError::BadField {
            request,
            field,
            value,
            why,
        };
        if size > Self::MAX_SIZE {
            return Err(bad("size", size as u64, "above 256"));
        }
        if body.len() != Self::HEADER_SIZE + size {
            return Err(ProtocolError::WrongSize {
                request,
                expected: Self::HEADER_SIZE + size,
                got: body.len(),
            });
        }
        if flags > Self::FLAG_MIGRATION {
            return Err(bad("flags", flags.into(), "unknown flags"));
        }
        if u64::from(offset) + size as u64 > Self::MAX_SIZE as u64 {
            return Err(bad("offset", offset.into(), "offset + size beyond 256"));
        }
        Ok(ConfigAccess {
            offset,
            flags,
            payload: body[Self::HEADER_SIZE..].to_vec(),
        })
    }

    /// Encodes the body.
    pub fn encode(&self) -> Vec<u8> {
        FieldWriter::default()
            .u32(self.offset)
            .u32(self.payload.len() as u32)
            .u32(self.flags)
            .raw(&self.payload)
            .bytes
    }
}
