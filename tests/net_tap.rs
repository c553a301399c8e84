//! `net_backend` with a real tap in a private network namespace, driven by our frontend:
//! frames through every queue pair of a multi-queue tap, and link changes reaching the
//! frontend as CONFIG_CHANGE_MSG.

#[path = "support/backend.rs"]
mod backend;
#[path = "support/netns.rs"]
mod netns;

use std::os::unix::net::UnixStream;
use std::time::Duration;

use backend::{page_logged, BackendProcess};
use netns::NetNs;
use vhost_user_sync::frontend::{DriverQueue, Frontend, FrontendMemory};
use vhost_user_sync::message::{read_message, write_message};
use vhost_user_sync::protocol::{virtio, BackendRequest, HeaderFlags};
use vhost_user_sync::sys::unix::SocketPlatformConnection;
use vhost_user_sync_net::request::{NetHdr, NET_HDR_LEN};

const T: Duration = Duration::from_secs(10);
const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

/// A namespace with net_backend serving tap `vhutap0` (10.77.0.1/24, up), or `None`
/// (skipped) where namespaces cannot be made; under CI that fails instead.
fn tap_backend(args: &[&str]) -> Option<(NetNs, BackendProcess)> {
    tap_backend_under(None, args)
}

/// [`tap_backend`], with the program run through `wrapper` (a command that execs it).
fn tap_backend_under(
    wrapper: Option<&std::path::Path>,
    args: &[&str],
) -> Option<(NetNs, BackendProcess)> {
    if let Some(why) = netns::unavailable() {
        assert!(
            std::env::var_os("CI").is_none(),
            "net tap tests cannot run: {why}"
        );
        eprintln!("SKIP: {why}");
        return None;
    }
    let ns = NetNs::create();
    let mut all = vec!["--tap", "vhutap0"];
    all.extend_from_slice(args);
    let mut prefix = vec!["ip", "netns", "exec", ns.name()];
    prefix.extend(wrapper.and_then(|w| w.to_str()));
    let be = BackendProcess::start_with(&prefix, None, "net_backend", &all);
    ns.ip(&["addr", "add", "10.77.0.1/24", "dev", "vhutap0"]);
    ns.ip(&["link", "set", "vhutap0", "up"]);
    Some((ns, be))
}

/// A frontend on `socket` with every feature negotiated, `mem_mib` MiB of memory, and
/// the first queue pair (RX 0, TX 1) of `size` entries running.
fn first_pair(
    socket: &std::path::Path,
    mem_mib: u64,
    size: u16,
) -> (FrontendMemory, Frontend, DriverQueue, DriverQueue) {
    let mem = FrontendMemory::new(&[(0, mem_mib << 20)]).unwrap();
    let mut fe = Frontend::connect(socket).unwrap();
    fe.negotiate(u64::MAX, u64::MAX).unwrap();
    fe.set_mem_table(&mem).unwrap();
    let mut rx = DriverQueue::new(&mem, 0, size).unwrap();
    let mut tx = DriverQueue::new(&mem, 1, size).unwrap();
    rx.attach(&mut fe, &mem).unwrap();
    tx.attach(&mut fe, &mem).unwrap();
    (mem, fe, rx, tx)
}

fn arp_request() -> Vec<u8> {
    let mut f = NetHdr::default().to_bytes().to_vec();
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&[10, 77, 0, 2]);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&[10, 77, 0, 1]);
    f.resize(NET_HDR_LEN + 60, 0);
    f
}

fn is_arp_reply_from_host(frame: &[u8]) -> bool {
    frame.len() >= 42
        && frame[12..14] == [0x08, 0x06]
        && frame[20..22] == [0, 2]
        && frame[28..32] == [10, 77, 0, 1]
}

/// 2 KiB RX buffers a test posts per queue: more than a 64 KiB frame and its header.
const RX_BUFFERS: usize = 40;

