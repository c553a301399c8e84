//! Hostile control messages: sizes, fds, ring indices and sizes, ring addresses, memory
//! regions, log and inflight areas, order, and floods.

use std::fs::File;
use std::io::IoSlice;
use std::os::fd::AsRawFd;

use vhost_user_sync::frontend::{DriverQueue, Frontend, FrontendMemory};
use vhost_user_sync::protocol::payload::{
    LogBase, MemoryRegionDesc, MemoryTableDesc, SingleRegion, VringAddr,
};
use vhost_user_sync::protocol::{virtio, FrontendRequest as R, ProtocolFeatures};

use crate::hostile::{
    class, eventfd, expect_ack, expect_alive, expect_nack, expect_nack_raw, expect_reply, memfd,
    next_outcome, send_header, socket_fd, state_body, u64_body, wrong_fds, Case, Ctx, Outcome,
    Snapshot, ALL, NEED_REPLY, PLAIN, T,
};

pub static CASES: &[Case] = &[
    // Payload sizes that lie.
    case!(size_0xffffffff_closes, class::SIZES, ALL),
    case!(size_above_the_cap_closes, class::SIZES, ALL),
    case!(size_too_small_is_refused, class::SIZES, ALL),
    case!(size_too_large_is_refused, class::SIZES, ALL),
    case!(memory_table_count_lies, class::SIZES, ALL),
    case!(config_size_field_lies, class::SIZES, ALL),
    // Values never offered.
    case!(bad_version_closes, class::VALUES, ALL),
    case!(reserved_flag_bits_close, class::VALUES, ALL),
    case!(reply_flag_on_a_request_closes, class::VALUES, ALL),
    case!(unknown_request_numbers_are_refused, class::VALUES, ALL),
    case!(features_not_offered_are_refused, class::VALUES, ALL),
    // fds.
    case!(fds_on_requests_that_take_none, class::FDS_NONE, ALL),
    case!(fds_on_requests_that_always_reply, class::FDS_NONE, ALL),
    case!(ring_fd_flag_and_fd_count_disagree, class::FDS_NONE, ALL),
    case!(nine_fds_close, class::FDS_MANY, ALL),
    case!(sixty_four_fds_close, class::FDS_MANY, ALL),
    case!(more_fds_than_regions_are_refused, class::FDS_MANY, ALL),
    case!(two_fds_where_one_is_taken, class::FDS_MANY, ALL),
    case!(memory_fd_of_the_wrong_type, class::FDS_TYPE, ALL),
    case!(ring_fds_of_the_wrong_type, class::FDS_TYPE, ALL),
    case!(log_fd_of_the_wrong_type, class::FDS_TYPE, ALL),
    case!(backend_channel_fd_of_the_wrong_type, class::FDS_TYPE, ALL),
    case!(memory_fd_smaller_than_the_region, class::FDS_TYPE, ALL),
    // Rings.
    case!(ring_index_out_of_range, class::RING_INDEX, ALL),
    case!(get_vring_base_out_of_range_closes, class::RING_INDEX, ALL),
    case!(ring_fd_index_out_of_range, class::RING_INDEX, ALL),
    case!(ring_size_invalid, class::RING_SIZE, ALL),
    case!(ring_address_unmapped, class::RING_ADDR, ALL),
    case!(ring_address_misaligned, class::RING_ADDR, ALL),
    case!(ring_address_straddles_regions, class::RING_ADDR, ALL),
    case!(ring_region_removed_while_running, class::RING_ADDR, ALL),
    case!(ring_address_refused_on_arrival, class::RING_ADDR, ALL),
    case!(
        ring_address_refused_without_reply_ack_closes,
        class::RING_ADDR,
        ALL
    ),
    case!(
        stopped_ring_forgets_addresses_the_new_table_lacks,
        class::RING_ADDR,
        ALL
    ),
    // Memory regions.
    case!(regions_overlapping, class::REGIONS, ALL),
    case!(regions_zero_sized, class::REGIONS, ALL),
    case!(regions_overflowing, class::REGIONS, ALL),
    case!(regions_nine_in_one_table_close, class::REGIONS, ALL),
    case!(regions_beyond_the_slot_limit, class::REGIONS, ALL),
    case!(region_removal_that_matches_nothing, class::REGIONS, ALL),
    // Log and inflight.
    case!(log_sizes_and_offsets_overflow, class::LOG_INFLIGHT, ALL),
    case!(log_base_without_log_shmfd, class::LOG_INFLIGHT, ALL),
    case!(
        inflight_sizes_and_offsets_overflow,
        class::LOG_INFLIGHT,
        ALL
    ),
    case!(
        inflight_queue_counts_out_of_range,
        class::INFLIGHT_RANGE,
        ALL
    ),
    // Order.
    case!(requests_before_set_owner, class::ORDER, ALL),
    case!(requests_before_set_mem_table, class::ORDER, ALL),
    case!(requests_while_the_ring_runs, class::ORDER, ALL),
    case!(requests_after_reset_owner, class::ORDER, ALL),
    case!(requests_after_the_peer_closed, class::ORDER, ALL),
    case!(requests_after_the_peer_half_closed, class::ORDER, ALL),
    // Floods.
    case!(set_vring_num_flood, class::FLOODS, ALL),
    case!(get_inflight_fd_flood, class::FLOODS, ALL),
    case!(ring_fd_flood, class::FLOODS, ALL),
    case!(memory_table_flood, class::FLOODS, ALL),
    case!(log_base_and_backend_channel_flood, class::FLOODS, ALL),
    case!(reset_device_flood, class::FLOODS, ALL),
];

// ---------------------------------------------------------------------------------------
// Helpers.

fn region(gpa: u64, size: u64, uaddr: u64, off: u64) -> MemoryRegionDesc {
    MemoryRegionDesc {
        guest_phys_addr: gpa,
        memory_size: size,
        userspace_addr: uaddr,
        mmap_offset: off,
    }
}

fn table_body(regions: &[MemoryRegionDesc]) -> Vec<u8> {
    MemoryTableDesc {
        regions: regions.to_vec(),
    }
    .encode()
}

