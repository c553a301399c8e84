//! What a block request is: the 16-byte header, the data or segment area and the status
//! byte, checked against the disk and the negotiated features before anything touches
//! the image.
//!
//! A request chain is laid out as (virtio spec 5.2.6):
//!
//! ```text
//! device-readable:  header (16 bytes) | OUT data, or DISCARD/WRITE_ZEROES segments
//! device-writable:  IN / GET_ID data | status (1 byte, the last writable byte)
//! ```
//!
//! Parsing is arithmetic on lengths and the header; nothing here reads guest memory, so
//! it is easy to test and fuzz. [`Request::parse`] gives the request or the
//! [`RequestError`] whose [`RequestError::status`] goes back to the guest.

use thiserror::Error;

/// Bytes per sector: the unit of `sector` fields, whatever the logical block size.
pub const SECTOR_SIZE: u64 = 512;
/// Bytes of the request header.
pub const HEADER_SIZE: usize = 16;
/// Bytes of one DISCARD / WRITE_ZEROES segment.
pub const SEGMENT_SIZE: usize = 16;
/// Bytes of a GET_ID answer.
pub const ID_BYTES: usize = 20;

/// Request type numbers (`virtio_blk_outhdr.type`).
pub mod kind {
    /// Read.
    pub const IN: u32 = 0;
    /// Write.
    pub const OUT: u32 = 1;
    /// Flush the write cache.
    pub const FLUSH: u32 = 4;
    /// Device id string.
    pub const GET_ID: u32 = 8;
    /// Device lifetime (not supported).
    pub const GET_LIFETIME: u32 = 10;
    /// Discard sectors.
    pub const DISCARD: u32 = 11;
    /// Write zeroes to sectors.
    pub const WRITE_ZEROES: u32 = 13;
    /// Secure erase (not supported).
    pub const SECURE_ERASE: u32 = 14;
}

/// Segment flag: WRITE_ZEROES may deallocate.
pub const SEGMENT_UNMAP: u32 = 1;

/// The status byte written at the end of every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    /// Done.
    Ok = 0,
    /// The request failed or was malformed.
    IoErr = 1,
    /// The request type or a flag is not supported.
    Unsupp = 2,
}

/// The request header, as the guest wrote it.
///
/// # Example
/// ```
/// use vhost_user_sync_blk::request::{kind, RequestHeader};
/// let mut raw = [0u8; 16];
/// raw[8..].copy_from_slice(&7u64.to_le_bytes());
/// let h = RequestHeader::from_bytes(&raw);
/// assert_eq!((h.kind, h.sector), (kind::IN, 7));
/// assert_eq!(RequestHeader::from_bytes(&h.to_bytes()), h);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader {
    /// Request type ([`kind`]).
    pub kind: u32,
    /// The `ioprio` / reserved word.
    pub reserved: u32,
    /// First sector (IN, OUT).
    pub sector: u64,
}

impl RequestHeader {
    /// Decodes the little-endian header.
    pub fn from_bytes(b: &[u8; HEADER_SIZE]) -> Self {
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let mut sector = [0u8; 8];
        sector.copy_from_slice(&b[8..16]);
        RequestHeader {
            kind: u32_at(0),
            reserved: u32_at(4),
            sector: u64::from_le_bytes(sector),
        }
    }

    /// Encodes the header (for frontends and tests).
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[..4].copy_from_slice(&self.kind.to_le_bytes());
        b[4..8].copy_from_slice(&self.reserved.to_le_bytes());
        b[8..].copy_from_slice(&self.sector.to_le_bytes());
        b
    }
}

/// One DISCARD or WRITE_ZEROES range.
///
/// # Example
/// ```
/// use vhost_user_sync_blk::request::Segment;
/// let s = Segment { sector: 8, num_sectors: 16, flags: 1 };
/// assert_eq!(Segment::from_bytes(&s.to_bytes()), s);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// First sector.
    pub sector: u64,
    /// Number of sectors.
    pub num_sectors: u32,
    /// [`SEGMENT_UNMAP`] or 0.
    pub flags: u32,
}

impl Segment {
    /// Decodes a little-endian segment.
    pub fn from_bytes(b: &[u8; SEGMENT_SIZE]) -> Self {
        let mut sector = [0u8; 8];
        sector.copy_from_slice(&b[..8]);
        Segment {
            sector: u64::from_le_bytes(sector),
            num_sectors: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
            flags: u32::from_le_bytes([b[12], b[13], b[14], b[15]]),
        }
    }

