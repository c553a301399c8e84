//! Hostile rings: what a guest can do with descriptors, chains, indirect tables, the
//! avail ring, and the headers inside buffers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use vhost_user_sync::queue::Descriptor;
use vhost_user_sync_net::request::{NetHdr, NET_HDR_LEN};

use crate::hostile::{blk_outhdr, class, expect_alive, Case, Ctx, Kind, Rings, ALL, BLK, NET};

const NEXT: u16 = Descriptor::F_NEXT;
const WRITE: u16 = Descriptor::F_WRITE;
const INDIRECT: u16 = Descriptor::F_INDIRECT;

pub static CASES: &[Case] = &[
    case!(descriptor_outside_guest_memory, class::DESC_OUTSIDE, ALL),
    case!(descriptor_address_overflows, class::DESC_OUTSIDE, ALL),
    case!(
        descriptor_straddles_the_end_of_memory,
        class::DESC_OUTSIDE,
        ALL
    ),
    case!(descriptor_zero_length, class::DESC_OUTSIDE, ALL),
    case!(chain_loops_on_itself, class::CHAINS, ALL),
    case!(chain_loops_through_the_whole_table, class::CHAINS, ALL),
    case!(chain_next_out_of_range, class::CHAINS, ALL),
    case!(chain_of_the_full_queue_size_is_served, class::CHAINS, ALL),
    case!(chain_readable_after_writable, class::CHAINS, ALL),
    case!(
        avail_head_out_of_range_breaks_only_the_ring,
        class::CHAINS,
        ALL
    ),
    case!(
        avail_index_runs_ahead_breaks_only_the_ring,
        class::CHAINS,
        ALL
    ),
    case!(indirect_nested, class::INDIRECT, ALL),
    case!(indirect_zero_length, class::INDIRECT, ALL),
    case!(indirect_malformed_tables, class::INDIRECT, ALL),
    case!(indirect_table_loops, class::INDIRECT, ALL),
    case!(descriptor_changed_after_validation, class::TOCTOU, ALL),
    case!(
        net_header_split_across_many_descriptors,
        class::HEADERS,
        NET
    ),
    case!(net_header_shorter_than_required, class::HEADERS, NET),
    case!(net_rx_buffer_shorter_than_the_header, class::HEADERS, NET),
    case!(net_offload_fields_beyond_the_frame, class::OFFLOAD, NET),
    case!(net_header_changed_after_validation, class::TOCTOU, NET),
    case!(
        blk_header_split_across_many_descriptors,
        class::HEADERS,
        BLK
    ),
    case!(blk_header_shorter_than_required, class::HEADERS, BLK),
    case!(blk_sector_beyond_the_disk, class::HEADERS, BLK),
];

/// Flags of a data buffer for `kind`: device-writable for rng and blk, readable for net TX.
fn data_flags(kind: Kind) -> u16 {
    if kind == Kind::Net {
        0
    } else {
        WRITE
    }
}

/// Publishes head 0 (descriptors written by the caller) and expects it back with
/// length 0 (refused), then a valid chain served on the same ring.
fn expect_refused(r: &mut Rings) {
    r.offer(0);
    let used = r.used();
    assert_eq!((used.id, used.len), (0, 0), "a bad chain was used");
    r.good_chain();
}

/// One bad descriptor as the whole chain.
fn bad_single(ctx: &Ctx<'_>, addr: u64, len: u32) {
    let mut r = Rings::open(ctx.kind, ctx.socket);
    r.desc(0, addr, len, data_flags(ctx.kind), 0);
    expect_refused(&mut r);
}

fn descriptor_outside_guest_memory(ctx: &Ctx<'_>) {
    bad_single(ctx, 1 << 40, 64);
    bad_single(ctx, 1 << 20, 1);
}

fn descriptor_address_overflows(ctx: &Ctx<'_>) {
    bad_single(ctx, u64::MAX - 16, 64);
    bad_single(ctx, u64::MAX, u32::MAX);
}

fn descriptor_straddles_the_end_of_memory(ctx: &Ctx<'_>) {
    bad_single(ctx, (1 << 20) - 8, 64);
}

fn descriptor_zero_length(ctx: &Ctx<'_>) {
    let mut r = Rings::open(ctx.kind, ctx.socket);
    let buf = r.alloc(64);
    r.desc(0, buf, 0, data_flags(ctx.kind), 0);
    r.offer(0);
    let used = r.used();
    assert_eq!(
        (used.id, used.len),
        (0, 0),
        "nothing can be written to 0 bytes"
    );
    // A zero-length descriptor in the middle of a chain.
    r.desc(0, buf, 0, data_flags(ctx.kind) | NEXT, 1);
    r.desc(1, buf, 0, data_flags(ctx.kind), 0);
    r.offer(0);
    assert_eq!(r.used().len, 0);
    r.good_chain();
}

