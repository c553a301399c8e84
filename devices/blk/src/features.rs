//! virtio-blk feature bits (virtio spec 5.2.3).

/// Maximum size of one segment is in `size_max`.
pub const SIZE_MAX: u64 = 1 << 1;
/// Maximum number of segments of a request is in `seg_max`.
pub const SEG_MAX: u64 = 1 << 2;
/// The disk is read-only.
pub const RO: u64 = 1 << 5;
/// The logical block size is in `blk_size`.
pub const BLK_SIZE: u64 = 1 << 6;
/// FLUSH requests are supported.
pub const FLUSH: u64 = 1 << 9;
/// Topology (physical block exponent, alignment, I/O sizes) is in the config space.
pub const TOPOLOGY: u64 = 1 << 10;
/// The driver can switch between writeback and writethrough with `writeback`.
pub const CONFIG_WCE: u64 = 1 << 11;
/// More than one request queue (`num_queues`).
pub const MQ: u64 = 1 << 12;
/// DISCARD requests are supported.
pub const DISCARD: u64 = 1 << 13;
/// WRITE_ZEROES requests are supported.
pub const WRITE_ZEROES: u64 = 1 << 14;
