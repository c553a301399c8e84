//! Our frontend drives `blk_backend` over a real image file: features and config space,
//! read/write/flush/discard/write-zeroes/get-id round trips checked against the file,
//! every malformed request, O_DIRECT with unaligned buffers, several queues, and a
//! resize announced with CONFIG_CHANGE_MSG.

#[path = "support/backend.rs"]
mod backend;

use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use backend::{no_io_uring_wrapper, page_logged, BackendProcess, TempDir};
use vhost_user_sync::frontend::{DriverQueue, Frontend, FrontendMemory};
use vhost_user_sync::message::{read_message, write_message};
use vhost_user_sync::protocol::{virtio, BackendRequest, HeaderFlags, ProtocolFeatures};
use vhost_user_sync::sys::unix::SocketPlatformConnection;
use vhost_user_sync_blk::features as bf;
use vhost_user_sync_blk::request::{kind, RequestHeader, Segment, Status, SEGMENT_UNMAP};

const T: Duration = Duration::from_secs(10);
const IMAGE_SIZE: u64 = 4 << 20;
const CAPACITY: u64 = IMAGE_SIZE / 512;

/// A backend serving a fresh image whose byte `i` is `pattern(i)`.
struct Disk {
    be: BackendProcess,
    image: PathBuf,
    _dir: TempDir,
}

fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 9)) as u8
}

thread_local! {
    /// The engine the tests on this thread ask for (`--aio`).
    static AIO: std::cell::Cell<&'static str> = const { std::cell::Cell::new("io-uring") };
}

/// Runs `test` with `blk_backend --aio aio`.
fn with_aio(aio: &'static str, test: fn()) {
    AIO.with(|a| a.set(aio));
    test();
}

/// Every test below runs once per engine: `<name>::io_uring` and `<name>::sync`.
macro_rules! on_both_engines {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn io_uring() {
                    super::with_aio("io-uring", super::$name);
                }
                #[test]
                fn sync() {
                    super::with_aio("sync", super::$name);
                }
            }
        )*
    };
}

on_both_engines!(
    features_and_config_space,
    read_only_disks_offer_ro_and_refuse_writes,
    reads_and_writes_go_to_the_image,
    flush_get_id_discard_and_write_zeroes,
    malformed_requests_complete_with_an_error_and_touch_nothing,
    direct_io_handles_unaligned_guest_buffers,
    every_queue_serves_requests_with_a_worker_each,
    a_resized_image_is_announced_to_every_device_on_it,
    a_full_ring_of_requests_in_flight_completes_and_stops_consistent,
    a_ring_disabled_with_requests_in_flight_uses_them_once_enabled_again,
    a_read_into_truncated_guest_memory_fails_with_an_io_error,
    reads_into_guest_memory_are_in_the_dirty_log,
    packed_reads_and_used_descriptors_are_in_the_dirty_log,
);

fn start(args: &[&str]) -> Disk {
    let aio = AIO.with(|a| a.get());
    let disk = start_in(TempDir::new("blk-image"), args, Some(aio));
    // The engine asked for is the one used: no silent fallback.
    let engine = match aio {
        "sync" => "requests done synchronously",
        _ => "requests through io_uring",
    };
    assert!(
        disk.be.startup.iter().any(|l| l.contains(engine)),
        "blk_backend did not log {engine:?}: {:?}",
        disk.be.startup
    );
    disk
}

/// A backend on a patterned image in `dir`, with `--aio aio` (None: the default).
fn start_in(dir: TempDir, args: &[&str], aio: Option<&str>) -> Disk {
    let image = dir.path().join("disk.img");
    let data: Vec<u8> = (0..IMAGE_SIZE).map(pattern).collect();
    std::fs::write(&image, data).unwrap();
    let mut all = vec![
        "--image",
        image.to_str().unwrap(),
        "--serial",
        "disk-serial-42",
    ];
    all.extend_from_slice(args);
    if let Some(aio) = aio {
        all.extend_from_slice(&["--aio", aio]);
    }
    let be = BackendProcess::start("blk_backend", &all);
    Disk {
        be,
        image,
        _dir: dir,
    }
}

impl Disk {
    /// Ends the backend with SIGTERM; returns how many requests it did through io_uring
    /// (from its exit line).
    fn stop_counting_ring_ops(mut self) -> u64 {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.be.pid()),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let line = self.be.wait_log("exiting:", Duration::from_secs(10));
        self.be.wait_exit();
        let words: Vec<&str> = line.split_whitespace().collect();
        let at = words
            .windows(3)
            .position(|w| w[1] == "through" && w[2] == "io_uring")
            .unwrap_or_else(|| panic!("no io_uring count in {line:?}"));
        words[at].parse().unwrap()
    }

    fn file_bytes(&self, offset: u64, len: usize) -> Vec<u8> {
        let f = std::fs::File::open(&self.image).unwrap();
        let mut b = vec![0u8; len];
        f.read_exact_at(&mut b, offset).unwrap();
        b
    }
}

struct Blk {
    mem: FrontendMemory,
    fe: Frontend,
    queues: Vec<DriverQueue>,
}

fn connect(disk: &Disk, want: u64, queues: u16) -> Blk {
    connect_at(&disk.be.socket, want, queues)
}

