//! Fuzz target: the virtio-blk request parser.
//!
//! Input layout: `[header: 16 bytes, readable: u32 le, writable: u32 le, capacity: u64
//! le, flags: u8 (1 read-only, 2 discard, 4 write-zeroes), max_discard_sectors,
//! max_discard_seg, max_write_zeroes_sectors, max_write_zeroes_seg: u32 le each]`, then
//! the segments of a DISCARD / WRITE_ZEROES request. `Request::parse` and
//! `Segment::check` are compared with a model of the rules (including which status the
//! guest gets), and an accepted request must lie inside the disk.

use vhost_user_sync_blk::request::{
    kind, Limits, Request, RequestHeader, Segment, Status, HEADER_SIZE, SECTOR_SIZE, SEGMENT_SIZE,
    SEGMENT_UNMAP,
};

/// Bytes before the segments.
pub const PARAMS: usize = HEADER_SIZE + 4 + 4 + 8 + 1 + 4 * 4;
/// Segments checked per input at most.
const MAX_SEGMENTS: usize = 4096;

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Runs the target on one input.
pub fn run(data: &[u8]) {
    let mut p = [0u8; PARAMS];
    let n = data.len().min(PARAMS);
    p[..n].copy_from_slice(&data[..n]);
    let mut raw = [0u8; HEADER_SIZE];
    raw.copy_from_slice(&p[..HEADER_SIZE]);
    let header = RequestHeader::from_bytes(&raw);
    assert_eq!(header.to_bytes(), raw, "header round trip");

    let at = HEADER_SIZE;
    let readable = le32(&p, at);
    let writable = le32(&p, at + 4);
    let mut cap = [0u8; 8];
    cap.copy_from_slice(&p[at + 8..at + 16]);
    let flags = p[at + 16];
    let limits = Limits {
        // A disk's size in bytes fits 64 bits.
        capacity: u64::from_le_bytes(cap) % (u64::MAX / SECTOR_SIZE + 1),
        read_only: flags & 1 != 0,
        discard: flags & 2 != 0,
        write_zeroes: flags & 4 != 0,
        max_discard_sectors: le32(&p, at + 17),
        max_discard_seg: le32(&p, at + 21),
        max_write_zeroes_sectors: le32(&p, at + 25),
        max_write_zeroes_seg: le32(&p, at + 29),
    };

    let got = Request::parse(&header, readable, writable, &limits);
    let expect = model_parse(&header, readable, writable, &limits);
    assert_eq!(
        got.map_err(|e| e.status()),
        expect,
        "{header:?} readable {readable} writable {writable} {limits:?}"
    );
    let capacity_bytes = u128::from(limits.capacity) * u128::from(SECTOR_SIZE);
    match got {
        Ok(Request::Read { sector, len }) | Ok(Request::Write { sector, len }) => {
            assert_eq!(u64::from(len) % SECTOR_SIZE, 0);
            let end = u128::from(sector) * u128::from(SECTOR_SIZE) + u128::from(len);
            assert!(end <= capacity_bytes, "request ends past the disk");
            let data_area = if header.kind == kind::IN {
                writable - 1
            } else {
                readable - HEADER_SIZE as u32
            };
            assert_eq!(len, data_area);
        }
        Ok(Request::Discard { count }) | Ok(Request::WriteZeroes { count }) => {
            assert!(count > 0);
            assert_eq!(
                u64::from(count) * SEGMENT_SIZE as u64,
                u64::from(readable) - HEADER_SIZE as u64
            );
            let segments = &data[n..];
            for raw in segments
                .chunks_exact(SEGMENT_SIZE)
                .take((count as usize).min(MAX_SEGMENTS))
            {
                let mut b = [0u8; SEGMENT_SIZE];
                b.copy_from_slice(raw);
                segment(header.kind, &b, &limits);
            }
        }
        _ => {}
    }
    // Segments are checked for both kinds whatever the request was.
    if let Some(raw) = data.get(n..n + SEGMENT_SIZE) {
        let mut b = [0u8; SEGMENT_SIZE];
        b.copy_from_slice(raw);
        segment(kind::DISCARD, &b, &limits);
        segment(kind::WRITE_ZEROES, &b, &limits);
    }
}

fn model_parse(
    h: &RequestHeader,
    readable: u32,
    writable: u32,
    limits: &Limits,
) -> Result<Request, Status> {
    if writable == 0 || readable < HEADER_SIZE as u32 {
        return Err(Status::IoErr);
    }
    let out_len = readable - HEADER_SIZE as u32;
    let in_len = writable - 1;
    if limits.read_only && [kind::OUT, kind::DISCARD, kind::WRITE_ZEROES].contains(&h.kind) {
        return Err(Status::IoErr);
    }
    let segments = |len: u32, max: u32| {
        let count = len / SEGMENT_SIZE as u32;
        if len == 0 || !len.is_multiple_of(SEGMENT_SIZE as u32) || count > max {
            Err(Status::IoErr)
        } else {
            Ok(count)
        }
    };
    match h.kind {
        kind::IN | kind::OUT => {
            let len = if h.kind == kind::IN { in_len } else { out_len };
            let sectors = u64::from(len) / SECTOR_SIZE;
            if u64::from(len) % SECTOR_SIZE != 0
                || h.sector
                    .checked_add(sectors)
                    .is_none_or(|end| end > limits.capacity)
            {
                return Err(Status::IoErr);
            }
            Ok(if h.kind == kind::IN {
                Request::Read {
                    sector: h.sector,
                    len,
                }
            } else {
                Request::Write {
                    sector: h.sector,
                    len,
                }
            })
        }
        kind::FLUSH => Ok(Request::Flush),
        kind::GET_ID => Ok(Request::GetId { len: in_len }),
        kind::DISCARD if limits.discard => Ok(Request::Discard {
            count: segments(out_len, limits.max_discard_seg)?,
        }),
        kind::WRITE_ZEROES if limits.write_zeroes => Ok(Request::WriteZeroes {
            count: segments(out_len, limits.max_write_zeroes_seg)?,
        }),
        _ => Err(Status::Unsupp),
    }
}

fn segment(request: u32, raw: &[u8; SEGMENT_SIZE], limits: &Limits) {
    let s = Segment::from_bytes(raw);
    assert_eq!(&s.to_bytes(), raw, "segment round trip");
    let (max, unmap_ok) = if request == kind::DISCARD {
        (limits.max_discard_sectors, false)
    } else {
        (limits.max_write_zeroes_sectors, true)
    };
    let expect = if s.flags & !SEGMENT_UNMAP != 0 || (!unmap_ok && s.flags & SEGMENT_UNMAP != 0) {
        Err(Status::Unsupp)
    } else if s.num_sectors > max
        || s.sector
            .checked_add(s.num_sectors.into())
            .is_none_or(|end| end > limits.capacity)
    {
        Err(Status::IoErr)
    } else {
        Ok(())
    };
    let got = s.check(request, limits);
    assert_eq!(got.map_err(|e| e.status()), expect, "{s:?} {limits:?}");
    if got.is_ok() {
        let (offset, len) = s.byte_range();
        let end = u128::from(offset) + u128::from(len);
        assert!(end <= u128::from(limits.capacity) * u128::from(SECTOR_SIZE));
        assert_eq!(
            u128::from(offset),
            u128::from(s.sector) * u128::from(SECTOR_SIZE)
        );
    }
}
