//! The hostile-frontend case runner: backend processes (one per device kind, reused
//! across cases), `/proc` snapshots, healthy traffic, and helpers that send hostile
//! messages and check the answer.
//!
//! Include with `#[path = "../support/hostile.rs"] mod hostile;` next to
//! `support/backend.rs` (as `mod backend`).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use vhost_user_sync::frontend::{DriverQueue, Frontend, FrontendMemory};
use vhost_user_sync::message::{read_message, Message};
use vhost_user_sync::protocol::{FrontendRequest as R, HeaderFlags};
use vhost_user_sync::queue::packed::layout::PackedDescriptor;
use vhost_user_sync::queue::Descriptor;
use vhost_user_sync_net::request::{NetHdr, NET_HDR_LEN};

use crate::backend::{example_path, TempDir};

/// How long any single expected event (a reply, a used entry, a log line) may take.
pub const T: Duration = Duration::from_secs(5);
/// How long a case may run before the watchdog declares the suite hung.
pub const CASE_LIMIT: Duration = Duration::from_secs(60);

/// Flags of a request that asks for a REPLY_ACK.
pub const NEED_REPLY: u32 = 0x1 | 0x8;
/// Flags of a plain request.
pub const PLAIN: u32 = 0x1;

/// The device kinds the suite attacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Rng,
    Net,
    Blk,
}

impl Kind {
    /// The device's name as the framework logs it.
    pub fn device_name(self) -> &'static str {
        match self {
            Kind::Rng => "rng",
            Kind::Net => "net",
            Kind::Blk => "blk",
        }
    }

    /// The queue whose chains the device reads (net: TX) or fills (rng).
    pub fn data_queue(self) -> u16 {
        match self {
            Kind::Net => 1,
            Kind::Rng | Kind::Blk => 0,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Processes and their logs.

/// A backend process started by the suite, with its log lines (stderr) as they arrive.
pub struct Proc {
    pub label: String,
    /// What the process holds with no connection of ours open (after the last case
    /// that passed).
    pub idle: Option<Snapshot>,
    child: Child,
    /// A sandboxed program's device process (the program itself supervises it): the
    /// process every check looks at, and which must never be replaced.
    device: Option<i32>,
    log: mpsc::Receiver<String>,
    pub dir: TempDir,
}

impl Proc {
    /// Starts `cmd` (stderr piped), then waits for `listeners` lines saying "listening on".
    pub fn spawn(label: &str, mut cmd: Command, dir: TempDir, listeners: usize) -> Proc {
        let mut child = cmd
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {label}: {e}"));
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().expect("stderr is piped");
        let verbose = std::env::var_os("VHU_HOSTILE_VERBOSE").is_some();
        let tag = label.to_string();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if verbose {
                    eprintln!("[{tag}] {line}");
                }
                // Keep draining after the receiver is gone so the backend never blocks.
                let _ = tx.send(line);
            }
        });
        let p = Proc {
            label: label.into(),
            idle: None,
            child,
            device: None,
            log: rx,
            dir,
        };
        for _ in 0..listeners {
            p.wait_log(|l| l.contains("listening on"), Duration::from_secs(60));
        }
        p
    }

    /// Starts example `name` with `--socket-path DIR/dev.sock` and `args`.
    pub fn example(name: &str, args: &[&str]) -> (Proc, PathBuf) {
        let dir = TempDir::new(name);
        let socket = dir.path().join("dev.sock");
        let mut cmd = Command::new(example_path(name));
        cmd.arg("--socket-path").arg(&socket).args(args);
        let mut p = Proc::spawn(name, cmd, dir, 1);
        // The program confines its device in a process of its own (or says it does not).
        let line = p.wait_log(
            |l| {
                l.contains("sandbox: none;")
                    || (l.contains("device process") && l.contains("started"))
            },
            Duration::from_secs(60),
        );
        if !line.contains("sandbox: none;") {
            let mut pid = p.child.id() as i32;
            while let [only] = crate::backend::children(pid)[..] {
                pid = only;
            }
            assert_ne!(
                pid,
                p.child.id() as i32,
                "{name}: no device process: {line}"
            );
            p.device = Some(pid);
        }
        (p, socket)
    }

    /// The process serving the devices (a sandboxed program's device process).
    pub fn pid(&self) -> i32 {
        self.device.unwrap_or(self.child.id() as i32)
    }

    /// Panics if the process has exited, or a sandboxed program's device process has
    /// (its supervisor would have started another: a crash all the same).
    pub fn assert_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited: {status}", self.label);
        }
        if let Some(pid) = self.device {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat.rsplit_once(") ").map(|(_, rest)| rest.chars().next());
            assert!(
                matches!(state, Some(Some(s)) if s != 'Z' && s != 'X'),
                "{}: device process {pid} is gone ({stat:?})",
                self.label
            );
        }
    }

    /// Discards the log lines received so far.
    pub fn drain_log(&self) {
        while self.log.try_recv().is_ok() {}
    }

    /// Waits for a log line matching `pred`; panics after `timeout`.
    pub fn wait_log(&self, pred: impl Fn(&str) -> bool, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.log.recv_timeout(left) {
                Ok(line) if pred(&line) => return line,
                Ok(line) => seen.push(line),
                Err(e) => panic!(
                    "{}: expected log line never came ({e}); lines seen:\n{}",
                    self.label,
                    seen.join("\n")
                ),
            }
        }
    }

    /// Waits for a line from device `name` containing `needle`.
    pub fn wait_device_log(&self, name: &str, needle: &str) -> String {
        self.wait_log(|l| l.contains(needle) && l.contains(name), T)
    }
}

