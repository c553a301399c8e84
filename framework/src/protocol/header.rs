//! The 12-byte header in front of every vhost-user message.

use super::ProtocolError;

/// Size of the header on the wire.
pub const HEADER_SIZE: usize = 12;

/// The header's flag word, as a typed view.
///
/// # Example
/// ```
/// use vhost_user_sync::protocol::HeaderFlags;
/// let flags = HeaderFlags::REQUEST.with_need_reply();
/// assert!(flags.need_reply());
/// assert!(!flags.is_reply());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderFlags(u32);

impl HeaderFlags {
    const VERSION_MASK: u32 = 0x3;
    const VERSION: u32 = 0x1;
    const REPLY: u32 = 0x4;
    const NEED_REPLY: u32 = 0x8;
    const KNOWN: u32 = Self::VERSION_MASK | Self::REPLY | Self::NEED_REPLY;

    /// Flags of a plain request (version 1).
    pub const REQUEST: HeaderFlags = HeaderFlags(Self::VERSION);
    /// Flags of a reply (version 1, REPLY). Strict peers want exactly this value.
    pub const REPLY_FLAGS: HeaderFlags = HeaderFlags(Self::VERSION | Self::REPLY);

    /// Checks the version and the reserved bits of a raw flag word.
    ///
    /// # Example
    /// ```
    /// use vhost_user_sync::protocol::HeaderFlags;
    /// assert!(HeaderFlags::from_bits(0x1).is_ok());
    /// assert!(HeaderFlags::from_bits(0x11).is_err());
    /// ```
    pub fn from_bits(flags: u32) -> Result<Self, ProtocolError> {
        if flags & Self::VERSION_MASK != Self::VERSION {
            return Err(ProtocolError::BadVersion { flags });
        }
        if flags & !Self::KNOWN != 0 {
            return Err(ProtocolError::ReservedFlags { flags });
        }
        Ok(HeaderFlags(flags))
    }

    /// The raw flag word.
    ///
    /// # Example
    /// ```
    /// use vhost_user_sync::protocol::HeaderFlags;
    /// assert_eq!(HeaderFlags::REPLY_FLAGS.bits(), 0x5);
    /// ```
    pub fn bits(self) -> u32 {
        self.0
    }

    /// Whether the REPLY bit is set.
    ///
    /// # Example
    /// ```
    /// use vhost_user_sync::protocol::HeaderFlags;
    /// assert!(HeaderFlags::REPLY_FLAGS.is_reply());
    /// ```
    pub fn is_reply(self) -> bool {
        self.0 & Self::REPLY != 0
    }

    /// Whether the NEED_REPLY bit is set.
    ///
    /// # Example
    /// ```
    /// use vhost_user_sync::protocol::HeaderFlags;
    /// assert!(!HeaderFlags::REQUEST.need_reply());
    /// ```
    pub fn need_reply(self) -> bool {
        self.0 & Self::NEED_REPLY != 0
    }

    /// The same flags with NEED_REPLY set.
    ///
    /// # Example
    /// ```
    /// use vhost_user_sync::protocol::HeaderFlags;
    /// assert_eq!(HeaderFlags::REQUEST.with_need_reply().bits(), 0x9);
    /// ```
    pub fn with_need_reply(self) -> Self {
        HeaderFlags(self.0 | Self::NEED_REPLY)
    }
}

/// A decoded message header: request number, flags and payload size.
///
/// Decoding checks only what the header alone can tell (version, reserved bits); the
/// request number and the size are checked against the request type by
/// [`super::RequestShape`].
///
/// # Example
/// ```
/// use vhost_user_sync::protocol::{Header, HeaderFlags};
/// let h = Header { request: 1, flags: HeaderFlags::REQUEST, size: 0 };
/// assert_eq!(Header::decode(&h.encode()).unwrap(), h);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The request number (frontend or backend request, by channel).
    pub request: u32,
    /// The flag word.
    pub flags: HeaderFlags,
    /// Payload bytes that follow the header.
    pub size: u32,
}

impl Header {
    /// Decodes and checks a header.
    ///
    /// # Example
    /// ```
    /// use vhost_user_sync::protocol::Header;
    /// let h = Header::decode(&[15, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]).unwrap();
    /// assert_eq!(h.request, 15);
    /// ```
    pub fn decode(bytes: &[u8; HEADER_SIZE]) -> Result<Self, ProtocolError> {
        let word =
            |i: usize| u32::from_ne_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        Ok(Header {
            request: word(0),
            flags: HeaderFlags::from_bits(word(4))?,
            size: word(8),
        })
    }

    /// Encodes the header.
    ///
    /// # Example
    /// ```
    /// use vhost_user_sync::protocol::{Header, HeaderFlags};
    /// let bytes = Header { request: 3, flags: HeaderFlags::REQUEST, size: 0 }.encode();
    /// assert_eq!(&bytes[..4], &3u32.to_ne_bytes());
    /// ```
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut out = [0u8; HEADER_SIZE];
        out[0..4].copy_from_slice(&self.request.to_ne_bytes());
        out[4..8].copy_from_slice(&self.flags.bits().to_ne_bytes());
        out[8..12].copy_from_slice(&self.size.to_ne_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_every_field() {
        let h = Header {
            request: 43,
            flags: HeaderFlags::REQUEST.with_need_reply(),
            size: 268,
        };
        assert_eq!(Header::decode(&h.encode()), Ok(h));
    }

    #[test]
    fn rejects_version_zero_two_and_three() {
        for v in [0u32, 2, 3] {
            let mut b = [0u8; 12];
            b[4..8].copy_from_slice(&v.to_ne_bytes());
            assert_eq!(
                Header::decode(&b),
                Err(ProtocolError::BadVersion { flags: v })
            );
        }
    }

    #[test]
    fn rejects_every_reserved_bit() {
        for bit in 4..32 {
            let flags = 1 | (1u32 << bit);
            let mut b = [0u8; 12];
            b[4..8].copy_from_slice(&flags.to_ne_bytes());
            assert_eq!(
                Header::decode(&b),
                Err(ProtocolError::ReservedFlags { flags })
            );
        }
    }
}
