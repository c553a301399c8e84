//! Fuzz target: the whole request handler, over a real socket pair.
//!
//! A device (rng over `/dev/urandom`, or net on the null backend, as the first input byte
//! says) is served by `serve_connection` on its own thread, exactly as a listener serves
//! it. The rest of the input is a script that this side, the frontend, plays on the
//! other end of a unix socket pair: raw messages with any request number, flags, body and
//! fds of any kind, and well-formed steps a real frontend takes (negotiation, memory
//! tables and regions backed by memfds, rings placed in them and started with eventfds,
//! bytes written into guest memory, kicks, memfds truncated under the backend, ring
//! stops, resets, logs, config reads).
//!
//! Checked: nothing panics in the backend; every reply is framed as a reply (version 1,
//! REPLY flag, at most the payload cap) and answers a request that was sent, in order;
//! once this side closes, the backend ends the connection within a bound; afterwards the
//! process holds the fds, threads and shared-memory mappings it held before the input.
//!
//! Script: `[device]` then ops, each an opcode byte and its arguments (see `Op`).

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Once};
use std::time::Duration;

use vhost_user_sync::backend::{
    serve_connection, Shutdown, FRAMEWORK_PROTOCOL_FEATURES, TRANSPORT_FEATURES,
};
use vhost_user_sync::device::Device;
use vhost_user_sync::memory::MemoryTable;
use vhost_user_sync::message::read_message;
use vhost_user_sync::protocol::payload::{MemoryRegionDesc, VringAddr};
use vhost_user_sync::protocol::{HeaderFlags, ProtocolFeatures, MAX_PAYLOAD_SIZE};
use vhost_user_sync::sys::unix::SocketPlatformConnection;
use vhost_user_sync_net::{NetBackend, NetConfig, NetDevice, NetMetrics};
use vhost_user_sync_rng::RngDevice;

/// Opcodes (the byte modulo their count).
pub const OPS: u8 = 14;
/// Raw message: request, flags choice, body length, body, fd count, fd kinds.
pub const OP_RAW: u8 = 0;
/// SET_OWNER, SET_FEATURES (offered & mask: u64), SET_PROTOCOL_FEATURES (offered &
/// mask: u64).
pub const OP_NEGOTIATE: u8 = 1;
/// SET_MEM_TABLE: count, then per region: pages, file pages short by, region slot.
pub const OP_MEM_TABLE: u8 = 2;
/// ADD_MEM_REG: pages, short by, slot.
pub const OP_ADD_REGION: u8 = 3;
/// REM_MEM_REG: which known region.
pub const OP_REMOVE_REGION: u8 = 4;
/// A ring: index, size (u16), desc/avail/used offsets (u16 each) in a region, base
/// (u16), region; sends NUM, ADDR, BASE, CALL, ERR, KICK.
pub const OP_RING: u8 = 5;
/// Bytes into guest memory: region, offset (u16), length, bytes.
pub const OP_POKE: u8 = 6;
/// A kick: ring index.
pub const OP_KICK: u8 = 7;
/// ftruncate a region's memfd: region, new length in pages.
pub const OP_TRUNCATE: u8 = 8;
/// GET_VRING_BASE: index byte (0xff: a large one).
pub const OP_GET_BASE: u8 = 9;
/// SET_VRING_ENABLE: index, value.
pub const OP_ENABLE: u8 = 10;
/// RESET_DEVICE.
pub const OP_RESET: u8 = 11;
/// SET_LOG_BASE: log pages, file pages.
pub const OP_LOG: u8 = 12;
/// GET_CONFIG: offset, size.
pub const OP_CONFIG: u8 = 13;

/// Where region slot `n` sits: guest-physical and frontend-virtual addresses.
pub fn slot_addrs(slot: u8) -> (u64, u64) {
    let s = u64::from(slot % 4);
    (s << 24, 0x7f00_0000_0000 + (s << 28))
}

