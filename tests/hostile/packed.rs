//! Hostile packed rings: what a guest driver can do with the descriptor ring, its wrap
//! bits, buffer ids, indirect tables and the event suppression areas once
//! `VIRTIO_F_RING_PACKED` is negotiated.

use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::Arc;

use vhost_user_sync::protocol::FrontendRequest as R;
use vhost_user_sync::queue::packed::layout::{self as l, PackedDescriptor};
use vhost_user_sync_net::request::{NetHdr, NET_HDR_LEN};

use crate::hostile::{
    class, connect, eventfd, expect_ack, expect_alive, expect_nack, state_body, u64_body, Case,
    Ctx, Kind, Rings, ALL, NET,
};
use crate::rings::expect_ring_broken;

const NEXT: u16 = l::F_NEXT;
const WRITE: u16 = l::F_WRITE;
const INDIRECT: u16 = l::F_INDIRECT;

pub static CASES: &[Case] = &[
    case!(packed_descriptor_outside_guest_memory, class::PACKED, ALL),
    case!(
        packed_buffer_id_out_of_range_breaks_only_the_ring,
        class::PACKED,
        ALL
    ),
    case!(
        packed_chain_longer_than_the_ring_breaks_only_the_ring,
        class::PACKED,
        ALL
    ),
    case!(packed_chain_of_the_whole_ring_is_served, class::PACKED, ALL),
    case!(packed_stale_wrap_bits_are_not_taken, class::PACKED, ALL),
    case!(
        packed_buffer_id_reused_while_in_flight_breaks_only_the_ring,
        class::PACKED,
        NET
    ),
    case!(packed_indirect_abuse_is_refused, class::PACKED, ALL),
    case!(packed_event_areas_hold_garbage, class::PACKED, ALL),
    case!(
        packed_ring_state_out_of_range_is_refused,
        class::PACKED,
        ALL
    ),
    case!(
        packed_descriptor_changed_after_validation,
        class::TOCTOU,
        ALL
    ),
];

/// Flags of a data buffer for `kind`: device-writable for rng and blk, readable for net TX.
fn data_flags(kind: Kind) -> u16 {
    if kind == Kind::Net {
        0
    } else {
        WRITE
    }
}

fn pd(addr: u64, len: u32, id: u16, flags: u16) -> PackedDescriptor {
    PackedDescriptor {
        addr,
        len,
        id,
        flags,
    }
}

/// Posts `descs` as one chain on the data queue.
fn post(r: &mut Rings, descs: &[PackedDescriptor]) {
    let q = r.h.kind.data_queue();
    r.post_packed(q, descs);
}

/// Expects buffer `id` back used with length 0 (refused), then a valid chain served on
/// the same ring.
fn expect_refused(r: &mut Rings, id: u16) {
    let used = r.used();
    assert_eq!((used.id, used.len), (id, 0), "a bad chain was used");
    r.good_chain();
}

fn packed_descriptor_outside_guest_memory(ctx: &Ctx<'_>) {
    let mut r = Rings::open_packed(ctx.kind, ctx.socket);
    let f = data_flags(ctx.kind);
    for (k, (addr, len)) in [
        (1u64 << 40, 64u32),
        (1 << 20, 1),
        ((1 << 20) - 8, 64),
        (u64::MAX - 16, 64),
    ]
    .into_iter()
    .enumerate()
    {
        let id = k as u16 + 2;
        post(&mut r, &[pd(addr, len, id, f)]);
        expect_refused(&mut r, id);
    }
    // The same inside a chain: a good buffer first, the bad one last.
    let buf = r.alloc(64);
    post(&mut r, &[pd(buf, 16, 9, f | NEXT), pd(1 << 40, 16, 9, f)]);
    expect_refused(&mut r, 9);
}

fn packed_buffer_id_out_of_range_breaks_only_the_ring(ctx: &Ctx<'_>) {
    for id in [16, 0x8000, u16::MAX] {
        let mut r = Rings::open_packed(ctx.kind, ctx.socket);
        let buf = r.alloc(64);
        post(&mut r, &[pd(buf, 64, id, data_flags(ctx.kind))]);
        expect_ring_broken(ctx, &mut r);
    }
}