fn connect_at(socket: &std::path::Path, want: u64, queues: u16) -> Blk {
    connect_layout(socket, want, queues, false)
}

/// A frontend on split or packed rings.
fn connect_layout(socket: &std::path::Path, want: u64, queues: u16, packed: bool) -> Blk {
    let mem = FrontendMemory::new(&[(0, 16 << 20)]).unwrap();
    let mut fe = Frontend::connect(socket).unwrap();
    if packed {
        fe.negotiate_packed(want, u64::MAX).unwrap();
    } else {
        fe.negotiate(want, u64::MAX).unwrap();
    }
    fe.set_mem_table(&mem).unwrap();
    let queues = (0..queues)
        .map(|i| {
            let mut q = if packed {
                DriverQueue::new_packed(&mem, i, 128).unwrap()
            } else {
                DriverQueue::new(&mem, i, 128).unwrap()
            };
            q.attach(&mut fe, &mem).unwrap();
            q
        })
        .collect();
    Blk { mem, fe, queues }
}

/// One request: `readable` buffers after the header (contents, gpa), `writable` buffer
/// sizes (the status byte is the last byte of the last one).
struct Req {
    header: Vec<u8>,
    header_split: Option<usize>,
    out: Vec<Vec<u8>>,
    inb: Vec<u32>,
    /// Byte alignment of data buffers (odd values make them unaligned).
    misalign: u64,
}

impl Req {
    fn new(kind: u32, sector: u64) -> Self {
        Req {
            header: RequestHeader {
                kind,
                reserved: 0,
                sector,
            }
            .to_bytes()
            .to_vec(),
            header_split: None,
            out: Vec::new(),
            inb: vec![1],
            misalign: 0,
        }
    }
}

/// What came back: used length, the writable bytes (status last).
struct Done {
    used: u32,
    writable: Vec<u8>,
}

impl Done {
    fn status(&self) -> u8 {
        *self.writable.last().unwrap()
    }
    fn data(&self) -> &[u8] {
        &self.writable[..self.writable.len() - 1]
    }
}

impl Blk {
    fn buf(&self, data: &[u8], misalign: u64) -> u64 {
        let a = self.mem.alloc(data.len() as u64 + 64, 4096).unwrap() + misalign;
        self.mem.table().write(a, data).unwrap();
        a
    }

    /// Posts `r` on queue `q`; returns its writable buffers.
    fn submit(&mut self, q: usize, r: &Req) -> Vec<(u64, u32)> {
        let mut bufs = Vec::new();
        match r.header_split {
            Some(at) => {
                bufs.push((self.buf(&r.header[..at], 0), at as u32, false));
                let rest = &r.header[at..];
                bufs.push((self.buf(rest, 0), rest.len() as u32, false));
            }
            None if r.header.is_empty() => {}
            None => bufs.push((self.buf(&r.header, 0), r.header.len() as u32, false)),
        }
        for o in &r.out {
            bufs.push((self.buf(o, r.misalign), o.len() as u32, false));
        }
        for &len in &r.inb {
            let fill = vec![0xeeu8; len as usize];
            bufs.push((self.buf(&fill, r.misalign), len, true));
        }
        let mem = self.mem.table();
        self.queues[q].add(mem, &bufs).unwrap();
        self.queues[q].kick(mem).unwrap();
        bufs.iter().filter(|b| b.2).map(|b| (b.0, b.1)).collect()
    }

    fn run(&mut self, q: usize, r: &Req) -> Done {
        let bufs = self.submit(q, r);
        let used = self.queues[q].wait_used(self.mem.table(), T).unwrap();
        let mut writable = Vec::new();
        for (gpa, len) in bufs {
            let mut b = vec![0u8; len as usize];
            self.mem.table().read(gpa, &mut b).unwrap();
            writable.extend_from_slice(&b);
        }
        Done {
            used: used.len,
            writable,
        }
    }

    fn read(&mut self, sector: u64, len: u32) -> Done {
        let mut r = Req::new(kind::IN, sector);
        r.inb = vec![len + 1];
        self.run(0, &r)
    }

    fn write(&mut self, sector: u64, data: &[u8]) -> u8 {
        let mut r = Req::new(kind::OUT, sector);
        r.out = vec![data.to_vec()];
        self.run(0, &r).status()
    }
}

const OK: u8 = Status::Ok as u8;
const IOERR: u8 = Status::IoErr as u8;
const UNSUPP: u8 = Status::Unsupp as u8;