#[test]
fn every_queue_pair_of_a_multiqueue_tap_carries_frames() {
    let Some((_ns, be)) = tap_backend(&["--queues", "2"]) else {
        return;
    };
    let mem = FrontendMemory::new(&[(0, 8 << 20)]).unwrap();
    let mut fe = Frontend::connect(&be.socket).unwrap();
    fe.negotiate(u64::MAX, u64::MAX).unwrap();
    fe.set_mem_table(&mem).unwrap();
    let mut queues: Vec<DriverQueue> = (0..5)
        .map(|i| DriverQueue::new(&mem, i, 64).unwrap())
        .collect();
    for q in &mut queues {
        q.attach(&mut fe, &mem).unwrap();
    }
    // RX buffers on both RX queues (0 and 2): the tap spreads frames by flow. With
    // MRG_RXBUF and GSO acked, the device reads a frame once it holds room for a 64 KiB
    // one, as a driver that fills its ring gives it.
    let mut bufs = Vec::new();
    for rx in [0usize, 2] {
        for _ in 0..RX_BUFFERS {
            let b = mem.alloc(2048, 64).unwrap();
            queues[rx].add(mem.table(), &[(b, 2048, true)]).unwrap();
            bufs.push((rx, b));
        }
        queues[rx].kick(mem.table()).unwrap();
    }
    // One ARP request through each TX queue (1 and 3); each gets its reply.
    let req = arp_request();
    for tx in [1usize, 3] {
        let f = mem.alloc(req.len() as u64, 8).unwrap();
        mem.table().write(f, &req).unwrap();
        queues[tx]
            .add(mem.table(), &[(f, req.len() as u32, false)])
            .unwrap();
        queues[tx].kick(mem.table()).unwrap();
        queues[tx].wait_used(mem.table(), T).unwrap();
    }
    let mut replies = 0;
    let deadline = std::time::Instant::now() + T;
    while replies < 2 && std::time::Instant::now() < deadline {
        for rx in [0usize, 2] {
            while let Some(used) = queues[rx].pop_used(mem.table()).unwrap() {
                let gpa = bufs
                    .iter()
                    .filter(|(q, _)| *q == rx)
                    .nth(usize::from(used.id))
                    .unwrap()
                    .1;
                let mut frame = vec![0u8; used.len as usize];
                mem.table().read(gpa, &mut frame).unwrap();
                if is_arp_reply_from_host(&frame[NET_HDR_LEN..]) {
                    replies += 1;
                }
            }
        }
        if replies < 2 {
            queues[0].wait_call(Duration::from_millis(100)).unwrap();
        }
    }
    assert_eq!(
        replies, 2,
        "one ARP reply per request, through the tap's queues"
    );
}

#[test]
fn link_changes_reach_the_frontend_as_config_change() {
    let Some((ns, be)) = tap_backend(&[]) else {
        return;
    };
    let mut fe = Frontend::connect(&be.socket).unwrap();
    fe.negotiate(u64::MAX, u64::MAX).unwrap();
    let (ours, theirs) = UnixStream::pair().unwrap();
    fe.set_backend_req_fd(&theirs).unwrap();
    drop(theirs);
    let channel = SocketPlatformConnection::new(ours).unwrap();
    let status = |fe: &mut Frontend| {
        let c = fe.get_config(6, 2).unwrap();
        u16::from_le_bytes([c[0], c[1]])
    };
    assert_eq!(status(&mut fe), 1, "link up");
    for (state, want) in [("down", 0), ("up", 1)] {
        ns.ip(&["link", "set", "vhutap0", state]);
        let msg = read_message(&channel, true).unwrap().unwrap();
        assert_eq!(
            msg.header.request,
            BackendRequest::CONFIG_CHANGE_MSG.number()
        );
        if msg.header.flags.need_reply() {
            write_message(
                &channel,
                msg.header.request,
                HeaderFlags::REPLY_FLAGS,
                &0u64.to_ne_bytes(),
                &[],
            )
            .unwrap();
        }
        assert_eq!(status(&mut fe), want, "link {state}");
    }
    be.wait_log("net: link up", T);
}

