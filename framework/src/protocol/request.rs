//! Request numbers of both channels, and what each request's message must look like.

use super::ProtocolError;

/// What a request's body must measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyRule {
    /// Exactly this many bytes.
    Exact(usize),
    /// A memory table: 8 bytes then 32 bytes per region, 1 to 8 regions.
    MemoryTable,
    /// A config access: 12 bytes then `size` bytes, `size` at most 256.
    Config,
    /// At least this many bytes (requests whose layout varies by device).
    AtLeast(usize),
}

/// How many file descriptors a request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdRule {
    /// None.
    None,
    /// Exactly one.
    One,
    /// Zero or one.
    Optional,
    /// One per memory region in the body.
    PerRegion,
    /// One unless bit 8 of the u64 body says "no fd".
    RingFlag,
}

/// Whether a request is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyRule {
    /// Answered only when REPLY_ACK is negotiated and NEED_REPLY is set (u64 ack).
    AckOnly,
    /// Always answered with a body of its own.
    Always,
}

/// The shape of one request type: name, body, fds and reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestShape {
    /// The spec's name.
    pub name: &'static str,
    /// Body size rule.
    pub body: BodyRule,
    /// File descriptor rule.
    pub fds: FdRule,
    /// Reply rule.
    pub reply: ReplyRule,
}

macro_rules! request_enum {
    ($(#[$doc:meta])* $name:ident { $($variant:ident = $num:literal, $body:expr, $fds:expr, $reply:expr;)* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u32)]
        #[allow(missing_docs, non_camel_case_types)]
        pub enum $name {
            $($variant = $num,)*
        }

        impl TryFrom<u32> for $name {
            type Error = ProtocolError;
            fn try_from(value: u32) -> Result<Self, ProtocolError> {
                match value {
                    $($num => Ok($name::$variant),)*
                    other => Err(ProtocolError::UnknownRequest(other)),
                }
            }
        }

        impl $name {
            /// Every request of this channel, in number order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            /// The message shape of this request.
            pub const fn shape(self) -> RequestShape {
                match self {
                    $($name::$variant => RequestShape {
                        name: stringify!($variant),
                        body: $body,
                        fds: $fds,
                        reply: $reply,
                    },)*
                }
            }

            /// The spec's name of this request.
            pub const fn name(self) -> &'static str {
                self.shape().name
            }

            /// The request number on the wire.
            pub const fn number(self) -> u32 {
                self as u32
            }
        }
    };
}

use BodyRule::{AtLeast, Config, Exact, MemoryTable};
use FdRule::{None as NoFd, One, Optional, PerRegion, RingFlag};
use ReplyRule::{AckOnly, Always};

