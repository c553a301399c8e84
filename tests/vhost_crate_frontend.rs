//! rust-vmm's `vhost` crate, a frontend implementation independent of ours, drives
//! `rng_backend`: the handshake, the memory table and the rings go out as that crate
//! encodes them, and requests travel through a split ring laid out here by hand in
//! guest memory from `vm-memory`.

#[path = "support/backend.rs"]
mod backend;

use std::fs::File;
use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

use backend::BackendProcess;
use vhost::vhost_user::message::VhostUserHeaderFlag;
use vhost::vhost_user::{
    Frontend, VhostUserFrontend, VhostUserProtocolFeatures as Proto, VhostUserVirtioFeatures,
};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const VERSION_1: u64 = 1 << 32;
const RING_EVENT_IDX: u64 = 1 << 29;
const RING_INDIRECT_DESC: u64 = 1 << 28;
const PROTOCOL_FEATURES: u64 = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
/// VIRTIO_F_RING_PACKED: offered by the backend, not acked by these split-ring tests.
const RING_PACKED: u64 = 1 << 34;

/// Guest RAM: one memfd region at guest-physical 0.
const RAM_SIZE: usize = 1 << 20;
const QUEUE_SIZE: u16 = 16;
/// Where the split ring's three parts live (guest-physical).
const DESC: u64 = 0x0;
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;
/// Buffers are placed from here on.
const BUFFERS: u64 = 0x10000;

const VIRTQ_DESC_F_NEXT: u16 = 1;
const VIRTQ_DESC_F_WRITE: u16 = 2;

const T: Duration = Duration::from_secs(10);

/// Guest memory of `size` bytes at `gpa`, backed by a memfd so the backend can map it.
fn guest_ram(gpa: u64, size: usize) -> GuestMemoryMmap {
    let fd =
        nix::sys::memfd::memfd_create("guest-ram", nix::sys::memfd::MFdFlags::MFD_CLOEXEC).unwrap();
    let file = File::from(fd);
    file.set_len(size as u64).unwrap();
    GuestMemoryMmap::<()>::from_ranges_with_files([(
        GuestAddress(gpa),
        size,
        Some(FileOffset::new(file, 0)),
    )])
    .unwrap()
}

/// The regions of `mem` as SET_MEM_TABLE / ADD_MEM_REG carry them (the fds stay owned
/// by `mem`).
fn region_infos(mem: &GuestMemoryMmap) -> Vec<VhostUserMemoryRegionInfo> {
    mem.iter()
        .map(|r| VhostUserMemoryRegionInfo::from_guest_region(r).unwrap())
        .collect()
}

fn looks_random(b: &[u8]) -> bool {
    let distinct = b.iter().collect::<std::collections::HashSet<_>>().len();
    distinct > 200 && b.iter().filter(|&&x| x == 0).count() < b.len() / 50
}

/// The driver side of queue 0, written against `vm-memory` only: descriptors, the
/// avail ring and the used ring at fixed guest addresses, and the two eventfds.
struct Driver {
    mem: GuestMemoryMmap,
    event_idx: bool,
    next_desc: u16,
    avail_idx: u16,
    last_used: u16,
    kick: EventFd,
    call: EventFd,
    epoll: Epoll,
    /// Sum of the call eventfd's counter over every read.
    calls: u64,
}

impl Driver {
    fn new(mem: GuestMemoryMmap) -> Self {
        let call = EventFd::new(EFD_NONBLOCK).unwrap();
        let epoll = Epoll::new().unwrap();
        epoll
            .ctl(
                ControlOperation::Add,
                std::os::fd::AsRawFd::as_raw_fd(&call),
                EpollEvent::new(EventSet::IN, 0),
            )
            .unwrap();
        Driver {
            mem,
            event_idx: false,
            next_desc: 0,
            avail_idx: 0,
            last_used: 0,
            kick: EventFd::new(EFD_NONBLOCK).unwrap(),
            call,
            epoll,
            calls: 0,
        }
    }

    /// Frontend (this process's) address of guest-physical `gpa`, as SET_VRING_ADDR
    /// carries it.
    fn uaddr(&self, gpa: u64) -> u64 {
        self.mem.get_host_address(GuestAddress(gpa)).unwrap() as u64
    }