const PAGE: u64 = 4096;
/// How long the backend may take to end the connection once this side closed.
const END_WITHIN: Duration = Duration::from_secs(20);

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes([self.u8()?, self.u8()?]))
    }
    fn u64(&mut self) -> Option<u64> {
        let mut b = [0u8; 8];
        for x in &mut b {
            *x = self.u8()?;
        }
        Some(u64::from_le_bytes(b))
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
}

/// One region this side shared: its description, its memfd and a mapping of it.
struct Region {
    desc: MemoryRegionDesc,
    file: File,
    map: MemoryTable,
}

/// The frontend end of the socket and what it has sent.
struct Frontend {
    conn: SocketPlatformConnection,
    /// Request numbers sent, in order; `answered` is how many have been passed over by
    /// the replies so far.
    sent: Vec<u32>,
    answered: usize,
    closed: bool,
    regions: Vec<Region>,
    kicks: HashMap<u8, File>,
    offered: u64,
    offered_protocol: u64,
}

fn memfd(len: u64) -> File {
    let fd = nix::sys::memfd::memfd_create("fuzz-guest", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
        .expect("memfd_create");
    let f = File::from(fd);
    f.set_len(len).expect("memfd set_len");
    f
}

fn eventfd() -> File {
    let fd = nix::sys::eventfd::EventFd::from_value_and_flags(
        0,
        nix::sys::eventfd::EfdFlags::EFD_CLOEXEC | nix::sys::eventfd::EfdFlags::EFD_NONBLOCK,
    )
    .expect("eventfd");
    File::from(std::os::fd::OwnedFd::from(fd))
}

/// An fd of the kind `k` says: memfd, eventfd, pipe, socket, /dev/null, directory.
fn any_fd(k: u8) -> File {
    match k % 6 {
        0 => memfd(PAGE * u64::from(k / 6 % 4 + 1)),
        1 => eventfd(),
        2 => {
            let (r, _w) = nix::unistd::pipe().expect("pipe");
            File::from(r)
        }
        3 => {
            let (a, _b) = UnixStream::pair().expect("pair");
            File::from(std::os::fd::OwnedFd::from(a))
        }
        4 => File::open("/dev/null").expect("/dev/null"),
        _ => File::open("/").expect("/"),
    }
}

impl Frontend {
    fn send(&mut self, request: u32, flags: u32, body: &[u8], fds: &[&File]) {
        if self.closed {
            return;
        }
        let mut hdr = Vec::with_capacity(12);
        hdr.extend_from_slice(&request.to_ne_bytes());
        hdr.extend_from_slice(&flags.to_ne_bytes());
        hdr.extend_from_slice(&(body.len() as u32).to_ne_bytes());
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let sent = self
            .conn
            .send_message(&hdr, body, &[], (!raw.is_empty()).then_some(&raw[..]));
        if sent.is_err() {
            self.closed = true;
            return;
        }
        self.sent.push(request);
        self.drain(false);
    }

    /// A well-formed request with NEED_REPLY.
    fn request(&mut self, request: u32, body: &[u8], fds: &[&File]) {
        self.send(request, 0x1 | 0x8, body, fds);
    }

    /// Reads the replies that have arrived (all of them until the end with `to_end`),
    /// checking each.
    fn drain(&mut self, to_end: bool) {
        loop {
            match read_message(&self.conn, to_end) {
                Ok(Some(m)) => {
                    assert_eq!(
                        m.header.flags,
                        HeaderFlags::REPLY_FLAGS,
                        "a reply (to {}) without exactly the reply flags",
                        m.header.request
                    );
                    assert!(
                        m.body.len() as u64 <= u64::from(MAX_PAYLOAD_SIZE),
                        "oversized reply"
                    );
                    // Replies answer requests that were sent, in the order sent.
                    let at = self.sent[self.answered..]
                        .iter()
                        .position(|&r| r == m.header.request)
                        .unwrap_or_else(|| {
                            panic!(
                                "a reply to request {} that is not waiting for one (sent: {:?})",
                                m.header.request,
                                &self.sent[self.answered..]
                            )
                        });
                    self.answered += at + 1;
                }
                Ok(None) if !to_end => return,
                Ok(None) | Err(_) => {
                    self.closed = true;
                    return;
                }
            }
        }
    }

    fn region_body(desc: &MemoryRegionDesc) -> Vec<u8> {
        let mut b = Vec::with_capacity(32);
        b.extend_from_slice(&desc.guest_phys_addr.to_ne_bytes());
        b.extend_from_slice(&desc.memory_size.to_ne_bytes());
        b.extend_from_slice(&desc.userspace_addr.to_ne_bytes());
        b.extend_from_slice(&desc.mmap_offset.to_ne_bytes());
        b
    }

    /// A memfd-backed region in `slot` of `pages` pages, its file `short` pages short.
    fn new_region(pages: u8, short: u8, slot: u8) -> Region {
        let pages = u64::from(pages % 16 + 1);
        let (gpa, uaddr) = slot_addrs(slot);
        let desc = MemoryRegionDesc {
            guest_phys_addr: gpa,
            memory_size: pages * PAGE,
            userspace_addr: uaddr,
            mmap_offset: 0,
        };
        let file_pages = pages.saturating_sub(u64::from(short % 4 / 3));
        let file = memfd(file_pages * PAGE);
        let own = MemoryRegionDesc {
            memory_size: file_pages.max(1) * PAGE,
            ..desc
        };
        let map = if file_pages > 0 {
            MemoryTable::from_regions(&[own], vec![file.try_clone().expect("dup")])
                .unwrap_or_default()
        } else {
            MemoryTable::empty()
        };
        Region { desc, file, map }
    }

    fn step(&mut self, op: u8, input: &mut Input<'_>) -> Option<()> {
        match op % OPS {
            OP_RAW => {
                let request = u32::from(input.u8()? % 52);
                let flags = match input.u8()? % 8 {
                    0..=2 => 0x1,
                    3 | 4 => 0x9,
                    5 => 0x5,
                    6 => 0x0,
                    _ => input.u64()? as u32,
                };
                let len = usize::from(input.u8()?);
                let body = input.bytes(len).to_vec();
                let nfds = input.u8()? % 4;
                let mut fds = Vec::new();
                for _ in 0..nfds {
                    fds.push(any_fd(input.u8()?));
                }
                let refs: Vec<&File> = fds.iter().collect();
                self.send(request, flags, &body, &refs);
            }
            OP_NEGOTIATE => {
                let features = self.offered & input.u64()?;
                let protocol = self.offered_protocol & input.u64()?;
                self.request(1, &[], &[]); // GET_FEATURES
                self.request(3, &[], &[]); // SET_OWNER
                self.request(2, &features.to_ne_bytes(), &[]);
                self.request(15, &[], &[]); // GET_PROTOCOL_FEATURES
                self.request(16, &protocol.to_ne_bytes(), &[]);
            }
            OP_MEM_TABLE => {
                let n = input.u8()? % 3 + 1;
                let mut regions = Vec::new();
                for _ in 0..n {
                    regions.push(Self::new_region(input.u8()?, input.u8()?, input.u8()?));
                }
                let mut body = (n as u32).to_ne_bytes().to_vec();
                body.extend_from_slice(&0u32.to_ne_bytes());
                for r in &regions {
                    body.extend(Self::region_body(&r.desc));
                }
                let fds: Vec<&File> = regions.iter().map(|r| &r.file).collect();
                self.request(5, &body, &fds);
                self.regions = regions;
            }
            OP_ADD_REGION => {
                let r = Self::new_region(input.u8()?, input.u8()?, input.u8()?);
                let mut body = 0u64.to_ne_bytes().to_vec();
                body.extend(Self::region_body(&r.desc));
                self.request(37, &body, &[&r.file]);
                self.regions.push(r);
            }
            OP_REMOVE_REGION => {
                let which = usize::from(input.u8()?);
                if let Some(r) = self.regions.get(which % self.regions.len().max(1)) {
                    let mut body = 0u64.to_ne_bytes().to_vec();
                    body.extend(Self::region_body(&r.desc));
                    self.request(38, &body, &[]);
                }
            }
            OP_RING => {
                let index = u32::from(input.u8()? % 4);
                let size = u32::from(input.u16()?);
                let (d, a, u) = (input.u16()?, input.u16()?, input.u16()?);
                let base = u32::from(input.u16()?);
                let slot = input.u8()?;
                let uaddr = self
                    .regions
                    .get(usize::from(slot) % self.regions.len().max(1))
                    .map_or(0x7f00_0000_0000, |r| r.desc.userspace_addr);
                let mut state = index.to_ne_bytes().to_vec();
                state.extend_from_slice(&size.to_ne_bytes());
                self.request(8, &state, &[]); // SET_VRING_NUM
                let addr = VringAddr {
                    index,
                    flags: 0,
                    desc: uaddr + u64::from(d),
                    used: uaddr + u64::from(u),
                    avail: uaddr + u64::from(a),
                    log: 0,
                };
                self.request(9, &addr.encode(), &[]); // SET_VRING_ADDR
                let mut state = index.to_ne_bytes().to_vec();
                state.extend_from_slice(&base.to_ne_bytes());
                self.request(10, &state, &[]); // SET_VRING_BASE
                let (call, err, kick) = (eventfd(), eventfd(), eventfd());
                let ring = u64::from(index).to_ne_bytes();
                self.request(13, &ring, &[&call]); // SET_VRING_CALL
                self.request(14, &ring, &[&err]); // SET_VRING_ERR
                self.request(12, &ring, &[&kick]); // SET_VRING_KICK
                self.kicks.insert(index as u8, kick);
            }
            OP_POKE => {
                let which = usize::from(input.u8()?);
                let offset = u64::from(input.u16()?);
                let len = usize::from(input.u8()?);
                let bytes = input.bytes(len).to_vec();
                if let Some(r) = self.regions.get(which % self.regions.len().max(1)) {
                    // Our own mapping is fault-guarded too: a write past a truncation
                    // lands in private memory.
                    let _ = r.map.write(r.desc.guest_phys_addr + offset, &bytes);
                }
            }
            OP_KICK => {
                let index = input.u8()? % 4;
                if let Some(k) = self.kicks.get(&index) {
                    let _ = nix::unistd::write(k, &1u64.to_ne_bytes());
                }
            }
            OP_TRUNCATE => {
                let which = usize::from(input.u8()?);
                let pages = u64::from(input.u8()? % 8);
                if let Some(r) = self.regions.get(which % self.regions.len().max(1)) {
                    let _ = r.file.set_len(pages * PAGE);
                }
            }
            OP_GET_BASE => {
                let i = input.u8()?;
                let index: u32 = if i == 0xff {
                    0x1_0000
                } else {
                    u32::from(i % 5)
                };
                let mut state = index.to_ne_bytes().to_vec();
                state.extend_from_slice(&0u32.to_ne_bytes());
                self.send(11, 0x1, &state, &[]);
            }
            OP_ENABLE => {
                let mut state = u32::from(input.u8()? % 5).to_ne_bytes().to_vec();
                state.extend_from_slice(&u32::from(input.u8()? % 3).to_ne_bytes());
                self.request(18, &state, &[]);
            }
            OP_RESET => self.request(34, &[], &[]),
            OP_LOG => {
                let size = u64::from(input.u8()? % 4 + 1) * PAGE;
                let file = memfd(u64::from(input.u8()? % 5) * PAGE);
                let mut body = size.to_ne_bytes().to_vec();
                body.extend_from_slice(&0u64.to_ne_bytes());
                self.request(6, &body, &[&file]);
            }
            OP_CONFIG => {
                let offset = u32::from(input.u8()?);
                let size = u32::from(input.u8()?);
                let mut body = offset.to_ne_bytes().to_vec();
                body.extend_from_slice(&size.to_ne_bytes());
                body.extend_from_slice(&0u32.to_ne_bytes());
                body.resize(12 + size as usize, 0);
                self.send(24, 0x1, &body, &[]); // GET_CONFIG
            }
            _ => unreachable!("opcodes are taken modulo OPS"),
        }
        Some(())
    }
}

/// What the process holds: open fds, threads, and mappings of the memfds this side
/// shares (other mappings come and go with the allocator).
fn resources() -> (usize, usize, usize) {
    let count = |dir: &str| std::fs::read_dir(dir).map_or(0, |d| d.count());
    let maps = std::fs::read_to_string("/proc/self/maps").map_or(0, |m| {
        m.lines().filter(|l| l.contains("memfd:fuzz-")).count()
    });
    (count("/proc/self/fd"), count("/proc/self/task"), maps)
}

/// Plays `data` against a fresh device, and checks how the connection ended.
fn play(data: &[u8]) {
    let mut input = Input(data);
    let Some(kind) = input.u8() else {
        return;
    };
    let (ours, theirs) = UnixStream::pair().expect("socket pair");
    let backend = SocketPlatformConnection::new(theirs).expect("backend end");
    let shutdown = Shutdown::new();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let ((offered, offered_protocol), serve) = if kind % 2 == 0 {
        spawn_serve(RngDevice::new("/dev/urandom"), backend, shutdown, done_tx)
    } else {
        let device = NetDevice::new(
            NetConfig::default(),
            &NetBackend::Null { frame_len: 60 },
            Arc::new(NetMetrics::default()),
        )
        .expect("null net device");
        spawn_serve(device, backend, shutdown, done_tx)
    };
    let mut fe = Frontend {
        conn: SocketPlatformConnection::new(ours).expect("frontend end"),
        sent: Vec::new(),
        answered: 0,
        closed: false,
        regions: Vec::new(),
        kicks: HashMap::new(),
        offered,
        offered_protocol,
    };
    let mut steps = 0;
    while let Some(op) = input.u8() {
        if fe.closed || steps >= 64 || fe.step(op, &mut input).is_none() {
            break;
        }
        steps += 1;
    }
    // Close our sending side; read what is left until the backend closes.
    let _ = fe.conn.stream().shutdown(std::net::Shutdown::Write);
    fe.drain(true);
    drop(fe);
    if done_rx.recv_timeout(END_WITHIN).is_err() {
        panic!(
            "the backend did not end the connection within {END_WITHIN:?} of the frontend closing"
        );
    }
    // A panic on the serve thread (outside the framework's own containment) fails here.
    serve.join().expect("the serve thread panicked");
}

/// Serves `device` on `backend` on a new thread, as a listener would; `done` is sent
/// when the connection has ended. Returns the feature and protocol feature bits offered,
/// and the thread.
fn spawn_serve<D: Device + Send + 'static>(
    device: D,
    backend: SocketPlatformConnection,
    shutdown: Shutdown,
    done: std::sync::mpsc::Sender<()>,
) -> ((u64, u64), std::thread::JoinHandle<()>) {
    let info = device.info();
    let mut protocol = FRAMEWORK_PROTOCOL_FEATURES.bits() | info.protocol_features.bits();
    if info.config_size == 0 {
        protocol &= !ProtocolFeatures::CONFIG.bits();
    }
    let offered = (info.features | TRANSPORT_FEATURES, protocol);
    let t = std::thread::spawn(move || {
        let _ = serve_connection(backend, device, &shutdown);
        let _ = done.send(());
    });
    (offered, t)
}

/// A fixed script played once first, so that what the process creates once (the SIGBUS
/// handler, lazily opened files) is not counted as a leak of the first input.
fn warm_up(device: u8) -> Vec<u8> {
    let mut script = vec![device, OP_NEGOTIATE];
    script.extend([0xff; 16]);
    script.extend([OP_MEM_TABLE, 0, 8, 0, 0]);
    script
}

static WARM: Once = Once::new();

pub fn run(data: &[u8]) {
    WARM.call_once(|| {
        play(&warm_up(0));
        play(&warm_up(1));
    });
    let before = resources();
    play(data);
    // A joined thread's /proc entry goes when the kernel has reaped it, a moment after
    // the join: look again until the counts match or a deadline passes.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    let mut after = resources();
    while after != before && std::time::Instant::now() < deadline {
        std::thread::yield_now();
        after = resources();
    }
    assert_eq!(
        after, before,
        "fds, threads, mappings after the connection differ from before it"
    );
}