#[test]
fn an_unprivileged_owner_opens_its_persistent_tap() {
    if let Some(why) = netns::unavailable() {
        assert!(
            std::env::var_os("CI").is_none(),
            "net tap tests cannot run: {why}"
        );
        eprintln!("SKIP: {why}");
        return;
    }
    const NOBODY: u32 = 65534;
    let ns = NetNs::create();
    ns.ip(&[
        "tuntap", "add", "dev", "vhutap1", "mode", "tap", "user", "65534", "vnet_hdr",
    ]);
    ns.ip(&["addr", "add", "10.77.0.1/24", "dev", "vhutap1"]);
    let be =
        BackendProcess::start_in_netns_as(ns.name(), NOBODY, "net_backend", &["--tap", "vhutap1"]);
    ns.ip(&["link", "set", "vhutap1", "up"]);
    let (mem, _fe, mut rx, mut tx) = first_pair(&be.socket, 4, 64);
    // Room for a 64 KiB frame (MRG_RXBUF with GSO), as a driver that fills its ring has.
    let mut bufs = std::collections::HashMap::new();
    for _ in 0..RX_BUFFERS {
        let buf = mem.alloc(2048, 64).unwrap();
        bufs.insert(rx.add(mem.table(), &[(buf, 2048, true)]).unwrap(), buf);
    }
    rx.kick(mem.table()).unwrap();
    let req = arp_request();
    let f = mem.alloc(req.len() as u64, 8).unwrap();
    mem.table().write(f, &req).unwrap();
    tx.add(mem.table(), &[(f, req.len() as u32, false)])
        .unwrap();
    tx.kick(mem.table()).unwrap();
    // The kernel may send other frames first (IPv6 solicitations when the link comes up).
    loop {
        let used = rx.wait_used(mem.table(), T).unwrap();
        let mut frame = vec![0u8; used.len as usize];
        mem.table().read(bufs[&used.id], &mut frame).unwrap();
        if is_arp_reply_from_host(&frame[NET_HDR_LEN..]) {
            break;
        }
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", be.pid())).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid_line.split_whitespace().skip(1).all(|u| u == "65534"),
        "{uid_line}"
    );
}

/// With MRG_RXBUF and IN_ORDER, RX buffers are held across frames: a buffer too short
/// for the header among them is returned empty in its turn, every buffer comes back
/// exactly once, and in the order it was posted.
#[test]
fn a_short_rx_buffer_among_held_ones_is_returned_once_and_in_order() {
    let Some((_ns, be)) = tap_backend(&[]) else {
        return;
    };
    let (mem, fe, mut rx, mut tx) = first_pair(&be.socket, 4, 64);
    assert_ne!(fe.features() & virtio::IN_ORDER, 0, "IN_ORDER offered");
    // Two good buffers, one that cannot hold the virtio header, then plenty of room.
    let mut posted = Vec::new();
    let mut bufs = std::collections::HashMap::new();
    for k in 0..RX_BUFFERS + 1 {
        let len = if k == 2 { 4 } else { 2048 };
        let buf = mem.alloc(2048, 64).unwrap();
        let id = rx.add(mem.table(), &[(buf, len, true)]).unwrap();
        posted.push(id);
        bufs.insert(id, buf);
    }
    let short = posted[2];
    rx.kick(mem.table()).unwrap();
    // Three ARP requests: three replies, each filling the oldest buffer held. The short
    // buffer goes back between the second and the third.
    let req = arp_request();
    for _ in 0..3 {
        let f = mem.alloc(req.len() as u64, 8).unwrap();
        mem.table().write(f, &req).unwrap();
        tx.add(mem.table(), &[(f, req.len() as u32, false)])
            .unwrap();
        tx.kick(mem.table()).unwrap();
        tx.wait_used(mem.table(), T).unwrap();
    }
    let mut returned = Vec::new();
    let mut replies = 0;
    while replies < 3 {
        let used = rx.wait_used(mem.table(), T).unwrap();
        returned.push(used);
        if used.id == short {
            assert_eq!(used.len, 0, "the short buffer comes back empty");
            continue;
        }
        let mut frame = vec![0u8; used.len as usize];
        mem.table().read(bufs[&used.id], &mut frame).unwrap();
        if frame.len() > NET_HDR_LEN && is_arp_reply_from_host(&frame[NET_HDR_LEN..]) {
            replies += 1;
        }
    }
    let ids: Vec<u16> = returned.iter().map(|u| u.id).collect();
    assert_eq!(
        ids,
        posted[..ids.len()],
        "each buffer once, in posting order"
    );
    assert!(ids.contains(&short), "{ids:?}");
}

/// Sends `count` broadcast frames out of interface `ifname` (of the calling thread's
/// network namespace) through a packet socket; returns how many the kernel took.
fn send_frames(ifname: &str, count: usize) -> usize {
    let mut frame = vec![0xffu8; 6];
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x88, 0xb5]); // local experimental type
    frame.resize(60, 0);
    send_frame(ifname, &frame, count)
}

