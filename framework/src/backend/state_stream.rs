//! The stream a device's state travels in through SET_DEVICE_STATE_FD's pipe: the
//! framework's envelope around the bytes `Device::save_state` made and those each worker's
//! `QueueWorker::save_state` made, checked whole before the device or a worker sees any
//! of it.
//!
//! ```text
//! magic "VUSD" | u16 version (2) | u16 worker sections | u32 payload length | payload | u64 FNV-1a of the payload
//! payload: u32 device length | device bytes | per worker section: u32 length | bytes
//! ```
//! (little-endian), so a truncated, oversized, foreign or corrupted stream is refused
//! with what is wrong, and the device is left as it was. Version 1 streams (the payload
//! is the device's bytes, no worker sections, the u16 reserved as 0) are read too.

/// The envelope's first bytes.
pub const MAGIC: [u8; 4] = *b"VUSD";
/// The envelope's version, as written.
pub const VERSION: u16 = 2;
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
    #[error("device state stream version {version} (this build reads 1 and {VERSION})")]
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
    /// The sections inside the payload do not add up to it.
    #[error("device state section {section} of {sections}: {why}")]
    BadSection {
        /// Which section (0: the device's, then one per worker).
        section: usize,
        /// How many the stream says there are.
        sections: usize,
        /// What is wrong.
        why: &'static str,
    },
    /// A version 1 stream with something in the reserved field.
    #[error("device state stream version 1 with {value:#x} in its reserved field")]
    Reserved {
        /// The value found.
        value: u16,
    },
}

/// A checked stream's parts: the device's bytes and each worker's (none when no
/// worker saved anything).
#[derive(Debug, PartialEq, Eq)]
pub struct StateParts<'a> {
    /// What `Device::save_state` made.
    pub device: &'a [u8],
    /// What each worker's `QueueWorker::save_state` made, by worker index.
    pub workers: Vec<&'a [u8]>,
}

/// Wraps a device's state (and no worker sections) in the envelope.
///
/// ```
/// use vhost_user_sync::backend::state_stream::{decode, encode};
/// let stream = encode(b"counter=7");
/// let parts = decode(&stream).unwrap();
/// assert_eq!(parts.device, b"counter=7");
/// assert!(parts.workers.is_empty());
/// assert!(decode(&stream[..stream.len() - 1]).is_err());
/// ```
pub fn encode(device: &[u8]) -> Vec<u8> {
    encode_parts(device, &[])
}

/// Wraps a device's state and its workers' in the envelope. Workers that all saved
/// nothing get no sections, so such a stream loads into a device with any number of
/// workers.
///
/// ```
/// use vhost_user_sync::backend::state_stream::{decode, encode_parts};
/// let stream = encode_parts(b"mac", &[b"seq=4".to_vec(), Vec::new()]);
/// let parts = decode(&stream).unwrap();
/// assert_eq!(parts.device, b"mac");
/// assert_eq!(parts.workers, [&b"seq=4"[..], &b""[..]]);
/// ```
///
/// # Panics
/// With more than 65535 workers (a device has at most one per queue).
pub fn encode_parts(device: &[u8], workers: &[Vec<u8>]) -> Vec<u8> {
    let workers = if workers.iter().all(Vec::is_empty) {
        &[][..]
    } else {
        workers
    };
    let sections = u16::try_from(workers.len()).expect("at most 65535 workers");
    let mut payload =
        Vec::with_capacity(4 + device.len() + workers.iter().map(|w| 4 + w.len()).sum::<usize>());
    for part in std::iter::once(device).chain(workers.iter().map(Vec::as_slice)) {
        payload.extend_from_slice(&(part.len() as u32).to_le_bytes());
        payload.extend_from_slice(part);
    }
    envelope(VERSION, sections, &payload)
}

/// The header, `payload` and its checksum.
fn envelope(version: u16, sections: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + OVERHEAD);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&sections.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(&fnv1a(payload).to_le_bytes());
    out
}

