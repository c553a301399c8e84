//! Shared memory that the frontend shrinks after the backend mapped it: guest memory
//! from SET_MEM_TABLE and ADD_MEM_REG, and the dirty log. An access past the new end of
//! the file raises SIGBUS; the backend must close that connection only, and keep every
//! other device of the process serving.

use vhost_user_sync::frontend::{DriverQueue, FrontendMemory};

use crate::hostile::{class, expect_closed, memfd, Case, Ctx, Healthy, ALL};

pub static CASES: &[Case] = &[
    case!(
        memory_table_truncated_under_running_rings,
        class::TRUNCATED,
        ALL
    ),
    case!(
        added_region_truncated_under_a_running_ring,
        class::TRUNCATED,
        ALL
    ),
    case!(dirty_log_truncated_while_logging, class::TRUNCATED, ALL),
];

/// Waits for the backend to close `fe` and name the fault in its log.
fn expect_fault_closed(ctx: &Ctx<'_>, fe: &vhost_user_sync::frontend::Frontend) {
    expect_closed(fe);
    ctx.proc
        .wait_device_log(ctx.kind.device_name(), "shared memory became inaccessible");
}

fn memory_table_truncated_under_running_rings(ctx: &Ctx<'_>) {
    let mut h = Healthy::open(ctx.kind, ctx.socket);
    h.pump();
    // The frontend shrinks guest memory to nothing; the backend's next look at a ring
    // faults.
    h.mem.files()[0].set_len(0).expect("truncate");
    for q in &mut h.queues {
        q.kick_now().expect("kick");
    }
    expect_fault_closed(ctx, &h.fe);
}

fn added_region_truncated_under_a_running_ring(ctx: &Ctx<'_>) {
    let mut fe = ctx.negotiated();
    let mem = FrontendMemory::new(&[(0, 1 << 20)]).expect("memory");
    fe.add_mem_region(mem.regions()[0], &mem.files()[0])
        .expect("ADD_MEM_REG");
    let mut q = DriverQueue::new(&mem, ctx.kind.data_queue(), 16).expect("queue");
    q.attach(&mut fe, &mem).expect("attach");
    // Only the tail goes: the rings at the start of the region still read, a buffer
    // near the end does not.
    let buf = (1u64 << 20) - 4096;
    mem.files()[0].set_len(1 << 16).expect("truncate");
    let writable = ctx.kind != crate::hostile::Kind::Net;
    q.add(mem.table(), &[(buf, 1024, writable)]).expect("add");
    q.kick_now().expect("kick");
    expect_fault_closed(ctx, &fe);
}

fn dirty_log_truncated_while_logging(ctx: &Ctx<'_>) {
    let mut h = Healthy::open(ctx.kind, ctx.socket);
    assert_ne!(
        h.fe.features() & vhost_user_sync::protocol::virtio::LOG_ALL,
        0,
        "LOG_ALL negotiated"
    );
    let log = memfd(4096);
    h.fe.set_log_base(4096, 0, &log).expect("SET_LOG_BASE");
    h.pump();
    assert!(
        {
            let mut b = [0u8; 64];
            nix::sys::uio::pread(&log, &mut b, 0).expect("read log");
            b.iter().any(|&x| x != 0)
        },
        "the backend logged its writes"
    );
    log.set_len(0).expect("truncate");
    // Traffic makes the backend write guest memory, and so mark the log.
    let (kind, t) = (h.kind, h.mem.table());
    let b = h.mem.alloc(4096, 64).expect("alloc");
    let q = h
        .queues
        .iter_mut()
        .find(|q| q.index() == kind.data_queue())
        .expect("queue");
    let writable = kind != crate::hostile::Kind::Net;
    if kind == crate::hostile::Kind::Blk {
        t.write(b, &crate::hostile::blk_outhdr(0, 0)).expect("hdr");
        q.add(
            t,
            &[(b, 16, false), (b + 64, 512, true), (b + 1024, 1, true)],
        )
        .expect("add");
    } else {
        q.add(t, &[(b, 256, writable)]).expect("add");
    }
    if kind == crate::hostile::Kind::Net {
        // RX writes guest memory: post a receive buffer too.
        let rx = h.queues.iter_mut().find(|q| q.index() == 0).expect("rx");
        rx.add(t, &[(b + 2048, 2048, true)]).expect("add");
        rx.kick_now().expect("kick");
    }
    for q in &mut h.queues {
        q.kick_now().expect("kick");
    }
    expect_fault_closed(ctx, &h.fe);
}