impl Proc {
    /// Records the idle state, once the process has held the same resources for a few
    /// polls in a row (a connection that just ended is torn down, the listener is
    /// waiting in accept again). Call with only the long-lived connections open.
    pub fn settle(&mut self) {
        let deadline = Instant::now() + T;
        let mut last = Snapshot::take(self.pid());
        let mut same = 0;
        while same < 5 {
            assert!(Instant::now() < deadline, "{} never settled", self.label);
            std::thread::sleep(Duration::from_millis(10));
            let now = Snapshot::take(self.pid());
            if now == last {
                same += 1;
            } else {
                same = 0;
                last = now;
            }
        }
        self.idle = Some(last);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// What a process holds: fds, threads, mappings.

/// The resources of a process that a connection must give back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// fd number -> what it points to.
    pub fds: BTreeMap<i32, String>,
    /// Thread names, sorted (thread ids change when workers are respawned).
    pub tasks: Vec<String>,
    /// Shared mappings ("perms size path"), sorted: guest memory and dirty logs. (Private
    /// file mappings come and go with lazily loaded debug info; they are not checked.)
    pub maps: Vec<String>,
}

impl Snapshot {
    pub fn take(pid: i32) -> Snapshot {
        let mut fds = BTreeMap::new();
        if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
            for e in dir.flatten() {
                let Ok(n) = e.file_name().to_string_lossy().parse::<i32>() else {
                    continue;
                };
                let target = std::fs::read_link(e.path())
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_else(|_| "?".into());
                fds.insert(n, target);
            }
        }
        let mut tasks = Vec::new();
        if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            for e in dir.flatten() {
                let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
                tasks.push(comm.trim().to_string());
            }
        }
        tasks.sort();
        let mut maps = Vec::new();
        for line in std::fs::read_to_string(format!("/proc/{pid}/maps"))
            .unwrap_or_default()
            .lines()
        {
            let mut parts = line.split_whitespace();
            let (Some(range), Some(perms)) = (parts.next(), parts.next()) else {
                continue;
            };
            let path: Vec<&str> = parts.skip(3).collect();
            let path = path.join(" ");
            if !perms.ends_with('s') {
                continue;
            }
            let size = range
                .split_once('-')
                .and_then(|(a, b)| {
                    Some(u64::from_str_radix(b, 16).ok()? - u64::from_str_radix(a, 16).ok()?)
                })
                .unwrap_or(0);
            maps.push(format!("{perms} {size:#x} {path}"));
        }
        maps.sort();
        Snapshot { fds, tasks, maps }
    }

    /// What differs from `base`, for a failure message.
    pub fn diff(&self, base: &Snapshot) -> String {
        let mut out = String::new();
        for (n, t) in &self.fds {
            if base.fds.get(n) != Some(t) {
                out += &format!("  extra fd {n} -> {t}\n");
            }
        }
        for (n, t) in &base.fds {
            if self.fds.get(n) != Some(t) {
                out += &format!("  missing fd {n} -> {t}\n");
            }
        }
        if self.tasks != base.tasks {
            out += &format!("  threads {:?}, were {:?}\n", self.tasks, base.tasks);
        }
        let extra: Vec<_> = self
            .maps
            .iter()
            .filter(|m| !base.maps.contains(m))
            .collect();
        let gone: Vec<_> = base
            .maps
            .iter()
            .filter(|m| !self.maps.contains(m))
            .collect();
        if !extra.is_empty() || !gone.is_empty() || self.maps.len() != base.maps.len() {
            out += &format!("  mappings: extra {extra:?}, missing {gone:?}\n");
        }
        out
    }
}