    /// Encodes the segment.
    pub fn to_bytes(&self) -> [u8; SEGMENT_SIZE] {
        let mut b = [0u8; SEGMENT_SIZE];
        b[..8].copy_from_slice(&self.sector.to_le_bytes());
        b[8..12].copy_from_slice(&self.num_sectors.to_le_bytes());
        b[12..].copy_from_slice(&self.flags.to_le_bytes());
        b
    }

    /// Checks the segment of a `kind` request (DISCARD or WRITE_ZEROES) against `limits`.
    pub fn check(&self, kind: u32, limits: &Limits) -> Result<(), RequestError> {
        let unknown = self.flags & !SEGMENT_UNMAP;
        if unknown != 0 || (kind == kind::DISCARD && self.flags & SEGMENT_UNMAP != 0) {
            return Err(RequestError::SegmentFlags {
                kind,
                flags: self.flags,
            });
        }
        let max = if kind == kind::DISCARD {
            limits.max_discard_sectors
        } else {
            limits.max_write_zeroes_sectors
        };
        if self.num_sectors > max {
            return Err(RequestError::SegmentTooLarge {
                sectors: self.num_sectors,
                max,
            });
        }
        check_range(self.sector, u64::from(self.num_sectors), limits.capacity)
    }

    /// The byte range on the disk.
    pub fn byte_range(&self) -> (u64, u64) {
        (
            self.sector * SECTOR_SIZE,
            u64::from(self.num_sectors) * SECTOR_SIZE,
        )
    }
}

/// What the device allows right now: the disk's size, whether it is writable, and the
/// request types the driver negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Disk size in 512-byte sectors.
    pub capacity: u64,
    /// Writes of any kind fail.
    pub read_only: bool,
    /// DISCARD was negotiated.
    pub discard: bool,
    /// WRITE_ZEROES was negotiated.
    pub write_zeroes: bool,
    /// Sectors per DISCARD segment.
    pub max_discard_sectors: u32,
    /// Segments per DISCARD request.
    pub max_discard_seg: u32,
    /// Sectors per WRITE_ZEROES segment.
    pub max_write_zeroes_sectors: u32,
    /// Segments per WRITE_ZEROES request.
    pub max_write_zeroes_seg: u32,
}

/// A checked request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Read `len` bytes at `sector` into the writable data area.
    Read {
        /// First sector.
        sector: u64,
        /// Bytes (a multiple of 512).
        len: u32,
    },
    /// Write `len` bytes of the readable data area at `sector`.
    Write {
        /// First sector.
        sector: u64,
        /// Bytes (a multiple of 512).
        len: u32,
    },
    /// Make completed writes durable.
    Flush,
    /// Write the device id into `len` bytes.
    GetId {
        /// Bytes of the data area (the id is padded or cut to it).
        len: u32,
    },
    /// Deallocate `count` segments (read and checked one by one with [`Segment::check`]).
    Discard {
        /// Number of segments that follow the header.
        count: u32,
    },
    /// Zero `count` segments.
    WriteZeroes {
        /// Number of segments that follow the header.
        count: u32,
    },
}

/// Why a request was refused; [`RequestError::status`] is what the guest is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum RequestError {
    /// No device-writable byte for the status.
    #[error("no device-writable status byte")]
    NoStatus,
    /// The readable part cannot hold the header.
    #[error("header needs {HEADER_SIZE} readable bytes, the chain has {readable}")]
    ShortHeader {
        /// Readable bytes in the chain.
        readable: u32,
    },
    /// An unknown or unsupported request type.
    #[error("request type {kind} not supported")]
    Unsupported {
        /// The type.
        kind: u32,
    },
    /// A write of some kind to a read-only disk.
    #[error("request type {kind} on a read-only disk")]
    ReadOnly {
        /// The type.
        kind: u32,
    },
    /// The data area is not a whole number of sectors.
    #[error("data length {len} is not a multiple of {SECTOR_SIZE}")]
    PartialSector {
        /// Bytes of data.
        len: u32,
    },
    /// The request reaches past the end of the disk (or past 2^64).
    #[error("sectors {sector}+{sectors} beyond the capacity of {capacity} sectors")]
    BeyondCapacity {
        /// First sector.
        sector: u64,
        /// Number of sectors.
        sectors: u64,
        /// Disk size in sectors.
        capacity: u64,
    },
    /// The segment area is empty, not whole segments, or has too many.
    #[error("segment area of {len} bytes (at most {max} segments of {SEGMENT_SIZE} bytes)")]
    BadSegments {
        /// Bytes of segments.
        len: u32,
        /// Segments allowed.
        max: u32,
    },
    /// A segment has unknown flags, or UNMAP on a DISCARD.
    #[error("request type {kind}: segment flags {flags:#x} not supported")]
    SegmentFlags {
        /// The request type.
        kind: u32,
        /// The flags.
        flags: u32,
    },
    /// A segment covers more sectors than the device allows.
    #[error("segment of {sectors} sectors (at most {max})")]
    SegmentTooLarge {
        /// Sectors in the segment.
        sectors: u32,
        /// Sectors allowed.
        max: u32,
    },
}