fn packed_chain_longer_than_the_ring_breaks_only_the_ring(ctx: &Ctx<'_>) {
    // Every slot has NEXT and looks available: the chain never ends within the ring.
    let mut r = Rings::open_packed(ctx.kind, ctx.socket);
    let buf = r.alloc(64);
    let f = data_flags(ctx.kind);
    let descs: Vec<PackedDescriptor> = (0..16).map(|_| pd(buf, 4, 0, f | NEXT)).collect();
    post(&mut r, &descs);
    expect_ring_broken(ctx, &mut r);
}

fn packed_chain_of_the_whole_ring_is_served(ctx: &Ctx<'_>) {
    let mut r = Rings::open_packed(ctx.kind, ctx.socket);
    if ctx.kind != Kind::Rng {
        // The longest legal chain, checked where its meaning is simple.
        r.good_chain();
        return;
    }
    let buf = r.alloc(16 * 16);
    let descs: Vec<PackedDescriptor> = (0..16u16)
        .map(|i| {
            let next = if i == 15 { 0 } else { NEXT };
            pd(buf + 16 * u64::from(i), 16, 5, WRITE | next)
        })
        .collect();
    post(&mut r, &descs);
    let used = r.used();
    assert_eq!(
        (used.id, used.len),
        (5, 256),
        "a 16-descriptor chain on a 16-entry ring is legal"
    );
    r.good_chain();
}

fn packed_stale_wrap_bits_are_not_taken(ctx: &Ctx<'_>) {
    // Slot 0 carries the bits of the previous lap (AVAIL == USED): it is not available,
    // so nothing after it is either. Slot 1 is a valid chain behind it.
    let mut r = Rings::open_packed(ctx.kind, ctx.socket);
    let q = ctx.kind.data_queue();
    let buf = r.alloc(4096);
    let f = data_flags(ctx.kind);
    if ctx.kind == Kind::Net {
        r.table()
            .write(buf, &NetHdr::default().to_bytes())
            .expect("hdr");
    }
    let len = match ctx.kind {
        Kind::Net => NET_HDR_LEN as u32 + 60,
        _ => 64,
    };
    let desc_gpa = r.ring_gpas().0;
    let (dq, t) = r.queue(q);
    let stale = l::avail_bits(false);
    dq.post_packed_raw(t, &[pd(1 << 40, 64, 0, f | stale)])
        .expect("post");
    dq.kick_now().expect("kick");
    let avail = dq.packed_avail_bits();
    dq.post_packed_raw(t, &[pd(buf, len, 1, f | avail)])
        .expect("post");
    dq.kick_now().expect("kick");
    expect_alive(&mut r.h.fe);
    // Slot 0 made available for real (the same id, a valid buffer): both are served,
    // slot 0 first. Had the device taken the stale slot, buffer 0 would have come back
    // refused (length 0) or the ring would not line up any more.
    let (dq, t) = r.queue(q);
    t.write(desc_gpa, &pd(buf, len, 0, f).to_bytes()[..14])
        .expect("descriptor");
    t.store::<u16>(
        desc_gpa + l::DESC_FLAGS,
        f | l::avail_bits(true),
        Ordering::Release,
    )
    .expect("flags");
    dq.kick_now().expect("kick");
    let first = dq.wait_used(t, crate::hostile::T).expect("slot 0 used");
    let second = dq.wait_used(t, crate::hostile::T).expect("slot 1 used");
    assert_eq!(
        [first.id, second.id],
        [0, 1],
        "slot 0 once valid, slot 1 behind it"
    );
    if ctx.kind == Kind::Rng {
        assert_eq!([first.len, second.len], [64, 64], "both filled");
    }
    r.good_chain();
}

fn packed_buffer_id_reused_while_in_flight_breaks_only_the_ring(ctx: &Ctx<'_>) {
    // Two RX chains with the same buffer id, both visible at the first look (slot 1 is
    // written before slot 0's flags): the device takes the first and holds it while it
    // takes the next, which names a buffer it already holds.
    let mut r = Rings::open_packed(ctx.kind, ctx.socket);
    let (b0, b1) = (r.alloc(2048), r.alloc(2048));
    let uaddr =
        r.h.queues
            .iter()
            .find(|q| q.index() == 0)
            .expect("rx queue")
            .vring_addr(&r.h.mem)
            .desc;
    let desc_gpa = r.gpa(uaddr);
    let (dq, t) = r.queue(0);
    let avail = dq.packed_avail_bits();
    t.write(desc_gpa + 16, &pd(b1, 2048, 3, WRITE | avail).to_bytes())
        .expect("slot 1");
    dq.post_packed_raw(t, &[pd(b0, 2048, 3, WRITE | avail)])
        .expect("slot 0");
    dq.kick_now().expect("kick");
    expect_ring_broken_at(ctx, &mut r, 0);
}

