//! virtio-net feature bits (virtio 1.2, 5.1.3).

/// Device handles packets with partial checksum.
pub const CSUM: u64 = 1 << 0;
/// Driver handles packets with partial checksum.
pub const GUEST_CSUM: u64 = 1 << 1;
/// Device maximum MTU reporting.
pub const MTU: u64 = 1 << 3;
/// Device has a MAC address.
pub const MAC: u64 = 1 << 5;
/// Driver can receive TSOv4.
pub const GUEST_TSO4: u64 = 1 << 7;
/// Driver can receive TSOv6.
pub const GUEST_TSO6: u64 = 1 << 8;
/// Driver can receive TSO with ECN.
pub const GUEST_ECN: u64 = 1 << 9;
/// Driver can receive UFO.
pub const GUEST_UFO: u64 = 1 << 10;
/// Device can receive TSOv4.
pub const HOST_TSO4: u64 = 1 << 11;
/// Device can receive TSOv6.
pub const HOST_TSO6: u64 = 1 << 12;
/// Device can receive TSO with ECN.
pub const HOST_ECN: u64 = 1 << 13;
/// Device can receive UFO.
pub const HOST_UFO: u64 = 1 << 14;
/// Driver can merge receive buffers.
pub const MRG_RXBUF: u64 = 1 << 15;
/// Configuration status field is available.
pub const STATUS: u64 = 1 << 16;
/// Control channel is available.
pub const CTRL_VQ: u64 = 1 << 17;
/// Control channel RX mode support.
pub const CTRL_RX: u64 = 1 << 18;
/// Multiqueue with automatic receive steering.
pub const MQ: u64 = 1 << 22;
/// MAC address set through the control channel.
pub const CTRL_MAC_ADDR: u64 = 1 << 23;