/// Checks the envelope and its sections and returns them.
pub fn decode(stream: &[u8]) -> Result<StateParts<'_>, StateStreamError> {
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
    if version != 1 && version != VERSION {
        return Err(StateStreamError::UnsupportedVersion { version });
    }
    let sections = u16::from_le_bytes([stream[6], stream[7]]);
    if version == 1 && sections != 0 {
        return Err(StateStreamError::Reserved { value: sections });
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
    if version == 1 {
        return Ok(StateParts {
            device: payload,
            workers: Vec::new(),
        });
    }
    split_sections(payload, usize::from(sections))
}

/// The device's section and `workers` more, which must fill `payload` exactly.
fn split_sections(payload: &[u8], workers: usize) -> Result<StateParts<'_>, StateStreamError> {
    let sections = workers + 1;
    let bad = |section, why| StateStreamError::BadSection {
        section,
        sections,
        why,
    };
    let mut rest = payload;
    let mut parts = Vec::with_capacity(sections);
    for section in 0..sections {
        let (len, after) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| bad(section, "no room for its length"))?;
        let len = u32::from_le_bytes(*len) as usize;
        if len > after.len() {
            return Err(bad(section, "longer than what is left of the payload"));
        }
        let (part, after) = after.split_at(len);
        parts.push(part);
        rest = after;
    }
    if !rest.is_empty() {
        return Err(bad(sections - 1, "bytes left after the last section"));
    }
    let device = parts.remove(0);
    Ok(StateParts {
        device,
        workers: parts,
    })
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
        assert_eq!(decode(&good).unwrap().device, b"state");
        assert_eq!(decode(&encode(&[])).unwrap().device, b"");
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
        version[4] = 3;
        assert_eq!(
            decode(&version),
            Err(StateStreamError::UnsupportedVersion { version: 3 })
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

    #[test]
    fn worker_sections_round_trip_and_must_fill_the_payload() {
        let workers = [b"one".to_vec(), Vec::new(), b"three".to_vec()];
        let stream = encode_parts(b"dev", &workers);
        let parts = decode(&stream).unwrap();
        assert_eq!(parts.device, b"dev");
        assert_eq!(parts.workers, [&b"one"[..], b"", b"three"]);
        // Workers that saved nothing add no sections.
        let quiet = encode_parts(b"dev", &[Vec::new(), Vec::new()]);
        assert_eq!(quiet, encode(b"dev"));
        assert!(decode(&quiet).unwrap().workers.is_empty());

        let section = |sections: u16, payload: &[u8]| {
            decode(&envelope(2, sections, payload)).map(|parts| parts.workers.len())
        };
        // The device's length runs past the payload.
        assert!(matches!(
            section(0, &[9, 0, 0, 0, 1]),
            Err(StateStreamError::BadSection { section: 0, .. })
        ));
        // One worker section announced, none there.
        assert!(matches!(
            section(1, &[1, 0, 0, 0, 7]),
            Err(StateStreamError::BadSection { section: 1, .. })
        ));
        // A worker's length cut short.
        assert!(matches!(
            section(1, &[0, 0, 0, 0, 2, 0]),
            Err(StateStreamError::BadSection { section: 1, .. })
        ));
        // Bytes after the last section.
        assert!(matches!(
            section(0, &[0, 0, 0, 0, 5]),
            Err(StateStreamError::BadSection { section: 0, .. })
        ));
        assert!(section(0, &[]).is_err(), "not even the device's length");
        // Many sections announced in a small payload fail at once, never allocate them.
        assert!(section(u16::MAX, &[0, 0, 0, 0]).is_err());
    }

    #[test]
    fn a_version_1_stream_is_the_device_state_alone() {
        let v1 = envelope(1, 0, b"old state");
        let parts = decode(&v1).unwrap();
        assert_eq!(parts.device, b"old state");
        assert!(parts.workers.is_empty());
        assert_eq!(
            decode(&envelope(1, 2, b"old state")),
            Err(StateStreamError::Reserved { value: 2 })
        );
    }
}