impl RequestError {
    /// The status the guest gets for this error.
    pub fn status(&self) -> Status {
        match self {
            RequestError::Unsupported { .. } | RequestError::SegmentFlags { .. } => Status::Unsupp,
            _ => Status::IoErr,
        }
    }
}

fn check_range(sector: u64, sectors: u64, capacity: u64) -> Result<(), RequestError> {
    match sector.checked_add(sectors) {
        Some(end) if end <= capacity => Ok(()),
        _ => Err(RequestError::BeyondCapacity {
            sector,
            sectors,
            capacity,
        }),
    }
}

impl Request {
    /// Checks a request whose chain has `readable` device-readable bytes (the header
    /// first) and `writable` device-writable bytes (the status byte last).
    ///
    /// # Example
    /// ```
    /// use vhost_user_sync_blk::request::*;
    /// let limits = Limits { capacity: 8, read_only: false, discard: true, write_zeroes: true,
    ///     max_discard_sectors: 8, max_discard_seg: 1, max_write_zeroes_sectors: 8,
    ///     max_write_zeroes_seg: 1 };
    /// let read = RequestHeader { kind: kind::IN, reserved: 0, sector: 6 };
    /// assert_eq!(Request::parse(&read, 16, 1025, &limits), Ok(Request::Read { sector: 6, len: 1024 }));
    /// // One sector more would end past the disk.
    /// assert_eq!(Request::parse(&read, 16, 1537, &limits).unwrap_err().status(), Status::IoErr);
    /// ```
    pub fn parse(
        header: &RequestHeader,
        readable: u32,
        writable: u32,
        limits: &Limits,
    ) -> Result<Request, RequestError> {
        if writable == 0 {
            return Err(RequestError::NoStatus);
        }
        if (readable as usize) < HEADER_SIZE {
            return Err(RequestError::ShortHeader { readable });
        }
        let out_len = readable - HEADER_SIZE as u32;
        let in_len = writable - 1;
        let writes = matches!(header.kind, kind::OUT | kind::DISCARD | kind::WRITE_ZEROES);
        if writes && limits.read_only {
            return Err(RequestError::ReadOnly { kind: header.kind });
        }
        match header.kind {
            kind::IN | kind::OUT => {
                let len = if header.kind == kind::IN {
                    in_len
                } else {
                    out_len
                };
                if !u64::from(len).is_multiple_of(SECTOR_SIZE) {
                    return Err(RequestError::PartialSector { len });
                }
                check_range(header.sector, u64::from(len) / SECTOR_SIZE, limits.capacity)?;
                let sector = header.sector;
                Ok(if header.kind == kind::IN {
                    Request::Read { sector, len }
                } else {
                    Request::Write { sector, len }
                })
            }
            kind::FLUSH => Ok(Request::Flush),
            kind::GET_ID => Ok(Request::GetId { len: in_len }),
            kind::DISCARD if limits.discard => Ok(Request::Discard {
                count: segment_count(out_len, limits.max_discard_seg)?,
            }),
            kind::WRITE_ZEROES if limits.write_zeroes => Ok(Request::WriteZeroes {
                count: segment_count(out_len, limits.max_write_zeroes_seg)?,
            }),
            kind => Err(RequestError::Unsupported { kind }),
        }
    }
}