/// [`expect_ring_broken`] for queue `q`.
fn expect_ring_broken_at(ctx: &Ctx<'_>, r: &mut Rings, q: u32) {
    ctx.proc
        .wait_device_log(ctx.kind.device_name(), "is broken");
    expect_alive(&mut r.h.fe);
    r.h.fe
        .get_vring_base(q)
        .expect("GET_VRING_BASE on a broken ring");
}

fn write_table(r: &Rings, table: u64, i: u64, d: PackedDescriptor) {
    r.table()
        .write(table + 16 * i, &d.to_bytes())
        .expect("indirect table");
}

fn packed_indirect_abuse_is_refused(ctx: &Ctx<'_>) {
    let mut r = Rings::open_packed(ctx.kind, ctx.socket);
    let (table, inner, buf) = (r.alloc(256), r.alloc(64), r.alloc(64));
    let f = data_flags(ctx.kind);
    write_table(&r, inner, 0, pd(buf, 64, 0, f));
    write_table(&r, table, 0, pd(buf, 64, 0, f));
    // A table inside a table.
    write_table(&r, table, 1, pd(inner, 16, 0, INDIRECT));
    post(&mut r, &[pd(table, 32, 2, INDIRECT)]);
    expect_refused(&mut r, 2);
    write_table(&r, table, 1, pd(buf, 64, 0, f));
    // An indirect descriptor chained with NEXT to another, and one after a direct one.
    post(
        &mut r,
        &[pd(table, 16, 3, INDIRECT | NEXT), pd(buf, 16, 3, f)],
    );
    expect_refused(&mut r, 3);
    post(
        &mut r,
        &[pd(buf, 16, 4, f | NEXT), pd(table, 16, 4, INDIRECT)],
    );
    expect_refused(&mut r, 4);
    // Tables of no length, a length not a whole number of descriptors, outside memory,
    // straddling its end, longer than any ring.
    for (k, (addr, len)) in [
        (table, 0u32),
        (0, 0),
        (table, 15),
        (table, 17),
        (1 << 40, 16),
        (u64::MAX - 8, 16),
        ((1 << 20) - 8, 16),
        (table, 16 * 65536),
        (table, !15u32),
    ]
    .into_iter()
    .enumerate()
    {
        let id = 5 + k as u16;
        post(&mut r, &[pd(addr, len, id, INDIRECT)]);
        expect_refused(&mut r, id);
    }
    // A buffer inside the table that points outside memory.
    write_table(&r, table, 0, pd(1 << 40, 64, 0, f));
    post(&mut r, &[pd(table, 16, 15, INDIRECT)]);
    expect_refused(&mut r, 15);
}

fn packed_event_areas_hold_garbage(ctx: &Ctx<'_>) {
    let mut r = Rings::open_packed(ctx.kind, ctx.socket);
    let driver_area = r.ring_gpas().1;
    // The reserved flags value: the device must still hand buffers back (and call).
    r.table()
        .store::<u16>(driver_area + l::EVENT_FLAGS, 3, Ordering::Release)
        .expect("flags");
    r.good_chain();
    // An event offset far outside the ring, with EVENT_IDX's DESC mode: whatever the
    // device decides about calls, it keeps serving; a later chain with calls enabled
    // brings both back.
    r.table()
        .store::<u16>(driver_area + l::EVENT_OFF_WRAP, u16::MAX, Ordering::Relaxed)
        .expect("off_wrap");
    r.table()
        .store::<u16>(
            driver_area + l::EVENT_FLAGS,
            l::EVENT_DESC,
            Ordering::Release,
        )
        .expect("flags");
    let buf = r.alloc(4096);
    if ctx.kind == Kind::Net {
        r.table()
            .write(buf, &NetHdr::default().to_bytes())
            .expect("hdr");
    }
    let len = match ctx.kind {
        Kind::Net => NET_HDR_LEN as u32 + 60,
        _ => 64,
    };
    post(&mut r, &[pd(buf, len, 7, data_flags(ctx.kind))]);
    expect_alive(&mut r.h.fe);
    r.table()
        .store::<u16>(
            driver_area + l::EVENT_FLAGS,
            l::EVENT_ENABLE,
            Ordering::Release,
        )
        .expect("flags");
    post(&mut r, &[pd(buf, len, 8, data_flags(ctx.kind))]);
    let ids = [r.used().id, r.used().id];
    assert_eq!(ids, [7, 8], "both chains came back, in ring order");
    r.good_chain();
}