fn features_and_config_space() {
    let disk = start(&["--queues", "2"]);
    let mut fe = Frontend::connect(&disk.be.socket).unwrap();
    let (features, protocol) = fe.negotiate(u64::MAX, u64::MAX).unwrap();
    for bit in [
        bf::SIZE_MAX,
        bf::SEG_MAX,
        bf::BLK_SIZE,
        bf::TOPOLOGY,
        bf::FLUSH,
        bf::CONFIG_WCE,
        bf::MQ,
        bf::DISCARD,
        bf::WRITE_ZEROES,
        virtio::VERSION_1,
        virtio::RING_EVENT_IDX,
        virtio::RING_INDIRECT_DESC,
    ] {
        assert_ne!(features & bit, 0, "{bit:#x}");
    }
    assert_eq!(features & bf::RO, 0);
    assert!(protocol.contains(
        ProtocolFeatures::CONFIG
            | ProtocolFeatures::MQ
            | ProtocolFeatures::REPLY_ACK
            | ProtocolFeatures::BACKEND_REQ
    ));
    assert_eq!(fe.get_queue_num().unwrap(), 2);
    let c = fe.get_config(0, 60).unwrap();
    let u32_at = |i: usize| u32::from_le_bytes(c[i..i + 4].try_into().unwrap());
    assert_eq!(u64::from_le_bytes(c[..8].try_into().unwrap()), CAPACITY);
    assert!(u32_at(8) >= 4096, "size_max");
    assert!(u32_at(12) >= 1, "seg_max");
    assert_eq!(u32_at(20), 512, "blk_size");
    assert_eq!(c[32], 1, "writeback");
    assert_eq!(u16::from_le_bytes([c[34], c[35]]), 2, "num_queues");
    assert!(u32_at(36) > 0 && u32_at(40) > 0, "discard limits");
    assert!(u32_at(48) > 0 && u32_at(52) > 0, "write zeroes limits");
    assert_eq!(c[56], 1, "write_zeroes_may_unmap");
    // The driver switches the cache mode; nothing else is writable.
    fe.request(
        vhost_user_sync::protocol::FrontendRequest::SET_CONFIG,
        &config_body(32, &[0]),
        &[],
    )
    .unwrap();
    assert_eq!(fe.get_config(32, 1).unwrap(), [0]);
    assert!(fe
        .request(
            vhost_user_sync::protocol::FrontendRequest::SET_CONFIG,
            &config_body(0, &[0; 8]),
            &[],
        )
        .is_err());
}

/// While migrating, a read from the image straight into guest memory (a `preadv`, or the
/// kernel filling io_uring's iovecs) marks every page it wrote.
fn reads_into_guest_memory_are_in_the_dirty_log() {
    reads_are_logged(false);
}

/// The same on a packed ring, whose used descriptors are written over the descriptor
/// ring and whose event suppression area the device writes.
fn packed_reads_and_used_descriptors_are_in_the_dirty_log() {
    reads_are_logged(true);
}

fn reads_are_logged(packed: bool) {
    let disk = start(&[]);
    let mut b = connect_layout(&disk.be.socket, u64::MAX, 1, packed);
    assert_ne!(b.fe.features() & virtio::LOG_ALL, 0);
    // 16 MiB of guest memory: 4096 pages, 512 bytes of log.
    let log = FrontendMemory::new(&[(0, 4096)]).unwrap();
    b.fe.set_log_base(512, 0, &log.files()[0]).unwrap();
    // As QEMU does when a migration starts: the ring's own writes are logged too.
    let mut addr = b.queues[0].vring_addr(&b.mem);
    addr.flags = vhost_user_sync::protocol::payload::VringAddr::F_LOG;
    addr.log = b.queues[0].used_gpa();
    b.fe.set_vring_addr(&addr).unwrap();
    let mut r = Req::new(kind::IN, 0);
    r.inb = vec![3 * 4096, 1];
    let bufs = b.submit(0, &r);
    b.queues[0].wait_used(b.mem.table(), T).unwrap();
    let data = bufs[0].0;
    for page in 0..3 {
        assert!(
            page_logged(&log, data + page * 4096),
            "page {page} of the read"
        );
    }
    assert!(page_logged(&log, bufs[1].0), "the status byte");
    if packed {
        assert!(
            page_logged(&log, b.queues[0].desc_gpa()),
            "the used descriptor"
        );
    } else {
        assert!(page_logged(&log, b.queues[0].used_gpa()), "the used ring");
    }
    assert!(!page_logged(&log, 15 << 20), "memory nothing wrote");
}

