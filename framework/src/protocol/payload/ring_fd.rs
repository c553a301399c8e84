use super::decode_u64;
use crate::protocol::ProtocolError;

/// The u64 body of SET_VRING_KICK/CALL/ERR: ring index in bits 0-7, bit 8 "no fd".
///
/// # Example
/// ```
/// use vhost_user_sync::protocol::payload::RingFd;
/// let r = RingFd::decode("SET_VRING_KICK", &0x101u64.to_ne_bytes()).unwrap();
/// assert_eq!((r.index, r.no_fd), (1, true));
/// assert!(RingFd::decode("SET_VRING_KICK", &0x201u64.to_ne_bytes()).is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingFd {
    /// Ring index.
    pub index: u8,
    /// No fd attached: the ring is polled (kick) or not signalled (call).
    pub no_fd: bool,
}

impl RingFd {
    const NO_FD: u64 = 0x100;

    /// Decodes the body of `request`, refusing bits above 8.
    pub fn decode(request: &'static str, body: &[u8]) -> Result<Self, ProtocolError> {
        let v = decode_u64(request, body)?;
        if v & !(0xff | Self::NO_FD) != 0 {
            return Err(ProtocolError::BadField {
                request,
                field: "index",
                value: v,
                why: "bits above 8 are reserved",
            });
        }
        Ok(RingFd {
            index: (v & 0xff) as u8,
            no_fd: v & Self::NO_FD != 0,
        })
    }

    /// How many fds the message must carry.
    pub fn fd_count(&self) -> usize {
        usize::from(!self.no_fd)
    }

    /// Encodes the body.
    pub fn encode(&self) -> Vec<u8> {
        (u64::from(self.index) | if self.no_fd { Self::NO_FD } else { 0 })
            .to_ne_bytes()
            .to_vec()
    }
}
