//! Where the parts of a packed ring lie and what their bits mean: the one place that
//! knows them, used by the device side ([`super::PackedRing`]) and the driver side
//! ([`crate::frontend::DriverQueue`]).

/// Bytes of one descriptor.
pub const DESC_SIZE: u64 = 16;
/// Bytes of an event suppression area (driver's and device's).
pub const EVENT_AREA_LEN: u64 = 4;
/// Largest packed queue.
pub const MAX_SIZE: u16 = 1 << 15;

/// `VIRTQ_DESC_F_NEXT`.
pub const F_NEXT: u16 = 1;
/// `VIRTQ_DESC_F_WRITE`.
pub const F_WRITE: u16 = 2;
/// `VIRTQ_DESC_F_INDIRECT`.
pub const F_INDIRECT: u16 = 4;
/// `VIRTQ_DESC_F_AVAIL`.
pub const F_AVAIL: u16 = 1 << 7;
/// `VIRTQ_DESC_F_USED`.
pub const F_USED: u16 = 1 << 15;

/// Event suppression: notify on every event.
pub const EVENT_ENABLE: u16 = 0;
/// Event suppression: never notify.
pub const EVENT_DISABLE: u16 = 1;
/// Event suppression: notify once the descriptor in `off_wrap` is reached (EVENT_IDX).
pub const EVENT_DESC: u16 = 2;

/// Offset of `off_wrap` in an event suppression area.
pub const EVENT_OFF_WRAP: u64 = 0;
/// Offset of `flags` in an event suppression area.
pub const EVENT_FLAGS: u64 = 2;

/// Offset of descriptor `slot` in the ring.
pub const fn desc_entry(slot: u16) -> u64 {
    DESC_SIZE * slot as u64
}

/// Offset of a descriptor's `flags`.
pub const DESC_FLAGS: u64 = 14;

/// Bytes of the descriptor ring of `size` entries.
pub const fn desc_ring_len(size: u16) -> u64 {
    DESC_SIZE * size as u64
}

/// The AVAIL and USED bits a descriptor carries to mean "available" in lap `wrap`.
pub const fn avail_bits(wrap: bool) -> u16 {
    if wrap {
        F_AVAIL
    } else {
        F_USED
    }
}

/// The AVAIL and USED bits of a used descriptor in lap `wrap`.
pub const fn used_bits(wrap: bool) -> u16 {
    if wrap {
        F_AVAIL | F_USED
    } else {
        0
    }
}

/// Whether a descriptor with `flags` is available to the device in lap `wrap`.
pub const fn is_avail(flags: u16, wrap: bool) -> bool {
    let avail = flags & F_AVAIL != 0;
    let used = flags & F_USED != 0;
    avail != used && avail == wrap
}

/// Whether a descriptor with `flags` has been used by the device in lap `wrap`.
pub const fn is_used(flags: u16, wrap: bool) -> bool {
    let avail = flags & F_AVAIL != 0;
    let used = flags & F_USED != 0;
    avail == used && used == wrap
}

/// A position in the ring with its lap, as one `u16`: slot in bits 0-14, wrap counter in
/// bit 15 (the encoding `off_wrap` and the ring state use).
pub const fn position(slot: u16, wrap: bool) -> u16 {
    (slot & 0x7fff) | ((wrap as u16) << 15)
}

/// `slot` moved on by `n` in a ring of `size`, with the wrap counter flipped when it
/// passes the end.
pub const fn advance(slot: u16, wrap: bool, n: u16, size: u16) -> (u16, bool) {
    let next = slot as u32 + n as u32;
    if next >= size as u32 {
        ((next - size as u32) as u16, !wrap)
    } else {
        (next as u16, wrap)
    }
}

/// Whether moving the used position from `old` to `new` (slots in a ring of `size`, the
/// wrap counter now `wrap`) passes the descriptor the other side asked to be told of
/// (`off_wrap`). Both positions are brought onto one line first: an event in the
/// previous lap lies `size` slots back, and so does an `old` that is not behind `new`.
///
/// # Example
/// ```
/// use vhost_user_sync::queue::packed::layout::{need_event, position};
/// // Slots 2, 3 and 4 were used in lap 1; the driver asked for slot 3.
/// assert!(need_event(position(3, true), 5, 2, true, 256));
/// assert!(!need_event(position(7, true), 5, 2, true, 256));
/// ```
pub const fn need_event(off_wrap: u16, new: u16, old: u16, wrap: bool, size: u16) -> bool {
    let mut off = off_wrap & 0x7fff;
    if wrap != (off_wrap >> 15 != 0) {
        off = off.wrapping_sub(size);
    }
    let old = if new <= old {
        old.wrapping_sub(size)
    } else {
        old
    };
    crate::queue::split::layout::need_event(off, new, old)
}

/// One packed-ring descriptor as it lies in memory.
///
/// # Example
/// ```
/// use vhost_user_sync::queue::packed::layout::{PackedDescriptor, F_WRITE};
/// let d = PackedDescriptor { addr: 0x1000, len: 64, id: 3, flags: F_WRITE };
/// assert_eq!(PackedDescriptor::from_bytes(&d.to_bytes()), d);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PackedDescriptor {
    /// Buffer address.
    pub addr: u64,
    /// Buffer length (in a used descriptor: bytes written).
    pub len: u32,
    /// Buffer id.
    pub id: u16,
    /// Flags.
    pub flags: u16,
}

impl PackedDescriptor {
    /// Decodes 16 bytes.
    pub fn from_bytes(b: &[u8; 16]) -> Self {
        PackedDescriptor {
            addr: u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
            len: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
            id: u16::from_le_bytes([b[12], b[13]]),
            flags: u16::from_le_bytes([b[14], b[15]]),
        }
    }

    /// Encodes 16 bytes.
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[12..14].copy_from_slice(&self.id.to_le_bytes());
        b[14..16].copy_from_slice(&self.flags.to_le_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn availability_follows_the_wrap_counter() {
        assert!(is_avail(avail_bits(true), true));
        assert!(!is_avail(avail_bits(true), false));
        assert!(is_avail(avail_bits(false), false));
        assert!(!is_avail(0, true), "a zeroed ring offers nothing");
        assert!(is_used(used_bits(true), true) && is_used(used_bits(false), false));
        assert!(!is_avail(used_bits(true), true));
    }

    #[test]
    fn positions_wrap_at_the_ring_end() {
        assert_eq!(advance(6, true, 3, 8), (1, false));
        assert_eq!(advance(6, false, 2, 8), (0, true));
        assert_eq!(advance(0, true, 3, 8), (3, true));
        assert_eq!(position(5, true), 0x8005);
    }

    #[test]
    fn need_event_across_the_wrap() {
        // Used 6, 7 (lap 1), 0, 1 (lap 0): an event at 7 of lap 1 is passed.
        assert!(need_event(position(7, true), 2, 6, false, 8));
        assert!(need_event(position(0, false), 2, 6, false, 8));
        assert!(!need_event(position(3, false), 2, 6, false, 8));
    }
}
