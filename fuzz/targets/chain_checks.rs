//! Checks shared by the fuzz targets that pop chains from a ring.

use vhost_user_sync::memory::MemoryTable;
use vhost_user_sync::queue::DescriptorChain;

/// Checks a popped chain: an id inside a ring of `size`, readable buffers before
/// writable ones, no indirect flag left, every buffer inside `mem`, and lengths that add
/// up to the chain's totals.
pub fn check_chain(mem: &MemoryTable, c: &DescriptorChain, size: u16) {
    assert!(c.id() < size, "id {} in a ring of {size}", c.id());
    let (mut readable, mut writable, mut seen_write) = (0u64, 0u64, false);
    for d in c.descriptors() {
        if d.is_write() {
            seen_write = true;
            writable += u64::from(d.len);
        } else {
            assert!(!seen_write, "readable after writable: {c:?}");
            readable += u64::from(d.len);
        }
        assert!(!d.is_indirect(), "indirect flag left in {c:?}");
        assert!(
            mem.check_range(d.addr, d.len.into()).is_ok(),
            "{d:?} outside"
        );
    }
    assert_eq!(readable, u64::from(c.readable_len()));
    assert_eq!(writable, u64::from(c.writable_len()));
}