    fn vring_config(&self) -> VringConfigData {
        VringConfigData {
            queue_max_size: QUEUE_SIZE,
            queue_size: QUEUE_SIZE,
            flags: 0,
            desc_table_addr: self.uaddr(DESC),
            used_ring_addr: self.uaddr(USED),
            avail_ring_addr: self.uaddr(AVAIL),
            log_addr: None,
        }
    }

    /// `used_event`, at the end of the avail ring (EVENT_IDX).
    fn used_event_addr() -> GuestAddress {
        GuestAddress(AVAIL + 4 + 2 * u64::from(QUEUE_SIZE))
    }

    /// `avail_event`, at the end of the used ring (EVENT_IDX).
    fn avail_event_addr() -> GuestAddress {
        GuestAddress(USED + 4 + 8 * u64::from(QUEUE_SIZE))
    }

    fn used_idx(&self) -> u16 {
        self.mem
            .load(GuestAddress(USED + 2), Ordering::Acquire)
            .unwrap()
    }

    /// Posts a chain of device-writable buffers `(gpa, len)`; returns its head.
    fn post(&mut self, bufs: &[(u64, u32)]) -> u16 {
        let head = self.next_desc;
        for (k, &(addr, len)) in bufs.iter().enumerate() {
            let id = self.next_desc;
            let next = (id + 1) % QUEUE_SIZE;
            let last = k + 1 == bufs.len();
            let flags = VIRTQ_DESC_F_WRITE | if last { 0 } else { VIRTQ_DESC_F_NEXT };
            let mut d = [0u8; 16];
            d[0..8].copy_from_slice(&addr.to_le_bytes());
            d[8..12].copy_from_slice(&len.to_le_bytes());
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d[14..16].copy_from_slice(&(if last { 0 } else { next }).to_le_bytes());
            self.mem
                .write_slice(&d, GuestAddress(DESC + 16 * u64::from(id)))
                .unwrap();
            self.next_desc = next;
        }
        let slot = u64::from(self.avail_idx % QUEUE_SIZE);
        self.mem
            .store(head, GuestAddress(AVAIL + 4 + 2 * slot), Ordering::Relaxed)
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .store(self.avail_idx, GuestAddress(AVAIL + 2), Ordering::Release)
            .unwrap();
        head
    }

    fn kick(&self) {
        fence(Ordering::SeqCst);
        self.kick.write(1).unwrap();
    }

    /// Waits up to `timeout` for the call eventfd; adds its counter to `calls`.
    fn wait_call(&mut self, timeout: Duration) -> bool {
        let mut events = [EpollEvent::default()];
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        let n = match self.epoll.wait(ms, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => 0,
            Err(e) => panic!("epoll_wait: {e}"),
        };
        if n == 0 {
            return false;
        }
        match self.call.read() {
            Ok(count) => self.calls += count,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("reading the call eventfd: {e}"),
        }
        true
    }

    /// At least one call since `calls` was last reset, waiting for it if the driver
    /// saw the used entries before the backend's call arrived.
    fn expect_call(&mut self) {
        if self.calls == 0 {
            assert!(self.wait_call(T), "the backend never called");
        }
    }

    /// Takes the next used entry `(id, len)`, waiting for calls until it arrives.
    fn wait_used(&mut self, timeout: Duration) -> (u32, u32) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.event_idx {
                // Ask for a call as soon as the next entry is used, then look again so
                // that an entry used before the store is not missed.
                self.mem
                    .store(self.last_used, Self::used_event_addr(), Ordering::Release)
                    .unwrap();
                fence(Ordering::SeqCst);
            }
            if self.used_idx() != self.last_used {
                let slot = u64::from(self.last_used % QUEUE_SIZE);
                let id: u32 = self
                    .mem
                    .read_obj(GuestAddress(USED + 4 + 8 * slot))
                    .unwrap();
                let len: u32 = self
                    .mem
                    .read_obj(GuestAddress(USED + 8 + 8 * slot))
                    .unwrap();
                self.last_used = self.last_used.wrapping_add(1);
                return (id, len);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no used entry (used idx {})",
                self.last_used
            );
            self.wait_call(left);
        }
    }

    /// One request: a buffer of `len` bytes at `gpa`, posted, kicked and waited for.
    /// Returns the bytes the backend wrote.
    fn fill(&mut self, gpa: u64, len: u32) -> Vec<u8> {
        let head = self.post(&[(gpa, len)]);
        self.kick();
        let (id, used_len) = self.wait_used(T);
        assert_eq!(id, u32::from(head));
        assert_eq!(used_len, len);
        let mut out = vec![0u8; len as usize];
        self.mem.read_slice(&mut out, GuestAddress(gpa)).unwrap();
        out
    }
}