fn segment_count(len: u32, max: u32) -> Result<u32, RequestError> {
    let count = len / SEGMENT_SIZE as u32;
    if len == 0 || !len.is_multiple_of(SEGMENT_SIZE as u32) || count > max {
        return Err(RequestError::BadSegments { len, max });
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        capacity: 100,
        read_only: false,
        discard: true,
        write_zeroes: true,
        max_discard_sectors: 50,
        max_discard_seg: 2,
        max_write_zeroes_sectors: 50,
        max_write_zeroes_seg: 2,
    };

    fn header(kind: u32, sector: u64) -> RequestHeader {
        RequestHeader {
            kind,
            reserved: 0,
            sector,
        }
    }

    #[test]
    fn reads_and_writes_within_the_disk() {
        assert_eq!(
            Request::parse(&header(kind::OUT, 99), 16 + 512, 1, &LIMITS),
            Ok(Request::Write {
                sector: 99,
                len: 512
            })
        );
        assert_eq!(
            Request::parse(&header(kind::IN, 0), 16, 1 + 100 * 512, &LIMITS),
            Ok(Request::Read {
                sector: 0,
                len: 51200
            })
        );
        // Zero-length reads are in range anywhere up to the end.
        assert!(Request::parse(&header(kind::IN, 100), 16, 1, &LIMITS).is_ok());
    }

    #[test]
    fn malformed_requests_get_the_status_the_spec_names() {
        let cases = [
            (
                header(kind::IN, 0),
                15,
                513,
                RequestError::ShortHeader { readable: 15 },
            ),
            (header(kind::IN, 0), 16, 0, RequestError::NoStatus),
            (
                header(kind::IN, 0),
                16,
                100,
                RequestError::PartialSector { len: 99 },
            ),
            (
                header(kind::OUT, 0),
                17,
                1,
                RequestError::PartialSector { len: 1 },
            ),
            (
                header(kind::IN, 100),
                16,
                513,
                RequestError::BeyondCapacity {
                    sector: 100,
                    sectors: 1,
                    capacity: 100,
                },
            ),
            (
                header(kind::OUT, u64::MAX),
                16 + 512,
                1,
                RequestError::BeyondCapacity {
                    sector: u64::MAX,
                    sectors: 1,
                    capacity: 100,
                },
            ),
            (header(99, 0), 16, 1, RequestError::Unsupported { kind: 99 }),
            (
                header(kind::GET_LIFETIME, 0),
                16,
                1,
                RequestError::Unsupported {
                    kind: kind::GET_LIFETIME,
                },
            ),
            (
                header(kind::DISCARD, 0),
                16 + 48,
                1,
                RequestError::BadSegments { len: 48, max: 2 },
            ),
            (
                header(kind::WRITE_ZEROES, 0),
                16 + 8,
                1,
                RequestError::BadSegments { len: 8, max: 2 },
            ),
        ];
        for (h, r, w, want) in cases {
            assert_eq!(
                Request::parse(&h, r, w, &LIMITS),
                Err(want),
                "{h:?} {r} {w}"
            );
        }
        assert_eq!(
            RequestError::Unsupported { kind: 3 }.status(),
            Status::Unsupp
        );
        assert_eq!(RequestError::NoStatus.status(), Status::IoErr);
    }

    #[test]
    fn read_only_disks_refuse_every_kind_of_write() {
        let ro = Limits {
            read_only: true,
            ..LIMITS
        };
        for k in [kind::OUT, kind::DISCARD, kind::WRITE_ZEROES] {
            assert_eq!(
                Request::parse(&header(k, 0), 16 + 512, 1, &ro),
                Err(RequestError::ReadOnly { kind: k })
            );
        }
        assert!(Request::parse(&header(kind::IN, 0), 16, 513, &ro).is_ok());
        assert_eq!(
            Request::parse(&header(kind::FLUSH, 0), 16, 1, &ro),
            Ok(Request::Flush)
        );
    }

    #[test]
    fn discard_and_write_zeroes_need_negotiation() {
        let plain = Limits {
            discard: false,
            write_zeroes: false,
            ..LIMITS
        };
        for k in [kind::DISCARD, kind::WRITE_ZEROES] {
            assert_eq!(
                Request::parse(&header(k, 0), 32, 1, &plain),
                Err(RequestError::Unsupported { kind: k })
            );
        }
    }

    #[test]
    fn segments_are_checked_one_by_one() {
        let ok = Segment {
            sector: 50,
            num_sectors: 50,
            flags: 0,
        };
        assert_eq!(ok.check(kind::DISCARD, &LIMITS), Ok(()));
        let unmap = Segment {
            flags: SEGMENT_UNMAP,
            ..ok
        };
        assert_eq!(unmap.check(kind::WRITE_ZEROES, &LIMITS), Ok(()));
        assert_eq!(
            unmap.check(kind::DISCARD, &LIMITS).unwrap_err().status(),
            Status::Unsupp
        );
        let odd = Segment { flags: 4, ..ok };
        assert_eq!(
            odd.check(kind::WRITE_ZEROES, &LIMITS).unwrap_err().status(),
            Status::Unsupp
        );
        let past = Segment { sector: 51, ..ok };
        assert_eq!(
            past.check(kind::DISCARD, &LIMITS).unwrap_err().status(),
            Status::IoErr
        );
        let big = Segment {
            sector: 0,
            num_sectors: 51,
            flags: 0,
        };
        assert_eq!(
            big.check(kind::DISCARD, &LIMITS),
            Err(RequestError::SegmentTooLarge {
                sectors: 51,
                max: 50
            })
        );
        let wrap = Segment {
            sector: u64::MAX,
            num_sectors: 1,
            flags: 0,
        };
        assert!(wrap.check(kind::DISCARD, &LIMITS).is_err());
    }
}