request_enum! {
    /// A request from the frontend (the VMM) to the backend.
    ///
    /// # Example
    /// ```
    /// use vhost_user_sync::protocol::FrontendRequest;
    /// assert_eq!(FrontendRequest::try_from(11).unwrap(), FrontendRequest::GET_VRING_BASE);
    /// assert!(FrontendRequest::try_from(44).is_err());
    /// ```
    FrontendRequest {
        GET_FEATURES = 1, Exact(0), NoFd, Always;
        SET_FEATURES = 2, Exact(8), NoFd, AckOnly;
        SET_OWNER = 3, Exact(0), NoFd, AckOnly;
        RESET_OWNER = 4, Exact(0), NoFd, AckOnly;
        SET_MEM_TABLE = 5, MemoryTable, PerRegion, AckOnly;
        SET_LOG_BASE = 6, Exact(16), One, Always;
        SET_LOG_FD = 7, Exact(0), One, AckOnly;
        SET_VRING_NUM = 8, Exact(8), NoFd, AckOnly;
        SET_VRING_ADDR = 9, Exact(40), NoFd, AckOnly;
        SET_VRING_BASE = 10, Exact(8), NoFd, AckOnly;
        GET_VRING_BASE = 11, Exact(8), NoFd, Always;
        SET_VRING_KICK = 12, Exact(8), RingFlag, AckOnly;
        SET_VRING_CALL = 13, Exact(8), RingFlag, AckOnly;
        SET_VRING_ERR = 14, Exact(8), RingFlag, AckOnly;
        GET_PROTOCOL_FEATURES = 15, Exact(0), NoFd, Always;
        SET_PROTOCOL_FEATURES = 16, Exact(8), NoFd, AckOnly;
        GET_QUEUE_NUM = 17, Exact(0), NoFd, Always;
        SET_VRING_ENABLE = 18, Exact(8), NoFd, AckOnly;
        SEND_RARP = 19, Exact(8), NoFd, AckOnly;
        NET_SET_MTU = 20, Exact(8), NoFd, AckOnly;
        SET_BACKEND_REQ_FD = 21, Exact(0), One, AckOnly;
        IOTLB_MSG = 22, Exact(32), NoFd, Always;
        SET_VRING_ENDIAN = 23, Exact(8), NoFd, AckOnly;
        GET_CONFIG = 24, Config, NoFd, Always;
        SET_CONFIG = 25, Config, NoFd, AckOnly;
        CREATE_CRYPTO_SESSION = 26, AtLeast(8), NoFd, Always;
        CLOSE_CRYPTO_SESSION = 27, Exact(8), NoFd, AckOnly;
        POSTCOPY_ADVISE = 28, Exact(0), NoFd, Always;
        POSTCOPY_LISTEN = 29, Exact(0), NoFd, AckOnly;
        POSTCOPY_END = 30, Exact(0), NoFd, Always;
        GET_INFLIGHT_FD = 31, Exact(24), NoFd, Always;
        SET_INFLIGHT_FD = 32, Exact(24), One, AckOnly;
        GPU_SET_SOCKET = 33, Exact(0), One, AckOnly;
        RESET_DEVICE = 34, Exact(0), NoFd, AckOnly;
        VRING_KICK = 35, Exact(8), NoFd, AckOnly;
        GET_MAX_MEM_SLOTS = 36, Exact(0), NoFd, Always;
        ADD_MEM_REG = 37, Exact(40), One, AckOnly;
        REM_MEM_REG = 38, Exact(40), Optional, AckOnly;
        SET_STATUS = 39, Exact(8), NoFd, AckOnly;
        GET_STATUS = 40, Exact(0), NoFd, Always;
        GET_SHARED_OBJECT = 41, Exact(16), NoFd, Always;
        SET_DEVICE_STATE_FD = 42, Exact(8), One, Always;
        CHECK_DEVICE_STATE = 43, Exact(0), NoFd, Always;
    }
}

request_enum! {
    /// A request from the backend to the frontend, on the SET_BACKEND_REQ_FD channel.
    ///
    /// # Example
    /// ```
    /// use vhost_user_sync::protocol::BackendRequest;
    /// assert_eq!(BackendRequest::CONFIG_CHANGE_MSG.number(), 2);
    /// ```
    BackendRequest {
        IOTLB_MSG = 1, Exact(32), NoFd, AckOnly;
        CONFIG_CHANGE_MSG = 2, Exact(0), NoFd, AckOnly;
        VRING_HOST_NOTIFIER_MSG = 3, Exact(24), Optional, AckOnly;
        VRING_CALL = 4, Exact(8), NoFd, AckOnly;
        VRING_ERR = 5, Exact(8), NoFd, AckOnly;
        SHARED_OBJECT_ADD = 6, Exact(16), NoFd, AckOnly;
        SHARED_OBJECT_REMOVE = 7, Exact(16), NoFd, AckOnly;
        SHARED_OBJECT_LOOKUP = 8, Exact(16), NoFd, AckOnly;
    }
}

/// The largest payload any message may carry: a 256-byte config access plus its
/// 12-byte header (a full 8-region memory table is 264). Checked before anything is
/// allocated.
pub const MAX_PAYLOAD_SIZE: u32 = 12 + 256;

/// The most file descriptors one message may carry.
pub const MAX_FDS: usize = 8;

impl RequestShape {
    /// Checks a payload size against the body rule (layer 2 of validation).
    ///
    /// # Example
    /// ```
    /// use vhost_user_sync::protocol::FrontendRequest;
    /// let shape = FrontendRequest::SET_FEATURES.shape();
    /// assert!(shape.check_size(8).is_ok());
    /// assert!(shape.check_size(7).is_err());
    /// ```
    pub fn check_size(&self, size: usize) -> Result<(), ProtocolError> {
        let wrong = |expected| ProtocolError::WrongSize {
            request: self.name,
            expected,
            got: size,
        };
        match self.body {
            BodyRule::Exact(n) if size == n => Ok(()),
            BodyRule::Exact(n) => Err(wrong(n)),
            BodyRule::MemoryTable => {
                let regions = size.checked_sub(8).map(|r| (r / 32, r % 32));
                match regions {
                    Some((n, 0)) if (1..=8).contains(&n) => Ok(()),
                    _ => Err(wrong(8 + 32)),
                }
            }
            BodyRule::Config if (12..=12 + 256).contains(&size) => Ok(()),
            BodyRule::Config => Err(wrong(12)),
            BodyRule::AtLeast(n) if size >= n => Ok(()),
            BodyRule::AtLeast(n) => Err(wrong(n)),
        }
    }

