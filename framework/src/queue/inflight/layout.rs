//! Where things lie in the in-flight area (the vhost-user spec's "Inflight I/O
//! tracking" layout). Each queue has a region of its own, 64-byte aligned, one after
//! the other.

/// The version written into a region in use.
pub const VERSION: u16 = 1;

/// Alignment of each queue's region.
pub const QUEUE_ALIGN: u64 = 64;

/// Split rings: `{u64 features, u16 version, u16 desc_num, u16 last_batch_head,
/// u16 used_idx}`, then `desc_num` entries of `{u8 inflight, u8 pad[5], u16 next,
/// u64 counter}`.
pub mod split {
    /// `features` (reserved, 0).
    pub const FEATURES: u64 = 0;
    /// `version`.
    pub const VERSION: u64 = 8;
    /// `desc_num`.
    pub const DESC_NUM: u64 = 10;
    /// `last_batch_head`.
    pub const LAST_BATCH_HEAD: u64 = 12;
    /// `used_idx`.
    pub const USED_IDX: u64 = 14;
    /// First entry.
    pub const DESC: u64 = 16;
    /// Bytes per entry.
    pub const ENTRY: u64 = 16;
    /// `inflight` in an entry.
    pub const E_INFLIGHT: u64 = 0;
    /// `next` in an entry.
    pub const E_NEXT: u64 = 6;
    /// `counter` in an entry.
    pub const E_COUNTER: u64 = 8;

    /// Offset of entry `i`'s field `field` in a queue's region.
    pub const fn entry(i: u16, field: u64) -> u64 {
        DESC + i as u64 * ENTRY + field
    }
}

/// Packed rings: `{u64 features, u16 version, u16 desc_num, u16 free_head,
/// u16 old_free_head, u16 used_idx, u16 old_used_idx, u8 used_wrap_counter,
/// u8 old_used_wrap_counter, u8 pad[7]}` (32 bytes with alignment), then `desc_num`
/// entries of 32 bytes.
pub mod packed {
    /// `features` (reserved, 0).
    pub const FEATURES: u64 = 0;
    /// `version`.
    pub const VERSION: u64 = 8;
    /// `desc_num`.
    pub const DESC_NUM: u64 = 10;
    /// `free_head`.
    pub const FREE_HEAD: u64 = 12;
    /// `old_free_head`.
    pub const OLD_FREE_HEAD: u64 = 14;
    /// `used_idx`.
    pub const USED_IDX: u64 = 16;
    /// `old_used_idx`.
    pub const OLD_USED_IDX: u64 = 18;
    /// `used_wrap_counter`.
    pub const USED_WRAP: u64 = 20;
    /// `old_used_wrap_counter`.
    pub const OLD_USED_WRAP: u64 = 21;
    /// Header bytes.
    pub const HEADER: u64 = 32;
    /// Bytes per entry: `{u8 inflight, u8 pad, u16 next, u16 last, u16 num,
    /// u64 counter, u16 id, u16 flags, u32 len, u64 addr}`.
    pub const ENTRY: u64 = 32;
    /// `inflight` in an entry.
    pub const E_INFLIGHT: u64 = 0;
    /// `next` in an entry.
    pub const E_NEXT: u64 = 2;
    /// `last` in an entry.
    pub const E_LAST: u64 = 4;
    /// `num` in an entry.
    pub const E_NUM: u64 = 6;
    /// `counter` in an entry.
    pub const E_COUNTER: u64 = 8;
    /// `id` in an entry.
    pub const E_ID: u64 = 16;
    /// `flags` in an entry.
    pub const E_FLAGS: u64 = 18;
    /// `len` in an entry.
    pub const E_LEN: u64 = 20;
    /// `addr` in an entry.
    pub const E_ADDR: u64 = 24;

    /// Offset of entry `i`'s field `field` in a queue's region.
    pub const fn entry(i: u16, field: u64) -> u64 {
        HEADER + i as u64 * ENTRY + field
    }
}

/// Bytes of one queue's region for a ring of `queue_size` entries.
pub fn queue_region_len(packed: bool, queue_size: u16) -> u64 {
    let raw = if packed {
        packed::HEADER + packed::ENTRY * u64::from(queue_size)
    } else {
        split::DESC + split::ENTRY * u64::from(queue_size)
    };
    raw.div_ceil(QUEUE_ALIGN) * QUEUE_ALIGN
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_are_aligned_and_hold_every_entry() {
        assert_eq!(queue_region_len(false, 128), 16 + 16 * 128 + 48);
        assert_eq!(queue_region_len(false, 1), 64);
        assert_eq!(queue_region_len(true, 256), 32 + 32 * 256 + 32);
        assert_eq!(split::entry(2, split::E_COUNTER), 16 + 32 + 8);
    }
}