fn chain_loops_on_itself(ctx: &Ctx<'_>) {
    let mut r = Rings::open(ctx.kind, ctx.socket);
    let buf = r.alloc(64);
    let f = data_flags(ctx.kind);
    r.desc(0, buf, 16, f | NEXT, 0);
    expect_refused(&mut r);
    r.desc(0, buf, 16, f | NEXT, 1);
    r.desc(1, buf, 16, f | NEXT, 0);
    expect_refused(&mut r);
}

fn chain_loops_through_the_whole_table(ctx: &Ctx<'_>) {
    let mut r = Rings::open(ctx.kind, ctx.socket);
    let buf = r.alloc(64);
    let f = data_flags(ctx.kind);
    for i in 0..16u16 {
        r.desc(i, buf, 4, f | NEXT, (i + 1) % 16);
    }
    expect_refused(&mut r);
}

fn chain_next_out_of_range(ctx: &Ctx<'_>) {
    let mut r = Rings::open(ctx.kind, ctx.socket);
    let buf = r.alloc(64);
    let f = data_flags(ctx.kind);
    for next in [16u16, 17, 0x8000, u16::MAX] {
        r.desc(0, buf, 16, f | NEXT, next);
        expect_refused(&mut r);
    }
}

fn chain_of_the_full_queue_size_is_served(ctx: &Ctx<'_>) {
    if ctx.kind != Kind::Rng {
        // The longest legal chain, checked where its meaning is simple.
        let mut r = Rings::open(ctx.kind, ctx.socket);
        r.good_chain();
        return;
    }
    let mut r = Rings::open(ctx.kind, ctx.socket);
    let buf = r.alloc(16 * 16);
    for i in 0..16u16 {
        let last = i == 15;
        r.desc(
            i,
            buf + 16 * u64::from(i),
            16,
            WRITE | if last { 0 } else { NEXT },
            i + 1,
        );
    }
    r.offer(0);
    assert_eq!(
        r.used().len,
        256,
        "a 16-descriptor chain on a 16-entry ring is legal"
    );
}

fn chain_readable_after_writable(ctx: &Ctx<'_>) {
    let mut r = Rings::open(ctx.kind, ctx.socket);
    let buf = r.alloc(128);
    r.desc(0, buf, 16, WRITE | NEXT, 1);
    r.desc(1, buf + 64, 16, 0, 0);
    expect_refused(&mut r);
}

/// A ring the guest broke: the device stops it and says so; requests are still
/// answered and other queues and connections go on.
pub(crate) fn expect_ring_broken(ctx: &Ctx<'_>, r: &mut Rings) {
    ctx.proc
        .wait_device_log(ctx.kind.device_name(), "is broken");
    expect_alive(&mut r.h.fe);
    let q = u32::from(ctx.kind.data_queue());
    r.h.fe
        .get_vring_base(q)
        .expect("GET_VRING_BASE on a broken ring");
}

fn avail_head_out_of_range_breaks_only_the_ring(ctx: &Ctx<'_>) {
    for head in [16, u16::MAX] {
        let mut r = Rings::open(ctx.kind, ctx.socket);
        r.offer(head);
        expect_ring_broken(ctx, &mut r);
    }
}

fn avail_index_runs_ahead_breaks_only_the_ring(ctx: &Ctx<'_>) {
    let mut r = Rings::open(ctx.kind, ctx.socket);
    r.good_chain();
    let avail = r.ring_gpas().1;
    r.table()
        .store::<u16>(avail + 2, 1000, Ordering::Release)
        .expect("avail idx");
    let (q, _) = r.parts();
    q.kick_now().expect("kick");
    expect_ring_broken(ctx, &mut r);
}

fn indirect(r: &mut Rings, table: u64, len: u32, flags: u16) {
    r.desc(0, table, len, INDIRECT | flags, 0);
}

fn write_table(r: &Rings, table: u64, i: u64, d: Descriptor) {
    r.table()
        .write(table + 16 * i, &d.to_bytes())
        .expect("indirect table");
}

fn d(addr: u64, len: u32, flags: u16, next: u16) -> Descriptor {
    Descriptor {
        addr,
        len,
        flags,
        next,
    }
}