/// Connects the `vhost` crate's frontend to `be` and does the handshake: owner,
/// features (`want` of what is offered), every protocol feature offered. With
/// `reply_ack`, every later request carries NEED_REPLY and waits for the ack.
fn connect(be: &BackendProcess, want: u64, reply_ack: bool) -> (Frontend, u64) {
    let mut fe = Frontend::connect(&be.socket, 1).unwrap();
    fe.set_owner().unwrap();
    let offered = fe.get_features().unwrap();
    let protocol = fe.get_protocol_features().unwrap();
    fe.set_protocol_features(protocol).unwrap();
    if reply_ack {
        assert!(protocol.contains(Proto::REPLY_ACK));
        fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
    }
    assert_eq!(fe.get_queue_num().unwrap(), 1);
    // The vhost crate drives split rings here: the layout is not acked.
    let acked = offered & want & !RING_PACKED;
    fe.set_features(acked).unwrap();
    (fe, acked)
}

/// Memory table and queue 0 set up through the `vhost` crate: size, addresses, base,
/// kick, call, enable (so the call fd arrives after the kick has started the ring).
fn attach(fe: &mut Frontend, acked: u64, mem: GuestMemoryMmap) -> Driver {
    let regions = region_infos(&mem);
    let mut d = Driver::new(mem);
    d.event_idx = acked & RING_EVENT_IDX != 0;
    // The memfd starts zeroed; a marker goes where avail_event would be, so that a
    // backend writing it without EVENT_IDX is caught.
    d.mem
        .store(0xabcd_u16, Driver::avail_event_addr(), Ordering::Relaxed)
        .unwrap();
    fe.set_mem_table(&regions).unwrap();
    fe.set_vring_num(0, QUEUE_SIZE).unwrap();
    fe.set_vring_addr(0, &d.vring_config()).unwrap();
    fe.set_vring_base(0, 0).unwrap();
    fe.set_vring_kick(0, &d.kick).unwrap();
    fe.set_vring_call(0, &d.call).unwrap();
    fe.set_vring_enable(0, true).unwrap();
    d
}

#[test]
fn handshake_as_the_vhost_crate_does_it() {
    let be = BackendProcess::start("rng_backend", &[]);
    let mut fe = Frontend::connect(&be.socket, 1).unwrap();
    fe.set_owner().unwrap();
    let features = fe.get_features().unwrap();
    for bit in [
        VERSION_1,
        RING_EVENT_IDX,
        RING_INDIRECT_DESC,
        PROTOCOL_FEATURES,
    ] {
        assert_ne!(
            features & bit,
            0,
            "feature {bit:#x} missing from {features:#x}"
        );
    }
    let protocol = fe.get_protocol_features().unwrap();
    for p in [
        Proto::MQ,
        Proto::REPLY_ACK,
        Proto::CONFIGURE_MEM_SLOTS,
        Proto::RESET_DEVICE,
    ] {
        assert!(protocol.contains(p), "{p:?} missing from {protocol:?}");
    }
    assert!(!protocol.contains(Proto::CONFIG), "rng has no config space");
    // Everything offered is known to the vhost crate (it would truncate unknown bits).
    assert_eq!(Proto::from_bits(protocol.bits()), Some(protocol));
    fe.set_protocol_features(protocol).unwrap();
    // From here on every request asks for an ack, and the crate checks each one.
    fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
    assert_eq!(fe.get_queue_num().unwrap(), 1);
    assert_eq!(fe.get_max_mem_slots().unwrap(), 509);
    fe.set_features(features & !RING_PACKED).unwrap();
    // A request the backend refuses comes back as a failed ack, and the connection
    // goes on: without a memory table, a kick fd cannot start ring 0.
    let kick = EventFd::new(EFD_NONBLOCK).unwrap();
    assert!(fe.set_vring_kick(0, &kick).is_err());
    be.wait_log("SET_VRING_KICK refused", T);
    assert_eq!(fe.get_queue_num().unwrap(), 1);
    assert_eq!(fe.get_features().unwrap(), features);
}

