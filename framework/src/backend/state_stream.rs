//! The stream a device's state travels in through SET_DEVICE_STATE_FD's pipe: the
//! framework's envelope around the bytes `Device::save_state` made, checked whole
//! before `Device::load_state` sees any of it.
//!
//! ```text
//! magic "VUSD" | u16 version (1) | u16 reserved (0) | u32 payload length | payload | u64 FNV-1a of the payload
//! ```
//! (little-endian), so a truncated, oversized, foreign or corrupted stream is refused
//! with what is wrong, and the device is left as it was.

/// The envelope's first bytes.
pub const MAGIC: [u8; 4] = *b"VUSD";
/// The envelope's version.
pub const VERSION: u16 = 1;
/// The largest payload accepted (a device state is small; this bounds what a frontend
/// can make the backend buffer).
pub const MAX_PAYLOAD: usize = 16 << 20;
/// Bytes around the payload.
pub const OVERHEAD: usize = 12 + 8;

/// Why a received stream was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StateStreamError {
    /// Shorter than the envelope says.
    #[error("device state stream truncated: {len} bytes, {needed} needed")]
    Truncated {
        /// Bytes received.
        len: usize,
        /// Bytes the envelope needs.
        needed: usize,
    },
    /// Not our envelope.
    #[error("device state stream does not start with \"VUSD\" ({found:02x?})")]
    BadMagic {
        /// The first bytes found.
        found: [u8; 4],
    },
    /// An envelope version this build does not know.
    #[error("device state stream version {version} (this build reads {VERSION})")]
    UnsupportedVersion {
        /// The version found.
        version: u16,
    },
    /// More than [`MAX_PAYLOAD`].
    #[error("device state of {len} bytes is over the limit of {MAX_PAYLOAD}")]
    Oversized {
        /// The length declared or received.
        len: usize,
    },
    /// Bytes after the checksum.
    #[error("device state stream has {extra} bytes after its end")]
    TrailingBytes {
        /// How many.
        extra: usize,
    },
    /// The payload does not match its checksum.
    #[error(
        "device state checksum mismatch: stream says {expected:#018x}, payload has {actual:#018x}"
    )]
    Checksum {
        /// From the stream.
        expected: u64,
        /// Computed.
        actual: u64,
    },
}

/// Wraps `payload` in the envelope.
///
/// ```
/// use vhost_user_sync::backend::state_stream::{decode, encode};
/// let stream = encode(b"counter=7");
/// assert_eq!(decode(&stream), Ok(&b"counter=7"[..]));
/// assert!(decode(&stream[..stream.len() - 1]).is_err());
/// ```
pub fn encode(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + OVERHEAD);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(&fnv1a(payload).to_le_bytes());
    out
}

/// Checks the envelope and returns the payload.
pub fn decode(stream: &[u8]) -> Result<&[u8], StateStreamError> {
    if stream.len() < 12 {
        return Err(StateStreamError::Truncated {
            len: stream.len(),
            needed: OVERHEAD,
        });
    }
    let found = [stream[0], stream[1], stream[2], stream[3]];
    if found != MAGIC {
        return Err(StateStreamError::BadMagic { found });
    }
    let version = u16::from_le_bytes([stream[4], stream[5]]);
    if version != VERSION {
        return Err(StateStreamError::UnsupportedVersion { version });
    }
    let len = u32::from_le_bytes([stream[8], stream[9], stream[10], stream[11]]) as usize;
    if len > MAX_PAYLOAD {
        return Err(StateStreamError::Oversized { len });
    }
    let needed = OVERHEAD + len;
    if stream.len() < needed {
        return Err(StateStreamError::Truncated {
            len: stream.len(),
            needed,
        });
    }
    if stream.len() > needed {
        return Err(StateStreamError::TrailingBytes {
            extra: stream.len() - needed,
        });
    }
    let payload = &stream[12..12 + len];
    let mut sum = [0u8; 8];
    sum.copy_from_slice(&stream[12 + len..needed]);
    let expected = u64::from_le_bytes(sum);
    let actual = fnv1a(payload);
    if expected != actual {
        return Err(StateStreamError::Checksum { expected, actual });
    }
    Ok(payload)
}

/// 64-bit FNV-1a: catches a corrupted stream (not an attacker: the frontend that sends
/// it could send any valid stream anyway).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_damage_is_refused_with_its_reason() {
        let good = encode(b"state");
        assert_eq!(decode(&good), Ok(&b"state"[..]));
        assert_eq!(decode(&encode(&[])), Ok(&[][..]));
        for cut in 0..good.len() {
            assert!(matches!(
                decode(&good[..cut]),
                Err(StateStreamError::Truncated { .. })
            ));
        }
        let mut long = good.clone();
        long.push(0);
        assert_eq!(
            decode(&long),
            Err(StateStreamError::TrailingBytes { extra: 1 })
        );
        let mut magic = good.clone();
        magic[0] = b'X';
        assert!(matches!(
            decode(&magic),
            Err(StateStreamError::BadMagic { .. })
        ));
        let mut version = good.clone();
        version[4] = 2;
        assert_eq!(
            decode(&version),
            Err(StateStreamError::UnsupportedVersion { version: 2 })
        );
        let mut flipped = good.clone();
        flipped[13] ^= 1;
        assert!(matches!(
            decode(&flipped),
            Err(StateStreamError::Checksum { .. })
        ));
        let mut huge = good.clone();
        huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode(&huge),
            Err(StateStreamError::Oversized { .. })
        ));
        // FNV-1a's published test value for "a".
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
