//! Our frontend drives `net_backend --backend null`: features, config space, TX parsing,
//! generated RX frames, the control queue and malformed frames.

#[path = "support/backend.rs"]
mod backend;

use std::time::Duration;

use backend::{page_logged, BackendProcess};
use vhost_user_sync::frontend::{DriverQueue, Frontend, FrontendMemory};
use vhost_user_sync::protocol::{virtio, ProtocolFeatures};
use vhost_user_sync_net::features as nf;
use vhost_user_sync_net::request::{NetHdr, NET_HDR_LEN};

const T: Duration = Duration::from_secs(10);

struct Net {
    mem: FrontendMemory,
    fe: Frontend,
    rx: DriverQueue,
    tx: DriverQueue,
    ctrl: DriverQueue,
}

fn connect(be: &BackendProcess, want: u64) -> Net {
    connect_with(be, want, false)
}

/// Connects with rings of the layout asked for (`packed`).
fn connect_with(be: &BackendProcess, want: u64, packed: bool) -> Net {
    let mem = FrontendMemory::new(&[(0, 4 << 20)]).unwrap();
    let mut fe = Frontend::connect(&be.socket).unwrap();
    let queue = |i, size| match packed {
        true => DriverQueue::new_packed(&mem, i, size).unwrap(),
        false => DriverQueue::new(&mem, i, size).unwrap(),
    };
    if packed {
        fe.negotiate_packed(want, u64::MAX).unwrap();
    } else {
        fe.negotiate(want, u64::MAX).unwrap();
    }
    fe.set_mem_table(&mem).unwrap();
    let mut rx = queue(0, 256);
    let mut tx = queue(1, 256);
    let mut ctrl = queue(2, 64);
    for q in [&mut rx, &mut tx, &mut ctrl] {
        q.attach(&mut fe, &mem).unwrap();
    }
    Net {
        mem,
        fe,
        rx,
        tx,
        ctrl,
    }
}

fn send(n: &mut Net, hdr: NetHdr, frame: &[u8]) -> u32 {
    let h = n.mem.alloc(NET_HDR_LEN as u64, 8).unwrap();
    n.mem.table().write(h, &hdr.to_bytes()).unwrap();
    let f = n.mem.alloc(frame.len() as u64, 8).unwrap();
    n.mem.table().write(f, frame).unwrap();
    n.tx.add(
        n.mem.table(),
        &[
            (h, NET_HDR_LEN as u32, false),
            (f, frame.len() as u32, false),
        ],
    )
    .unwrap();
    n.tx.kick(n.mem.table()).unwrap();
    n.tx.wait_used(n.mem.table(), T).unwrap().len
}

fn ctrl(n: &mut Net, cmd: &[u8]) -> u8 {
    let c = n.mem.alloc(cmd.len() as u64, 8).unwrap();
    n.mem.table().write(c, cmd).unwrap();
    let ack = n.mem.alloc(1, 1).unwrap();
    n.mem.table().write(ack, &[0xee]).unwrap();
    n.ctrl
        .add(
            n.mem.table(),
            &[(c, cmd.len() as u32, false), (ack, 1, true)],
        )
        .unwrap();
    n.ctrl.kick(n.mem.table()).unwrap();
    assert_eq!(n.ctrl.wait_used(n.mem.table(), T).unwrap().len, 1);
    let mut b = [0u8; 1];
    n.mem.table().read(ack, &mut b).unwrap();
    b[0]
}

