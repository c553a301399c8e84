//! Fuzz target: the virtio-net header and control command parsers.
//!
//! Input layout: `[virtio_net_hdr: 12 bytes, frame_len: u32 le, features: u64 le]`,
//! then a control command (class, command, data). `NetHdr::validate` is compared with
//! a model of the rules, and an accepted header must keep its checksum and GSO fields
//! inside the frame; `CtrlCommand::parse` is compared with a model decoder.

use vhost_user_sync_net::features::{CSUM, HOST_ECN, HOST_TSO4, HOST_TSO6, HOST_UFO};
use vhost_user_sync_net::request::{
    CtrlCommand, NetHdr, F_DATA_VALID, F_NEEDS_CSUM, GSO_ECN, GSO_NONE, GSO_TCPV4, GSO_TCPV6,
    GSO_UDP, MAX_FRAME, NET_HDR_LEN,
};

/// Bytes before the control command.
pub const PARAMS: usize = NET_HDR_LEN + 4 + 8;

/// Runs the target on one input.
pub fn run(data: &[u8]) {
    let mut p = [0u8; PARAMS];
    let n = data.len().min(PARAMS);
    p[..n].copy_from_slice(&data[..n]);
    let (hdr_bytes, rest) = p.split_at(NET_HDR_LEN);
    let mut raw = [0u8; NET_HDR_LEN];
    raw.copy_from_slice(hdr_bytes);
    let frame_len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    let mut f = [0u8; 8];
    f.copy_from_slice(&rest[4..12]);
    let features = u64::from_le_bytes(f);

    header(&raw, frame_len, features);
    // Frames at the size limit and just past it.
    header(&raw, frame_len % (MAX_FRAME + 2), features);
    control(&data[n..]);
}

fn header(raw: &[u8; NET_HDR_LEN], frame_len: usize, features: u64) {
    let h = NetHdr::from_bytes(raw);
    assert_eq!(&h.to_bytes(), raw, "header round trip");
    assert_eq!(NetHdr::from_bytes(&h.to_bytes()), h);
    let u = |i: usize| u16::from_le_bytes([raw[i], raw[i + 1]]);
    assert_eq!(
        (h.flags, h.gso_type, h.hdr_len, h.gso_size),
        (raw[0], raw[1], u(2), u(4))
    );
    assert_eq!(
        (h.csum_start, h.csum_offset, h.num_buffers),
        (u(6), u(8), u(10))
    );

    let ok = model_validate(&h, frame_len, features);
    match h.validate(frame_len, features) {
        Ok(()) => {
            assert!(
                ok,
                "accepted {h:?} for {frame_len} bytes, features {features:#x}"
            );
            assert!(frame_len <= MAX_FRAME);
            if h.flags & F_NEEDS_CSUM != 0 {
                // The 2-byte checksum field lies inside the frame.
                let end = usize::from(h.csum_start) + usize::from(h.csum_offset) + 2;
                assert!(end <= frame_len, "checksum at {end} outside {frame_len}");
            }
            if h.gso_type != GSO_NONE {
                assert!(h.gso_size > 0 && usize::from(h.gso_size) <= frame_len);
            }
        }
        Err(e) => assert!(!ok, "refused {h:?} for {frame_len} bytes: {e}"),
    }
}

fn model_validate(h: &NetHdr, frame_len: usize, features: u64) -> bool {
    if frame_len > MAX_FRAME || h.flags & !(F_NEEDS_CSUM | F_DATA_VALID) != 0 {
        return false;
    }
    if h.flags & F_NEEDS_CSUM != 0 {
        let end = u32::from(h.csum_start) + u32::from(h.csum_offset) + 2;
        if features & CSUM == 0 || end as usize > frame_len {
            return false;
        }
    }
    if h.gso_type == GSO_NONE {
        return true;
    }
    let needed = match h.gso_type & !GSO_ECN {
        GSO_TCPV4 => HOST_TSO4,
        GSO_TCPV6 => HOST_TSO6,
        GSO_UDP => HOST_UFO,
        _ => return false,
    };
    if features & needed == 0 || (h.gso_type & GSO_ECN != 0 && features & HOST_ECN == 0) {
        return false;
    }
    h.gso_size != 0 && usize::from(h.gso_size) <= frame_len
}

/// A MAC table: u32 count, then that many 6-byte addresses.
fn model_mac_table(data: &[u8]) -> Option<(Vec<[u8; 6]>, &[u8])> {
    let count = u32::from_le_bytes(data.get(..4)?.try_into().ok()?) as u64;
    let end = 4 + count * 6;
    if (data.len() as u64) < end {
        return None;
    }
    let macs = data[4..end as usize]
        .chunks(6)
        .map(|c| [c[0], c[1], c[2], c[3], c[4], c[5]])
        .collect();
    Some((macs, &data[end as usize..]))
}

fn model_control(bytes: &[u8]) -> Option<CtrlCommand> {
    let (class, cmd, data) = match bytes {
        [class, cmd, data @ ..] => (*class, *cmd, data),
        _ => return None,
    };
    match (class, cmd) {
        (0, 0..=5) if data.len() == 1 => Some(CtrlCommand::RxMode {
            cmd,
            on: data[0] != 0,
        }),
        (1, 1) if data.len() == 6 => Some(CtrlCommand::MacAddr([
            data[0], data[1], data[2], data[3], data[4], data[5],
        ])),
        (1, 0) => {
            let (unicast, rest) = model_mac_table(data)?;
            let (multicast, rest) = model_mac_table(rest)?;
            rest.is_empty()
                .then_some(CtrlCommand::MacTable { unicast, multicast })
        }
        (4, 0) if data.len() == 2 => Some(CtrlCommand::QueuePairs(u16::from_le_bytes([
            data[0], data[1],
        ]))),
        (3, 0) => Some(CtrlCommand::AnnounceAck),
        _ => None,
    }
}

fn control(bytes: &[u8]) {
    let got = CtrlCommand::parse(bytes);
    assert_eq!(
        got.as_ref().ok(),
        model_control(bytes).as_ref(),
        "{bytes:x?}"
    );
    if let Ok(CtrlCommand::MacTable { unicast, multicast }) = got {
        assert_eq!(bytes.len(), 2 + 8 + 6 * (unicast.len() + multicast.len()));
    }
}