/// A raw packet socket for `protocol` (network order; 0: send only) and its address on
/// interface `ifname` (of the calling thread's network namespace).
fn packet_socket(ifname: &str, protocol: u16) -> (std::os::fd::OwnedFd, nix::libc::sockaddr_ll) {
    use nix::libc;
    // SAFETY: socket() takes integers and returns a new fd or -1.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(protocol)) };
    assert!(
        fd >= 0,
        "packet socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: the fd was just made and is owned by nothing else.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value to fill in.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = protocol;
    addr.sll_ifindex = nix::net::if_::if_nametoindex(ifname).unwrap() as i32;
    (sock, addr)
}

/// Sends `frame` (from its Ethernet header on) `count` times out of interface `ifname`
/// through a packet socket; returns how many the kernel took.
fn send_frame(ifname: &str, frame: &[u8], count: usize) -> usize {
    use nix::libc;
    let (sock, mut addr) = packet_socket(ifname, 0);
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&frame[..6]);
    let mut sent = 0;
    for _ in 0..count {
        use std::os::fd::AsRawFd;
        // SAFETY: sendto reads `frame` and `addr`, both live for the call, with their
        // true lengths.
        let r = unsafe {
            libc::sendto(
                sock.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if r == frame.len() as isize {
            sent += 1;
        }
    }
    sent
}

#[test]
fn frames_the_guest_gives_no_buffers_for_are_counted_as_dropped() {
    let Some((ns, be)) = tap_backend(&[]) else {
        return;
    };
    let dropped = |be: &BackendProcess| -> u64 {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(be.pid()),
            nix::sys::signal::Signal::SIGUSR1,
        )
        .unwrap();
        let line = be.wait_log("rx_dropped_no_buffers=", T);
        let v = line.split("rx_dropped_no_buffers=").nth(1).unwrap();
        v.split_whitespace().next().unwrap().parse().unwrap()
    };
    // Nothing lost yet (the kernel's own frames on link up fit in the tap's queue).
    assert_eq!(dropped(&be), 0);
    // No frontend gives buffers: the tap queues what it can and drops the rest.
    const SENT: usize = 2000;
    let sent = ns.spawn(|| send_frames("vhutap0", SENT)).join().unwrap();
    assert_eq!(sent, SENT);
    let queue_len: usize = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            ns.name(),
            "cat",
            "/sys/class/net/vhutap0/tx_queue_len",
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().parse().unwrap())
        .unwrap();
    let n = dropped(&be) as usize;
    // The kernel's own few frames (IPv6 on link up) take room in the queue too.
    assert!(
        n >= SENT - queue_len && n <= SENT + 16,
        "{n} dropped of {SENT} sent with a {queue_len}-frame queue"
    );
}

/// While migrating, a frame the tap hands over lands in guest memory with one `readv`,
/// the kernel writing guest pages directly: every page it reached is marked in the dirty
/// log, and so is the ring entry that returns the buffer.
#[test]
fn frames_from_the_tap_are_in_the_dirty_log() {
    tap_frames_are_logged(false);
}

/// The same on a packed ring, whose used descriptors are written over its descriptors.
#[test]
fn frames_from_the_tap_on_a_packed_ring_are_in_the_dirty_log() {
    tap_frames_are_logged(true);
}