#[test]
fn features_and_config_space() {
    let be = BackendProcess::start(
        "net_backend",
        &["--backend", "null", "--queues", "2", "--mtu", "1400"],
    );
    let mut fe = Frontend::connect(&be.socket).unwrap();
    let (features, protocol) = fe.negotiate(u64::MAX, u64::MAX).unwrap();
    for bit in [
        nf::MAC,
        nf::STATUS,
        nf::MRG_RXBUF,
        nf::CTRL_VQ,
        nf::MQ,
        nf::MTU,
        nf::CSUM,
        nf::HOST_TSO4,
    ] {
        assert_ne!(features & bit, 0, "{bit:#x}");
    }
    assert_ne!(features & virtio::VERSION_1, 0);
    assert!(
        protocol.contains(ProtocolFeatures::CONFIG | ProtocolFeatures::MQ | ProtocolFeatures::MTU)
    );
    assert_eq!(fe.get_queue_num().unwrap(), 5);
    let config = fe.get_config(0, 12).unwrap();
    assert_eq!(&config[..6], &[0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
    assert_eq!(u16::from_le_bytes([config[6], config[7]]), 1, "link up");
    assert_eq!(
        u16::from_le_bytes([config[8], config[9]]),
        2,
        "max_virtqueue_pairs"
    );
    assert_eq!(u16::from_le_bytes([config[10], config[11]]), 1400, "mtu");
    assert!(fe.get_config(8, 8).is_err(), "beyond the config space");
}

#[test]
fn tx_frames_are_taken_and_malformed_ones_dropped() {
    let be = BackendProcess::start("net_backend", &["--backend", "null"]);
    let mut n = connect(&be, u64::MAX);
    let frame = [0xabu8; 60];
    for _ in 0..10 {
        assert_eq!(send(&mut n, NetHdr::default(), &frame), 0);
    }
    // Checksum beyond the frame, GSO without room, unknown flags: each dropped, and the
    // queue keeps working.
    let bad = [
        NetHdr {
            flags: 1,
            csum_start: 58,
            csum_offset: 6,
            ..NetHdr::default()
        },
        NetHdr {
            gso_type: 1,
            gso_size: 0,
            ..NetHdr::default()
        },
        NetHdr {
            flags: 0x40,
            ..NetHdr::default()
        },
    ];
    for h in bad {
        assert_eq!(send(&mut n, h, &frame), 0);
    }
    // A header split across two descriptors.
    let h = n.mem.alloc(64, 8).unwrap();
    n.tx.add(n.mem.table(), &[(h, 6, false), (h + 6, 6 + 60, false)])
        .unwrap();
    n.tx.kick(n.mem.table()).unwrap();
    n.tx.wait_used(n.mem.table(), T).unwrap();
    assert_eq!(send(&mut n, NetHdr::default(), &frame), 0);
    // All four bad frames were counted and logged; the good ones were not.
    be.wait_log("dropped malformed frame #4", T);
    drop(n);
    be.wait_log("frontend disconnected", T);
}

#[test]
fn rx_generates_frames_into_posted_buffers() {
    let be = BackendProcess::start("net_backend", &["--backend", "null", "--frame-len", "100"]);
    let mut n = connect(&be, u64::MAX);
    assert_ne!(n.fe.features() & nf::MRG_RXBUF, 0);
    let bufs: Vec<u64> = (0..8).map(|_| n.mem.alloc(2048, 64).unwrap()).collect();
    for &b in &bufs {
        n.rx.add(n.mem.table(), &[(b, 2048, true)]).unwrap();
    }
    n.rx.kick(n.mem.table()).unwrap();
    for _ in 0..8 {
        let used = n.rx.wait_used(n.mem.table(), T).unwrap();
        assert_eq!(used.len as usize, NET_HDR_LEN + 100);
        let mut b = vec![0u8; used.len as usize];
        n.mem
            .table()
            .read(bufs[usize::from(used.id) % 8].min(bufs[7]), &mut b)
            .unwrap();
    }
    let mut first = [0u8; NET_HDR_LEN + 14];
    n.mem.table().read(bufs[0], &mut first).unwrap();
    let hdr = NetHdr::from_bytes(first[..NET_HDR_LEN].try_into().unwrap());
    assert_eq!(hdr.num_buffers, 1);
    assert_eq!(
        &first[NET_HDR_LEN..NET_HDR_LEN + 6],
        &[0xff; 6],
        "broadcast destination"
    );
    // A buffer too small for the header is refused with length 0.
    let tiny = n.mem.alloc(8, 8).unwrap();
    n.rx.add(n.mem.table(), &[(tiny, 8, true)]).unwrap();
    n.rx.kick(n.mem.table()).unwrap();
    assert_eq!(n.rx.wait_used(n.mem.table(), T).unwrap().len, 0);
}

#[test]
fn rx_fills_batches_larger_than_one_in_order_with_a_bad_buffer_among_them() {
    let be = BackendProcess::start("net_backend", &["--backend", "null", "--frame-len", "64"]);
    let mut n = connect(&be, u64::MAX);
    // 100 buffers (several of the device's batches), the 50th too small for a header.
    let bufs: Vec<(u64, u32)> = (0..100)
        .map(|i| {
            let len = if i == 49 { 8 } else { 2048 };
            (n.mem.alloc(len.into(), 64).unwrap(), len)
        })
        .collect();
    let mut heads = Vec::new();
    for &(b, len) in &bufs {
        heads.push(n.rx.add(n.mem.table(), &[(b, len, true)]).unwrap());
    }
    n.rx.kick(n.mem.table()).unwrap();
    for (i, &(b, _)) in bufs.iter().enumerate() {
        let used = n.rx.wait_used(n.mem.table(), T).unwrap();
        assert_eq!(used.id, heads[i], "buffer {i} comes back in order");
        if i == 49 {
            assert_eq!(
                used.len, 0,
                "a buffer without room for the header is refused"
            );
            continue;
        }
        assert_eq!(used.len as usize, NET_HDR_LEN + 64, "buffer {i}");
        let mut got = vec![0u8; NET_HDR_LEN + 64];
        n.mem.table().read(b, &mut got).unwrap();
        let hdr = NetHdr::from_bytes(got[..NET_HDR_LEN].try_into().unwrap());
        assert_eq!(hdr.num_buffers, 1, "buffer {i}");
        assert_eq!(&got[NET_HDR_LEN..NET_HDR_LEN + 6], &[0xff; 6], "buffer {i}");
    }
}

#[test]
fn control_queue_answers_ok_and_err() {
    let be = BackendProcess::start("net_backend", &["--backend", "null", "--queues", "2"]);
    let mem = FrontendMemory::new(&[(0, 4 << 20)]).unwrap();
    let mut fe = Frontend::connect(&be.socket).unwrap();
    fe.negotiate(u64::MAX, u64::MAX).unwrap();
    fe.set_mem_table(&mem).unwrap();
    let mut ctrlq = DriverQueue::new(&mem, 4, 64).unwrap();
    ctrlq.attach(&mut fe, &mem).unwrap();
    let rx = DriverQueue::new(&mem, 0, 8).unwrap();
    let tx = DriverQueue::new(&mem, 1, 8).unwrap();
    let mut n = Net {
        mem,
        fe,
        rx,
        tx,
        ctrl: ctrlq,
    };
    assert_eq!(ctrl(&mut n, &[4, 0, 2, 0]), 0, "2 queue pairs");
    assert_eq!(
        ctrl(&mut n, &[4, 0, 3, 0]),
        1,
        "3 pairs is more than offered"
    );
    assert_eq!(ctrl(&mut n, &[0, 0, 1]), 0, "promiscuous on");
    assert_eq!(ctrl(&mut n, &[1, 1, 2, 0, 0, 0, 0, 9]), 0, "MAC set");
    assert_eq!(ctrl(&mut n, &[9, 9]), 1, "unknown class");
    assert_eq!(
        ctrl(&mut n, &[1, 0, 0xff, 0xff, 0xff, 0xff]),
        1,
        "lying MAC table"
    );
    let config = n.fe.get_config(0, 6).unwrap();
    assert_eq!(config, [2, 0, 0, 0, 0, 9]);
}

#[test]
fn packed_rings_carry_tx_rx_and_control_with_in_order_and_mrg_rxbuf() {
    let be = BackendProcess::start("net_backend", &["--backend", "null", "--frame-len", "100"]);
    for want in [u64::MAX, !(virtio::IN_ORDER | nf::MRG_RXBUF)] {
        let mut n = connect_with(&be, want, true);
        assert_ne!(n.fe.features() & virtio::RING_PACKED, 0);
        // TX: 300 frames through a ring of 256 (it wraps).
        for _ in 0..300 {
            assert_eq!(send(&mut n, NetHdr::default(), &[0xab; 60]), 0);
        }
        // RX: generated frames fill posted buffers, returned in posting order.
        let mut posted = Vec::new();
        for _ in 0..40 {
            let b = n.mem.alloc(2048, 64).unwrap();
            posted.push(n.rx.add(n.mem.table(), &[(b, 2048, true)]).unwrap());
        }
        n.rx.kick(n.mem.table()).unwrap();
        let got: Vec<u16> = (0..40)
            .map(|_| {
                let u = n.rx.wait_used(n.mem.table(), T).unwrap();
                assert_eq!(u.len as usize, NET_HDR_LEN + 100);
                u.id
            })
            .collect();
        assert_eq!(got, posted);
        // Control: a MAC change is acked.
        let mut cmd = vec![1u8, 1];
        cmd.extend_from_slice(&[0x02, 0, 0, 0, 0, 7]);
        assert_eq!(ctrl(&mut n, &cmd), 0);
    }
}

/// The MAC address the driver set moves to another backend process with the device
/// state (as a migration moves it); a damaged state is refused and changes nothing.
#[test]
fn the_mac_the_driver_set_moves_to_another_backend_process() {
    let a = BackendProcess::start("net_backend", &["--backend", "null"]);
    let b = BackendProcess::start("net_backend", &["--backend", "null"]);
    let mut src = connect(&a, u64::MAX);
    assert_eq!(ctrl(&mut src, &[1, 1, 2, 0, 0, 0, 0, 0x42]), 0, "MAC set");
    for q in 0..3 {
        src.fe.get_vring_base(q).unwrap();
    }
    let state = src.fe.save_device_state().unwrap();
    let mut fe = Frontend::connect(&b.socket).unwrap();
    fe.negotiate(u64::MAX, u64::MAX).unwrap();
    let before = fe.get_config(0, 6).unwrap();
    assert_ne!(before, [2, 0, 0, 0, 0, 0x42]);
    let mut damaged = state.clone();
    let last = damaged.len() - 9;
    damaged[last] ^= 0xff;
    assert!(fe.load_device_state(&damaged).is_err());
    assert_eq!(
        fe.get_config(0, 6).unwrap(),
        before,
        "a refused state changed nothing"
    );
    fe.load_device_state(&state).unwrap();
    assert_eq!(fe.get_config(0, 6).unwrap(), [2, 0, 0, 0, 0, 0x42]);
    b.wait_log("device state loaded", T);
}

/// While migrating, frames the device writes into RX buffers mark their pages.
#[test]
fn received_frames_are_in_the_dirty_log() {
    let be = BackendProcess::start("net_backend", &["--backend", "null", "--frame-len", "6000"]);
    let mut n = connect(&be, !nf::MRG_RXBUF);
    assert_ne!(n.fe.features() & virtio::LOG_ALL, 0);
    // 4 MiB of guest memory: 1024 pages, 128 bytes of log.
    let log = FrontendMemory::new(&[(0, 4096)]).unwrap();
    n.fe.set_log_base(128, 0, &log.files()[0]).unwrap();
    let logged = |gpa: u64| page_logged(&log, gpa);
    // One 12 KiB buffer across three pages takes one 6 KiB frame and its header.
    let buf = n.mem.alloc(3 * 4096, 4096).unwrap();
    n.rx.add(n.mem.table(), &[(buf, 3 * 4096, true)]).unwrap();
    n.rx.kick(n.mem.table()).unwrap();
    let used = n.rx.wait_used(n.mem.table(), T).unwrap();
    assert_eq!(used.len as usize, NET_HDR_LEN + 6000);
    assert!(logged(buf) && logged(buf + 4096), "the frame's pages");
    assert!(!logged(buf + 2 * 4096), "the page the frame did not reach");
}