fn entropy_through_rings_set_up_by_the_vhost_crate(reply_ack: bool) {
    let be = BackendProcess::start("rng_backend", &[]);
    let (mut fe, acked) = connect(&be, u64::MAX, reply_ack);
    assert_ne!(acked & RING_EVENT_IDX, 0);
    let mut d = attach(&mut fe, acked, guest_ram(0, RAM_SIZE));

    let a = d.fill(BUFFERS, 4096);
    assert!(looks_random(&a), "{:?}", &a[..64]);

    // A chain of two buffers is filled across both.
    let (b1, b2) = (BUFFERS + 0x2000, BUFFERS + 0x4000);
    let head = d.post(&[(b1, 1000), (b2, 3096)]);
    d.kick();
    assert_eq!(d.wait_used(T), (u32::from(head), 4096));
    let mut b = vec![0u8; 4096];
    d.mem.read_slice(&mut b[..1000], GuestAddress(b1)).unwrap();
    d.mem.read_slice(&mut b[1000..], GuestAddress(b2)).unwrap();
    assert!(looks_random(&b));
    assert_ne!(a, b);
    // Nothing written past the buffers.
    let after: u8 = d.mem.read_obj(GuestAddress(b1 + 1000)).unwrap();
    assert_eq!(after, 0);

    let c = d.fill(BUFFERS + 0x8000, 64);
    assert!(c.iter().any(|&x| x != 0));
    // The backend called (perhaps only after the driver had seen the used entries).
    d.expect_call();
    // The ring stops, and its next avail index is what was posted.
    assert_eq!(fe.get_vring_base(0).unwrap(), 3);
    assert_eq!(d.used_idx(), 3);
}

#[test]
fn entropy_through_rings_set_up_by_the_vhost_crate_with_reply_ack() {
    entropy_through_rings_set_up_by_the_vhost_crate(true);
}

#[test]
fn entropy_through_rings_set_up_by_the_vhost_crate_without_acks() {
    // The vhost crate's default: nothing but GET_* requests waits for the backend, so
    // the setup messages arrive back to back.
    entropy_through_rings_set_up_by_the_vhost_crate(false);
}

/// Request 1 as usual; then `used_event` is set one entry further, request 2 is
/// waited for by watching the used index, and request 3 by its call. With EVENT_IDX
/// only request 3 may call; without it, both do. Returns the backend's `avail_event`.
fn calls_for_two_requests(event_idx: bool) -> (u64, u16) {
    let be = BackendProcess::start("rng_backend", &[]);
    let want = if event_idx { u64::MAX } else { !RING_EVENT_IDX };
    let (mut fe, acked) = connect(&be, want, true);
    assert_eq!(acked & RING_EVENT_IDX != 0, event_idx);
    let mut d = attach(&mut fe, acked, guest_ram(0, RAM_SIZE));
    assert!(looks_random(&d.fill(BUFFERS, 1024)));
    let avail_event: u16 = d
        .mem
        .load(Driver::avail_event_addr(), Ordering::Acquire)
        .unwrap();

    // Request 1 calls in both modes (used_event was 0): take that call before counting.
    d.expect_call();
    assert_eq!(d.calls, 1);
    d.calls = 0;
    if event_idx {
        // Call when used idx moves past 2, i.e. not for request 2.
        d.mem
            .store(
                d.last_used + 1,
                Driver::used_event_addr(),
                Ordering::Release,
            )
            .unwrap();
    }
    d.post(&[(BUFFERS + 0x1000, 1024)]);
    d.kick();
    // Request 2 is seen by polling the used index (a call may not come).
    let deadline = Instant::now() + T;
    while d.used_idx() != 2 {
        assert!(Instant::now() < deadline, "request 2 never used");
        std::thread::yield_now();
    }
    d.last_used = 2;
    d.post(&[(BUFFERS + 0x2000, 1024)]);
    d.kick();
    let expected = if event_idx { 1 } else { 2 };
    let deadline = Instant::now() + T;
    while d.used_idx() != 3 || d.calls < expected {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "used idx {}, {} call(s)",
            d.used_idx(),
            d.calls
        );
        d.wait_call(left);
    }
    assert_eq!(fe.get_vring_base(0).unwrap(), 3);
    // No late call is pending either.
    d.wait_call(Duration::ZERO);
    (d.calls, avail_event)
}

