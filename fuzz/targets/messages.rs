//! Fuzz target: the vhost-user message decoders.
//!
//! Input layout: byte 0 picks the mode.
//! - even: one message. Bytes 1..13 are a header, the rest is the body. The header is
//!   decoded and checked against a model of the flag rules; the request's shape rules
//!   (size, fd count) are checked against a model; then every payload decoder runs on
//!   the body and whatever it accepts must survive an encode/decode round trip.
//! - odd: a byte stream. The rest of the input goes through a socket pair into
//!   `read_message`, whose framing is compared with a model parser over the same bytes.

use std::io::Write;
use std::net::Shutdown;
use std::os::unix::net::UnixStream;

use vhost_user_sync::message::{read_message, ReadError};
use vhost_user_sync::protocol::payload::{
    decode_u64, ConfigAccess, DeviceStateTransfer, InflightInfo, LogBase, MemoryRegionDesc,
    MemoryTableDesc, RingFd, SingleRegion, VringAddr, VringState,
};
use vhost_user_sync::protocol::{
    BackendRequest, BodyRule, FdRule, FrontendRequest, Header, ProtocolError, ProtocolFeatures,
    RequestShape, HEADER_SIZE, MAX_FDS, MAX_PAYLOAD_SIZE,
};
use vhost_user_sync::sys::unix::{ConnectionError, SocketPlatformConnection};

/// Stream inputs larger than this are cut (they must fit a socket buffer at once).
const MAX_STREAM: usize = 32 * 1024;

/// Runs the target on one input.
pub fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        one_message(rest);
    } else {
        stream(&rest[..rest.len().min(MAX_STREAM)]);
    }
}

