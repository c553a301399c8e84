//! Where the parts of a split ring lie: the one place that knows the offsets, used by the
//! device side ([`super::SplitRing`], its ring view), the session (how much memory a
//! ring needs) and the driver side ([`crate::frontend::DriverQueue`]).

/// Bytes of one descriptor table entry.
pub const DESC_SIZE: u64 = 16;

/// `VRING_AVAIL_F_NO_INTERRUPT`: the driver does not want interrupts.
pub const AVAIL_F_NO_INTERRUPT: u16 = 1;
/// `VRING_USED_F_NO_NOTIFY`: the device does not want kicks.
pub const USED_F_NO_NOTIFY: u16 = 1;

/// Offset of `flags` in the avail ring.
pub const AVAIL_FLAGS: u64 = 0;
/// Offset of `idx` in the avail ring.
pub const AVAIL_IDX: u64 = 2;
/// Offset of `flags` in the used ring.
pub const USED_FLAGS: u64 = 0;
/// Offset of `idx` in the used ring.
pub const USED_IDX: u64 = 2;

/// Bytes of the descriptor table of a ring of `size` entries.
pub const fn desc_table_len(size: u16) -> u64 {
    DESC_SIZE * size as u64
}

/// Bytes of the avail ring: flags, idx, `size` entries and `used_event`.
pub const fn avail_len(size: u16) -> u64 {
    6 + 2 * size as u64
}

/// Bytes of the used ring: flags, idx, `size` elements and `avail_event`.
pub const fn used_len(size: u16) -> u64 {
    6 + 8 * size as u64
}

/// Slot of free-running index `idx` in a ring of `size` entries: `idx % size`, by a mask
/// when `size` is a power of two (every split ring a backend runs; the division it saves
/// takes tens of cycles, twice per chain).
///
/// # Example
/// ```
/// use vhost_user_sync::queue::split::layout::ring_slot;
/// assert_eq!(ring_slot(256, 300), 44);
/// assert_eq!(ring_slot(6, 14), 2); // a frontend's odd size still wraps by modulo
/// ```
#[inline]
pub const fn ring_slot(size: u16, idx: u16) -> u16 {
    if size.is_power_of_two() {
        idx & (size - 1)
    } else {
        idx % size
    }
}

/// Offset in the avail ring of the entry for free-running index `idx`.
pub const fn avail_entry(size: u16, idx: u16) -> u64 {
    4 + 2 * ring_slot(size, idx) as u64
}

/// Offset of `used_event` (after the avail entries).
pub const fn used_event(size: u16) -> u64 {
    4 + 2 * size as u64
}

/// Offset in the used ring of the element for free-running index `idx` (`id` u32, then
/// `len` u32).
pub const fn used_elem(size: u16, idx: u16) -> u64 {
    4 + 8 * ring_slot(size, idx) as u64
}

/// Offset of `avail_event` (after the used elements).
pub const fn avail_event(size: u16) -> u64 {
    4 + 8 * size as u64
}

/// Offset in the descriptor table of entry `index`.
pub const fn desc_entry(index: u16) -> u64 {
    DESC_SIZE * index as u64
}

/// The spec's `vring_need_event`: whether moving an index from `old` to `new` passes
/// `event` (the other side asked to be told once entry `event` is done).
///
/// # Example
/// ```
/// use vhost_user_sync::queue::split::layout::need_event;
/// assert!(need_event(3, 4, 2)); // entries 2 and 3 went by: 3 was asked for
/// assert!(!need_event(5, 4, 2));
/// ```
pub const fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_follow_the_spec_layout() {
        assert_eq!((avail_len(256), used_len(256)), (518, 2054));
        assert_eq!(avail_entry(8, 9), 6);
        assert_eq!(used_elem(8, 8), 4);
        assert_eq!((used_event(8), avail_event(8)), (20, 68));
        assert!(need_event(0xffff, 1, 0xfffe), "across the wrap");
    }

    #[test]
    fn a_ring_slot_is_the_index_modulo_the_size() {
        for size in [1u16, 2, 3, 6, 8, 100, 256, 1024, 32768] {
            for idx in [0u16, 1, 5, 255, 256, 1000, 32767, 32768, 65535] {
                assert_eq!(ring_slot(size, idx), idx % size, "size {size} idx {idx}");
            }
        }
    }
}
