//! One split-ring descriptor, copied out of guest memory.

/// A descriptor as the guest wrote it, copied into backend memory before it is checked
/// or used, so a guest changing the table afterwards changes nothing.
///
/// # Example
/// ```
/// use vhost_user_sync::queue::Descriptor;
/// let d = Descriptor::from_bytes(&[0x00, 0x10, 0, 0, 0, 0, 0, 0, 64, 0, 0, 0, 3, 0, 1, 0]);
/// assert_eq!((d.addr, d.len, d.next), (0x1000, 64, 1));
/// assert!(d.has_next() && d.is_write() && !d.is_indirect());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Descriptor {
    /// Guest-physical address of the buffer.
    pub addr: u64,
    /// Buffer length.
    pub len: u32,
    /// VIRTQ_DESC_F_* flags.
    pub flags: u16,
    /// Next descriptor, if NEXT is set.
    pub next: u16,
}

impl Descriptor {
    /// Bytes per descriptor in a table.
    pub const SIZE: u64 = 16;
    /// VIRTQ_DESC_F_NEXT.
    pub const F_NEXT: u16 = 1;
    /// VIRTQ_DESC_F_WRITE.
    pub const F_WRITE: u16 = 2;
    /// VIRTQ_DESC_F_INDIRECT.
    pub const F_INDIRECT: u16 = 4;

    /// Decodes the 16 bytes of a table entry.
    pub fn from_bytes(b: &[u8; 16]) -> Self {
        Descriptor {
            addr: u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
            len: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
            flags: u16::from_le_bytes([b[12], b[13]]),
            next: u16::from_le_bytes([b[14], b[15]]),
        }
    }

    /// Encodes a table entry.
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[12..14].copy_from_slice(&self.flags.to_le_bytes());
        b[14..16].copy_from_slice(&self.next.to_le_bytes());
        b
    }

    /// NEXT is set.
    pub fn has_next(&self) -> bool {
        self.flags & Self::F_NEXT != 0
    }

    /// The device writes this buffer.
    pub fn is_write(&self) -> bool {
        self.flags & Self::F_WRITE != 0
    }

    /// This descriptor points at an indirect table.
    pub fn is_indirect(&self) -> bool {
        self.flags & Self::F_INDIRECT != 0
    }
}