fn word(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Decodes a header and checks it against the flag rules; returns it when valid.
fn check_header(raw: &[u8; HEADER_SIZE]) -> Option<Header> {
    let flags = word(raw, 4);
    let valid = flags & 0x3 == 0x1 && flags & !0xf == 0;
    match Header::decode(raw) {
        Ok(h) => {
            assert!(valid, "accepted flags {flags:#x}");
            assert_eq!(&h.encode(), raw, "header round trip");
            assert_eq!(h.request, word(raw, 0));
            assert_eq!(h.size, word(raw, 8));
            assert_eq!(h.flags.bits(), flags);
            assert_eq!(h.flags.is_reply(), flags & 0x4 != 0);
            assert_eq!(h.flags.need_reply(), flags & 0x8 != 0);
            Some(h)
        }
        Err(e) => {
            assert!(!valid, "refused valid flags {flags:#x}: {e}");
            assert!(matches!(
                e,
                ProtocolError::BadVersion { .. } | ProtocolError::ReservedFlags { .. }
            ));
            None
        }
    }
}

fn one_message(data: &[u8]) {
    let Some((raw, body)) = data.split_first_chunk::<HEADER_SIZE>() else {
        return;
    };
    let Some(header) = check_header(raw) else {
        return;
    };
    // The fd count is not in the bytes; take it from the size word so it varies.
    let fds = header.size as usize % (MAX_FDS + 2);
    if let Ok(req) = FrontendRequest::try_from(header.request) {
        assert_eq!(req.number(), header.request);
        check_shape(req.shape(), body, fds);
    } else {
        assert!(header.request == 0 || header.request > 43);
    }
    if let Ok(req) = BackendRequest::try_from(header.request) {
        assert_eq!(req.number(), header.request);
        check_shape(req.shape(), body, fds);
    } else {
        assert!(header.request == 0 || header.request > 8);
    }
    decode_all(body);
}

/// Checks the size and fd rules of one request against a model.
fn check_shape(shape: RequestShape, body: &[u8], fds: usize) {
    let len = body.len();
    let size_ok = match shape.body {
        BodyRule::Exact(n) => len == n,
        BodyRule::MemoryTable => len >= 40 && (len - 8).is_multiple_of(32) && (len - 8) / 32 <= 8,
        BodyRule::Config => (12..=268).contains(&len),
        BodyRule::AtLeast(n) => len >= n,
    };
    assert_eq!(
        shape.check_size(len).is_ok(),
        size_ok,
        "{} size {len}",
        shape.name
    );
    if size_ok && !matches!(shape.body, BodyRule::AtLeast(_)) {
        // Every size a fixed shape accepts must pass the global cap checked first.
        assert!(
            len <= MAX_PAYLOAD_SIZE as usize,
            "{} size {len}",
            shape.name
        );
    }
    if !size_ok {
        return;
    }
    let per_message = match shape.fds {
        FdRule::PerRegion => (len - 8) / 32,
        FdRule::RingFlag => match RingFd::decode(shape.name, body) {
            Ok(r) => r.fd_count(),
            Err(_) => return,
        },
        _ => 0,
    };
    let fds_ok = match shape.fds {
        FdRule::None => fds == 0,
        FdRule::One => fds == 1,
        FdRule::Optional => fds <= 1,
        FdRule::PerRegion | FdRule::RingFlag => fds == per_message,
    };
    assert_eq!(
        shape.check_fds(fds, per_message).is_ok(),
        fds_ok,
        "{} fds {fds}/{per_message}",
        shape.name
    );
}

fn region_ok(r: &MemoryRegionDesc) -> bool {
    r.memory_size != 0
        && r.guest_phys_addr.checked_add(r.memory_size).is_some()
        && r.userspace_addr.checked_add(r.memory_size).is_some()
        && r.mmap_offset.checked_add(r.memory_size).is_some()
}

/// Reads a region's four native-endian fields from 32 bytes.
fn raw_region(b: &[u8]) -> MemoryRegionDesc {
    let f = |at: usize| {
        let mut r = [0u8; 8];
        r.copy_from_slice(&b[at..at + 8]);
        u64::from_ne_bytes(r)
    };
    MemoryRegionDesc {
        guest_phys_addr: f(0),
        memory_size: f(8),
        userspace_addr: f(16),
        mmap_offset: f(24),
    }
}

/// Runs every payload decoder on `body`; what one accepts must satisfy its field rules
/// and come back unchanged through encode and decode.
fn decode_all(body: &[u8]) {
    const NAME: &str = "FUZZ";

    if let Ok(v) = decode_u64(NAME, body) {
        assert_eq!(v.to_ne_bytes(), body);
        let shown = ProtocolFeatures::from_bits(v).to_string();
        assert!(!shown.is_empty());
        assert_eq!(shown == "(none)", v == 0);
    } else {
        assert_ne!(body.len(), 8);
    }

    if let Ok(s) = VringState::decode(NAME, body) {
        assert_eq!(s.encode(), body);
    }

    if let Ok(r) = RingFd::decode(NAME, body) {
        assert_eq!(r.encode(), body, "ring fd round trip");
        assert_eq!(r.fd_count(), usize::from(!r.no_fd));
    }

    if let Ok(a) = VringAddr::decode(body) {
        assert_eq!(a.encode(), body);
        assert_eq!(a.flags & !VringAddr::F_LOG, 0);
        assert!(a.desc % 16 == 0 && a.avail % 2 == 0 && a.used % 4 == 0);
    }

    if let Ok(l) = LogBase::decode(body) {
        assert_eq!(l.encode(), body);
        assert!(l.mmap_size > 0 && l.mmap_offset.checked_add(l.mmap_size).is_some());
    }

    if let Ok(i) = InflightInfo::decode(NAME, body) {
        let again = i.encode();
        assert_eq!(again.len(), body.len());
        // Bytes 20..24 are padding: the fields are the first 20.
        assert_eq!(again[..20], body[..20]);
        assert_eq!(InflightInfo::decode(NAME, &again), Ok(i));
        assert!(i.mmap_offset.checked_add(i.mmap_size).is_some());
    }

    if let Ok(t) = DeviceStateTransfer::decode(body) {
        assert_eq!(t.encode(), body);
        assert!(t.direction <= 1 && t.phase == 0);
    }

    if let Ok(c) = ConfigAccess::decode(NAME, body) {
        assert_eq!(c.encode(), body);
        assert!(c.payload.len() <= ConfigAccess::MAX_SIZE);
        assert!(u64::from(c.offset) + c.payload.len() as u64 <= ConfigAccess::MAX_SIZE as u64);
        assert!(c.flags <= ConfigAccess::FLAG_MIGRATION);
    }

    match SingleRegion::decode(NAME, body) {
        Ok(r) => {
            assert!(region_ok(&r.0));
            let again = r.encode();
            assert_eq!(again[8..], body[8..]);
            assert_eq!(SingleRegion::decode(NAME, &again), Ok(r));
            assert!(r.0.validate(NAME).is_ok());
        }
        Err(_) if body.len() == SingleRegion::SIZE => {
            // Refused only for a bad region.
            let region = raw_region(&body[8..]);
            assert!(!region_ok(&region), "{region:?} refused");
        }
        Err(_) => {}
    }

    match MemoryTableDesc::decode(body) {
        Ok(t) => {
            let n = t.regions.len();
            assert!((1..=MemoryTableDesc::MAX_REGIONS).contains(&n));
            assert_eq!(body.len(), 8 + 32 * n);
            assert_eq!(body[..4], (n as u32).to_ne_bytes());
            assert!(t.regions.iter().all(region_ok));
            let again = t.encode();
            assert_eq!(again[8..], body[8..]);
            assert_eq!(MemoryTableDesc::decode(&again), Ok(t));
        }
        Err(_) => {
            let num = body.get(..4).map(|b| word(b, 0) as usize);
            if let Some(n @ 1..=8) = num {
                if body.len() == 8 + 32 * n {
                    let all_ok = body[8..]
                        .chunks_exact(32)
                        .all(|c| region_ok(&raw_region(c)));
                    assert!(!all_ok, "valid table refused");
                }
            }
        }
    }
}

/// What the model expects `read_message` to do next.
enum Expect {
    Message { header: Header, body_at: usize },
    TooLarge,
    BadHeader,
    Eof,
}

fn stream(data: &[u8]) {
    let Ok((mut tx, rx)) = UnixStream::pair() else {
        return;
    };
    if tx.write_all(data).is_err() || tx.shutdown(Shutdown::Write).is_err() {
        return;
    }
    let Ok(conn) = SocketPlatformConnection::new(rx) else {
        return;
    };
    let mut at = 0;
    loop {
        let expect = match data.get(at..).and_then(|d| d.first_chunk::<HEADER_SIZE>()) {
            None => Expect::Eof,
            Some(raw) => match check_header(raw) {
                None => Expect::BadHeader,
                Some(h) if h.size > MAX_PAYLOAD_SIZE => Expect::TooLarge,
                Some(h) if at + HEADER_SIZE + h.size as usize > data.len() => Expect::Eof,
                Some(header) => Expect::Message {
                    header,
                    body_at: at + HEADER_SIZE,
                },
            },
        };
        let got = read_message(&conn, false);
        match (expect, got) {
            (Expect::Message { header, body_at }, Ok(Some(msg))) => {
                assert_eq!(msg.header, header);
                assert_eq!(msg.body.len(), header.size as usize);
                assert_eq!(msg.body, data[body_at..body_at + msg.body.len()]);
                assert!(msg.fds.is_empty());
                at = body_at + msg.body.len();
                decode_all(&msg.body);
            }
            (Expect::TooLarge, Err(ReadError::Protocol(ProtocolError::PayloadTooLarge { .. })))
            | (
                Expect::BadHeader,
                Err(ReadError::Protocol(
                    ProtocolError::BadVersion { .. } | ProtocolError::ReservedFlags { .. },
                )),
            )
            | (Expect::Eof, Err(ReadError::Connection(ConnectionError::Disconnect))) => return,
            (_, got) => panic!("read_message at {at} of {}: {got:?}", data.len()),
        }
    }
}
