use super::check_len;
use crate::protocol::wire::{FieldReader, FieldWriter};
use crate::protocol::ProtocolError;

/// `{u32 index, u32 num}`: ring size, base index, enable flag or endianness of one ring.
///
/// # Example
/// ```
/// use vhost_user_sync::protocol::payload::VringState;
/// let s = VringState { index: 1, num: 256 };
/// assert_eq!(VringState::decode("SET_VRING_NUM", &s.encode()), Ok(s));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VringState {
    /// Ring index.
    pub index: u32,
    /// The value (size, base, enable, ...).
    pub num: u32,
}

impl VringState {
    /// Wire size.
    pub const SIZE: usize = 8;

    /// Decodes the body of `request`.
    pub fn decode(request: &'static str, body: &[u8]) -> Result<Self, ProtocolError> {
        check_len(request, body, Self::SIZE)?;
        let r = FieldReader::new(body);
        Ok(VringState {
            index: r.u32(0),
            num: r.u32(4),
        })
    }

    /// Encodes the body.
    pub fn encode(&self) -> Vec<u8> {
        FieldWriter::default().u32(self.index).u32(self.num).bytes
    }
}
