//! Feature bits: virtio transport bits the framework handles, and vhost-user protocol bits.

use std::fmt;

/// Virtio feature bits that the transport (the framework) implements or must know.
///
/// Device-specific bits (0-23) belong to each device.
pub mod virtio {
    /// VIRTIO_F_NOTIFY_ON_EMPTY (legacy).
    pub const NOTIFY_ON_EMPTY: u64 = 1 << 24;
    /// VHOST_F_LOG_ALL: dirty-page logging for live migration.
    pub const LOG_ALL: u64 = 1 << 26;
    /// VIRTIO_F_ANY_LAYOUT (legacy).
    pub const ANY_LAYOUT: u64 = 1 << 27;
    /// VIRTIO_RING_F_INDIRECT_DESC.
    pub const RING_INDIRECT_DESC: u64 = 1 << 28;
    /// VIRTIO_RING_F_EVENT_IDX.
    pub const RING_EVENT_IDX: u64 = 1 << 29;
    /// VHOST_USER_F_PROTOCOL_FEATURES.
    pub const PROTOCOL_FEATURES: u64 = 1 << 30;
    /// VIRTIO_F_VERSION_1.
    pub const VERSION_1: u64 = 1 << 32;
    /// VIRTIO_F_ACCESS_PLATFORM.
    pub const ACCESS_PLATFORM: u64 = 1 << 33;
    /// VIRTIO_F_RING_PACKED.
    pub const RING_PACKED: u64 = 1 << 34;
    /// VIRTIO_F_IN_ORDER.
    pub const IN_ORDER: u64 = 1 << 35;
}

macro_rules! protocol_bits {
    ($($name:ident = $bit:literal,)*) => {
        impl ProtocolFeatures {
            $(
                #[doc = concat!("VHOST_USER_PROTOCOL_F_", stringify!($name), " (bit ", stringify!($bit), ").")]
                pub const $name: ProtocolFeatures = ProtocolFeatures(1 << $bit);
            )*
            const NAMES: &'static [(&'static str, u64)] = &[$((stringify!($name), 1 << $bit),)*];
        }
    };
}

/// A set of vhost-user protocol feature bits.
///
/// # Example
/// ```
/// use vhost_user_sync::protocol::ProtocolFeatures;
/// let f = ProtocolFeatures::MQ | ProtocolFeatures::REPLY_ACK;
/// assert!(f.contains(ProtocolFeatures::REPLY_ACK));
/// assert_eq!(f.bits(), 0x9);
/// assert_eq!(f.to_string(), "MQ|REPLY_ACK");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct ProtocolFeatures(u64);

protocol_bits! {
    MQ = 0,
    LOG_SHMFD = 1,
    RARP = 2,
    REPLY_ACK = 3,
    MTU = 4,
    BACKEND_REQ = 5,
    CROSS_ENDIAN = 6,
    CRYPTO_SESSION = 7,
    PAGEFAULT = 8,
    CONFIG = 9,
    BACKEND_SEND_FD = 10,
    HOST_NOTIFIER = 11,
    INFLIGHT_SHMFD = 12,
    RESET_DEVICE = 13,
    INBAND_NOTIFICATIONS = 14,
    CONFIGURE_MEM_SLOTS = 15,
    STATUS = 16,
    XEN_MMAP = 17,
    SHARED_OBJECT = 18,
    DEVICE_STATE = 19,
}

impl ProtocolFeatures {
    /// The empty set.
    pub const EMPTY: ProtocolFeatures = ProtocolFeatures(0);

    /// A set from raw bits (unknown bits are kept; negotiation masks them).
    ///
    /// # Example
    /// ```
    /// use vhost_user_sync::protocol::ProtocolFeatures;
    /// assert_eq!(ProtocolFeatures::from_bits(1), ProtocolFeatures::MQ);
    /// ```
    pub const fn from_bits(bits: u64) -> Self {
        ProtocolFeatures(bits)
    }

    /// The raw bits.
    ///
    /// # Example
    /// ```
    /// use vhost_user_sync::protocol::ProtocolFeatures;
    /// assert_eq!(ProtocolFeatures::CONFIG.bits(), 1 << 9);
    /// ```
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// Whether every bit of `other` is in `self`.
    ///
    /// # Example
    /// ```
    /// use vhost_user_sync::protocol::ProtocolFeatures;
    /// assert!(!ProtocolFeatures::MQ.contains(ProtocolFeatures::STATUS));
    /// ```
    pub const fn contains(self, other: ProtocolFeatures) -> bool {
        self.0 & other.0 == other.0
    }

    /// Bits in both sets.
    ///
    /// # Example
    /// ```
    /// use vhost_user_sync::protocol::ProtocolFeatures;
    /// let a = ProtocolFeatures::MQ | ProtocolFeatures::STATUS;
    /// assert_eq!(a.intersection(ProtocolFeatures::MQ), ProtocolFeatures::MQ);
    /// ```
    pub const fn intersection(self, other: ProtocolFeatures) -> ProtocolFeatures {
        ProtocolFeatures(self.0 & other.0)
    }
}

impl std::ops::BitOr for ProtocolFeatures {
    type Output = ProtocolFeatures;
    fn bitor(self, rhs: Self) -> Self {
        ProtocolFeatures(self.0 | rhs.0)
    }
}

impl std::ops::BitOrAssign for ProtocolFeatures {
    fn bitor_assign(&mut self, rhs: Self) {
        self.0 |= rhs.0;
    }
}

impl fmt::Display for ProtocolFeatures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut rest = self.0;
        for (name, bit) in Self::NAMES {
            if self.0 & bit != 0 {
                write!(f, "{}{}", if first { "" } else { "|" }, name)?;
                first = false;
                rest &= !bit;
            }
        }
        if rest != 0 {
            write!(f, "{}{:#x}", if first { "" } else { "|" }, rest)?;
        } else if first {
            f.write_str("(none)")?;
        }
        Ok(())
    }
}