    /// Checks the count of attached fds (layer 3). `per_message` is the count the body
    /// implies for [`FdRule::PerRegion`] and [`FdRule::RingFlag`] (regions, or 0/1).
    ///
    /// # Example
    /// ```
    /// use vhost_user_sync::protocol::FrontendRequest;
    /// let shape = FrontendRequest::SET_OWNER.shape();
    /// assert!(shape.check_fds(0, 0).is_ok());
    /// assert!(shape.check_fds(1, 0).is_err());
    /// ```
    pub fn check_fds(&self, got: usize, per_message: usize) -> Result<(), ProtocolError> {
        let ok = match self.fds {
            FdRule::None => got == 0,
            FdRule::One => got == 1,
            FdRule::Optional => got <= 1,
            FdRule::PerRegion | FdRule::RingFlag => got == per_message,
        };
        if ok {
            return Ok(());
        }
        let expected = match self.fds {
            FdRule::None => 0,
            FdRule::One | FdRule::Optional => 1,
            FdRule::PerRegion | FdRule::RingFlag => per_message,
        };
        Err(ProtocolError::WrongFdCount {
            request: self.name,
            expected,
            got,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_frontend_number_round_trips() {
        assert_eq!(FrontendRequest::ALL.len(), 43);
        for (i, r) in FrontendRequest::ALL.iter().enumerate() {
            assert_eq!(r.number(), i as u32 + 1);
            assert_eq!(FrontendRequest::try_from(r.number()), Ok(*r));
        }
        for n in [0u32, 44, 1000, u32::MAX] {
            assert_eq!(
                FrontendRequest::try_from(n),
                Err(ProtocolError::UnknownRequest(n))
            );
        }
    }

    #[test]
    fn every_backend_number_round_trips() {
        assert_eq!(BackendRequest::ALL.len(), 8);
        for (i, r) in BackendRequest::ALL.iter().enumerate() {
            assert_eq!(BackendRequest::try_from(i as u32 + 1), Ok(*r));
        }
        assert!(BackendRequest::try_from(9).is_err());
        assert!(BackendRequest::try_from(0).is_err());
    }

    #[test]
    fn memory_table_sizes() {
        let s = FrontendRequest::SET_MEM_TABLE.shape();
        for n in 1..=8 {
            assert!(s.check_size(8 + 32 * n).is_ok());
        }
        for bad in [0, 8, 8 + 31, 8 + 33, 8 + 32 * 9, 7] {
            assert!(s.check_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn config_sizes() {
        let s = FrontendRequest::GET_CONFIG.shape();
        assert!(s.check_size(12).is_ok());
        assert!(s.check_size(268).is_ok());
        assert!(s.check_size(11).is_err());
        assert!(s.check_size(269).is_err());
    }

    #[test]
    fn fd_rules() {
        let one = FrontendRequest::ADD_MEM_REG.shape();
        assert!(one.check_fds(1, 0).is_ok());
        assert!(one.check_fds(0, 0).is_err());
        assert!(one.check_fds(2, 0).is_err());
        let opt = FrontendRequest::REM_MEM_REG.shape();
        assert!(opt.check_fds(0, 0).is_ok() && opt.check_fds(1, 0).is_ok());
        assert!(opt.check_fds(2, 0).is_err());
        let ring = FrontendRequest::SET_VRING_KICK.shape();
        assert!(ring.check_fds(1, 1).is_ok() && ring.check_fds(0, 0).is_ok());
        assert!(ring.check_fds(0, 1).is_err() && ring.check_fds(1, 0).is_err());
    }

    #[test]
    fn no_shape_exceeds_the_cap() {
        for r in FrontendRequest::ALL {
            if let BodyRule::Exact(n) = r.shape().body {
                assert!(n as u32 <= MAX_PAYLOAD_SIZE, "{}", r.name());
            }
        }
    }
}