fn indirect_nested(ctx: &Ctx<'_>) {
    let mut r = Rings::open(ctx.kind, ctx.socket);
    let (outer, inner, buf) = (r.alloc(64), r.alloc(64), r.alloc(64));
    let f = data_flags(ctx.kind);
    write_table(&r, inner, 0, d(buf, 64, f, 0));
    write_table(&r, outer, 0, d(inner, 16, INDIRECT, 0));
    indirect(&mut r, outer, 16, 0);
    expect_refused(&mut r);
    // An indirect descriptor after a direct one.
    write_table(&r, inner, 0, d(buf, 64, f, 0));
    r.desc(0, buf, 16, f | NEXT, 1);
    r.desc(1, inner, 16, INDIRECT, 0);
    expect_refused(&mut r);
    // INDIRECT together with NEXT.
    indirect(&mut r, inner, 16, NEXT);
    r.desc(1, buf, 16, f, 0);
    expect_refused(&mut r);
}

fn indirect_zero_length(ctx: &Ctx<'_>) {
    let mut r = Rings::open(ctx.kind, ctx.socket);
    let table = r.alloc(64);
    indirect(&mut r, table, 0, 0);
    expect_refused(&mut r);
    indirect(&mut r, 0, 0, 0);
    expect_refused(&mut r);
}

fn indirect_malformed_tables(ctx: &Ctx<'_>) {
    let mut r = Rings::open(ctx.kind, ctx.socket);
    let (table, buf) = (r.alloc(256), r.alloc(64));
    let f = data_flags(ctx.kind);
    write_table(&r, table, 0, d(buf, 64, f, 0));
    for (addr, len) in [
        (table, 15u32),
        (table, 17),
        (1 << 40, 16),
        (u64::MAX - 8, 16),
        ((1 << 20) - 8, 16),
        (table, 16 * 65536),
        (table, !15u32),
    ] {
        indirect(&mut r, addr, len, 0);
        expect_refused(&mut r);
    }
    // A buffer inside the table that points outside memory.
    write_table(&r, table, 0, d(1 << 40, 64, f, 0));
    indirect(&mut r, table, 16, 0);
    expect_refused(&mut r);
}

fn indirect_table_loops(ctx: &Ctx<'_>) {
    let mut r = Rings::open(ctx.kind, ctx.socket);
    let (table, buf) = (r.alloc(16 * 4), r.alloc(64));
    let f = data_flags(ctx.kind);
    write_table(&r, table, 0, d(buf, 4, f | NEXT, 0));
    indirect(&mut r, table, 16, 0);
    expect_refused(&mut r);
    for i in 0..4u16 {
        write_table(&r, table, i.into(), d(buf, 4, f | NEXT, (i + 1) % 4));
    }
    indirect(&mut r, table, 64, 0);
    expect_refused(&mut r);
    write_table(&r, table, 0, d(buf, 4, f | NEXT, 4));
    indirect(&mut r, table, 64, 0);
    expect_refused(&mut r);
}

/// Flips descriptor `index` of the data queue between `good` and `bad` on another
/// thread while `body` runs.
fn while_flipping(
    r: &mut Rings,
    index: u16,
    good: Descriptor,
    bad: Descriptor,
    body: impl FnOnce(&mut Rings),
) {
    let stop = Arc::new(AtomicBool::new(false));
    let desc_at = r.ring_gpas().0 + 16 * u64::from(index);
    let table = r.table().clone();
    let stop2 = stop.clone();
    let flipper = std::thread::spawn(move || {
        let mut n = 0u64;
        while !stop2.load(Ordering::Relaxed) {
            let dsc = if n.is_multiple_of(2) { bad } else { good };
            table.write(desc_at, &dsc.to_bytes()).expect("flip");
            n += 1;
        }
    });
    body(r);
    stop.store(true, Ordering::Relaxed);
    flipper.join().expect("flipper");
}

fn descriptor_changed_after_validation(ctx: &Ctx<'_>) {
    let mut r = Rings::open(ctx.kind, ctx.socket);
    let buf = r.alloc(4096);
    let guard = r.alloc(1 << 16);
    let f = data_flags(ctx.kind);
    if ctx.kind == Kind::Net {
        r.table()
            .write(buf, &NetHdr::default().to_bytes())
            .expect("hdr");
    }
    let good = d(buf, 64, f, 0);
    // Longer, looping and pointing over the guard area and the rings.
    let bad = d(guard, 1 << 16, f | NEXT, 0);
    let kind = ctx.kind;
    while_flipping(&mut r, 0, good, bad, |r| {
        for _ in 0..200 {
            r.offer(0);
            let used = r.used();
            assert_eq!(used.id, 0);
            // The walk copies each descriptor it reads; a copy taken while the guest
            // writes may mix the two versions (a 16-byte read is not atomic), for
            // example the good buffer with the bad NEXT flag, which leads back to the
            // same descriptor. Whatever was copied, every buffer is one of the two
            // versions' lengths and the request stays within rng's 64 KiB bound.
            match kind {
                Kind::Rng => assert!(
                    used.len <= 1 << 16 && used.len % 64 == 0,
                    "used length {} is not made of the descriptor's versions",
                    used.len
                ),
                Kind::Net | Kind::Blk => {}
            }
        }
    });
    r.desc(0, buf, 64, f, 0);
    if ctx.kind != Kind::Blk {
        r.offer(0);
        r.used();
    }
    r.good_chain();
}