impl Snapshot {
    /// The same resources, ignoring which fd numbers they have (a connection that
    /// replaces an fd may get another number for the new one).
    pub fn shape(&self) -> (Vec<String>, &Vec<String>, &Vec<String>) {
        // A socket replaced by a new one (a new backend channel) is the same resource.
        let mut fds: Vec<String> = self
            .fds
            .values()
            .map(|t| {
                if t.starts_with("socket:") {
                    "socket".into()
                } else {
                    t.clone()
                }
            })
            .collect();
        fds.sort();
        (fds, &self.tasks, &self.maps)
    }
}

/// Polls until `pid`'s snapshot has the shape of `base` (see [`Snapshot::shape`]);
/// panics with the difference after `timeout`.
pub fn wait_same_shape(pid: i32, base: &Snapshot, timeout: Duration, what: &str) {
    let deadline = Instant::now() + timeout;
    loop {
        let now = Snapshot::take(pid);
        if now.shape() == base.shape() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("{what}: resources grew:\n{}", now.diff(base));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Polls until `pid`'s snapshot equals `base` (the backend tears a connection down
/// after the frontend sees it closed); panics with the difference after `timeout`.
pub fn wait_snapshot(pid: i32, base: &Snapshot, timeout: Duration, what: &str) {
    let deadline = Instant::now() + timeout;
    loop {
        let now = Snapshot::take(pid);
        if &now == base {
            return;
        }
        if Instant::now() >= deadline {
            panic!(
                "{what}: resources not given back after {timeout:?}:\n{}",
                now.diff(base)
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

// ---------------------------------------------------------------------------------------
// Replies and connection state.

/// What the backend did next on a connection.
#[derive(Debug)]
pub enum Outcome {
    /// A message arrived.
    Reply(Message),
    /// The backend closed (or reset) the connection.
    Closed,
    /// Nothing within the wait.
    Silent,
}

/// Waits up to `wait` for the next message or the end of the connection.
pub fn next_outcome(fe: &Frontend, wait: Duration) -> Outcome {
    let conn = fe.connection();
    let mut fds = [PollFd::new(conn.stream().as_fd(), PollFlags::POLLIN)];
    let t = PollTimeout::try_from(wait).unwrap_or(PollTimeout::MAX);
    match poll(&mut fds, t) {
        Ok(0) => return Outcome::Silent,
        Ok(_) => {}
        Err(_) => return Outcome::Closed,
    }
    match read_message(conn, true) {
        Ok(Some(m)) => Outcome::Reply(m),
        Ok(None) | Err(_) => Outcome::Closed,
    }
}

/// A fresh connection to `socket`.
pub fn connect(socket: &Path) -> Frontend {
    Frontend::connect(socket).unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()))
}

/// A fresh connection with everything negotiated (REPLY_ACK included).
pub fn negotiated(socket: &Path) -> Frontend {
    let mut fe = connect(socket);
    fe.negotiate(u64::MAX, u64::MAX).expect("negotiation");
    fe
}

/// The u64 body of a reply to `req`.
pub fn reply_u64(m: &Message, req: u32) -> u64 {
    assert_eq!(m.header.request, req, "reply to the wrong request");
    assert_eq!(m.header.flags, HeaderFlags::REPLY_FLAGS, "reply flags");
    let b: [u8; 8] = m
        .body
        .as_slice()
        .try_into()
        .unwrap_or_else(|_| panic!("reply to {req} has {} bytes, want 8", m.body.len()));
    u64::from_ne_bytes(b)
}

/// Sends `req` with NEED_REPLY and expects a non-zero REPLY_ACK, then proves the
/// connection still works.
pub fn expect_nack(fe: &mut Frontend, req: R, body: &[u8], fds: &[&File]) {
    expect_nack_raw(fe, req.number(), body, fds);
}

/// [`expect_nack`] with a raw request number.
pub fn expect_nack_raw(fe: &mut Frontend, req: u32, body: &[u8], fds: &[&File]) {
    fe.send_raw(req, NEED_REPLY, body, fds).expect("send");
    match next_outcome(fe, T) {
        Outcome::Reply(m) => {
            let v = reply_u64(&m, req);
            assert_ne!(
                v, 0,
                "request {req} was accepted (ack 0), expected a refusal"
            );
        }
        other => panic!("request {req}: expected a NACK, got {other:?}"),
    }
    expect_alive(fe);
}

/// Sends `req` with NEED_REPLY and expects ack 0.
pub fn expect_ack(fe: &mut Frontend, req: R, body: &[u8], fds: &[&File]) {
    fe.send_raw(req.number(), NEED_REPLY, body, fds)
        .expect("send");
    match next_outcome(fe, T) {
        Outcome::Reply(m) => assert_eq!(reply_u64(&m, req.number()), 0, "{} refused", req.name()),
        other => panic!("{}: expected an ack, got {other:?}", req.name()),
    }
}

/// Sends `req` (a request that always gets a reply) and returns the reply body.
pub fn expect_reply(fe: &mut Frontend, req: R, body: &[u8], fds: &[&File]) -> Vec<u8> {
    fe.send_raw(req.number(), PLAIN, body, fds).expect("send");
    match next_outcome(fe, T) {
        Outcome::Reply(m) => {
            assert_eq!(m.header.request, req.number(), "reply to the wrong request");
            assert_eq!(m.header.flags, HeaderFlags::REPLY_FLAGS);
            m.body
        }
        other => panic!("{}: expected a reply, got {other:?}", req.name()),
    }
}

/// Proves the connection is in sync: GET_FEATURES is the next reply.
pub fn expect_alive(fe: &mut Frontend) {
    fe.send_raw(R::GET_FEATURES.number(), PLAIN, &[], &[])
        .expect("send");
    match next_outcome(fe, T) {
        Outcome::Reply(m) => {
            assert_eq!(
                m.header.request,
                R::GET_FEATURES.number(),
                "a stray reply came before GET_FEATURES'"
            );
        }
        other => panic!("connection not usable after the refusal: {other:?}"),
    }
}

/// Expects the backend to close the connection.
pub fn expect_closed(fe: &Frontend) {
    let deadline = Instant::now() + T;
    loop {
        match next_outcome(fe, deadline.saturating_duration_since(Instant::now())) {
            Outcome::Closed => return,
            Outcome::Reply(_) => continue,
            Outcome::Silent => panic!("the backend did not close the connection"),
        }
    }
}

pub fn u64_body(v: u64) -> Vec<u8> {
    v.to_ne_bytes().to_vec()
}

pub fn state_body(index: u32, num: u32) -> Vec<u8> {
    let mut b = index.to_ne_bytes().to_vec();
    b.extend_from_slice(&num.to_ne_bytes());
    b
}

// ---------------------------------------------------------------------------------------
// Files of every kind, for fd cases.

pub fn memfd(len: u64) -> File {
    let fd = nix::sys::memfd::memfd_create("hostile", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
        .expect("memfd");
    let f = File::from(fd);
    f.set_len(len).expect("set_len");
    f
}

pub fn eventfd() -> File {
    let fd = nix::sys::eventfd::EventFd::from_value_and_flags(
        0,
        nix::sys::eventfd::EfdFlags::EFD_CLOEXEC | nix::sys::eventfd::EfdFlags::EFD_NONBLOCK,
    )
    .expect("eventfd");
    File::from(OwnedFd::from(fd))
}

pub fn socket_fd() -> File {
    let (a, _b) = std::os::unix::net::UnixStream::pair().expect("socketpair");
    File::from(OwnedFd::from(a))
}

pub fn pipe_fd() -> File {
    let (r, _w) = nix::unistd::pipe().expect("pipe");
    File::from(r)
}

pub fn dir_fd() -> File {
    File::open("/").expect("open /")
}

/// One of each kind of fd that is not what a request wants.
pub fn wrong_fds() -> Vec<(&'static str, File)> {
    vec![
        ("eventfd", eventfd()),
        ("socket", socket_fd()),
        ("pipe", pipe_fd()),
        ("directory", dir_fd()),
        ("/dev/null", File::open("/dev/null").expect("/dev/null")),
    ]
}

// ---------------------------------------------------------------------------------------
// Healthy traffic.

/// A normal frontend session with real traffic: rng reads entropy, net (null) sends a
/// frame and receives one, blk reads sector 0.
pub struct Healthy {
    pub kind: Kind,
    pub mem: FrontendMemory,
    pub fe: Frontend,
    pub queues: Vec<DriverQueue>,
    bufs: Vec<u64>,
}

const QSIZE: u16 = 16;

impl Healthy {
    pub fn open(kind: Kind, socket: &Path) -> Healthy {
        Self::open_layout(kind, socket, false)
    }

    /// [`Self::open`] with `VIRTIO_F_RING_PACKED` negotiated and packed rings.
    pub fn open_packed(kind: Kind, socket: &Path) -> Healthy {
        Self::open_layout(kind, socket, true)
    }

    fn open_layout(kind: Kind, socket: &Path, packed: bool) -> Healthy {
        let mem = FrontendMemory::new(&[(0, 1 << 20)]).expect("memory");
        let mut fe = connect(socket);
        if packed {
            fe.negotiate_packed(u64::MAX, u64::MAX)
                .expect("negotiation");
            assert_ne!(
                fe.features() & vhost_user_sync::protocol::virtio::RING_PACKED,
                0,
                "the backend offers RING_PACKED"
            );
        } else {
            fe.negotiate(u64::MAX, u64::MAX).expect("negotiation");
        }
        fe.set_mem_table(&mem).expect("SET_MEM_TABLE");
        let rings: &[u16] = match kind {
            Kind::Rng | Kind::Blk => &[0],
            Kind::Net => &[0, 1],
        };
        let mut queues = Vec::new();
        for &i in rings {
            let mut q = if packed {
                DriverQueue::new_packed(&mem, i, QSIZE)
            } else {
                DriverQueue::new(&mem, i, QSIZE)
            }
            .expect("queue");
            q.attach(&mut fe, &mem).expect("attach");
            queues.push(q);
        }
        let bufs = (0..4)
            .map(|_| mem.alloc(4096, 64).expect("alloc"))
            .collect();
        Healthy {
            kind,
            mem,
            fe,
            queues,
            bufs,
        }
    }

    /// One round of traffic, checked.
    pub fn pump(&mut self) {
        let t = self.mem.table();
        match self.kind {
            Kind::Rng => {
                let b = self.bufs[0];
                t.write(b, &[0u8; 256]).expect("write");
                let q = &mut self.queues[0];
                q.add(t, &[(b, 256, true)]).expect("add");
                q.kick(t).expect("kick");
                let used = q.wait_used(t, T).expect("rng used");
                assert_eq!(used.len, 256, "rng filled the buffer");
                let mut got = [0u8; 256];
                t.read(b, &mut got).expect("read");
                assert!(got.iter().filter(|&&x| x != 0).count() > 200, "entropy");
            }
            Kind::Net => {
                let (h, rxb) = (self.bufs[0], self.bufs[1]);
                t.write(h, &NetHdr::default().to_bytes()).expect("hdr");
                t.write(h + NET_HDR_LEN as u64, &[0xab; 60]).expect("frame");
                let tx = &mut self.queues[1];
                tx.add(t, &[(h, NET_HDR_LEN as u32 + 60, false)])
                    .expect("add");
                tx.kick(t).expect("kick");
                tx.wait_used(t, T).expect("net tx used");
                let rx = &mut self.queues[0];
                rx.add(t, &[(rxb, 2048, true)]).expect("add");
                rx.kick(t).expect("kick");
                let used = rx.wait_used(t, T).expect("net rx used");
                assert!(used.len as usize > NET_HDR_LEN, "rx frame");
            }
            Kind::Blk => {
                let (h, data, status) = (self.bufs[0], self.bufs[1], self.bufs[2]);
                t.write(h, &blk_outhdr(0, 0)).expect("hdr");
                t.write(status, &[0xee]).expect("status");
                let q = &mut self.queues[0];
                q.add(t, &[(h, 16, false), (data, 512, true), (status, 1, true)])
                    .expect("add");
                q.kick(t).expect("kick");
                let used = q.wait_used(t, T).expect("blk used");
                assert_eq!(used.len, 513, "blk read a sector and its status");
                let mut s = [0u8; 1];
                t.read(status, &mut s).expect("read");
                assert_eq!(s[0], 0, "blk status OK");
            }
        }
    }
}

/// A virtio_blk_outhdr: type (0 read, 1 write), reserved, sector.
pub fn blk_outhdr(kind: u32, sector: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&kind.to_le_bytes());
    h[8..].copy_from_slice(&sector.to_le_bytes());
    h
}

/// A connection that exercises the device once and leaves.
pub fn exercise(kind: Kind, socket: &Path) {
    let mut h = Healthy::open(kind, socket);
    h.pump();
    h.pump();
}

// ---------------------------------------------------------------------------------------
// Rings set up for data-plane cases.

/// A negotiated connection with memory and every queue of the kind attached.
pub struct Rings {
    pub h: Healthy,
}

impl Rings {
    pub fn open(kind: Kind, socket: &Path) -> Rings {
        Rings {
            h: Healthy::open(kind, socket),
        }
    }

    /// [`Self::open`] on packed rings.
    pub fn open_packed(kind: Kind, socket: &Path) -> Rings {
        Rings {
            h: Healthy::open_packed(kind, socket),
        }
    }

    pub fn table(&self) -> &vhost_user_sync::memory::MemoryTable {
        self.h.mem.table()
    }

    /// Queue `i` of the device and the memory it lives in.
    pub fn queue(&mut self, i: u16) -> (&mut DriverQueue, &vhost_user_sync::memory::MemoryTable) {
        let Healthy { mem, queues, .. } = &mut self.h;
        let q = queues.iter_mut().find(|q| q.index() == i).expect("queue");
        (q, mem.table())
    }

    /// Writes `descs` as one chain into the next slots of packed queue `i`, the first
    /// one's AVAIL/USED bits set to "available" (the others' flags are written as
    /// given), and kicks.
    pub fn post_packed(&mut self, i: u16, descs: &[PackedDescriptor]) {
        let (q, mem) = self.queue(i);
        let mut descs = descs.to_vec();
        if let Some(first) = descs.first_mut() {
            first.flags |= q.packed_avail_bits();
        }
        q.post_packed_raw(mem, &descs).expect("post");
        q.kick_now().expect("kick");
    }

    /// The data queue of the device and the memory it lives in.
    pub fn parts(&mut self) -> (&mut DriverQueue, &vhost_user_sync::memory::MemoryTable) {
        let i = self.h.kind.data_queue();
        let Healthy { mem, queues, .. } = &mut self.h;
        let q = queues
            .iter_mut()
            .find(|q| q.index() == i)
            .expect("data queue");
        (q, mem.table())
    }

    /// Guest-physical addresses of the data queue's descriptor table and avail ring.
    pub fn ring_gpas(&self) -> (u64, u64) {
        let i = self.h.kind.data_queue();
        let q = self
            .h
            .queues
            .iter()
            .find(|q| q.index() == i)
            .expect("data queue");
        let a = q.vring_addr(&self.h.mem);
        (self.gpa(a.desc), self.gpa(a.avail))
    }

    /// Guest-physical address of a frontend address of this memory.
    pub fn gpa(&self, uaddr: u64) -> u64 {
        self.h
            .mem
            .regions()
            .iter()
            .find_map(|r| {
                let off = uaddr.checked_sub(r.userspace_addr)?;
                (off < r.memory_size).then_some(r.guest_phys_addr + off)
            })
            .expect("address in memory")
    }

    pub fn alloc(&self, len: u64) -> u64 {
        self.h.mem.alloc(len, 64).expect("alloc")
    }

    /// Writes descriptor `i` of the data queue.
    pub fn desc(&mut self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = Descriptor {
            addr,
            len,
            flags,
            next,
        };
        let (q, mem) = self.parts();
        q.write_descriptor(mem, i, &d).expect("descriptor");
    }

    /// Publishes head `head` on the data queue and kicks.
    pub fn offer(&mut self, head: u16) {
        let (q, mem) = self.parts();
        q.publish_raw(mem, head).expect("publish");
        q.kick_now().expect("kick");
    }

    /// Waits for the next used entry of the data queue.
    pub fn used(&mut self) -> vhost_user_sync::frontend::UsedElem {
        let (q, mem) = self.parts();
        q.wait_used(mem, T).expect("a used entry")
    }

    /// A valid chain for the data queue at descriptors `first..`, published and
    /// returned used; proves the ring still works.
    pub fn good_chain(&mut self) -> u32 {
        let kind = self.h.kind;
        if self.parts().0.is_packed() {
            return self.good_packed_chain();
        }
        let t = self.h.mem.table();
        let buf = self.h.bufs[3];
        match kind {
            Kind::Rng => {
                self.desc(0, buf, 64, Descriptor::F_WRITE, 0);
            }
            Kind::Net => {
                t.write(buf, &NetHdr::default().to_bytes()).expect("hdr");
                self.desc(0, buf, NET_HDR_LEN as u32 + 60, 0, 0);
            }
            Kind::Blk => {
                t.write(buf, &blk_outhdr(0, 0)).expect("hdr");
                self.desc(0, buf, 16, Descriptor::F_NEXT, 1);
                self.desc(
                    1,
                    buf + 64,
                    512,
                    Descriptor::F_WRITE | Descriptor::F_NEXT,
                    2,
                );
                self.desc(2, buf + 1024, 1, Descriptor::F_WRITE, 0);
            }
        }
        self.offer(0);
        let used = self.used();
        assert_eq!(used.id, 0);
        used.len
    }
}

impl Rings {
    /// A valid chain on a packed data queue, posted the way a driver does; returns the
    /// used length.
    fn good_packed_chain(&mut self) -> u32 {
        let kind = self.h.kind;
        let buf = self.h.bufs[3];
        let (q, t) = self.parts();
        let bufs: Vec<(u64, u32, bool)> = match kind {
            Kind::Rng => vec![(buf, 64, true)],
            Kind::Net => {
                t.write(buf, &NetHdr::default().to_bytes()).expect("hdr");
                vec![(buf, NET_HDR_LEN as u32 + 60, false)]
            }
            Kind::Blk => {
                t.write(buf, &blk_outhdr(0, 0)).expect("hdr");
                vec![
                    (buf, 16, false),
                    (buf + 64, 512, true),
                    (buf + 1024, 1, true),
                ]
            }
        };
        let id = q.add(t, &bufs).expect("add");
        q.kick_now().expect("kick");
        let used = q.wait_used(t, T).expect("a used entry");
        assert_eq!(used.id, id, "the good chain came back");
        used.len
    }
}

// ---------------------------------------------------------------------------------------
// Targets and the case runner.

/// Where a case is run: one device of a backend process.
pub struct Target<'a> {
    pub label: String,
    pub kind: Kind,
    pub socket: PathBuf,
    pub proc: &'a Mutex<Proc>,
    /// A healthy session on another device of the same process, kept open with traffic
    /// flowing across the case.
    pub sibling: Option<&'a Mutex<Healthy>>,
}

/// Everything a case gets.
pub struct Ctx<'a> {
    pub kind: Kind,
    pub socket: &'a Path,
    pub proc: &'a Proc,
    /// The process's resources with no connection of the case open.
    pub base: &'a Snapshot,
}

impl Ctx<'_> {
    pub fn connect(&self) -> Frontend {
        connect(self.socket)
    }

    pub fn negotiated(&self) -> Frontend {
        negotiated(self.socket)
    }

    /// Waits for the framework's error line for a connection it closed.
    pub fn expect_closed_logged(&self) {
        self.proc
            .wait_device_log(self.kind.device_name(), "connection closed:");
    }

    /// Expects the backend to close `fe`, logging why.
    pub fn expect_closed(&self, fe: &Frontend) {
        expect_closed(fe);
        self.expect_closed_logged();
    }

    pub fn num_queues(&self) -> u32 {
        match self.kind {
            Kind::Rng | Kind::Blk => 1,
            Kind::Net => 3,
        }
    }
}

/// A hostile case: its name, the reference's class it belongs to, the device kinds it
/// applies to, and what it does.
pub struct Case {
    pub name: &'static str,
    pub class: &'static str,
    pub kinds: &'static [Kind],
    pub run: fn(&Ctx<'_>),
}

pub const ALL: &[Kind] = &[Kind::Rng, Kind::Net, Kind::Blk];
pub const NET: &[Kind] = &[Kind::Net];
pub const BLK: &[Kind] = &[Kind::Blk];

/// Runs `case` against `target` on fresh connections: snapshot, case, sibling traffic,
/// a fresh normal connection with traffic, and the snapshot again once the backend has
/// torn everything down.
pub fn run_case(target: &Target<'_>, case: &Case) {
    let mut p = target.proc.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(s) = target.sibling {
        s.lock().unwrap_or_else(|e| e.into_inner()).pump();
    }
    let pid = p.pid();
    // A case that failed may have left the backend tearing down: start from the idle
    // state, or from what is there now if it never comes back (the failure was
    // reported already).
    let base = match p.idle.clone() {
        Some(idle) => {
            let settled = std::panic::catch_unwind(|| wait_snapshot(pid, &idle, T, "settle"));
            if settled.is_ok() {
                idle
            } else {
                let now = Snapshot::take(pid);
                p.idle = Some(now.clone());
                now
            }
        }
        None => Snapshot::take(pid),
    };
    p.drain_log();
    let ctx = Ctx {
        kind: target.kind,
        socket: &target.socket,
        proc: &p,
        base: &base,
    };
    (case.run)(&ctx);
    if let Some(s) = target.sibling {
        s.lock().unwrap_or_else(|e| e.into_inner()).pump();
    }
    exercise(target.kind, &target.socket);
    wait_snapshot(pid, &base, T, case.name);
    p.assert_alive();
}

/// The classes of the reference's list ("Bad inputs seen in real vhost-user
/// implementations"), in its wording, plus the issue's own items.
pub mod class {
    pub const SIZES: &str = "payload sizes that lie (too small, too large, 0xFFFFFFFF)";
    pub const FDS_NONE: &str = "fds on requests that take none";
    pub const FDS_MANY: &str = "too many fds";
    pub const FDS_TYPE: &str = "fds with the wrong type";
    pub const RING_INDEX: &str = "ring index at or above the queue count or above 255/65535";
    pub const RING_SIZE: &str = "ring size 0, not a power of two, above the maximum";
    pub const RING_ADDR: &str = "ring addresses unmapped, misaligned or straddling regions";
    pub const REGIONS: &str = "memory regions overlapping, zero-sized, overflowing gpa + size or mmap_offset + size, more than the slot limit";
    pub const LOG_INFLIGHT: &str = "log and inflight sizes or offsets that overflow";
    pub const INFLIGHT_RANGE: &str = "inflight num_queues or queue_size out of range";
    pub const FLOODS: &str = "repeated SET_VRING_NUM / GET_INFLIGHT_FD floods (leaks)";
    pub const DESC_OUTSIDE: &str = "descriptors pointing outside guest memory, zero-length";
    pub const CHAINS: &str = "chains that loop or exceed the queue size";
    pub const INDIRECT: &str = "nested or zero-length indirect tables";
    pub const PACKED: &str = "packed rings: stale wrap bits, buffer ids out of range or reused in flight, chains longer than the ring, indirect abuse, event areas and ring states out of range";
    pub const TOCTOU: &str = "descriptors changed by the guest after validation";
    pub const HEADERS: &str = "headers (virtio_net_hdr, virtio_blk_outhdr) split across many descriptors or shorter than required";
    pub const OFFLOAD: &str = "offload fields (csum_start, csum_offset, gso_size) beyond the frame";
    pub const ORDER: &str = "requests arriving in an unexpected order (before SET_OWNER, before SET_MEM_TABLE, after the peer closed)";
    pub const DISCONNECT: &str = "a frontend that disconnects at any point";
    pub const CONNECT_FLOOD: &str = "floods: repeated connect/disconnect";
    pub const VALUES: &str = "values never offered (features, request numbers, header flags)";
    pub const PANIC: &str = "a device that panics (a bug in device code)";
    pub const ACCEPT: &str = "accept failing for want of file descriptors (EMFILE)";
    pub const STUCK: &str =
        "a device stuck in process_queue (a blocking call that does not return)";
    pub const REBUILD: &str = "a device whose workers cannot be rebuilt after RESET_DEVICE";
    pub const TRUNCATED: &str =
        "shared memory (guest regions, dirty log) truncated by the frontend after it was mapped";
}

/// Sends a header claiming `size` bytes followed by `body` (which may be shorter), with
/// `fds` attached to the header.
pub fn send_header(fe: &Frontend, req: u32, flags: u32, size: u32, body: &[u8], fds: &[&File]) {
    let mut hdr = [0u8; 12];
    hdr[..4].copy_from_slice(&req.to_ne_bytes());
    hdr[4..8].copy_from_slice(&flags.to_ne_bytes());
    hdr[8..].copy_from_slice(&size.to_ne_bytes());
    let raw: Vec<_> = fds.iter().map(|f| f.as_raw_fd()).collect();
    fe.connection()
        .send_message(
            &hdr,
            body,
            &[],
            if raw.is_empty() { None } else { Some(&raw) },
        )
        .expect("send");
}
