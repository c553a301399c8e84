use super::check_len;
use crate::protocol::wire::{FieldReader, FieldWriter};
use crate::protocol::ProtocolError;

/// SET_DEVICE_STATE_FD body: transfer direction and migration phase.
///
/// # Example
/// ```
/// use vhost_user_sync::protocol::payload::DeviceStateTransfer;
/// let t = DeviceStateTransfer { direction: 0, phase: 0 };
/// assert_eq!(DeviceStateTransfer::decode(&t.encode()), Ok(t));
/// assert!(DeviceStateTransfer::decode(&DeviceStateTransfer { direction: 2, phase: 0 }.encode()).is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceStateTransfer {
    /// 0 save (backend writes), 1 load (backend reads).
    pub direction: u32,
    /// 0 stopped (the only phase defined).
    pub phase: u32,
}

impl DeviceStateTransfer {
    /// Wire size.
    pub const SIZE: usize = 8;

    /// Decodes and checks the body.
    pub fn decode(body: &[u8]) -> Result<Self, ProtocolError> {
        const NAME: &str = "SET_DEVICE_STATE_FD";
        check_len(NAME, body, Self::SIZE)?;
        let r = FieldReader::new(body);
        let t = DeviceStateTransfer {
            direction: r.u32(0),
            phase: r.u32(4),
        };
        let bad = |field, value: u32| ProtocolError::BadField {
            request: NAME,
            field,
            value: value.into(),
            why: "undefined value",
        };
        if t.direction > 1 {
            return Err(bad("direction", t.direction));
        }
        if t.phase != 0 {
            return Err(bad("phase", t.phase));
        }
        Ok(t)
    }

    /// Encodes the body.
    pub fn encode(&self) -> Vec<u8> {
        FieldWriter::default()
            .u32(self.direction)
            .u32(self.phase)
            .bytes
    }
}