fn tap_frames_are_logged(packed: bool) {
    let Some((ns, be)) = tap_backend(&[]) else {
        return;
    };
    let mem = FrontendMemory::new(&[(0, 16 << 20)]).unwrap();
    let mut fe = Frontend::connect(&be.socket).unwrap();
    if packed {
        fe.negotiate_packed(u64::MAX, u64::MAX).unwrap();
    } else {
        fe.negotiate(u64::MAX, u64::MAX).unwrap();
    }
    assert_ne!(fe.features() & virtio::LOG_ALL, 0);
    fe.set_mem_table(&mem).unwrap();
    let mut rx = if packed {
        DriverQueue::new_packed(&mem, 0, 64).unwrap()
    } else {
        DriverQueue::new(&mem, 0, 64).unwrap()
    };
    rx.attach(&mut fe, &mem).unwrap();
    // 16 MiB of guest memory: 4096 pages, 512 bytes of log.
    let log = FrontendMemory::new(&[(0, 4096)]).unwrap();
    fe.set_log_base(512, 0, &log.files()[0]).unwrap();
    // As QEMU does when a migration starts: the ring's own writes are logged too.
    let mut addr = rx.vring_addr(&mem);
    addr.flags = vhost_user_sync::protocol::payload::VringAddr::F_LOG;
    addr.log = rx.used_gpa();
    fe.set_vring_addr(&addr).unwrap();
    // Each buffer starts 1 KiB before a page boundary, so a full-size frame crosses it,
    // and has two pages to itself, so no other buffer marks the page a frame ends in.
    let area = mem.alloc(8192 * (RX_BUFFERS as u64 + 1), 4096).unwrap();
    let mut bufs = std::collections::HashMap::new();
    for k in 0..RX_BUFFERS as u64 {
        let buf = area + k * 8192 + 3072;
        let id = rx.add(mem.table(), &[(buf, 2048, true)]).unwrap();
        bufs.insert(id, buf);
    }
    rx.kick(mem.table()).unwrap();
    // The host's own frames (IPv6 on link up) may come first; ours is the one marked.
    let mut frame = vec![0xffu8; 6];
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x88, 0xb5]);
    frame.extend_from_slice(b"VHU-DIRTY-LOG");
    frame.resize(1514, 0x5a);
    let sent = {
        let frame = frame.clone();
        ns.spawn(move || send_frame("vhutap0", &frame, 1))
            .join()
            .unwrap()
    };
    assert_eq!(sent, 1);
    let buf = loop {
        let used = rx.wait_used(mem.table(), T).unwrap();
        let buf = bufs[&used.id];
        let mut got = vec![0u8; used.len as usize];
        mem.table().read(buf, &mut got).unwrap();
        if got.len() == NET_HDR_LEN + frame.len() && got[NET_HDR_LEN..] == frame[..] {
            break buf;
        }
    };
    let end = buf + (NET_HDR_LEN + frame.len()) as u64 - 1;
    assert_ne!(buf / 4096, end / 4096, "the frame crosses a page boundary");
    assert!(page_logged(&log, buf), "the page the frame starts in");
    assert!(page_logged(&log, end), "the page the frame ends in");
    if packed {
        assert!(page_logged(&log, rx.desc_gpa()), "the used descriptor");
    } else {
        assert!(page_logged(&log, rx.used_gpa()), "the used ring");
    }
    let last = area + 8192 * RX_BUFFERS as u64;
    assert!(!page_logged(&log, last), "a page no frame reached");
    assert!(!page_logged(&log, 15 << 20), "memory nothing wrote");
}

/// Ethertype of the test's sequence-numbered frames (local experimental).
const SEQ_ETHERTYPE: [u8; 2] = [0x88, 0xb6];

/// Frame `seq` of a TX burst: broadcast, the guest's MAC, [`SEQ_ETHERTYPE`], the number,
/// then a length and filling that vary with it.
fn seq_frame(seq: u32) -> Vec<u8> {
    let mut f = vec![0xffu8; 6];
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&SEQ_ETHERTYPE);
    f.extend_from_slice(&seq.to_be_bytes());
    let len = 60 + (seq as usize * 37) % 1400;
    f.extend((f.len()..len).map(|i| (i as u32 ^ seq) as u8));
    f
}

/// Receives frames of [`SEQ_ETHERTYPE`] arriving on `ifname` (in the calling thread's
/// namespace) until `count` came or `T` passed; `ready` is sent once it listens.
fn receive_seq_frames(
    ifname: &str,
    count: usize,
    ready: std::sync::mpsc::Sender<()>,
) -> Vec<Vec<u8>> {
    use nix::libc;
    use std::os::fd::AsRawFd;
    let (sock, addr) = packet_socket(ifname, u16::from_be_bytes(SEQ_ETHERTYPE).to_be());
    // Room for the whole burst even if this thread is slow to read.
    let rcvbuf: i32 = 16 << 20;
    // SAFETY: setsockopt reads an i32 that lives for the call, with its size.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&rcvbuf as *const i32).cast(),
            4,
        )
    };
    assert_eq!(r, 0, "SO_RCVBUFFORCE: {}", std::io::Error::last_os_error());
    // SAFETY: bind reads `addr` (live for the call) with its true size.
    let r = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(r, 0, "bind: {}", std::io::Error::last_os_error());
    let timeout = libc::timeval {
        tv_sec: 1,
        tv_usec: 0,
    };
    // SAFETY: setsockopt reads a timeval that lives for the call, with its size.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    ready.send(()).unwrap();
    let deadline = std::time::Instant::now() + T;
    let mut frames = Vec::new();
    let mut buf = vec![0u8; 65536];
    while frames.len() < count && std::time::Instant::now() < deadline {
        // SAFETY: recv writes at most `buf.len()` bytes into `buf`, which it borrows
        // mutably for the call.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n > 0 {
            frames.push(buf[..n as usize].to_vec());
        }
    }
    frames
}

