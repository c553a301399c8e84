use super::check_len;
use crate::protocol::wire::{FieldReader, FieldWriter};
use crate::protocol::ProtocolError;

/// SET_VRING_ADDR's body: the three ring parts as frontend virtual addresses.
///
/// Decoding refuses unknown flags and misaligned ring parts (descriptor table 16-byte,
/// avail ring 2-byte and used ring 4-byte aligned, per the virtio spec).
///
/// # Example
/// ```
/// use vhost_user_sync::protocol::payload::VringAddr;
/// let a = VringAddr { index: 0, flags: 0, desc: 0x1000, used: 0x3000, avail: 0x2000, log: 0 };
/// assert_eq!(VringAddr::decode(&a.encode()), Ok(a));
/// let bad = VringAddr { desc: 0x1001, ..a };
/// assert!(VringAddr::decode(&bad.encode()).is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VringAddr {
    /// Ring index.
    pub index: u32,
    /// Bit 0: VHOST_VRING_F_LOG (log used-ring writes at `log`).
    pub flags: u32,
    /// Descriptor table address.
    pub desc: u64,
    /// Used ring address.
    pub used: u64,
    /// Available ring address.
    pub avail: u64,
    /// Guest-physical address for used-ring dirty logging.
    pub log: u64,
}

impl VringAddr {
    /// Wire size.
    pub const SIZE: usize = 40;
    /// VHOST_VRING_F_LOG.
    pub const F_LOG: u32 = 1;

    /// Decodes and checks the body.
    pub fn decode(body: &[u8]) -> Result<Self, ProtocolError> {
        const NAME: &str = "SET_VRING_ADDR";
        check_len(NAME, body, Self::SIZE)?;
        let r = FieldReader::new(body);
        let addr = VringAddr {
            index: r.u32(0),
            flags: r.u32(4),
            desc: r.u64(8),
            used: r.u64(16),
            avail: r.u64(24),
            log: r.u64(32),
        };
        let bad = |field, value: u64, why| ProtocolError::BadField {
            request: NAME,
            field,
            value,
            why,
        };
        if addr.flags & !Self::F_LOG != 0 {
            return Err(bad("flags", addr.flags.into(), "unknown flag bits"));
        }
        if !addr.desc.is_multiple_of(16) {
            return Err(bad("desc", addr.desc, "not 16-byte aligned"));
        }
        if !addr.avail.is_multiple_of(2) {
            return Err(bad("avail", addr.avail, "not 2-byte aligned"));
        }
        if !addr.used.is_multiple_of(4) {
            return Err(bad("used", addr.used, "not 4-byte aligned"));
        }
        Ok(addr)
    }

    /// Encodes the body.
    pub fn encode(&self) -> Vec<u8> {
        FieldWriter::default()
            .u32(self.index)
            .u32(self.flags)
            .u64(self.desc)
            .u64(self.used)
            .u64(self.avail)
            .u64(self.log)
            .bytes
    }
}