fn net_send(r: &mut Rings, parts: &[(u64, u32)]) {
    for (i, &(addr, len)) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        r.desc(
            i as u16,
            addr,
            len,
            if last { 0 } else { NEXT },
            i as u16 + 1,
        );
    }
    r.offer(0);
    let used = r.used();
    assert_eq!(
        (used.id, used.len),
        (0, 0),
        "TX chains come back with length 0"
    );
}

fn net_header_split_across_many_descriptors(ctx: &Ctx<'_>) {
    let mut r = Rings::open(ctx.kind, ctx.socket);
    let buf = r.alloc(256);
    r.table()
        .write(buf, &NetHdr::default().to_bytes())
        .expect("hdr");
    r.table()
        .write(buf + NET_HDR_LEN as u64, &[0xab; 60])
        .expect("frame");
    // One byte per descriptor for the header, then the frame.
    let mut parts: Vec<(u64, u32)> = (0..NET_HDR_LEN as u64).map(|i| (buf + i, 1)).collect();
    parts.push((buf + NET_HDR_LEN as u64, 60));
    net_send(&mut r, &parts);
    // Zero-length descriptors between the header bytes.
    let mut parts: Vec<(u64, u32)> = Vec::new();
    for i in 0..NET_HDR_LEN as u64 {
        parts.push((buf + i, 1));
        parts.push((buf, 0));
    }
    parts.truncate(15);
    net_send(&mut r, &parts);
    r.good_chain();
}

fn net_header_shorter_than_required(ctx: &Ctx<'_>) {
    let mut r = Rings::open(ctx.kind, ctx.socket);
    let buf = r.alloc(256);
    for len in [1u32, 8, NET_HDR_LEN as u32 - 1] {
        net_send(&mut r, &[(buf, len)]);
    }
    net_send(&mut r, &[(buf, 4), (buf + 4, 4)]);
    r.good_chain();
}

fn net_rx_buffer_shorter_than_the_header(ctx: &Ctx<'_>) {
    let mut r = Rings::open(ctx.kind, ctx.socket);
    let buf = r.alloc(64);
    let rx =
        r.h.queues
            .iter_mut()
            .find(|q| q.index() == 0)
            .expect("rx queue");
    let mem = r.h.mem.table();
    for len in [1u32, 8, NET_HDR_LEN as u32 - 1] {
        rx.add(mem, &[(buf, len, true)]).expect("add");
        rx.kick(mem).expect("kick");
        let used = rx.wait_used(mem, crate::hostile::T).expect("rx used");
        assert_eq!(
            used.len, 0,
            "an RX buffer of {len} bytes cannot hold a frame"
        );
    }
    // Readable-only RX chain.
    rx.add(mem, &[(buf, 64, false)]).expect("add");
    rx.kick(mem).expect("kick");
    assert_eq!(
        rx.wait_used(mem, crate::hostile::T).expect("rx used").len,
        0
    );
    r.h.pump();
}

fn net_offload_fields_beyond_the_frame(ctx: &Ctx<'_>) {
    let mut r = Rings::open(ctx.kind, ctx.socket);
    let buf = r.alloc(256);
    let frame = 60u32;
    for h in [
        NetHdr {
            flags: 1,
            csum_start: 58,
            csum_offset: 6,
            ..NetHdr::default()
        },
        NetHdr {
            flags: 1,
            csum_start: u16::MAX,
            csum_offset: u16::MAX,
            ..NetHdr::default()
        },
        NetHdr {
            flags: 1,
            csum_start: 0,
            csum_offset: 59,
            ..NetHdr::default()
        },
        NetHdr {
            gso_type: 1,
            gso_size: 0,
            ..NetHdr::default()
        },
        NetHdr {
            gso_type: 1,
            gso_size: u16::MAX,
            hdr_len: u16::MAX,
            ..NetHdr::default()
        },
        NetHdr {
            gso_type: 0x7f,
            gso_size: 10,
            ..NetHdr::default()
        },
    ] {
        r.table().write(buf, &h.to_bytes()).expect("hdr");
        net_send(&mut r, &[(buf, NET_HDR_LEN as u32 + frame)]);
    }
    r.good_chain();
}