/// The cache mode the driver chose and the request counts move from one backend process
/// to another through the device state (as a migration moves them), and I/O goes on.
#[test]
fn the_cache_mode_and_counters_move_to_another_backend_process() {
    let a = start_in(TempDir::new("blk-state-a"), &[], None);
    let b = start_in(TempDir::new("blk-state-b"), &[], None);
    let mut src = connect(&a, u64::MAX, 1);
    src.fe
        .request(
            vhost_user_sync::protocol::FrontendRequest::SET_CONFIG,
            &config_body(32, &[0]),
            &[],
        )
        .unwrap();
    for sector in 0..3 {
        let mut r = Req::new(kind::IN, sector);
        r.inb = vec![512, 1];
        assert_eq!(src.run(0, &r).status(), OK);
    }
    src.fe.get_vring_base(0).unwrap();
    let state = src.fe.save_device_state().unwrap();

    let mem = FrontendMemory::new(&[(0, 16 << 20)]).unwrap();
    let mut fe = Frontend::connect(&b.be.socket).unwrap();
    fe.negotiate(u64::MAX, u64::MAX).unwrap();
    fe.set_mem_table(&mem).unwrap();
    assert_eq!(
        fe.get_config(32, 1).unwrap(),
        [1],
        "b starts in writeback mode"
    );
    fe.load_device_state(&state).unwrap();
    assert_eq!(
        fe.get_config(32, 1).unwrap(),
        [0],
        "the driver's choice arrived"
    );
    let mut q = DriverQueue::new(&mem, 0, 128).unwrap();
    q.attach(&mut fe, &mem).unwrap();
    let mut dst = Blk {
        mem,
        fe,
        queues: vec![q],
    };
    let mut w = Req::new(kind::OUT, 8);
    w.out = vec![vec![0x5a; 512]];
    assert_eq!(dst.run(0, &w).status(), OK);
    assert_eq!(b.file_bytes(8 * 512, 512), vec![0x5a; 512]);
    drop(dst);
    // b's counts go on from a's: 3 reads there, 1 write here.
    let mut be = b.be;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(be.pid()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let exit = be.wait_log("exiting:", T);
    assert!(
        exit.contains("3 reads") && exit.contains("1 writes"),
        "{exit}"
    );
    be.wait_exit();
}

fn config_body(offset: u32, data: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&offset.to_le_bytes());
    b.extend_from_slice(&(data.len() as u32).to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(data);
    b
}

fn read_only_disks_offer_ro_and_refuse_writes() {
    let disk = start(&["--read-only"]);
    let mut b = connect(&disk, u64::MAX, 1);
    assert_ne!(b.fe.features() & bf::RO, 0);
    assert_eq!(b.fe.features() & (bf::DISCARD | bf::WRITE_ZEROES), 0);
    assert_eq!(b.write(0, &[0u8; 512]), IOERR);
    assert_eq!(
        disk.file_bytes(0, 512),
        (0..512).map(pattern).collect::<Vec<_>>()
    );
    let r = b.read(0, 512);
    assert_eq!((r.status(), r.data()), (OK, &disk.file_bytes(0, 512)[..]));
}

fn reads_and_writes_go_to_the_image() {
    let disk = start(&[]);
    let mut b = connect(&disk, u64::MAX, 1);
    // A read that spans odd buffer sizes.
    let mut r = Req::new(kind::IN, 5);
    r.inb = vec![100, 700, 224, 1];
    let done = b.run(0, &r);
    assert_eq!(done.status(), OK);
    assert_eq!(done.used, 1025);
    assert_eq!(done.data(), &disk.file_bytes(5 * 512, 1024)[..]);
    // A write whose header is split 3 + 13 and whose data is in three pieces.
    let data: Vec<u8> = (0..1536u32).map(|i| (i * 7) as u8).collect();
    let mut w = Req::new(kind::OUT, 100);
    w.header_split = Some(3);
    w.out = vec![
        data[..1].to_vec(),
        data[1..1000].to_vec(),
        data[1000..].to_vec(),
    ];
    assert_eq!(b.run(0, &w).status(), OK);
    assert_eq!(disk.file_bytes(100 * 512, 1536), data);
    assert_eq!(
        disk.file_bytes(99 * 512, 512),
        (99 * 512..100 * 512).map(pattern).collect::<Vec<_>>(),
        "the sector before is untouched"
    );
    let back = b.read(100, 1536);
    assert_eq!((back.status(), back.data()), (OK, &data[..]));
    // The last sector of the disk.
    assert_eq!(b.write(CAPACITY - 1, &[0x5a; 512]), OK);
    assert_eq!(disk.file_bytes(IMAGE_SIZE - 512, 512), vec![0x5a; 512]);
    // An indirect chain.
    let table = b.mem.alloc(16 * 3, 16).unwrap();
    let h = b.buf(
        &RequestHeader {
            kind: kind::IN,
            reserved: 0,
            sector: 2,
        }
        .to_bytes(),
        0,
    );
    let d = b.buf(&[0; 512], 0);
    let s = b.buf(&[0xee], 0);
    let mem = b.mem.table();
    b.queues[0]
        .add_indirect(mem, table, &[(h, 16, false), (d, 512, true), (s, 1, true)])
        .unwrap();
    b.queues[0].kick(mem).unwrap();
    b.queues[0].wait_used(mem, T).unwrap();
    let mut got = vec![0u8; 513];
    mem.read(d, &mut got[..512]).unwrap();
    mem.read(s, &mut got[512..]).unwrap();
    assert_eq!(got[512], OK);
    assert_eq!(&got[..512], &disk.file_bytes(1024, 512)[..]);
}

fn flush_get_id_discard_and_write_zeroes() {
    let disk = start(&[]);
    let mut b = connect(&disk, u64::MAX, 1);
    assert_eq!(b.run(0, &Req::new(kind::FLUSH, 0)).status(), OK);
    let mut id = Req::new(kind::GET_ID, 0);
    id.inb = vec![20, 1];
    let done = b.run(0, &id);
    assert_eq!(done.status(), OK);
    assert_eq!(&done.data()[..14], b"disk-serial-42");
    assert!(done.data()[14..].iter().all(|&x| x == 0));

    let seg = |sector, num_sectors, flags| Segment {
        sector,
        num_sectors,
        flags,
    };
    // Discard two ranges: they read back as zeroes.
    let mut d = Req::new(kind::DISCARD, 0);
    d.out = vec![[seg(8, 8, 0).to_bytes(), seg(64, 16, 0).to_bytes()].concat()];
    assert_eq!(b.run(0, &d).status(), OK);
    assert_eq!(disk.file_bytes(8 * 512, 4096), vec![0; 4096]);
    assert_eq!(disk.file_bytes(64 * 512, 8192), vec![0; 8192]);
    assert_eq!(disk.file_bytes(16 * 512, 1), vec![pattern(16 * 512)]);
    // Write zeroes, with and without UNMAP.
    for (sector, flags) in [(200, 0), (300, SEGMENT_UNMAP)] {
        let mut z = Req::new(kind::WRITE_ZEROES, 0);
        z.out = vec![seg(sector, 3, flags).to_bytes().to_vec()];
        assert_eq!(b.run(0, &z).status(), OK);
        assert_eq!(disk.file_bytes(sector * 512, 1536), vec![0; 1536]);
        assert_eq!(
            disk.file_bytes((sector + 3) * 512, 1),
            vec![pattern((sector + 3) * 512)]
        );
    }
    let r = b.read(200, 512);
    assert_eq!((r.status(), r.data()), (OK, &[0u8; 512][..]));
    drop(b);
    // On io_uring everything but GET_ID went through the ring: the flush, the discard of
    // two segments, both write-zeroes and the read.
    let ring_ops = disk.stop_counting_ring_ops();
    let want = if AIO.with(|a| a.get()) == "sync" {
        0
    } else {
        5
    };
    assert_eq!(ring_ops, want, "requests through io_uring");
}

/// An image in memory (tmpfs): by default its requests are done synchronously, and the
/// log says why; with `--aio io-uring` they go through the ring, and a write-zeroes that
/// tmpfs cannot do in place (it has no FALLOC_FL_ZERO_RANGE) is done by writing zeroes.
#[test]
fn an_image_in_memory_is_served_synchronously_unless_io_uring_is_asked_for() {
    let shm = std::path::Path::new("/dev/shm");
    if !shm.is_dir() {
        assert!(!backend::ci(), "/dev/shm is missing");
        eprintln!("skipped: no /dev/shm");
        return;
    }
    let in_shm = |tag: &str| {
        let dir = TempDir(shm.join(format!("vu-{tag}-{}", std::process::id())));
        std::fs::create_dir_all(dir.path()).unwrap();
        dir
    };
    let disk = start_in(in_shm("auto"), &[], None);
    assert!(
        disk.be
            .startup
            .iter()
            .any(|l| l.contains("requests done synchronously") && l.contains("in memory")),
        "{:?}",
        disk.be.startup
    );
    let mut b = connect(&disk, u64::MAX, 1);
    let r = b.read(8, 512);
    assert_eq!(r.status(), OK);
    assert_eq!(r.data(), &disk.file_bytes(8 * 512, 512)[..]);
    drop(b);
    assert_eq!(disk.stop_counting_ring_ops(), 0);

    let disk = start_in(in_shm("ring"), &[], Some("io-uring"));
    assert!(disk
        .be
        .startup
        .iter()
        .any(|l| l.contains("requests through io_uring")));
    let mut b = connect(&disk, u64::MAX, 1);
    let mut z = Req::new(kind::WRITE_ZEROES, 0);
    z.out = vec![Segment {
        sector: 40,
        num_sectors: 2,
        flags: 0,
    }
    .to_bytes()
    .to_vec()];
    assert_eq!(b.run(0, &z).status(), OK);
    assert_eq!(disk.file_bytes(40 * 512, 1024), vec![0; 1024]);
    assert_eq!(disk.file_bytes(42 * 512, 1), vec![pattern(42 * 512)]);
    drop(b);
    assert_eq!(disk.stop_counting_ring_ops(), 1);
}

fn malformed_requests_complete_with_an_error_and_touch_nothing() {
    let disk = start(&[]);
    let mut b = connect(&disk, u64::MAX, 1);
    let original = disk.file_bytes(0, IMAGE_SIZE as usize);
    let seg = |sector, num_sectors, flags| {
        Segment {
            sector,
            num_sectors,
            flags,
        }
        .to_bytes()
        .to_vec()
    };
    let mut cases: Vec<(&str, Req, u8)> = Vec::new();
    let mut short = Req::new(kind::OUT, 0);
    short.header.truncate(15);
    cases.push(("header of 15 bytes", short, IOERR));
    let mut beyond = Req::new(kind::OUT, CAPACITY);
    beyond.out = vec![vec![1; 512]];
    cases.push(("write at the capacity", beyond, IOERR));
    let mut straddle = Req::new(kind::OUT, CAPACITY - 1);
    straddle.out = vec![vec![1; 1024]];
    cases.push(("write across the end", straddle, IOERR));
    let mut wrap = Req::new(kind::OUT, u64::MAX);
    wrap.out = vec![vec![1; 512]];
    cases.push(("sector + length overflows", wrap, IOERR));
    let mut wrap_read = Req::new(kind::IN, u64::MAX / 512 + 1);
    wrap_read.inb = vec![513];
    cases.push(("read sector * 512 overflows", wrap_read, IOERR));
    let mut partial = Req::new(kind::OUT, 0);
    partial.out = vec![vec![1; 100]];
    cases.push(("write of 100 bytes", partial, IOERR));
    let mut partial_read = Req::new(kind::IN, 0);
    partial_read.inb = vec![300];
    cases.push(("read of 299 bytes", partial_read, IOERR));
    cases.push(("unknown type", Req::new(77, 0), UNSUPP));
    cases.push(("GET_LIFETIME", Req::new(kind::GET_LIFETIME, 0), UNSUPP));
    cases.push(("SECURE_ERASE", Req::new(kind::SECURE_ERASE, 0), UNSUPP));
    let mut unmap = Req::new(kind::DISCARD, 0);
    unmap.out = vec![seg(0, 8, SEGMENT_UNMAP)];
    cases.push(("discard with UNMAP", unmap, UNSUPP));
    let mut flags = Req::new(kind::WRITE_ZEROES, 0);
    flags.out = vec![seg(0, 8, 0x10)];
    cases.push(("write zeroes with unknown flags", flags, UNSUPP));
    let mut seg_beyond = Req::new(kind::WRITE_ZEROES, 0);
    seg_beyond.out = vec![[seg(0, 8, 0), seg(CAPACITY - 1, 2, 0)].concat()];
    cases.push(("second segment beyond the disk", seg_beyond, IOERR));
    let mut ragged = Req::new(kind::DISCARD, 0);
    ragged.out = vec![vec![0; 20]];
    cases.push(("segment area of 20 bytes", ragged, IOERR));
    let mut none = Req::new(kind::DISCARD, 0);
    none.out = vec![];
    cases.push(("no segments", none, IOERR));
    let mut many = Req::new(kind::DISCARD, 0);
    many.out = vec![(0..33).flat_map(|i| seg(i * 8, 8, 0)).collect()];
    cases.push(("33 segments", many, IOERR));
    for (what, req, want) in &cases {
        let done = b.run(0, req);
        assert_eq!(done.status(), *want, "{what}");
        // The whole writable area counts as written (the status is its last byte).
        assert_eq!(done.used as usize, done.writable.len(), "{what}");
    }
    // No status byte at all: used with length 0, and the queue keeps going.
    let mut no_status = Req::new(kind::OUT, 0);
    no_status.out = vec![vec![1; 512]];
    no_status.inb = vec![];
    b.submit(0, &no_status);
    let used = b.queues[0].wait_used(b.mem.table(), T).unwrap();
    assert_eq!(used.len, 0);
    assert_eq!(
        disk.file_bytes(0, IMAGE_SIZE as usize),
        original,
        "image untouched"
    );
    let r = b.read(7, 512);
    assert_eq!((r.status(), r.data()), (OK, &original[7 * 512..8 * 512]));
    let log = disk.be.log_until("request failed", T).join("\n");
    assert!(
        log.contains("beyond the capacity") || log.contains("header"),
        "{log}"
    );
}

fn direct_io_handles_unaligned_guest_buffers() {
    let disk = start(&["--direct"]);
    let mut b = connect(&disk, u64::MAX, 1);
    let data: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
    for misalign in [0, 3] {
        let sector = 40 + misalign * 16;
        let mut w = Req::new(kind::OUT, sector);
        w.out = vec![data[..4096].to_vec(), data[4096..].to_vec()];
        w.misalign = misalign;
        assert_eq!(b.run(0, &w).status(), OK, "misalign {misalign}");
        assert_eq!(disk.file_bytes(sector * 512, 8192), data);
        let mut r = Req::new(kind::IN, sector);
        r.inb = vec![4096, 4097];
        r.misalign = misalign;
        let done = b.run(0, &r);
        assert_eq!(
            (done.status(), done.data()),
            (OK, &data[..]),
            "misalign {misalign}"
        );
    }
    // Only the unaligned write and read went through the copy.
    let mut be = disk.be;
    let exit = be.signal_and_wait(nix::sys::signal::Signal::SIGTERM);
    assert!(exit.success());
    let line = be.wait_log("exiting:", T);
    assert!(line.contains(" 2 bounced"), "{line}");
}

fn every_queue_serves_requests_with_a_worker_each() {
    let disk = start(&["--queues", "4", "--worker-per-queue"]);
    let mut b = connect(&disk, u64::MAX, 4);
    for q in 0..4usize {
        let mut w = Req::new(kind::OUT, 1000 + q as u64);
        w.out = vec![vec![q as u8 + 1; 512]];
        assert_eq!(b.run(q, &w).status(), OK);
    }
    for q in 0..4u64 {
        assert_eq!(
            disk.file_bytes((1000 + q) * 512, 512),
            vec![q as u8 + 1; 512]
        );
    }
}

fn a_resized_image_is_announced_to_every_device_on_it() {
    // Two devices (two sockets of one process) serve the same image.
    let disk = start(&["--socket-count", "2", "--read-only"]);
    let path = |i: usize| std::path::PathBuf::from(format!("{}{i}", disk.be.socket.display()));
    let mut devices: Vec<(Blk, SocketPlatformConnection)> = (0..2)
        .map(|i| {
            let mut b = connect_at(&path(i), u64::MAX, 1);
            let (ours, theirs) = UnixStream::pair().unwrap();
            b.fe.set_backend_req_fd(&theirs).unwrap();
            (b, SocketPlatformConnection::new(ours).unwrap())
        })
        .collect();
    let capacity =
        |fe: &mut Frontend| u64::from_le_bytes(fe.get_config(0, 8).unwrap().try_into().unwrap());
    for (b, _) in &mut devices {
        assert_eq!(capacity(&mut b.fe), CAPACITY);
        // Past the end: refused.
        assert_eq!(b.read(CAPACITY, 512).status(), IOERR);
    }
    // Another program grows the image.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&disk.image)
        .unwrap()
        .set_len(2 * IMAGE_SIZE)
        .unwrap();
    for (b, channel) in &mut devices {
        let msg = read_message(channel, true).unwrap().unwrap();
        assert_eq!(
            msg.header.request,
            BackendRequest::CONFIG_CHANGE_MSG.number()
        );
        if msg.header.flags.need_reply() {
            write_message(
                channel,
                msg.header.request,
                HeaderFlags::REPLY_FLAGS,
                &0u64.to_ne_bytes(),
                &[],
            )
            .unwrap();
        }
        assert_eq!(capacity(&mut b.fe), 2 * CAPACITY);
        let r = b.read(CAPACITY, 512);
        assert_eq!((r.status(), r.data()), (OK, &[0u8; 512][..]));
    }
    disk.be.wait_log("resized", T);
}

/// 40 requests (reads and writes of 64 KiB, three descriptors each, O_DIRECT on the
/// disk the image is on, so they take the disk's time) posted with one kick: all in
/// flight at once on the io_uring engine. Once the first is used the ring is stopped:
/// GET_VRING_BASE must wait for the rest, so the frontend finds all 40 used, each read
/// with the image's data, each write in the image, and the base at 40. Twelve rounds,
/// each on a new connection, so that some stop finds requests still in the kernel.
fn a_full_ring_of_requests_in_flight_completes_and_stops_consistent() {
    const N: u64 = 40;
    const LEN: usize = 64 << 10;
    let disk = start(&["--direct"]);
    for round in 0..12u64 {
        let mut b = connect(&disk, u64::MAX, 1);
        let mem = b.mem.table().clone();
        // head -> (is write, sector, data gpa, status gpa, data written)
        let mut posted = std::collections::HashMap::new();
        for i in 0..N {
            let write = (i + round) % 2 == 1;
            let sector = i * (LEN as u64 / 512);
            let header = RequestHeader {
                kind: if write { kind::OUT } else { kind::IN },
                reserved: 0,
                sector,
            }
            .to_bytes();
            let h = b.buf(&header, 0);
            let data: Vec<u8> = if write {
                (0..LEN)
                    .map(|k| (k as u64 ^ i ^ round) as u8 ^ 0xa5)
                    .collect()
            } else {
                vec![0xee; LEN]
            };
            let d = b.buf(&data, 0);
            let s = b.buf(&[0xee], 0);
            let head = b.queues[0]
                .add(
                    &mem,
                    &[(h, 16, false), (d, LEN as u32, !write), (s, 1, true)],
                )
                .unwrap();
            posted.insert(head, (write, sector, d, s, data));
        }
        b.queues[0].kick(&mem).unwrap();
        let first = b.queues[0].wait_used(&mem, T).unwrap();
        assert_eq!(
            b.fe.get_vring_base(0).unwrap(),
            N as u32,
            "round {round}: every request was taken"
        );
        let mut used = vec![first];
        while let Some(u) = b.queues[0].pop_used(&mem).unwrap() {
            used.push(u);
        }
        assert_eq!(
            used.len(),
            N as usize,
            "round {round}: all used before GET_VRING_BASE answered"
        );
        for u in used {
            let (write, sector, d, s, data) = posted.remove(&u.id).expect("a posted head, once");
            let mut status = [0u8];
            mem.read(s, &mut status).unwrap();
            assert_eq!(status[0], OK, "round {round}: request at sector {sector}");
            let on_disk = disk.file_bytes(sector * 512, LEN);
            if write {
                assert_eq!(u.len, 1);
                assert!(on_disk == data, "round {round}: write at sector {sector}");
            } else {
                assert_eq!(u.len, LEN as u32 + 1);
                let mut got = vec![0u8; LEN];
                mem.read(d, &mut got).unwrap();
                assert!(got == on_disk, "round {round}: read at sector {sector}");
            }
        }
    }
}

#[test]
fn without_io_uring_the_backend_says_so_and_serves_synchronously() {
    let dir = TempDir::new("no-io-uring");
    let wrapper = no_io_uring_wrapper(dir.path());
    let image = dir.path().join("disk.img");
    let data: Vec<u8> = (0..IMAGE_SIZE).map(pattern).collect();
    std::fs::write(&image, data).unwrap();
    let be = BackendProcess::start_with(
        &[wrapper.to_str().unwrap()],
        None,
        "blk_backend",
        &["--image", image.to_str().unwrap(), "--aio", "io-uring"],
    );
    assert!(
        be.startup
            .iter()
            .any(|l| l.contains("io_uring is not available") && l.contains("synchronous I/O")),
        "no fallback line: {:?}",
        be.startup
    );
    let disk = Disk {
        be,
        image,
        _dir: dir,
    };
    let mut b = connect(&disk, u64::MAX, 1);
    assert_eq!(b.write(8, &[0x42; 1024]), OK);
    assert_eq!(disk.file_bytes(8 * 512, 1024), vec![0x42; 1024]);
    let back = b.read(7, 1536);
    assert_eq!(back.status(), OK);
    assert_eq!(back.data(), &disk.file_bytes(7 * 512, 1536)[..]);
    // Each connection's workers say so too.
    disk.be
        .wait_log("io_uring is not available", Duration::from_secs(10));
}

/// `--print-capabilities` in the form QEMU's `docs/interop/vhost-user.json` describes: a
/// `block` backend with the features `blk-file` and `read-only`, both of which are
/// options the program takes (`--blk-file` serves an image as `--image` does).
#[test]
fn capabilities_follow_the_vhost_user_json_schema_and_blk_file_works() {
    assert_eq!(
        backend::capabilities("blk_backend"),
        r#"{"type": "block", "features": ["blk-file", "read-only"]}"#
    );
    let dir = TempDir::new("blk-file");
    let image = dir.path().join("disk.img");
    std::fs::write(&image, vec![0x33u8; 1 << 20]).unwrap();
    let be = BackendProcess::start(
        "blk_backend",
        &["--blk-file", image.to_str().unwrap(), "--read-only"],
    );
    let disk = Disk {
        be,
        image,
        _dir: dir,
    };
    let mut b = connect(&disk, u64::MAX, 1);
    let back = b.read(0, 512);
    assert_eq!((back.status(), back.data()), (OK, &[0x33u8; 512][..]));
    assert_eq!(
        b.write(0, &[0; 512]),
        IOERR,
        "read-only: the write is refused"
    );
}

/// A ring disabled (SET_VRING_ENABLE 0) while its requests are in the kernel, then
/// enabled again: every request is used exactly once, with the image's data, whether it
/// finished before the ring was disabled or was kept until it ran again. Eight rounds of
/// 40 O_DIRECT 64 KiB reads, each on a new connection.
fn a_ring_disabled_with_requests_in_flight_uses_them_once_enabled_again() {
    const N: usize = 40;
    const LEN: usize = 64 << 10;
    let disk = start(&["--direct"]);
    for round in 0..8 {
        let mut b = connect(&disk, u64::MAX, 1);
        let mem = b.mem.table().clone();
        let mut posted = std::collections::HashMap::new();
        for i in 0..N {
            let sector = (i * LEN / 512) as u64;
            let header = RequestHeader {
                kind: kind::IN,
                reserved: 0,
                sector,
            }
            .to_bytes();
            let h = b.buf(&header, 0);
            let d = b.buf(&vec![0xee; LEN], 0);
            let s = b.buf(&[0xee], 0);
            let head = b.queues[0]
                .add(&mem, &[(h, 16, false), (d, LEN as u32, true), (s, 1, true)])
                .unwrap();
            posted.insert(head, (sector, d, s));
        }
        b.queues[0].kick(&mem).unwrap();
        let mut used = vec![b.queues[0].wait_used(&mem, T).unwrap()];
        b.fe.set_vring_enable(0, false).unwrap();
        b.fe.set_vring_enable(0, true).unwrap();
        while used.len() < N {
            used.push(
                b.queues[0]
                    .wait_used(&mem, T)
                    .unwrap_or_else(|e| panic!("round {round}: {} of {N} used: {e}", used.len())),
            );
        }
        for u in used {
            let (sector, d, s) = posted.remove(&u.id).expect("a posted head, once");
            let mut status = [0u8];
            mem.read(s, &mut status).unwrap();
            assert_eq!(status[0], OK, "round {round}: read at sector {sector}");
            let mut got = vec![0u8; LEN];
            mem.read(d, &mut got).unwrap();
            assert!(
                got == disk.file_bytes(sector * 512, LEN),
                "round {round}: read at sector {sector}"
            );
        }
    }
}

/// Guest memory truncated under a read the kernel does for the device (preadv, or an
/// io_uring read): the request fails with IOERR, the status lands (its buffer is in
/// memory that is still there), and the backend goes on serving the next connection.
fn a_read_into_truncated_guest_memory_fails_with_an_io_error() {
    let disk = start(&[]);
    {
        // Region 0: rings, header, status. Region 1 (at 16 MiB): the data buffer.
        let mem = FrontendMemory::new(&[(0, 16 << 20), (16 << 20, 1 << 20)]).unwrap();
        let mut fe = Frontend::connect(&disk.be.socket).unwrap();
        fe.negotiate(u64::MAX, u64::MAX).unwrap();
        fe.set_mem_table(&mem).unwrap();
        let mut q = DriverQueue::new(&mem, 0, 128).unwrap();
        q.attach(&mut fe, &mem).unwrap();
        let table = mem.table();
        let h = mem.alloc(16, 16).unwrap();
        table
            .write(
                h,
                &RequestHeader {
                    kind: kind::IN,
                    reserved: 0,
                    sector: 0,
                }
                .to_bytes(),
            )
            .unwrap();
        let s = mem.alloc(1, 1).unwrap();
        table.write(s, &[0xee]).unwrap();
        mem.files()[1].set_len(0).unwrap();
        q.add(
            table,
            &[(h, 16, false), (16 << 20, 4096, true), (s, 1, true)],
        )
        .unwrap();
        q.kick(table).unwrap();
        let used = q.wait_used(table, T).unwrap();
        let mut status = [0u8];
        table.read(s, &mut status).unwrap();
        assert_eq!(status[0], IOERR, "used length {}", used.len);
    }
    // The backend serves the next frontend.
    let mut b = connect(&disk, u64::MAX, 1);
    let r = b.read(0, 512);
    assert_eq!((r.status(), r.data()), (OK, &disk.file_bytes(0, 512)[..]));
}