/// Sends `bytes` with `fds` attached in one sendmsg, bypassing the 8-fd limit of our
/// own sender.
fn send_with_fds(fe: &Frontend, bytes: &[u8], fds: &[File]) {
    let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let rights = [nix::sys::socket::ControlMessage::ScmRights(&raw)];
    nix::sys::socket::sendmsg::<()>(
        fe.connection().as_raw_fd(),
        &[IoSlice::new(bytes)],
        &rights,
        nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .expect("sendmsg");
}

fn header(req: u32, flags: u32, size: u32) -> Vec<u8> {
    let mut h = req.to_ne_bytes().to_vec();
    h.extend_from_slice(&flags.to_ne_bytes());
    h.extend_from_slice(&size.to_ne_bytes());
    h
}

/// A negotiated connection with guest memory.
fn with_memory(ctx: &Ctx<'_>) -> (Frontend, FrontendMemory) {
    let mem = FrontendMemory::new(&[(0, 1 << 20)]).expect("memory");
    let mut fe = ctx.negotiated();
    fe.set_mem_table(&mem).expect("SET_MEM_TABLE");
    (fe, mem)
}

fn addr_body(index: u32, desc: u64, used: u64, avail: u64) -> Vec<u8> {
    VringAddr {
        index,
        flags: 0,
        desc,
        used,
        avail,
        log: 0,
    }
    .encode()
}

fn ring_fd_body(index: u64, no_fd: bool) -> Vec<u8> {
    u64_body(index | if no_fd { 0x100 } else { 0 })
}

/// Sends NUM, ADDR, KICK for ring 0 and expects the ring not to start: at least one of
/// them is refused, and the KICK is.
fn expect_ring_refused(fe: &mut Frontend, addr: Vec<u8>) {
    expect_ack(fe, R::SET_VRING_NUM, &state_body(0, 16), &[]);
    fe.send_raw(R::SET_VRING_ADDR.number(), NEED_REPLY, &addr, &[])
        .expect("send");
    match next_outcome(fe, T) {
        Outcome::Reply(_) => {}
        other => panic!("SET_VRING_ADDR: {other:?}"),
    }
    let kick = eventfd();
    expect_nack(fe, R::SET_VRING_KICK, &ring_fd_body(0, false), &[&kick]);
}

// ---------------------------------------------------------------------------------------
// Sizes.

fn size_0xffffffff_closes(ctx: &Ctx<'_>) {
    let fe = ctx.negotiated();
    send_header(
        &fe,
        R::SET_FEATURES.number(),
        NEED_REPLY,
        u32::MAX,
        &[0; 8],
        &[],
    );
    ctx.expect_closed(&fe);
}

fn size_above_the_cap_closes(ctx: &Ctx<'_>) {
    let fe = ctx.negotiated();
    let body = vec![0u8; 269];
    send_header(&fe, R::SET_CONFIG.number(), NEED_REPLY, 269, &body, &[]);
    ctx.expect_closed(&fe);
}

fn size_too_small_is_refused(ctx: &Ctx<'_>) {
    let mut fe = ctx.negotiated();
    expect_nack(&mut fe, R::SET_FEATURES, &[0; 4], &[]);
    expect_nack(&mut fe, R::SET_VRING_NUM, &[], &[]);
    expect_nack(&mut fe, R::SET_VRING_ADDR, &[0; 8], &[]);
    expect_nack(&mut fe, R::SET_MEM_TABLE, &[1, 0, 0, 0, 0, 0, 0, 0], &[]);
    expect_nack(&mut fe, R::ADD_MEM_REG, &[0; 39], &[&memfd(4096)]);
    expect_alive(&mut fe);
    // GET_VRING_BASE has no failure reply: a short one closes the connection.
    fe.send_raw(R::GET_VRING_BASE.number(), PLAIN, &[0; 4], &[])
        .expect("send");
    ctx.expect_closed(&fe);
}

fn size_too_large_is_refused(ctx: &Ctx<'_>) {
    let mut fe = ctx.negotiated();
    expect_nack(&mut fe, R::SET_FEATURES, &[0; 16], &[]);
    expect_nack(&mut fe, R::SET_OWNER, &[0; 8], &[]);
    expect_nack(&mut fe, R::SET_VRING_ENABLE, &[0; 12], &[]);
    expect_nack(&mut fe, R::SET_VRING_ADDR, &[0; 48], &[]);
    // Requests that always reply still reply, and the stream stays in step.
    expect_reply(&mut fe, R::GET_FEATURES, &[0; 8], &[]);
    expect_reply(&mut fe, R::GET_QUEUE_NUM, &[0; 100], &[]);
    expect_alive(&mut fe);
}

fn memory_table_count_lies(ctx: &Ctx<'_>) {
    let mut fe = ctx.negotiated();
    let f = memfd(1 << 16);
    let one = table_body(&[region(0, 1 << 16, 0x1000_0000, 0)]);
    for num in [0u32, 2, 8, 9, u32::MAX] {
        let mut body = one.clone();
        body[..4].copy_from_slice(&num.to_ne_bytes());
        expect_nack(&mut fe, R::SET_MEM_TABLE, &body, &[&f]);
    }
    // Two regions described, count says one.
    let mut two = table_body(&[
        region(0, 1 << 16, 0x1000_0000, 0),
        region(1 << 20, 1 << 16, 0x2000_0000, 0),
    ]);
    two[..4].copy_from_slice(&1u32.to_ne_bytes());
    let g = memfd(1 << 16);
    expect_nack(&mut fe, R::SET_MEM_TABLE, &two, &[&f, &g]);
}

fn config_size_field_lies(ctx: &Ctx<'_>) {
    let mut fe = ctx.negotiated();
    for (offset, size, payload) in [
        (0u32, 200u32, 0usize),
        (0, u32::MAX, 4),
        (u32::MAX, 4, 4),
        (u32::MAX - 1, 4, 4),
        (0, 0, 0),
    ] {
        let mut body = offset.to_ne_bytes().to_vec();
        body.extend_from_slice(&size.to_ne_bytes());
        body.extend_from_slice(&0u32.to_ne_bytes());
        body.resize(12 + payload, 0);
        let reply = expect_reply(&mut fe, R::GET_CONFIG, &body, &[]);
        assert_eq!(
            reply.get(4..8),
            Some(&[0u8; 4][..]),
            "GET_CONFIG offset {offset:#x} size {size:#x}: failure (size 0) expected"
        );
        if size != 0 || offset != 0 {
            expect_nack(&mut fe, R::SET_CONFIG, &body, &[]);
        }
    }
    expect_alive(&mut fe);
}

// ---------------------------------------------------------------------------------------
// Values never offered.

fn bad_version_closes(ctx: &Ctx<'_>) {
    let fe = ctx.negotiated();
    send_header(&fe, R::GET_FEATURES.number(), 0x2, 0, &[], &[]);
    ctx.expect_closed(&fe);
}

fn reserved_flag_bits_close(ctx: &Ctx<'_>) {
    let fe = ctx.negotiated();
    send_header(&fe, R::GET_FEATURES.number(), 0x1 | 0x100, 0, &[], &[]);
    ctx.expect_closed(&fe);
}

fn reply_flag_on_a_request_closes(ctx: &Ctx<'_>) {
    let fe = ctx.negotiated();
    send_header(&fe, R::SET_OWNER.number(), 0x5, 0, &[], &[]);
    ctx.expect_closed(&fe);
}

fn unknown_request_numbers_are_refused(ctx: &Ctx<'_>) {
    let mut fe = ctx.negotiated();
    for n in [0u32, 44, 100, 1000, 0x8000_0000, u32::MAX] {
        expect_nack_raw(&mut fe, n, &[0; 8], &[]);
    }
    // Requests known to the protocol that no device here implements.
    for r in [
        R::VRING_KICK,
        R::SET_VRING_ENDIAN,
        R::POSTCOPY_LISTEN,
        R::RESET_OWNER,
    ] {
        let body = vec![
            0u8;
            if r == R::POSTCOPY_LISTEN || r == R::RESET_OWNER {
                0
            } else {
                8
            }
        ];
        fe.send_raw(r.number(), NEED_REPLY, &body, &[])
            .expect("send");
        match next_outcome(&fe, T) {
            Outcome::Reply(_) => {}
            other => panic!("{}: {other:?}", r.name()),
        }
    }
    expect_alive(&mut fe);
}

fn features_not_offered_are_refused(ctx: &Ctx<'_>) {
    let mut fe = ctx.negotiated();
    let offered = fe.get_features().expect("features");
    expect_nack(&mut fe, R::SET_FEATURES, &u64_body(!offered), &[]);
    expect_nack(&mut fe, R::SET_FEATURES, &u64_body(u64::MAX), &[]);
    let p = fe.get_protocol_features().expect("protocol");
    expect_nack(&mut fe, R::SET_PROTOCOL_FEATURES, &u64_body(!p.bits()), &[]);
    expect_nack(&mut fe, R::SET_STATUS, &u64_body(0x1ff), &[]);
    expect_nack(&mut fe, R::SET_VRING_ENABLE, &state_body(0, 2), &[]);
    expect_nack(&mut fe, R::SET_VRING_BASE, &state_body(0, 0x1_0000), &[]);
}

// ---------------------------------------------------------------------------------------
// fds.

fn fds_on_requests_that_take_none(ctx: &Ctx<'_>) {
    let mut fe = ctx.negotiated();
    let f = memfd(4096);
    let e = eventfd();
    for (r, body) in [
        (R::SET_OWNER, vec![]),
        (R::SET_FEATURES, u64_body(fe.features())),
        (R::SET_VRING_NUM, state_body(0, 16)),
        (R::SET_VRING_BASE, state_body(0, 0)),
        (R::SET_VRING_ADDR, addr_body(0, 0, 0, 0)),
        (R::SET_VRING_ENABLE, state_body(0, 1)),
        (
            R::SET_PROTOCOL_FEATURES,
            u64_body(fe.protocol_features().bits()),
        ),
        (R::SET_STATUS, u64_body(0)),
        (R::RESET_DEVICE, vec![]),
    ] {
        expect_nack(&mut fe, r, &body, &[&f]);
        expect_nack(&mut fe, r, &body, &[&e, &f]);
    }
}

fn fds_on_requests_that_always_reply(ctx: &Ctx<'_>) {
    let mut fe = ctx.negotiated();
    let f = memfd(4096);
    let features = fe.get_features().expect("features");
    let reply = expect_reply(&mut fe, R::GET_FEATURES, &[], &[&f]);
    assert_ne!(
        reply,
        u64_body(features),
        "GET_FEATURES with an fd was answered as if valid"
    );
    expect_reply(&mut fe, R::GET_QUEUE_NUM, &[], &[&f]);
    expect_reply(&mut fe, R::GET_PROTOCOL_FEATURES, &[], &[&f]);
    expect_reply(&mut fe, R::GET_MAX_MEM_SLOTS, &[], &[&f]);
    expect_alive(&mut fe);
    // GET_VRING_BASE has no failure reply: with an fd it closes the connection.
    fe.send_raw(R::GET_VRING_BASE.number(), PLAIN, &state_body(0, 0), &[&f])
        .expect("send");
    ctx.expect_closed(&fe);
}

fn ring_fd_flag_and_fd_count_disagree(ctx: &Ctx<'_>) {
    let mut fe = ctx.negotiated();
    let e = eventfd();
    for r in [R::SET_VRING_KICK, R::SET_VRING_CALL, R::SET_VRING_ERR] {
        // "No fd" flag, with an fd.
        expect_nack(&mut fe, r, &ring_fd_body(0, true), &[&e]);
        // An fd promised, none sent.
        expect_nack(&mut fe, r, &ring_fd_body(0, false), &[]);
        // Two fds.
        expect_nack(&mut fe, r, &ring_fd_body(0, false), &[&e, &e]);
    }
}

fn too_many_fds_close(ctx: &Ctx<'_>, n: usize) {
    let fe = ctx.negotiated();
    let fds: Vec<File> = (0..n).map(|_| eventfd()).collect();
    send_with_fds(&fe, &header(R::SET_OWNER.number(), NEED_REPLY, 0), &fds);
    ctx.expect_closed(&fe);
}

fn nine_fds_close(ctx: &Ctx<'_>) {
    too_many_fds_close(ctx, 9);
}

fn sixty_four_fds_close(ctx: &Ctx<'_>) {
    too_many_fds_close(ctx, 64);
}

fn more_fds_than_regions_are_refused(ctx: &Ctx<'_>) {
    let mut fe = ctx.negotiated();
    let fds: Vec<File> = (0..8).map(|_| memfd(1 << 16)).collect();
    let refs: Vec<&File> = fds.iter().collect();
    let body = table_body(&[region(0, 1 << 16, 0x1000_0000, 0)]);
    expect_nack(&mut fe, R::SET_MEM_TABLE, &body, &refs[..2]);
    expect_nack(&mut fe, R::SET_MEM_TABLE, &body, &refs);
    // Fewer fds than regions.
    let two = table_body(&[
        region(0, 1 << 16, 0x1000_0000, 0),
        region(1 << 20, 1 << 16, 0x2000_0000, 0),
    ]);
    expect_nack(&mut fe, R::SET_MEM_TABLE, &two, &refs[..1]);
}

fn two_fds_where_one_is_taken(ctx: &Ctx<'_>) {
    let mut fe = ctx.negotiated();
    let (a, b) = (memfd(1 << 16), memfd(1 << 16));
    let reg = SingleRegion(region(0, 1 << 16, 0x1000_0000, 0)).encode();
    expect_nack(&mut fe, R::ADD_MEM_REG, &reg, &[&a, &b]);
    expect_nack(&mut fe, R::REM_MEM_REG, &reg, &[&a, &b]);
    expect_nack(&mut fe, R::SET_LOG_FD, &[], &[&a, &b]);
    let sock = socket_fd();
    expect_nack(&mut fe, R::SET_BACKEND_REQ_FD, &[], &[&sock, &a]);
    let log = LogBase {
        mmap_size: 8,
        mmap_offset: 0,
    }
    .encode();
    let reply = expect_reply(&mut fe, R::SET_LOG_BASE, &log, &[&a, &b]);
    assert_ne!(reply, u64_body(0), "SET_LOG_BASE with two fds accepted");
    expect_alive(&mut fe);
}

fn memory_fd_of_the_wrong_type(ctx: &Ctx<'_>) {
    let mut fe = ctx.negotiated();
    let table = table_body(&[region(0, 1 << 16, 0x1000_0000, 0)]);
    let reg = SingleRegion(region(0, 1 << 16, 0x1000_0000, 0)).encode();
    for (what, f) in wrong_fds() {
        fe.send_raw(R::SET_MEM_TABLE.number(), NEED_REPLY, &table, &[&f])
            .expect("send");
        match next_outcome(&fe, T) {
            Outcome::Reply(m) => assert_ne!(m.body, u64_body(0), "memory in a {what} accepted"),
            other => panic!("SET_MEM_TABLE with a {what}: {other:?}"),
        }
        expect_nack(&mut fe, R::ADD_MEM_REG, &reg, &[&f]);
    }
    expect_alive(&mut fe);
}

fn ring_fds_of_the_wrong_type(ctx: &Ctx<'_>) {
    let (mut fe, mem) = with_memory(ctx);
    let q = DriverQueue::new(&mem, 0, 16).expect("queue");
    expect_ack(&mut fe, R::SET_VRING_NUM, &state_body(0, 16), &[]);
    expect_ack(
        &mut fe,
        R::SET_VRING_ADDR,
        &q.vring_addr(&mem).encode(),
        &[],
    );
    let mut wrong = wrong_fds();
    wrong.retain(|(w, _)| *w != "eventfd");
    wrong.push(("memfd", memfd(4096)));
    for (_, f) in &wrong {
        for r in [R::SET_VRING_KICK, R::SET_VRING_CALL, R::SET_VRING_ERR] {
            expect_nack(&mut fe, r, &ring_fd_body(0, false), &[f]);
        }
    }
}

fn log_fd_of_the_wrong_type(ctx: &Ctx<'_>) {
    let mut fe = ctx.negotiated();
    let log = LogBase {
        mmap_size: 4096,
        mmap_offset: 0,
    }
    .encode();
    for (what, f) in wrong_fds() {
        let reply = expect_reply(&mut fe, R::SET_LOG_BASE, &log, &[&f]);
        assert_ne!(reply, u64_body(0), "a {what} accepted as dirty log");
    }
    expect_alive(&mut fe);
}

fn backend_channel_fd_of_the_wrong_type(ctx: &Ctx<'_>) {
    let mut fe = ctx.negotiated();
    let unconnected = {
        let s = nix::sys::socket::socket(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::Stream,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
            None,
        )
        .expect("socket");
        File::from(s)
    };
    let mut fds = vec![memfd(4096), eventfd(), unconnected];
    fds.extend(
        wrong_fds()
            .into_iter()
            .filter(|(w, _)| *w != "socket")
            .map(|(_, f)| f),
    );
    for f in &fds {
        expect_nack(&mut fe, R::SET_BACKEND_REQ_FD, &[], &[f]);
    }
}

fn memory_fd_smaller_than_the_region(ctx: &Ctx<'_>) {
    let mut fe = ctx.negotiated();
    let f = memfd(4096);
    for d in [
        region(0, 1 << 16, 0x1000_0000, 0),
        region(0, 4096, 0x1000_0000, 1),
        region(0, 4096, 0x1000_0000, 4096),
        region(0, 4096, 0x1000_0000, 1 << 40),
    ] {
        expect_nack(&mut fe, R::SET_MEM_TABLE, &table_body(&[d]), &[&f]);
        expect_nack(&mut fe, R::ADD_MEM_REG, &SingleRegion(d).encode(), &[&f]);
    }
}

// ---------------------------------------------------------------------------------------
// Rings.

fn ring_index_out_of_range(ctx: &Ctx<'_>) {
    let mut fe = ctx.negotiated();
    let nq = ctx.num_queues();
    for i in [nq, nq + 1, 255, 256, 65535, 65536, u32::MAX] {
        expect_nack(&mut fe, R::SET_VRING_NUM, &state_body(i, 16), &[]);
        expect_nack(&mut fe, R::SET_VRING_BASE, &state_body(i, 0), &[]);
        expect_nack(&mut fe, R::SET_VRING_ENABLE, &state_body(i, 1), &[]);
        expect_nack(&mut fe, R::SET_VRING_ADDR, &addr_body(i, 0, 0, 0), &[]);
    }
    expect_alive(&mut fe);
}

/// GET_VRING_BASE has no failure reply: any state sent back would read as the state of
/// a ring that exists. A ring index out of range closes the connection, logged with it.
fn get_vring_base_out_of_range_closes(ctx: &Ctx<'_>) {
    let nq = ctx.num_queues();
    for i in [nq, 255, 65536, u32::MAX] {
        let fe = ctx.negotiated();
        fe.connection()
            .send_message(
                &header(R::GET_VRING_BASE.number(), PLAIN, 8),
                &state_body(i, 0),
                &[],
                None,
            )
            .expect("send");
        match next_outcome(&fe, T) {
            Outcome::Closed => {}
            other => {
                panic!("GET_VRING_BASE of ring {i}: {other:?}, expected the connection closed")
            }
        }
        let line = ctx
            .proc
            .wait_device_log(ctx.kind.device_name(), "connection closed:");
        assert!(
            line.contains(&format!("ring {i} does not exist")),
            "the close does not name ring {i}: {line}"
        );
    }
}

/// Ring addresses are checked when SET_VRING_ADDR arrives, not at the kick: outside
/// every region, across a region's end, misaligned, or before any memory table.
fn ring_address_refused_on_arrival(ctx: &Ctx<'_>) {
    let mut fe = ctx.negotiated();
    let mem = FrontendMemory::new(&[(0, 1 << 20)]).expect("memory");
    let good = DriverQueue::new(&mem, 0, 16)
        .expect("queue")
        .vring_addr(&mem);
    expect_ack(&mut fe, R::SET_VRING_NUM, &state_body(0, 16), &[]);
    // No memory table yet.
    expect_nack(
        &mut fe,
        R::SET_VRING_ADDR,
        &addr_body(0, good.desc, good.used, good.avail),
        &[],
    );
    fe.set_mem_table(&mem).expect("SET_MEM_TABLE");
    let end = mem.regions()[0].userspace_addr + (1 << 20);
    for (d, u, a) in [
        (0x7fff_0000_0000u64, good.used, good.avail),
        (good.desc, 0x10, good.avail),
        (end - 64, good.used, good.avail),
        (good.desc, end - 8, good.avail),
        (good.desc, good.used, end - 2),
        (good.desc + 8, good.used, good.avail),
        (good.desc, good.used + 2, good.avail),
        (good.desc, good.used, good.avail + 1),
    ] {
        expect_nack(&mut fe, R::SET_VRING_ADDR, &addr_body(0, d, u, a), &[]);
        // A refused address is not kept: the kick has no ring to start.
        expect_nack(
            &mut fe,
            R::SET_VRING_KICK,
            &ring_fd_body(0, false),
            &[&eventfd()],
        );
    }
    expect_ack(
        &mut fe,
        R::SET_VRING_ADDR,
        &addr_body(0, good.desc, good.used, good.avail),
        &[],
    );
    expect_alive(&mut fe);
}

/// Without REPLY_ACK the frontend cannot learn that its ring address was refused: the
/// backend closes the connection rather than go on with rings it does not have.
fn ring_address_refused_without_reply_ack_closes(ctx: &Ctx<'_>) {
    let mut fe = ctx.connect();
    let without_ack = !vhost_user_sync::protocol::ProtocolFeatures::REPLY_ACK.bits();
    fe.negotiate(u64::MAX, without_ack).expect("negotiation");
    let mem = FrontendMemory::new(&[(0, 1 << 20)]).expect("memory");
    fe.set_mem_table(&mem).expect("SET_MEM_TABLE");
    fe.send_raw(R::SET_VRING_NUM.number(), PLAIN, &state_body(0, 16), &[])
        .expect("send");
    fe.send_raw(
        R::SET_VRING_ADDR.number(),
        PLAIN,
        &addr_body(0, 0x7fff_0000_0000, 0x7fff_0000_1000, 0x7fff_0000_2000),
        &[],
    )
    .expect("send");
    ctx.expect_closed(&fe);
}

/// A stopped ring whose memory a new table no longer holds forgets its addresses: the
/// kick is refused until SET_VRING_ADDR places the ring in the new memory.
fn stopped_ring_forgets_addresses_the_new_table_lacks(ctx: &Ctx<'_>) {
    let (mut fe, mem) = with_memory(ctx);
    let old = DriverQueue::new(&mem, 0, 16)
        .expect("queue")
        .vring_addr(&mem);
    expect_ack(&mut fe, R::SET_VRING_NUM, &state_body(0, 16), &[]);
    expect_ack(
        &mut fe,
        R::SET_VRING_ADDR,
        &addr_body(0, old.desc, old.used, old.avail),
        &[],
    );
    // The same guest memory, now at other frontend addresses.
    let moved = memfd(1 << 20);
    let base = mem.regions()[0].userspace_addr + (1 << 30);
    let t = table_body(&[region(0, 1 << 20, base, 0)]);
    expect_ack(&mut fe, R::SET_MEM_TABLE, &t, &[&moved]);
    expect_nack(
        &mut fe,
        R::SET_VRING_KICK,
        &ring_fd_body(0, false),
        &[&eventfd()],
    );
    let shift = |a: u64| a + (1 << 30);
    expect_ack(
        &mut fe,
        R::SET_VRING_ADDR,
        &addr_body(0, shift(old.desc), shift(old.used), shift(old.avail)),
        &[],
    );
    expect_ack(&mut fe, R::SET_VRING_BASE, &state_body(0, 0), &[]);
    expect_ack(
        &mut fe,
        R::SET_VRING_KICK,
        &ring_fd_body(0, false),
        &[&eventfd()],
    );
    expect_alive(&mut fe);
}

fn ring_fd_index_out_of_range(ctx: &Ctx<'_>) {
    let (mut fe, _mem) = with_memory(ctx);
    let e = eventfd();
    let nq = u64::from(ctx.num_queues());
    for r in [R::SET_VRING_KICK, R::SET_VRING_CALL, R::SET_VRING_ERR] {
        for i in [nq, 255] {
            expect_nack(&mut fe, r, &ring_fd_body(i, false), &[&e]);
            expect_nack(&mut fe, r, &ring_fd_body(i, true), &[]);
        }
        // Index bits beyond 0-7 and flags beyond bit 8.
        for v in [0x200u64, 0x1_0000, 1 << 63] {
            expect_nack(&mut fe, r, &u64_body(v), &[&e]);
            expect_nack(&mut fe, r, &u64_body(v | 0x100), &[]);
        }
    }
}

fn ring_size_invalid(ctx: &Ctx<'_>) {
    let mut fe = ctx.negotiated();
    for num in [0u32, 3, 100, 1000, 65535, 65536, 1 << 20, u32::MAX] {
        expect_nack(&mut fe, R::SET_VRING_NUM, &state_body(0, num), &[]);
    }
    // The ring never got a size: it cannot start.
    let mem = FrontendMemory::new(&[(0, 1 << 20)]).expect("memory");
    fe.set_mem_table(&mem).expect("SET_MEM_TABLE");
    let q = DriverQueue::new(&mem, 0, 16).expect("queue");
    expect_ack(
        &mut fe,
        R::SET_VRING_ADDR,
        &q.vring_addr(&mem).encode(),
        &[],
    );
    let kick = eventfd();
    expect_nack(
        &mut fe,
        R::SET_VRING_KICK,
        &ring_fd_body(0, false),
        &[&kick],
    );
}

fn ring_address_unmapped(ctx: &Ctx<'_>) {
    let (mut fe, mem) = with_memory(ctx);
    let good = DriverQueue::new(&mem, 0, 16)
        .expect("queue")
        .vring_addr(&mem);
    let far = 0x7fff_0000_0000u64;
    for (d, u, a) in [
        (far, good.used, good.avail),
        (good.desc, far, good.avail),
        (good.desc, good.used, far),
        (u64::MAX - 8, good.used, good.avail),
        (0, 0, 0),
    ] {
        expect_ring_refused(&mut fe, addr_body(0, d, u, a));
    }
    expect_alive(&mut fe);
}

fn ring_address_misaligned(ctx: &Ctx<'_>) {
    let (mut fe, mem) = with_memory(ctx);
    let good = DriverQueue::new(&mem, 0, 16)
        .expect("queue")
        .vring_addr(&mem);
    for (d, u, a) in [
        (good.desc + 1, good.used, good.avail),
        (good.desc + 8, good.used, good.avail),
        (good.desc, good.used + 2, good.avail),
        (good.desc, good.used + 1, good.avail),
        (good.desc, good.used, good.avail + 1),
    ] {
        expect_ring_refused(&mut fe, addr_body(0, d, u, a));
    }
    expect_alive(&mut fe);
}

fn ring_address_straddles_regions(ctx: &Ctx<'_>) {
    let mut fe = ctx.negotiated();
    // Two regions that are contiguous in the frontend's address space but not in the
    // guest's: a ring across the seam cannot be translated as one range.
    let (a, b) = (memfd(1 << 16), memfd(1 << 16));
    let base = 0x1000_0000u64;
    let table = table_body(&[
        region(0, 1 << 16, base, 0),
        region(1 << 24, 1 << 16, base + (1 << 16), 0),
    ]);
    expect_ack(&mut fe, R::SET_MEM_TABLE, &table, &[&a, &b]);
    let seam = base + (1 << 16);
    for (d, u, av) in [
        (seam - 64, base, base + 0x1000),
        (base, seam - 8, base + 0x1000),
        (base, base + 0x1000, seam - 4),
    ] {
        expect_ring_refused(&mut fe, addr_body(0, d, u, av));
    }
    expect_alive(&mut fe);
}

fn ring_region_removed_while_running(ctx: &Ctx<'_>) {
    let mut fe = ctx.negotiated();
    let mem = FrontendMemory::new(&[(0, 1 << 20)]).expect("memory");
    let r = mem.regions()[0];
    fe.add_mem_region(r, &mem.files()[0]).expect("ADD_MEM_REG");
    let mut q = DriverQueue::new(&mem, 0, 16).expect("queue");
    q.attach(&mut fe, &mem).expect("attach");
    // The only region holds the running ring: removing it is refused.
    expect_nack(&mut fe, R::REM_MEM_REG, &SingleRegion(r).encode(), &[]);
    // A new table without the ring's memory is refused too.
    let other = memfd(1 << 16);
    let t = table_body(&[region(1 << 30, 1 << 16, 0x7000_0000, 0)]);
    expect_nack(&mut fe, R::SET_MEM_TABLE, &t, &[&other]);
    // The ring still works.
    let buf = mem.alloc(64, 8).expect("alloc");
    let writable = ctx.kind != crate::hostile::Kind::Net;
    let mut rng_q = q;
    if ctx.kind == crate::hostile::Kind::Rng {
        rng_q.add(mem.table(), &[(buf, 64, writable)]).expect("add");
        rng_q.kick(mem.table()).expect("kick");
        assert_eq!(rng_q.wait_used(mem.table(), T).expect("used").len, 64);
    }
}

// ---------------------------------------------------------------------------------------
// Memory regions.

fn regions_overlapping(ctx: &Ctx<'_>) {
    let mut fe = ctx.negotiated();
    let (a, b) = (memfd(1 << 16), memfd(1 << 16));
    for second in [
        region(0x8000, 1 << 16, 0x2000_0000, 0),
        region(0, 1 << 16, 0x2000_0000, 0),
        region(0xffff, 1, 0x2000_0000, 0),
    ] {
        let t = table_body(&[region(0, 1 << 16, 0x1000_0000, 0), second]);
        expect_nack(&mut fe, R::SET_MEM_TABLE, &t, &[&a, &b]);
    }
    expect_ack(
        &mut fe,
        R::ADD_MEM_REG,
        &SingleRegion(region(0, 1 << 16, 0x1000_0000, 0)).encode(),
        &[&a],
    );
    expect_nack(
        &mut fe,
        R::ADD_MEM_REG,
        &SingleRegion(region(0x8000, 1 << 16, 0x2000_0000, 0)).encode(),
        &[&b],
    );
}

fn regions_zero_sized(ctx: &Ctx<'_>) {
    let mut fe = ctx.negotiated();
    let a = memfd(1 << 16);
    let d = region(0, 0, 0x1000_0000, 0);
    expect_nack(&mut fe, R::SET_MEM_TABLE, &table_body(&[d]), &[&a]);
    expect_nack(&mut fe, R::ADD_MEM_REG, &SingleRegion(d).encode(), &[&a]);
    let empty = memfd(0);
    let d = region(0, 4096, 0x1000_0000, 0);
    expect_nack(&mut fe, R::SET_MEM_TABLE, &table_body(&[d]), &[&empty]);
}

fn regions_overflowing(ctx: &Ctx<'_>) {
    let mut fe = ctx.negotiated();
    let a = memfd(1 << 16);
    for d in [
        region(u64::MAX - 0x1000, 1 << 16, 0x1000_0000, 0),
        region(0, u64::MAX, 0x1000_0000, 0),
        region(0, 1 << 16, u64::MAX - 0x1000, 0),
        region(0, 1 << 16, 0x1000_0000, u64::MAX - 0x1000),
        region(0, 1 << 16, 0x1000_0000, u64::MAX),
        region(0, 1 << 63, 0x1000_0000, 1 << 63),
    ] {
        expect_nack(&mut fe, R::SET_MEM_TABLE, &table_body(&[d]), &[&a]);
        expect_nack(&mut fe, R::ADD_MEM_REG, &SingleRegion(d).encode(), &[&a]);
        expect_nack(&mut fe, R::REM_MEM_REG, &SingleRegion(d).encode(), &[]);
    }
}

fn regions_nine_in_one_table_close(ctx: &Ctx<'_>) {
    let fe = ctx.negotiated();
    let files: Vec<File> = (0..8).map(|_| memfd(4096)).collect();
    let regions: Vec<_> = (0..9u64)
        .map(|i| region(i << 20, 4096, 0x1000_0000 + (i << 20), 0))
        .collect();
    let body = table_body(&regions);
    let refs: Vec<&File> = files.iter().collect();
    // 9 regions exceed the largest message: the stream cannot be trusted any more.
    send_header(
        &fe,
        R::SET_MEM_TABLE.number(),
        NEED_REPLY,
        body.len() as u32,
        &body,
        &refs,
    );
    ctx.expect_closed(&fe);
}

fn regions_beyond_the_slot_limit(ctx: &Ctx<'_>) {
    let mut fe = ctx.negotiated();
    let slots = fe.get_max_mem_slots().expect("slots");
    let f = memfd(4096);
    for i in 0..slots {
        let d = region(i << 16, 4096, 0x1000_0000 + (i << 16), 0);
        expect_ack(&mut fe, R::ADD_MEM_REG, &SingleRegion(d).encode(), &[&f]);
    }
    let d = region(slots << 16, 4096, 0x1000_0000 + (slots << 16), 0);
    expect_nack(&mut fe, R::ADD_MEM_REG, &SingleRegion(d).encode(), &[&f]);
    // Everything can be removed again.
    for i in 0..slots {
        let d = region(i << 16, 4096, 0x1000_0000 + (i << 16), 0);
        fe.send_raw(
            R::REM_MEM_REG.number(),
            PLAIN,
            &SingleRegion(d).encode(),
            &[],
        )
        .expect("send");
    }
    expect_alive(&mut fe);
}

fn region_removal_that_matches_nothing(ctx: &Ctx<'_>) {
    let mut fe = ctx.negotiated();
    let f = memfd(1 << 16);
    let d = region(0, 1 << 16, 0x1000_0000, 0);
    expect_nack(&mut fe, R::REM_MEM_REG, &SingleRegion(d).encode(), &[]);
    expect_ack(&mut fe, R::ADD_MEM_REG, &SingleRegion(d).encode(), &[&f]);
    for wrong in [
        region(0, 1 << 15, 0x1000_0000, 0),
        region(0, 1 << 16, 0x2000_0000, 0),
        region(0x1000, 1 << 16, 0x1000_0000, 0),
    ] {
        expect_nack(&mut fe, R::REM_MEM_REG, &SingleRegion(wrong).encode(), &[]);
    }
    // REM_MEM_REG may carry one fd, which is closed (the leak check proves it).
    expect_ack(&mut fe, R::REM_MEM_REG, &SingleRegion(d).encode(), &[&f]);
}

// ---------------------------------------------------------------------------------------
// Log and inflight.

fn log_sizes_and_offsets_overflow(ctx: &Ctx<'_>) {
    let mut fe = ctx.negotiated();
    let f = memfd(4096);
    for (size, offset) in [
        (u64::MAX, 0u64),
        (8, u64::MAX),
        (u64::MAX, u64::MAX),
        (1 << 63, 1 << 63),
        (1 << 40, 0),
        (4096, 1),
        (0, 0),
        (0, 4096),
    ] {
        let body = LogBase {
            mmap_size: size,
            mmap_offset: offset,
        }
        .encode();
        let reply = expect_reply(&mut fe, R::SET_LOG_BASE, &body, &[&f]);
        assert_ne!(
            reply,
            u64_body(0),
            "log of {size:#x} bytes at {offset:#x} in a 4 KiB file accepted"
        );
    }
    expect_alive(&mut fe);
}

fn log_base_without_log_shmfd(ctx: &Ctx<'_>) {
    let mut fe = ctx.connect();
    fe.negotiate(
        u64::MAX,
        ProtocolFeatures::REPLY_ACK.bits() | ProtocolFeatures::CONFIGURE_MEM_SLOTS.bits(),
    )
    .expect("negotiate");
    let f = memfd(4096);
    let body = LogBase {
        mmap_size: 8,
        mmap_offset: 0,
    }
    .encode();
    expect_nack(&mut fe, R::SET_LOG_BASE, &body, &[&f]);
    expect_nack(&mut fe, R::SET_LOG_FD, &[], &[&f]);
}

fn inflight_body(size: u64, offset: u64, queues: u16, qsize: u16) -> Vec<u8> {
    let mut b = size.to_ne_bytes().to_vec();
    b.extend_from_slice(&offset.to_ne_bytes());
    b.extend_from_slice(&queues.to_ne_bytes());
    b.extend_from_slice(&qsize.to_ne_bytes());
    b.extend_from_slice(&[0; 4]);
    b
}

/// Whether the device keeps in-flight records (blk): its GET_INFLIGHT_FD hands out an
/// area for any geometry it has, whatever sizes the request carries (they are the
/// reply's fields).
fn keeps_records(ctx: &Ctx<'_>) -> bool {
    ctx.kind == crate::hostile::Kind::Blk
}

/// The `mmap_size` of a GET_INFLIGHT_FD reply, and whether an fd came with it.
fn get_inflight(fe: &mut Frontend, body: &[u8]) -> (u64, usize) {
    fe.send_raw(R::GET_INFLIGHT_FD.number(), PLAIN, body, &[])
        .expect("send");
    match next_outcome(fe, T) {
        Outcome::Reply(m) => {
            assert_eq!(m.header.request, R::GET_INFLIGHT_FD.number());
            assert_eq!(m.body.len(), 24);
            let size = u64::from_ne_bytes(m.body[..8].try_into().expect("8 bytes"));
            (size, m.fds.len())
        }
        other => panic!("GET_INFLIGHT_FD: {other:?}"),
    }
}

/// Bytes of a split-layout area for one queue of `qsize` entries.
fn split_area_len(qsize: u16) -> u64 {
    (16 + 16 * u64::from(qsize)).div_ceil(64) * 64
}

fn inflight_sizes_and_offsets_overflow(ctx: &Ctx<'_>) {
    let mut fe = ctx.negotiated();
    let f = memfd(4096);
    for (size, offset) in [
        (u64::MAX, 0u64),
        (4096, u64::MAX),
        (u64::MAX, u64::MAX),
        (0, 0),
    ] {
        let body = inflight_body(size, offset, 1, 16);
        let (got, fds) = get_inflight(&mut fe, &body);
        if keeps_records(ctx) && size.checked_add(offset).is_some() {
            // The request's size fields are the reply's: only an overflow is refused.
            assert_eq!((got, fds), (split_area_len(16), 1), "the area for 1 x 16");
        } else {
            assert_eq!((got, fds), (0, 0), "no inflight area handed out");
        }
        expect_nack(&mut fe, R::SET_INFLIGHT_FD, &body, &[&f]);
    }
    expect_alive(&mut fe);
}

fn inflight_queue_counts_out_of_range(ctx: &Ctx<'_>) {
    let mut fe = ctx.negotiated();
    let f = memfd(1 << 20);
    for (queues, qsize) in [
        (0u16, 16u16),
        (65535, 16),
        (1, 0),
        (1, 65535),
        (1, 3),
        (65535, 65535),
    ] {
        let body = inflight_body(1 << 20, 0, queues, qsize);
        let (got, fds) = get_inflight(&mut fe, &body);
        if keeps_records(ctx) && (queues, qsize) == (1, 3) {
            // One queue of 3 entries is a geometry blk has (rings of up to 3).
            assert_eq!((got, fds), (split_area_len(3), 1));
            expect_ack(&mut fe, R::SET_INFLIGHT_FD, &body, &[&f]);
            continue;
        }
        assert_eq!((got, fds), (0, 0), "inflight {queues} x {qsize} accepted");
        expect_nack(&mut fe, R::SET_INFLIGHT_FD, &body, &[&f]);
    }
    expect_alive(&mut fe);
}

// ---------------------------------------------------------------------------------------
// Order.

fn requests_before_set_owner(ctx: &Ctx<'_>) {
    let mut fe = ctx.connect();
    let p = fe.get_protocol_features().expect("protocol");
    fe.set_protocol_features(p)
        .expect("SET_PROTOCOL_FEATURES before SET_OWNER");
    let features = fe.get_features().expect("features");
    let mem = FrontendMemory::new(&[(0, 1 << 20)]).expect("memory");
    let q = DriverQueue::new(&mem, 0, 16).expect("queue");
    let e = eventfd();
    let table = MemoryTableDesc {
        regions: mem.regions().to_vec(),
    }
    .encode();
    expect_nack(&mut fe, R::SET_FEATURES, &u64_body(features), &[]);
    expect_nack(&mut fe, R::SET_MEM_TABLE, &table, &[&mem.files()[0]]);
    expect_nack(
        &mut fe,
        R::ADD_MEM_REG,
        &SingleRegion(mem.regions()[0]).encode(),
        &[&mem.files()[0]],
    );
    expect_nack(&mut fe, R::SET_VRING_NUM, &state_body(0, 16), &[]);
    expect_nack(&mut fe, R::SET_VRING_BASE, &state_body(0, 0), &[]);
    expect_nack(
        &mut fe,
        R::SET_VRING_ADDR,
        &q.vring_addr(&mem).encode(),
        &[],
    );
    for r in [R::SET_VRING_KICK, R::SET_VRING_CALL, R::SET_VRING_ERR] {
        expect_nack(&mut fe, r, &ring_fd_body(0, false), &[&e]);
    }
    // After SET_OWNER the same session works.
    fe.set_owner().expect("SET_OWNER");
    fe.set_features(features & !virtio::LOG_ALL)
        .expect("SET_FEATURES");
    fe.set_mem_table(&mem).expect("SET_MEM_TABLE");
}

fn requests_before_set_mem_table(ctx: &Ctx<'_>) {
    let mut fe = ctx.negotiated();
    let mem = FrontendMemory::new(&[(0, 1 << 20)]).expect("memory");
    let q = DriverQueue::new(&mem, 0, 16).expect("queue");
    expect_ack(&mut fe, R::SET_VRING_NUM, &state_body(0, 16), &[]);
    expect_ack(&mut fe, R::SET_VRING_BASE, &state_body(0, 0), &[]);
    fe.send_raw(
        R::SET_VRING_ADDR.number(),
        NEED_REPLY,
        &q.vring_addr(&mem).encode(),
        &[],
    )
    .expect("send");
    assert!(matches!(next_outcome(&fe, T), Outcome::Reply(_)));
    let (call, kick) = (eventfd(), eventfd());
    expect_ack(
        &mut fe,
        R::SET_VRING_CALL,
        &ring_fd_body(0, false),
        &[&call],
    );
    expect_nack(
        &mut fe,
        R::SET_VRING_KICK,
        &ring_fd_body(0, false),
        &[&kick],
    );
    expect_nack(
        &mut fe,
        R::REM_MEM_REG,
        &SingleRegion(mem.regions()[0]).encode(),
        &[],
    );
    // Kicks with no running ring are ignored.
    nix::unistd::write(&kick, &1u64.to_ne_bytes()).expect("kick");
    let reply = expect_reply(&mut fe, R::GET_VRING_BASE, &state_body(0, 0), &[]);
    assert_eq!(reply, state_body(0, 0));
}

fn requests_while_the_ring_runs(ctx: &Ctx<'_>) {
    let (mut fe, mem) = with_memory(ctx);
    let mut q = DriverQueue::new(&mem, 0, 16).expect("queue");
    q.attach(&mut fe, &mem).expect("attach");
    expect_nack(&mut fe, R::SET_VRING_NUM, &state_body(0, 32), &[]);
    expect_nack(&mut fe, R::SET_VRING_BASE, &state_body(0, 5), &[]);
    let mut moved = q.vring_addr(&mem);
    moved.desc += 4096;
    expect_nack(&mut fe, R::SET_VRING_ADDR, &moved.encode(), &[]);
    // The ring is stopped by GET_VRING_BASE, after which it may be changed.
    let reply = expect_reply(&mut fe, R::GET_VRING_BASE, &state_body(0, 0), &[]);
    assert_eq!(reply, state_body(0, 0));
    expect_ack(&mut fe, R::SET_VRING_NUM, &state_body(0, 32), &[]);
}

fn requests_after_reset_owner(ctx: &Ctx<'_>) {
    let (mut fe, mem) = with_memory(ctx);
    let mut q = DriverQueue::new(&mem, 0, 16).expect("queue");
    q.attach(&mut fe, &mem).expect("attach");
    fe.send_raw(R::RESET_OWNER.number(), NEED_REPLY, &[], &[])
        .expect("send");
    assert!(matches!(next_outcome(&fe, T), Outcome::Reply(_)));
    expect_nack(&mut fe, R::SET_VRING_NUM, &state_body(0, 16), &[]);
    let table = MemoryTableDesc {
        regions: mem.regions().to_vec(),
    }
    .encode();
    expect_nack(&mut fe, R::SET_MEM_TABLE, &table, &[&mem.files()[0]]);
}

fn requests_after_the_peer_closed(ctx: &Ctx<'_>) {
    // Requests that need replies, then the frontend leaves without reading any: the
    // backend's replies meet a closed socket.
    let (fe, mem) = with_memory(ctx);
    let table = MemoryTableDesc {
        regions: mem.regions().to_vec(),
    }
    .encode();
    for _ in 0..50 {
        fe.connection()
            .send_message(&header(R::GET_FEATURES.number(), PLAIN, 0), &[], &[], None)
            .expect("send");
    }
    let f = &mem.files()[0];
    let raw = [f.as_raw_fd()];
    fe.connection()
        .send_message(
            &header(R::SET_MEM_TABLE.number(), NEED_REPLY, table.len() as u32),
            &table,
            &[],
            Some(&raw),
        )
        .expect("send");
    drop(fe);
}

fn requests_after_the_peer_half_closed(ctx: &Ctx<'_>) {
    let mut fe = ctx.negotiated();
    for _ in 0..10 {
        fe.send_raw(R::GET_QUEUE_NUM.number(), PLAIN, &[], &[])
            .expect("send");
    }
    fe.connection()
        .stream()
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
    for _ in 0..10 {
        match next_outcome(&fe, T) {
            Outcome::Reply(m) => assert_eq!(m.header.request, R::GET_QUEUE_NUM.number()),
            other => panic!("reply lost after half-close: {other:?}"),
        }
    }
    assert!(matches!(next_outcome(&fe, T), Outcome::Closed));
    let _ = &mut fe;
}

// ---------------------------------------------------------------------------------------
// Floods: the connection's resources stay what they were after the first rounds.

fn flood(ctx: &Ctx<'_>, rounds: usize, mut step: impl FnMut(usize)) {
    let warm = rounds / 10;
    for i in 0..warm {
        step(i);
    }
    let before = Snapshot::take(ctx.proc.pid());
    for i in warm..rounds {
        step(i);
    }
    crate::hostile::wait_same_shape(ctx.proc.pid(), &before, T, "flood");
}

fn set_vring_num_flood(ctx: &Ctx<'_>) {
    let mut fe = ctx.negotiated();
    let body = state_body(0, 16);
    let mut n = 0;
    flood(ctx, 20_000, |_| {
        fe.send_raw(R::SET_VRING_NUM.number(), PLAIN, &body, &[])
            .expect("send");
        n += 1;
        if n % 1000 == 0 {
            expect_alive(&mut fe);
        }
    });
    expect_alive(&mut fe);
}

fn get_inflight_fd_flood(ctx: &Ctx<'_>) {
    let mut fe = ctx.negotiated();
    let body = inflight_body(0, 0, 1, 16);
    // With records each reply hands out a new area (and drops the last one): the
    // process's fds and mappings stay flat all the same.
    let want = if keeps_records(ctx) {
        (split_area_len(16), 1)
    } else {
        (0, 0)
    };
    flood(ctx, 100, |_| {
        for _ in 0..50 {
            fe.send_raw(R::GET_INFLIGHT_FD.number(), PLAIN, &body, &[])
                .expect("send");
        }
        for _ in 0..50 {
            match next_outcome(&fe, T) {
                Outcome::Reply(m) => {
                    assert_eq!(m.header.request, R::GET_INFLIGHT_FD.number());
                    let size = u64::from_ne_bytes(m.body[..8].try_into().expect("8 bytes"));
                    assert_eq!((size, m.fds.len()), want, "GET_INFLIGHT_FD reply");
                }
                other => panic!("GET_INFLIGHT_FD: {other:?}"),
            }
        }
        // The backend closes its copy of the last area's fd after the reply went out:
        // one more round trip and it has.
        fe.get_features().expect("GET_FEATURES");
    });
    expect_alive(&mut fe);
}

fn ring_fd_flood(ctx: &Ctx<'_>) {
    let (mut fe, mem) = with_memory(ctx);
    let mut q = DriverQueue::new(&mem, 0, 16).expect("queue");
    q.attach(&mut fe, &mem).expect("attach");
    flood(ctx, 300, |_| {
        let (call, kick, err) = (eventfd(), eventfd(), eventfd());
        let idx = ring_fd_body(0, false);
        fe.send_raw(R::SET_VRING_CALL.number(), PLAIN, &idx, &[&call])
            .expect("send");
        fe.send_raw(R::SET_VRING_ERR.number(), PLAIN, &idx, &[&err])
            .expect("send");
        fe.send_raw(R::SET_VRING_KICK.number(), PLAIN, &idx, &[&kick])
            .expect("send");
        expect_alive(&mut fe);
    });
}

fn memory_table_flood(ctx: &Ctx<'_>) {
    let (mut fe, mem) = with_memory(ctx);
    let mut q = DriverQueue::new(&mem, 0, 16).expect("queue");
    q.attach(&mut fe, &mem).expect("attach");
    let extra = memfd(1 << 16);
    let d = region(1 << 30, 1 << 16, 0x7000_0000, 0);
    flood(ctx, 200, |_| {
        fe.set_mem_table(&mem).expect("SET_MEM_TABLE");
        fe.add_mem_region(d, &extra).expect("ADD_MEM_REG");
        fe.remove_mem_region(d).expect("REM_MEM_REG");
    });
}

fn log_base_and_backend_channel_flood(ctx: &Ctx<'_>) {
    let mut fe = ctx.negotiated();
    let log = memfd(4096);
    flood(ctx, 200, |_| {
        fe.set_log_base(4096, 0, &log).expect("SET_LOG_BASE");
        let (a, _b) = std::os::unix::net::UnixStream::pair().expect("pair");
        fe.set_backend_req_fd(&a).expect("SET_BACKEND_REQ_FD");
        fe.request(R::SET_LOG_FD, &[], &[&log]).expect("SET_LOG_FD");
    });
}

fn reset_device_flood(ctx: &Ctx<'_>) {
    let (mut fe, mem) = with_memory(ctx);
    let mut q = DriverQueue::new(&mem, 0, 16).expect("queue");
    flood(ctx, 100, |_| {
        q.attach(&mut fe, &mem).expect("attach");
        fe.reset_device().expect("RESET_DEVICE");
        let f = fe.get_features().expect("features");
        // The driver queue here is split: the packed layout is offered, not acked.
        fe.set_features(f & !(virtio::LOG_ALL | virtio::RING_PACKED))
            .expect("SET_FEATURES");
    });
}