/// A burst of TX frames larger than one batch, some in two buffers, with one the tap
/// refuses (shorter than an Ethernet header) in the middle: every good frame reaches the
/// tap once, whole and in ring order; the refused one is used and logged; each chain is
/// used once. With `--aio io-uring` the frames went through the tap ring.
fn tx_burst_reaches_the_tap_in_order(aio: &str, wrapper: Option<&std::path::Path>) {
    let Some((ns, be)) = tap_backend_under(wrapper, &["--aio", aio]) else {
        return;
    };
    let ring = aio == "io-uring" && wrapper.is_none();
    const FRAMES: u32 = 100;
    const REFUSED_AT: u32 = 40;
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let receiver = ns.spawn(move || receive_seq_frames("vhutap0", FRAMES as usize, ready_tx));
    ready.recv_timeout(T).expect("the receiver listens");
    let (mem, _fe, _rx, mut tx) = first_pair(&be.socket, 8, 256);
    if aio == "io-uring" && !ring {
        // Said when the worker is made, at the connection.
        be.wait_log("no io_uring for tap writes", T);
    }
    let mut chains = 0;
    for seq in 0..FRAMES {
        if seq == REFUSED_AT {
            let mut short = NetHdr::default().to_bytes().to_vec();
            short.extend_from_slice(&[0xff; 6]);
            let f = mem.alloc(short.len() as u64, 8).unwrap();
            mem.table().write(f, &short).unwrap();
            tx.add(mem.table(), &[(f, short.len() as u32, false)])
                .unwrap();
            chains += 1;
        }
        let mut bytes = NetHdr::default().to_bytes().to_vec();
        bytes.extend_from_slice(&seq_frame(seq));
        let f = mem.alloc(bytes.len() as u64, 8).unwrap();
        mem.table().write(f, &bytes).unwrap();
        let len = bytes.len() as u32;
        if seq % 3 == 0 {
            // Header and the start of the frame in one buffer, the rest in another.
            tx.add(mem.table(), &[(f, 30, false), (f + 30, len - 30, false)])
                .unwrap();
        } else {
            tx.add(mem.table(), &[(f, len, false)]).unwrap();
        }
        chains += 1;
    }
    tx.kick(mem.table()).unwrap();
    let mut used = Vec::new();
    while used.len() < chains {
        used.push(tx.wait_used(mem.table(), T).unwrap().id);
    }
    let frames = receiver.join().unwrap();
    let seqs: Vec<u32> = frames
        .iter()
        .map(|f| u32::from_be_bytes(f[14..18].try_into().unwrap()))
        .collect();
    assert_eq!(
        seqs,
        (0..FRAMES).collect::<Vec<_>>(),
        "every frame once, in order"
    );
    for (seq, frame) in seqs.iter().zip(&frames) {
        assert_eq!(frame, &seq_frame(*seq), "frame {seq} whole");
    }
    let mut ids = used.clone();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), chains, "each chain used once: {used:?}");
    be.wait_log("tap write failed", T);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(be.pid()),
        nix::sys::signal::Signal::SIGUSR1,
    )
    .unwrap();
    let line = be.wait_log("tx_ring_frames=", T);
    let counter = |name: &str| -> u64 {
        let v = line.split(&format!(" {name}=")).nth(1).unwrap();
        v.split_whitespace().next().unwrap().parse().unwrap()
    };
    assert_eq!(counter("tx_packets"), u64::from(FRAMES), "{line}");
    let through_ring = if ring { FRAMES } else { 0 };
    assert_eq!(counter("tx_ring_frames"), u64::from(through_ring), "{line}");
}

#[test]
fn a_tx_burst_reaches_the_tap_in_order_through_the_ring() {
    tx_burst_reaches_the_tap_in_order("io-uring", None);
}

#[test]
fn a_tx_burst_reaches_the_tap_in_order_one_writev_each() {
    tx_burst_reaches_the_tap_in_order("sync", None);
}

/// Where io_uring cannot be set up (here a seccomp filter makes `io_uring_setup` fail,
/// as on a kernel without it), the device says so and writes one frame per `writev`.
#[test]
fn without_io_uring_tx_frames_go_one_writev_each() {
    let dir = backend::TempDir::new("net-no-io-uring");
    let wrapper = backend::no_io_uring_wrapper(dir.path());
    tx_burst_reaches_the_tap_in_order("io-uring", Some(&wrapper));
}