fn net_header_changed_after_validation(ctx: &Ctx<'_>) {
    // The guest rewrites the header's offload fields while the device reads the frame.
    let mut r = Rings::open(ctx.kind, ctx.socket);
    let buf = r.alloc(256);
    let hdr_at = buf;
    r.table()
        .write(buf, &NetHdr::default().to_bytes())
        .expect("hdr");
    let table = r.table().clone();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let bad = NetHdr {
        flags: 1,
        gso_type: 1,
        gso_size: u16::MAX,
        csum_start: u16::MAX,
        csum_offset: u16::MAX,
        ..NetHdr::default()
    };
    let flipper = std::thread::spawn(move || {
        let mut n = 0u64;
        while !stop2.load(Ordering::Relaxed) {
            let h = if n.is_multiple_of(2) {
                bad
            } else {
                NetHdr::default()
            };
            table.write(hdr_at, &h.to_bytes()).expect("flip");
            n += 1;
        }
    });
    for _ in 0..200 {
        net_send(&mut r, &[(buf, NET_HDR_LEN as u32 + 60)]);
    }
    stop.store(true, Ordering::Relaxed);
    flipper.join().expect("flipper");
    r.good_chain();
}

/// A blk request of `readable` parts then `writable` parts (the last byte of the last
/// one is the status), expecting it back; returns (used length, status byte).
fn blk_request(r: &mut Rings, readable: &[(u64, u32)], writable: &[(u64, u32)]) -> (u32, u8) {
    let total = readable.len() + writable.len();
    for (k, &(addr, len)) in readable.iter().chain(writable).enumerate() {
        let last = k + 1 == total;
        let w = if k >= readable.len() { WRITE } else { 0 };
        let i = k as u16;
        r.desc(i, addr, len, w | if last { 0 } else { NEXT }, i + 1);
    }
    if let Some(&(status, _)) = writable.last() {
        r.table().write(status, &[0xee]).expect("status");
    }
    r.offer(0);
    let used = r.used();
    let status = writable.last().map_or(0xee, |&(s, len)| {
        let mut b = [0u8; 1];
        if len > 0 {
            r.table()
                .read(s + u64::from(len) - 1, &mut b)
                .expect("status");
        }
        b[0]
    });
    (used.len, status)
}

fn blk_header_split_across_many_descriptors(ctx: &Ctx<'_>) {
    let mut r = Rings::open(ctx.kind, ctx.socket);
    let (buf, data, status) = (r.alloc(64), r.alloc(512), r.alloc(1));
    r.table().write(buf, &blk_outhdr(0, 0)).expect("hdr");
    let mut readable: Vec<(u64, u32)> = (0..8).map(|i| (buf + 2 * i, 2)).collect();
    readable.truncate(8);
    let (len, st) = blk_request(&mut r, &readable, &[(data, 512), (status, 1)]);
    assert_eq!(
        (len, st),
        (513, 0),
        "a header in 8 pieces is a valid request"
    );
    r.good_chain();
}

fn blk_header_shorter_than_required(ctx: &Ctx<'_>) {
    let mut r = Rings::open(ctx.kind, ctx.socket);
    let (buf, data, status) = (r.alloc(64), r.alloc(512), r.alloc(1));
    r.table().write(buf, &blk_outhdr(0, 0)).expect("hdr");
    for hdr_len in [0u32, 1, 8, 15] {
        let (_, st) = blk_request(&mut r, &[(buf, hdr_len)], &[(data, 512), (status, 1)]);
        assert_ne!(st, 0, "a {hdr_len}-byte header was accepted");
    }
    // No status byte at all.
    blk_request(&mut r, &[(buf, 16)], &[]);
    r.good_chain();
}

fn blk_sector_beyond_the_disk(ctx: &Ctx<'_>) {
    let mut r = Rings::open(ctx.kind, ctx.socket);
    let (buf, data, status) = (r.alloc(64), r.alloc(512), r.alloc(1));
    for sector in [1u64 << 40, u64::MAX, u64::MAX / 512, (1 << 20) / 512] {
        r.table().write(buf, &blk_outhdr(0, sector)).expect("hdr");
        let (_, st) = blk_request(&mut r, &[(buf, 16)], &[(data, 512), (status, 1)]);
        assert_ne!(st, 0, "sector {sector:#x} read");
    }
    r.good_chain();
}