fn packed_ring_state_out_of_range_is_refused(ctx: &Ctx<'_>) {
    let mut fe = connect(ctx.socket);
    fe.negotiate_packed(u64::MAX, u64::MAX)
        .expect("negotiation");
    let q = u32::from(ctx.kind.data_queue());
    expect_ack(&mut fe, R::SET_VRING_NUM, &state_body(q, 16), &[]);
    // Avail index at or past the ring's size (either wrap), used index likewise, and
    // the largest values of both halves.
    for bad in [
        16u32,
        0x8000 | 16,
        0x7fff,
        16 << 16,
        (0x8000 | 16) << 16,
        0x7fff_7fff,
        u32::MAX,
    ] {
        expect_nack(&mut fe, R::SET_VRING_BASE, &state_body(q, bad), &[]);
    }
    // In range, both wrap counters set: accepted and read back unchanged.
    let good = 15 | 0x8000 | ((3 | 0x8000) << 16);
    expect_ack(&mut fe, R::SET_VRING_BASE, &state_body(q, good), &[]);
    assert_eq!(fe.get_vring_base(q).expect("GET_VRING_BASE"), good);
    expect_alive(&mut fe);
    // (A listener serves one frontend at a time.)
    drop(fe);
    // A state that fits the ring when it is set, then a smaller ring: the ring refuses
    // to start on it (SET_VRING_KICK is refused), and the connection goes on.
    let mut r = Rings::open_packed(ctx.kind, ctx.socket);
    r.h.fe.get_vring_base(q).expect("GET_VRING_BASE");
    expect_ack(&mut r.h.fe, R::SET_VRING_BASE, &state_body(q, 15), &[]);
    expect_ack(&mut r.h.fe, R::SET_VRING_NUM, &state_body(q, 8), &[]);
    expect_nack(
        &mut r.h.fe,
        R::SET_VRING_KICK,
        &u64_body(q.into()),
        &[&eventfd()],
    );
    expect_alive(&mut r.h.fe);
}

fn packed_descriptor_changed_after_validation(ctx: &Ctx<'_>) {
    // The guest rewrites the address of the slot in use while the device walks it:
    // whichever version the device copied, it is checked, and the ring stays usable.
    let mut r = Rings::open_packed(ctx.kind, ctx.socket);
    let q = ctx.kind.data_queue();
    let buf = r.alloc(4096);
    let f = data_flags(ctx.kind);
    if ctx.kind == Kind::Net {
        r.table()
            .write(buf, &NetHdr::default().to_bytes())
            .expect("hdr");
    }
    let desc_gpa = r.ring_gpas().0;
    let slot = Arc::new(AtomicU16::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let table = r.table().clone();
    let (slot2, stop2) = (slot.clone(), stop.clone());
    let flipper = std::thread::spawn(move || {
        let mut n = 0u64;
        while !stop2.load(Ordering::Relaxed) {
            let at = desc_gpa + 16 * u64::from(slot2.load(Ordering::Relaxed));
            let addr = if n.is_multiple_of(2) { 1u64 << 40 } else { buf };
            table.write(at, &addr.to_le_bytes()).expect("flip");
            n += 1;
        }
    });
    let kind = ctx.kind;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        for round in 0..100u16 {
            let id = round % 16;
            let (dq, t) = r.queue(q);
            slot.store(round % 16, Ordering::Relaxed);
            let avail = dq.packed_avail_bits();
            dq.post_packed_raw(t, &[pd(buf, 64, id, f | avail)])
                .expect("post");
            dq.kick_now().expect("kick");
            let used = dq.wait_used(t, crate::hostile::T).expect("used");
            assert_eq!(used.id, id);
            if kind == Kind::Rng {
                assert!(
                    used.len == 0 || used.len == 64,
                    "used length {} is neither version's",
                    used.len
                );
            }
        }
    }));
    stop.store(true, Ordering::Relaxed);
    flipper.join().expect("flipper");
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
    r.good_chain();
}