#[test]
fn event_idx_negotiated_suppresses_the_call_before_used_event() {
    let (calls, avail_event) = calls_for_two_requests(true);
    assert_eq!(
        calls, 1,
        "request 2 called although used_event asked not to"
    );
    // The backend asks to be kicked for the next avail entry.
    assert_eq!(avail_event, 1);
}

#[test]
fn without_event_idx_every_request_calls_and_avail_event_is_untouched() {
    let (calls, avail_event) = calls_for_two_requests(false);
    assert_eq!(calls, 2);
    // Without EVENT_IDX the word after the used ring is not the backend's to write.
    assert_eq!(avail_event, 0xabcd);
}

#[test]
fn buffers_posted_after_the_disable_is_acked_wait_for_the_enable() {
    let be = BackendProcess::start("rng_backend", &[]);
    let (mut fe, acked) = connect(&be, u64::MAX, true);
    let mut d = attach(&mut fe, acked, guest_ram(0, RAM_SIZE));
    for round in 0..20u16 {
        // Once SET_VRING_ENABLE 0 is acked, the backend leaves the ring alone: the
        // buffer is still unused when GET_VRING_BASE stops the ring.
        fe.set_vring_enable(0, false).unwrap();
        let head = d.post(&[(BUFFERS, 512)]);
        d.kick();
        assert_eq!(fe.get_vring_base(0).unwrap(), u32::from(round));
        assert_eq!(d.used_idx(), round, "used while disabled");
        // Restarted from that base, still disabled, then enabled: now it is served.
        fe.set_vring_base(0, round).unwrap();
        fe.set_vring_kick(0, &d.kick).unwrap();
        fe.set_vring_enable(0, true).unwrap();
        assert_eq!(d.wait_used(T), (u32::from(head), 512));
    }
    assert_eq!(fe.get_vring_base(0).unwrap(), 20);
}

#[test]
fn memory_regions_added_and_removed_by_the_vhost_crate() {
    let be = BackendProcess::start("rng_backend", &[]);
    let (mut fe, acked) = connect(&be, u64::MAX, true);
    let mut d = attach(&mut fe, acked, guest_ram(0, RAM_SIZE));
    assert!(looks_random(&d.fill(BUFFERS, 1024)));

    // A second region, hot-added with ADD_MEM_REG as the crate encodes it.
    const EXTRA: u64 = 1 << 30;
    let extra = guest_ram(EXTRA, 1 << 16);
    let info = region_infos(&extra).remove(0);
    fe.add_mem_region(&info).unwrap();
    let head = d.post(&[(EXTRA + 512, 2048)]);
    d.kick();
    assert_eq!(d.wait_used(T), (u32::from(head), 2048));
    let mut got = vec![0u8; 2048];
    extra
        .read_slice(&mut got, GuestAddress(EXTRA + 512))
        .unwrap();
    assert!(looks_random(&got));

    // Removed again: a buffer there is returned unfilled, the ring goes on.
    fe.remove_mem_region(&info).unwrap();
    let head = d.post(&[(EXTRA + 512, 2048)]);
    d.kick();
    assert_eq!(d.wait_used(T), (u32::from(head), 0));
    assert!(looks_random(&d.fill(BUFFERS + 0x1000, 1024)));
    assert_eq!(fe.get_vring_base(0).unwrap(), 4);
}
