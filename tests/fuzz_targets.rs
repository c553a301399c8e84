//! The fuzz targets of `fuzz/` as ordinary tests.
//!
//! Each target's body (`fuzz/targets/<name>.rs`) is compiled here too and run over
//! (a) every saved input in `fuzz/regressions/<name>/` (crash inputs and seeds), and
//! (b) a deterministic pseudo-random pass: a fixed-seed xorshift generator builds
//! structurally valid inputs (well-formed headers, payloads, chains, rings) and then
//! mutates a few bytes, so the run reaches deep into each parser. The targets assert
//! their own invariants; a failure names the input in hex.
//!
//! `cargo test --test fuzz_targets -- --ignored write_seeds` writes a starting corpus
//! for the fuzzers into `fuzz/corpus/<name>/`.

#[path = "../fuzz/targets/blk_request.rs"]
mod blk_request;
#[path = "../fuzz/targets/chain_checks.rs"]
mod chain_checks;
#[path = "../fuzz/targets/chain_walk.rs"]
mod chain_walk;
#[path = "../fuzz/targets/inflight_area.rs"]
mod inflight_area;
#[path = "../fuzz/targets/memory_table.rs"]
mod memory_table;
#[path = "../fuzz/targets/messages.rs"]
mod messages;
#[path = "../fuzz/targets/net_hdr.rs"]
mod net_hdr;
#[path = "../fuzz/targets/packed_walk.rs"]
mod packed_walk;
#[path = "../fuzz/targets/session.rs"]
mod session;
#[path = "../fuzz/targets/state_stream.rs"]
mod state_stream;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

use vhost_user_sync::memory::MemoryTable;
use vhost_user_sync::protocol::payload::{
    ConfigAccess, DeviceStateTransfer, InflightInfo, LogBase, MemoryRegionDesc, MemoryTableDesc,
    RingFd, SingleRegion, VringAddr, VringState,
};
use vhost_user_sync::protocol::{FrontendRequest, Header, HeaderFlags, MAX_PAYLOAD_SIZE};
use vhost_user_sync::queue::Descriptor;

/// One fuzz target: its name, body and input generator.
struct Target {
    name: &'static str,
    run: fn(&[u8]),
    generate: fn(&mut Rng) -> Vec<u8>,
    /// Inputs in the pseudo-random pass.
    count: usize,
}

const TARGETS: &[Target] = &[
    Target {
        name: "messages",
        run: messages::run,
        generate: gen_messages,
        count: 20000,
    },
    Target {
        name: "memory_table",
        run: memory_table::run,
        generate: gen_memory_table,
        count: 1500,
    },
    Target {
        name: "chain_walk",
        run: chain_walk::run,
        generate: gen_chain_walk,
        count: 3000,
    },
    Target {
        name: "packed_walk",
        run: packed_walk::run,
        generate: gen_packed_walk,
        count: 3000,
    },
    Target {
        name: "inflight_area",
        run: inflight_area::run,
        generate: gen_inflight_area,
        count: 3000,
    },
    Target {
        name: "session",
        run: session::run,
        generate: gen_session,
        count: 400,
    },
    Target {
        name: "net_hdr",
        run: net_hdr::run,
        generate: gen_net_hdr,
        count: 20000,
    },
    Target {
        name: "blk_request",
        run: blk_request::run,
        generate: gen_blk_request,
        count: 20000,
    },
    Target {
        name: "state_stream",
        run: state_stream::run,
        generate: gen_state_stream,
        count: 20000,
    },
];

const SEED: u64 = 0x9e37_79b9_7f4a_7c15;

/// xorshift64*: small, fast, and the same sequence on every run.
struct Rng(u64);

impl Rng {
    fn new(stream: u64) -> Self {
        Rng(SEED ^ stream.wrapping_mul(0x2545_f491_4f6c_dd1d) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// True with probability `n` in 256.
    fn chance(&mut self, n: u64) -> bool {
        self.below(256) < n
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Flips, overwrites, cuts or extends a few bytes (sometimes none).
fn mutate(rng: &mut Rng, data: &mut Vec<u8>) {
    let edits = rng.pick(&[0, 0, 1, 1, 2, 4]);
    for _ in 0..edits {
        if data.is_empty() {
            data.push(rng.next() as u8);
            continue;
        }
        let at = rng.below(data.len() as u64) as usize;
        match rng.below(6) {
            0 => data[at] ^= 1 << rng.below(8),
            1 => data[at] = rng.pick(&[0, 1, 0x7f, 0x80, 0xff]),
            2 => data[at] = rng.next() as u8,
            3 => data.truncate(at),
            4 => data.insert(at, rng.next() as u8),
            _ => {
                let n = rng.below(8) as usize;
                data.extend(rng.bytes(n));
            }
        }
    }
}

fn regression_inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions")
        .join(target);
    let mut out: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .map(|p| {
                    let data = std::fs::read(&p).unwrap();
                    (p, data)
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn run_one(target: &Target, what: &str, data: &[u8]) {
    let result = catch_unwind(AssertUnwindSafe(|| (target.run)(data)));
    if result.is_err() {
        let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
        panic!("{} failed on {what}: {hex}", target.name);
    }
}

fn check_target(name: &str) {
    let target = TARGETS.iter().find(|t| t.name == name).unwrap();
    for (path, data) in regression_inputs(name) {
        run_one(target, &path.display().to_string(), &data);
    }
    let mut rng = Rng::new(name.len() as u64 * 7919 + name.as_bytes()[0] as u64);
    for i in 0..target.count {
        let data = (target.generate)(&mut rng);
        run_one(target, &format!("generated input #{i}"), &data);
    }
}

#[test]
fn messages_target() {
    check_target("messages");
}

#[test]
fn memory_table_target() {
    check_target("memory_table");
}

#[test]
fn chain_walk_target() {
    check_target("chain_walk");
}

#[test]
fn packed_walk_target() {
    check_target("packed_walk");
}

#[test]
fn inflight_area_target() {
    check_target("inflight_area");
}

#[test]
fn session_target() {
    check_target("session");
}

#[test]
fn net_hdr_target() {
    check_target("net_hdr");
}

#[test]
fn state_stream_target() {
    check_target("state_stream");
}

#[test]
fn blk_request_target() {
    check_target("blk_request");
}

#[test]
fn every_target_has_a_regression_directory() {
    for t in TARGETS {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/regressions")
            .join(t.name);
        assert!(dir.is_dir(), "{} missing", dir.display());
    }
}

/// Writes generated inputs as a starting corpus for `cargo fuzz run`.
#[test]
#[ignore]
fn write_seeds() {
    for t in TARGETS {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(t.name);
        std::fs::create_dir_all(&dir).unwrap();
        let mut rng = Rng::new(0x5eed);
        for i in 0..64 {
            std::fs::write(dir.join(format!("seed-{i:02}")), (t.generate)(&mut rng)).unwrap();
        }
    }
}

/// Writes well-formed `inflight_area` inputs, made by the real code (nothing changed
/// after the crash), with chains left in flight, as `fuzz/regressions/inflight_area/
/// seed-NN`: three split, three packed.
#[test]
#[ignore]
fn write_inflight_area_seeds() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions/inflight_area");
    std::fs::create_dir_all(&dir).unwrap();
    let mut rng = Rng::new(0x1f1);
    let (mut split, mut packed) = (0, 0);
    while split + packed < 6 {
        let data = inflight_input(&mut rng, false);
        let is_packed = data[0] & inflight_area::F_PACKED != 0;
        let size = inflight_area::ring_size(data[1]);
        let queue = inflight_area::area_queue_size(data[0], size);
        let (at, stride) = if is_packed { (32, 32) } else { (16, 16) };
        let region = &data[inflight_area::PARAMS..];
        let in_flight = (0..usize::from(queue))
            .filter(|i| region.get(at + i * stride) == Some(&1))
            .count();
        let n = if is_packed { &mut packed } else { &mut split };
        if in_flight < 2 || *n >= 3 || queue < size {
            continue;
        }
        *n += 1;
        let i = split + packed - 1;
        std::fs::write(dir.join(format!("seed-{i:02}")), data).unwrap();
    }
}

// ---- messages -------------------------------------------------------------------

fn region_desc(rng: &mut Rng) -> MemoryRegionDesc {
    let mut d = MemoryRegionDesc {
        guest_phys_addr: rng.below(1 << 20) << 12,
        memory_size: (rng.below(1 << 16) + 1) << 12,
        userspace_addr: 0x7f00_0000_0000 + (rng.below(1 << 20) << 12),
        mmap_offset: rng.below(4) << 12,
    };
    if rng.chance(32) {
        // Overflowing or empty fields.
        match rng.below(4) {
            0 => d.memory_size = 0,
            1 => d.guest_phys_addr = u64::MAX - rng.below(0x1000),
            2 => d.userspace_addr = u64::MAX - rng.below(0x1000),
            _ => d.mmap_offset = u64::MAX - rng.below(0x1000),
        }
    }
    d
}

/// A request number and a body that fits it.
fn message_body(rng: &mut Rng) -> (u32, Vec<u8>) {
    let u64_body = |rng: &mut Rng| rng.next().to_ne_bytes().to_vec();
    match rng.below(12) {
        0 => (
            rng.pick(&[2, 16, 19, 20, 39]),
            if rng.chance(128) {
                rng.pick(&[0u64, 1, 0x1_0000_0000, u64::MAX])
                    .to_ne_bytes()
                    .to_vec()
            } else {
                u64_body(rng)
            },
        ),
        1 => (
            rng.pick(&[8, 10, 11, 18, 23, 35]),
            VringState {
                index: rng.below(4) as u32,
                num: rng.next() as u32,
            }
            .encode(),
        ),
        2 => {
            let align = |rng: &mut Rng, a: u64| {
                let v = rng.below(1 << 32);
                if rng.chance(224) {
                    v & !(a - 1)
                } else {
                    v
                }
            };
            let addr = VringAddr {
                index: rng.below(4) as u32,
                flags: if rng.chance(224) {
                    rng.below(2) as u32
                } else {
                    rng.next() as u32
                },
                desc: align(rng, 16),
                used: align(rng, 4),
                avail: align(rng, 2),
                log: rng.next(),
            };
            (9, addr.encode())
        }
        3 => (
            rng.pick(&[12, 13, 14]),
            RingFd {
                index: rng.next() as u8,
                no_fd: rng.chance(128),
            }
            .encode(),
        ),
        4 => (
            6,
            LogBase {
                mmap_size: rng.pick(&[0, 1, 0x1000, u64::MAX]),
                mmap_offset: rng.pick(&[0, 0x1000, u64::MAX]),
            }
            .encode(),
        ),
        5 => (
            rng.pick(&[31, 32]),
            InflightInfo {
                mmap_size: rng.pick(&[0, 0x2000, u64::MAX]),
                mmap_offset: rng.pick(&[0, 1, u64::MAX]),
                num_queues: rng.below(4) as u16,
                queue_size: rng.pick(&[0, 256, 1024]),
            }
            .encode(),
        ),
        6 => (
            42,
            DeviceStateTransfer {
                direction: rng.below(3) as u32,
                phase: if rng.chance(224) { 0 } else { 1 },
            }
            .encode(),
        ),
        7 => {
            let len = rng.below(ConfigAccess::MAX_SIZE as u64 + 1) as usize;
            let c = ConfigAccess {
                offset: rng.below(ConfigAccess::MAX_SIZE as u64 + 1 - len as u64) as u32,
                flags: rng.below(2) as u32,
                payload: rng.bytes(len),
            };
            (rng.pick(&[24, 25]), c.encode())
        }
        8 => (rng.pick(&[37, 38]), SingleRegion(region_desc(rng)).encode()),
        9 => {
            let n = rng.below(8) + 1;
            let t = MemoryTableDesc {
                regions: (0..n).map(|_| region_desc(rng)).collect(),
            };
            (5, t.encode())
        }
        10 => {
            // Any request, any body size.
            let len = rng.below(u64::from(MAX_PAYLOAD_SIZE) + 16) as usize;
            (rng.below(48) as u32, rng.bytes(len))
        }
        _ => {
            let req = FrontendRequest::ALL[rng.below(FrontendRequest::ALL.len() as u64) as usize];
            (req.number(), Vec::new())
        }
    }
}

fn header_bytes(rng: &mut Rng, request: u32, size: u32) -> [u8; 12] {
    let mut flags = HeaderFlags::REQUEST;
    if rng.chance(64) {
        flags = flags.with_need_reply();
    }
    let mut raw = Header {
        request,
        flags,
        size,
    }
    .encode();
    if rng.chance(16) {
        raw[4] = rng.pick(&[0, 2, 3, 5, 0x11]);
    }
    raw
}

fn gen_messages(rng: &mut Rng) -> Vec<u8> {
    let mut out;
    if rng.chance(160) {
        let (request, body) = message_body(rng);
        // The fd count comes from the size word in this mode.
        let size = rng.below(16) as u32;
        out = vec![rng.below(128) as u8 * 2];
        out.extend_from_slice(&header_bytes(rng, request, size));
        out.extend_from_slice(&body);
    } else {
        out = vec![rng.below(128) as u8 * 2 + 1];
        for _ in 0..rng.below(4) + 1 {
            let (request, body) = message_body(rng);
            let mut size = body.len() as u32;
            if rng.chance(16) {
                size = rng.pick(&[MAX_PAYLOAD_SIZE + 1, u32::MAX, size + 1]);
            }
            out.extend_from_slice(&header_bytes(rng, request, size));
            out.extend_from_slice(&body);
        }
    }
    mutate(rng, &mut out);
    out
}

// ---- memory_table ---------------------------------------------------------------

fn gen_region(rng: &mut Rng, out: &mut Vec<u8>) {
    // tag: bit 7 raw size, bits 2-3 gpa kind, bit 6 raw uaddr, bit 5 raw offset.
    let mut tag = (rng.below(4) as u8) << 2;
    for (bit, odds) in [(0x80u8, 8u64), (0x40, 8), (0x20, 8)] {
        if rng.chance(odds) {
            tag |= bit;
        }
    }
    out.push(tag);
    if tag & 0x80 != 0 {
        out.extend_from_slice(&rng.next().to_le_bytes());
    } else {
        let any = rng.below(0x4000) as u16;
        let size = rng.pick(&[0x0fffu16, 0x1fff, 0x7fff, any]);
        out.extend_from_slice(&size.to_le_bytes());
    }
    match (tag >> 2) & 3 {
        0 => out.extend_from_slice(&(rng.below(0x400) as u16).to_le_bytes()),
        1 | 2 => out.extend_from_slice(&[rng.next() as u8, rng.pick(&[0, 0, 0, 1, 0xff])]),
        _ => out.extend_from_slice(&rng.next().to_le_bytes()),
    }
    if tag & 0x40 != 0 {
        out.extend_from_slice(&rng.next().to_le_bytes());
    } else {
        out.extend_from_slice(&(rng.below(0x100) as u16).to_le_bytes());
    }
    if tag & 0x20 != 0 {
        out.extend_from_slice(&rng.next().to_le_bytes());
    } else {
        let any = rng.below(0x2000) as u16;
        let off = rng.pick(&[0u16, 0x1000, any]);
        out.extend_from_slice(&off.to_le_bytes());
    }
    // File length delta: usually exact, sometimes short.
    out.push(rng.pick(&[0, 0, 0, 1, 0xff]));
}

fn gen_address(rng: &mut Rng, out: &mut Vec<u8>) {
    let tag = rng.below(8) as u8;
    out.push(tag);
    if tag & 3 == 0 {
        if tag & 4 != 0 {
            out.extend_from_slice(&rng.next().to_le_bytes());
        } else {
            out.extend_from_slice(&(rng.below(0x40_0000) as u32).to_le_bytes());
        }
    } else {
        // Region index and delta.
        out.push(rng.next() as u8);
        out.push(rng.pick(&[0, 0, 1, 2, 4, 0xff, 0xfe, 0xfc]));
    }
}

fn gen_len(rng: &mut Rng, out: &mut Vec<u8>) {
    match rng.below(8) {
        0..=3 => out.push((rng.below(64) as u8) << 2),
        4..=6 => {
            out.push(1);
            out.extend_from_slice(&(rng.below(0x3000) as u16).to_le_bytes());
        }
        _ => {
            out.push(3);
            out.extend_from_slice(&rng.next().to_le_bytes());
        }
    }
}

fn gen_memory_table(rng: &mut Rng) -> Vec<u8> {
    let mut out = vec![rng.below(4) as u8];
    for _ in 0..out[0] {
        gen_region(rng, &mut out);
    }
    for _ in 0..rng.below(24) {
        let op = rng.below(10) as u8;
        out.push(op);
        match op {
            0 => gen_region(rng, &mut out),
            1 => {
                out.push(rng.next() as u8);
                out.push(rng.pick(&[0, 1, 2, 3, 3, 3]));
            }
            2 => {
                let near = rng.chance(192);
                out.push(u8::from(near));
                if near {
                    out.push(rng.next() as u8);
                    out.push(rng.pick(&[0, 0, 1, 0xff]));
                    out.extend_from_slice(&(rng.below(0x2000) as u16).to_le_bytes());
                } else {
                    out.extend_from_slice(&rng.next().to_le_bytes());
                }
                gen_len(rng, &mut out);
            }
            3..=7 => {
                gen_address(rng, &mut out);
                gen_len(rng, &mut out);
                if op == 7 {
                    out.push(rng.next() as u8);
                }
            }
            _ => {
                gen_address(rng, &mut out);
                out.push(rng.below(3) as u8);
                if op == 9 {
                    out.extend_from_slice(&rng.next().to_le_bytes());
                }
            }
        }
    }
    mutate(rng, &mut out);
    out
}

// ---- chain_walk -----------------------------------------------------------------

/// A guest memory image being laid out, and how much of it is used.
struct Image {
    bytes: Vec<u8>,
    used: usize,
}

impl Image {
    fn new() -> Self {
        Image {
            bytes: vec![0; chain_walk::IMAGE],
            used: 0,
        }
    }
    fn put(&mut self, at: u64, data: &[u8]) {
        if at >= self.bytes.len() as u64 {
            return;
        }
        let at = at as usize;
        let end = (at + data.len()).min(self.bytes.len());
        self.bytes[at..end].copy_from_slice(&data[..end - at]);
        self.used = self.used.max(end);
    }
    fn desc(&mut self, table: u64, index: u16, d: Descriptor) {
        self.put(table + 16 * u64::from(index), &d.to_bytes());
    }
}

/// A buffer address and length: mostly in the first 16 KiB, sometimes across the
/// region edge at 32 KiB, sometimes outside memory.
fn buffer(rng: &mut Rng) -> (u64, u32) {
    let any = rng.below(0x800) as u32;
    let len = rng.pick(&[0u32, 1, 12, 64, any]);
    let addr = match rng.below(16) {
        0 => 0x8000 - rng.below(64),
        1 => 0x10000 - u64::from(len) + rng.below(2),
        2 => rng.next(),
        _ => 0x2000 + rng.below(0x2000),
    };
    (addr, len)
}

/// Lays out a chain of `n` descriptors from `head` in the table at `table` (of
/// `size` entries): readable buffers first, then writable ones.
fn lay_chain(rng: &mut Rng, img: &mut Image, table: u64, size: u16, head: u16, n: usize) {
    let mut index = head;
    let readable = rng.below(n as u64 + 1) as usize;
    for i in 0..n {
        let next = if rng.chance(240) {
            rng.below(u64::from(size).max(1)) as u16
        } else {
            rng.next() as u16
        };
        let mut flags = if i < n - 1 { Descriptor::F_NEXT } else { 0 };
        if i >= readable {
            flags |= Descriptor::F_WRITE;
        }
        let (addr, len) = buffer(rng);
        img.desc(
            table,
            index,
            Descriptor {
                addr,
                len,
                flags,
                next,
            },
        );
        index = next;
    }
}

/// A packed ring with chains laid out as a driver in its first lap would (AVAIL set,
/// USED clear, NEXT on all but the last, the id in the last), then mutated.
fn gen_packed_walk(rng: &mut Rng) -> Vec<u8> {
    use vhost_user_sync::queue::packed::layout::{
        PackedDescriptor, F_AVAIL, F_INDIRECT, F_NEXT, F_WRITE,
    };
    let mut img = Image::new();
    let any = rng.below(0x8001) as u16;
    let size = rng.pick(&[1u16, 3, 4, 8, 16, 64, any]);
    let desc = if rng.chance(240) {
        16 * rng.below(0x40)
    } else {
        rng.below(0x10000)
    };
    let (driver, device) = if rng.chance(240) {
        (0x1800 + 4 * rng.below(8), 0x1c00 + 4 * rng.below(8))
    } else {
        (rng.below(0x10000), rng.below(0x10000))
    };
    let mut flags = 0u8;
    for f in [
        packed_walk::F_EVENT_IDX,
        packed_walk::F_INDIRECT,
        packed_walk::F_IN_ORDER,
    ] {
        if rng.chance(128) {
            flags |= f;
        }
    }
    let mut out = vec![flags];
    for v in [size, desc as u16, driver as u16, device as u16] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&rng.bytes(packed_walk::OPS));
    let mut slot = 0u16;
    let mut ids: Vec<u16> = (0..size.min(64)).collect();
    while slot < size.min(64) && rng.chance(230) {
        let n = (rng.below(3) + 1).min(u64::from(size - slot)) as u16;
        let id = if rng.chance(248) && !ids.is_empty() {
            ids.swap_remove(rng.below(ids.len() as u64) as usize)
        } else {
            rng.next() as u16
        };
        let indirect = n == 1 && rng.chance(48);
        let readable = rng.below(u64::from(n) + 1) as u16;
        for k in 0..n {
            let (addr, len) = buffer(rng);
            let mut f = F_AVAIL | if k + 1 < n { F_NEXT } else { 0 };
            if k >= readable {
                f |= F_WRITE;
            }
            let mut d = PackedDescriptor {
                addr,
                len,
                id,
                flags: f,
            };
            if indirect {
                let table = 0x6000 + 16 * rng.below(0x100);
                let entries = rng.below(4) + 1;
                for e in 0..entries {
                    let (addr, len) = buffer(rng);
                    let w = if e + 1 == entries { F_WRITE } else { 0 };
                    let t = PackedDescriptor {
                        addr,
                        len,
                        id: 0,
                        flags: w,
                    };
                    img.put(table + 16 * e, &t.to_bytes());
                }
                d = PackedDescriptor {
                    addr: table,
                    len: 16 * entries as u32,
                    id,
                    flags: F_AVAIL | F_INDIRECT,
                };
            }
            img.put(desc + 16 * u64::from(slot + k), &d.to_bytes());
        }
        slot += n;
    }
    out.extend_from_slice(&img.bytes[..img.used]);
    mutate(rng, &mut out);
    out
}

fn gen_chain_walk(rng: &mut Rng) -> Vec<u8> {
    let mut img = Image::new();
    let mut out;
    if rng.chance(192) {
        let table = if rng.chance(240) {
            16 * rng.below(0x80)
        } else {
            let any = rng.next();
            rng.pick(&[0x7ff8, 0xfff0, any])
        };
        let any = rng.below(512) as u16;
        let size = rng.pick(&[1u16, 4, 16, 64, 256, any]);
        let head = rng.below(u64::from(size) + 1) as u16;
        let indirect = rng.chance(64);
        let mut flags = 0u8;
        if indirect || rng.chance(64) {
            flags |= chain_walk::F_INDIRECT;
        }
        out = vec![rng.below(128) as u8 * 2, flags];
        out.extend_from_slice(&table.to_le_bytes());
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&head.to_le_bytes());
        out.extend_from_slice(&rng.bytes(chain_walk::PLAN));
        if table < 0x10000 {
            let n = rng.below(6) as usize + 1;
            if indirect {
                let itable = 0x6000 + 16 * rng.below(0x100);
                let count = n as u64 + rng.below(2);
                img.desc(
                    table,
                    head,
                    Descriptor {
                        addr: itable,
                        len: 16 * count as u32,
                        flags: Descriptor::F_INDIRECT,
                        next: 0,
                    },
                );
                lay_chain(rng, &mut img, itable, count as u16, 0, n);
            } else {
                lay_chain(rng, &mut img, table, size, head, n);
            }
        }
    } else {
        let size = rng.pick(&[1u16, 2, 8, 16, 64, 3, 0]);
        let (desc, avail, used) = if rng.chance(224) {
            (0u16, 0x1000u16, 0x2000u16)
        } else {
            // Anywhere, and often just below the region edge at 32 KiB.
            let mut part = |align: u64| {
                let at = if rng.chance(128) {
                    0x8000 - rng.below(0x100)
                } else {
                    rng.below(0x10000)
                };
                if rng.chance(224) {
                    (at & !(align - 1)) as u16
                } else {
                    at as u16
                }
            };
            (part(16), part(2), part(4))
        };
        let base = rng.below(4) as u16;
        let pending = rng.below(u64::from(size) + 2) as u16;
        let mut flags = 0u8;
        if rng.chance(128) {
            flags |= chain_walk::F_EVENT_IDX;
        }
        if rng.chance(64) {
            flags |= chain_walk::F_INDIRECT;
        }
        out = vec![rng.below(128) as u8 * 2 + 1, flags];
        for v in [size, desc, avail, used, base] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.push(pending as u8 + 2);
        if size > 0 {
            for i in 0..pending {
                let slot = u64::from(base.wrapping_add(i) % size);
                let head = if rng.chance(248) {
                    rng.below(u64::from(size)) as u16
                } else {
                    size
                };
                img.put(u64::from(avail) + 4 + 2 * slot, &head.to_le_bytes());
                let n = rng.below(3) as usize + 1;
                lay_chain(rng, &mut img, u64::from(desc), size, head, n);
            }
            img.put(
                u64::from(avail) + 2,
                &base.wrapping_add(pending).to_le_bytes(),
            );
        }
    }
    let params = out.len();
    out.extend_from_slice(&img.bytes[..img.used]);
    // Mutations land in the parameters or the used part of the image.
    let mut tail = out.split_off(params.min(out.len()));
    mutate(rng, &mut tail);
    if rng.chance(32) {
        mutate(rng, &mut out);
    }
    out.extend_from_slice(&tail);
    out
}

// ---- net_hdr --------------------------------------------------------------------

/// A device state stream as a backend writes it (a device part and a few worker parts),
/// or now and then a version 1 stream, then mutated.
fn gen_state_stream(rng: &mut Rng) -> Vec<u8> {
    use vhost_user_sync::backend::state_stream::encode_parts;

    let part = |rng: &mut Rng| {
        let n = rng.pick(&[0usize, 0, 1, 8, 17, 64]);
        rng.bytes(n)
    };
    let device = part(rng);
    let workers: Vec<Vec<u8>> = (0..rng.below(4)).map(|_| part(rng)).collect();
    let mut out = encode_parts(&device, &workers);
    if rng.chance(32) {
        // Version 1: the payload is the device's bytes alone.
        let mut v1 = out[..4].to_vec();
        v1.extend_from_slice(&1u16.to_le_bytes());
        v1.extend_from_slice(&0u16.to_le_bytes());
        v1.extend_from_slice(&(device.len() as u32).to_le_bytes());
        v1.extend_from_slice(&device);
        let sum = device.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        v1.extend_from_slice(&sum.to_le_bytes());
        out = v1;
    }
    mutate(rng, &mut out);
    out
}

fn gen_net_hdr(rng: &mut Rng) -> Vec<u8> {
    use vhost_user_sync_net::features::{CSUM, HOST_ECN, HOST_TSO4, HOST_TSO6, HOST_UFO};
    use vhost_user_sync_net::request::{NetHdr, MAX_FRAME};

    let any = rng.below(70_000) as u32;
    let frame_len = rng.pick(&[
        0u32,
        14,
        60,
        1514,
        MAX_FRAME as u32,
        MAX_FRAME as u32 + 1,
        any,
    ]);
    let near = |rng: &mut Rng, v: u32| (v + rng.below(5) as u32).saturating_sub(2) as u16;
    let csum_start = rng.below(u64::from(frame_len) + 1) as u16;
    let (any_type, any_size, near_size) =
        (rng.next() as u8, rng.next() as u16, near(rng, frame_len));
    let h = NetHdr {
        flags: rng.pick(&[0, 1, 2, 3, 4, 0x80]),
        gso_type: rng.pick(&[0, 1, 3, 4, 5, 0x80, 0x81, 0x84, any_type]),
        hdr_len: rng.next() as u16,
        gso_size: rng.pick(&[0, 1, near_size, any_size]),
        csum_start,
        csum_offset: near(
            rng,
            frame_len
                .saturating_sub(u32::from(csum_start))
                .saturating_sub(2),
        ),
        num_buffers: rng.next() as u16,
    };
    let mut features = 0u64;
    for f in [CSUM, HOST_TSO4, HOST_TSO6, HOST_UFO, HOST_ECN] {
        if rng.chance(160) {
            features |= f;
        }
    }
    if rng.chance(16) {
        features = rng.next();
    }
    let mut out = h.to_bytes().to_vec();
    out.extend_from_slice(&frame_len.to_le_bytes());
    out.extend_from_slice(&features.to_le_bytes());
    // A control command.
    let table = |rng: &mut Rng, out: &mut Vec<u8>| {
        let n = rng.below(4) as u32;
        let claimed = if rng.chance(16) { u32::MAX } else { n };
        out.extend_from_slice(&claimed.to_le_bytes());
        out.extend(rng.bytes(6 * n as usize));
    };
    match rng.below(6) {
        0 => out.extend_from_slice(&[0, rng.below(7) as u8, rng.next() as u8]),
        1 => {
            out.extend_from_slice(&[1, 1]);
            out.extend(rng.bytes(6));
        }
        2 => {
            out.extend_from_slice(&[1, 0]);
            table(rng, &mut out);
            table(rng, &mut out);
        }
        3 => out.extend_from_slice(&[4, 0, rng.next() as u8, rng.next() as u8]),
        4 => out.extend_from_slice(&[3, 0]),
        _ => {
            let n = rng.below(12) as usize;
            out.extend(rng.bytes(n));
        }
    }
    mutate(rng, &mut out);
    out
}

// ---- blk_request ----------------------------------------------------------------

fn gen_blk_request(rng: &mut Rng) -> Vec<u8> {
    use vhost_user_sync_blk::request::{kind, RequestHeader, Segment, SECTOR_SIZE};

    let capacity = rng.pick(&[0u64, 1, 8, 2048, 1 << 21, u64::MAX / SECTOR_SIZE]);
    let any = rng.next() as u32;
    let request = rng.pick(&[
        kind::IN,
        kind::OUT,
        kind::FLUSH,
        kind::GET_ID,
        kind::GET_LIFETIME,
        kind::DISCARD,
        kind::WRITE_ZEROES,
        kind::SECURE_ERASE,
        any,
    ]);
    let sectors = rng.below(16) + u64::from(rng.chance(16)) * 0x1_0000;
    let sector = match rng.below(4) {
        0 => capacity.saturating_sub(sectors),
        1 => capacity.saturating_sub(sectors) + 1,
        2 => rng.below(capacity.max(1)),
        _ => rng.next(),
    };
    let header = RequestHeader {
        kind: request,
        reserved: if rng.chance(224) {
            0
        } else {
            rng.next() as u32
        },
        sector,
    };
    let data = (sectors * SECTOR_SIZE) as u32 + rng.pick(&[0, 0, 0, 1, 511]);
    let count = rng.below(4) as u32 + u32::from(rng.chance(16)) * 100;
    let (readable, writable) = match request {
        kind::OUT => (16 + data, 1),
        kind::DISCARD | kind::WRITE_ZEROES => (16 + 16 * count + rng.pick(&[0, 0, 0, 8]), 1),
        _ => (16, data + 1),
    };
    let (readable, writable) = match rng.below(16) {
        0 => (rng.below(17) as u32, writable),
        1 => (readable, 0),
        2 => (rng.next() as u32, rng.next() as u32),
        _ => (readable, writable),
    };
    let mut out = header.to_bytes().to_vec();
    out.extend_from_slice(&readable.to_le_bytes());
    out.extend_from_slice(&writable.to_le_bytes());
    out.extend_from_slice(&capacity.to_le_bytes());
    out.push(rng.below(8) as u8);
    for _ in 0..4 {
        let any = rng.next() as u32;
        out.extend_from_slice(&rng.pick(&[0u32, 1, 2, 64, 1 << 20, any]).to_le_bytes());
    }
    for _ in 0..count.min(8) {
        let num_sectors = rng.pick(&[0u32, 1, 8, 1 << 20]);
        let segment = Segment {
            sector: rng.below(capacity.saturating_add(2)),
            num_sectors,
            flags: rng.pick(&[0, 0, 1, 2, 3]),
        };
        out.extend_from_slice(&segment.to_bytes());
    }
    mutate(rng, &mut out);
    out
}

// ---- session --------------------------------------------------------------------

/// A frontend's script: usually negotiation, a memory table and a ring placed in it with
/// a chain posted and kicked, then a few steps of any kind (truncation, stops, resets,
/// logs, raw messages), then a few bytes changed.
fn gen_session(rng: &mut Rng) -> Vec<u8> {
    use session::*;
    let mut s = vec![rng.below(2) as u8];
    if rng.chance(240) {
        s.push(OP_NEGOTIATE);
        for _ in 0..2 {
            let mask = if rng.chance(200) {
                u64::MAX
            } else {
                rng.next()
            };
            s.extend(mask.to_le_bytes());
        }
    }
    if rng.chance(230) {
        s.extend([OP_MEM_TABLE, 0, 15, rng.pick(&[0, 0, 0, 3]), 0]);
    }
    // rng has one queue, net three (rx, tx, control).
    let ring = if s[0] == 0 {
        rng.pick(&[0u8, 0, 0, 0, 1])
    } else {
        rng.pick(&[0u8, 1, 1, 2, 3])
    };
    if rng.chance(220) {
        let size: u16 = rng.pick(&[8, 16, 16, 256, 0, 3, 0x8000]);
        let (d, a, u): (u16, u16, u16) = if rng.chance(200) {
            (0, 0x1000, 0x2000)
        } else {
            (rng.next() as u16, rng.next() as u16, rng.next() as u16)
        };
        s.extend([OP_RING, ring]);
        s.extend(size.to_le_bytes());
        s.extend(d.to_le_bytes());
        s.extend(a.to_le_bytes());
        s.extend(u.to_le_bytes());
        s.extend(rng.pick(&[0u16, 0, 5, 0xffff]).to_le_bytes());
        s.push(0);
        // One chain: a 64-byte buffer, device-writable or not, then the avail entry.
        let mut desc = Descriptor {
            addr: rng.pick(&[0x4000u64, 0x4000, 0xfff0, 0x10_0000]),
            len: rng.pick(&[64u32, 64, 0, 0x10_0000]),
            flags: rng.pick(&[Descriptor::F_WRITE, 0, Descriptor::F_NEXT]),
            next: 0,
        };
        if rng.chance(20) {
            desc.flags |= Descriptor::F_INDIRECT;
        }
        let mut bytes = desc.addr.to_le_bytes().to_vec();
        bytes.extend(desc.len.to_le_bytes());
        bytes.extend(desc.flags.to_le_bytes());
        bytes.extend(desc.next.to_le_bytes());
        s.extend([OP_POKE, 0]);
        s.extend(d.to_le_bytes());
        s.push(bytes.len() as u8);
        s.extend(bytes);
        s.extend([OP_POKE, 0]);
        s.extend(a.to_le_bytes());
        s.extend([6, 0, 0, 1, 0, 0, 0]);
        s.extend([OP_KICK, ring]);
    }
    for _ in 0..rng.below(6) {
        match rng.below(10) {
            0 => s.extend([OP_TRUNCATE, 0, rng.below(3) as u8, OP_KICK, ring]),
            1 => s.extend([OP_GET_BASE, rng.pick(&[ring, ring, 4, 0xff])]),
            2 => s.push(OP_RESET),
            3 => s.extend([OP_LOG, rng.next() as u8, rng.next() as u8]),
            4 => s.extend([
                OP_CONFIG,
                rng.below(16) as u8,
                rng.pick(&[4u8, 6, 8, 0, 255]),
            ]),
            5 => s.extend([OP_ENABLE, ring, rng.below(3) as u8]),
            6 => s.extend([OP_ADD_REGION, 3, 0, rng.below(4) as u8]),
            7 => s.extend([OP_REMOVE_REGION, 0]),
            8 => s.extend([OP_MEM_TABLE, 1, 7, 0, 1, 7, 0, 2]),
            _ => {
                let len = rng.pick(&[0u8, 4, 8, 12, 40, 200]);
                s.extend([OP_RAW, rng.below(52) as u8, rng.next() as u8, len]);
                s.extend(rng.bytes(len as usize));
                let n = rng.below(3) as u8;
                s.push(n);
                s.extend(rng.bytes(n as usize));
            }
        }
    }
    mutate(rng, &mut s);
    s
}

// ---- inflight_area --------------------------------------------------------------

thread_local! {
    /// Guest memory the generator runs rings in.
    static INFLIGHT_MEM: MemoryTable = {
        let fd = nix::sys::memfd::memfd_create("gen", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
            .unwrap();
        let f = std::fs::File::from(fd);
        f.set_len(inflight_area::IMAGE as u64).unwrap();
        let region = MemoryRegionDesc {
            guest_phys_addr: 0,
            memory_size: inflight_area::IMAGE as u64,
            userspace_addr: 0x7f00_0000_0000,
            mmap_offset: 0,
        };
        MemoryTable::from_regions(&[region], vec![f]).unwrap()
    };
}

fn gen_inflight_area(rng: &mut Rng) -> Vec<u8> {
    inflight_input(rng, true)
}

/// A ring the driver filled with chains, run by the real code with an in-flight area
/// (popped, used in any order, published) until a crash at a random step: the area as
/// it was before that step, guest memory before it or after it (a crash between the
/// ring's used update and the area's). With `edit`, a few bytes changed, mostly in the
/// area.
fn inflight_input(rng: &mut Rng, edit: bool) -> Vec<u8> {
    use inflight_area::*;
    use std::os::unix::fs::FileExt;
    use vhost_user_sync::queue::packed::layout::{PackedDescriptor, F_AVAIL, F_NEXT, F_WRITE};
    use vhost_user_sync::queue::{InflightArea, Ring, RingState, Virtqueue};

    let mut flags = 0u8;
    for (f, odds) in [
        (F_PACKED, 128),
        (F_EVENT_IDX, 64),
        (F_INDIRECT, 64),
        (F_IN_ORDER, 64),
        (F_AREA_LARGER, 32),
        (F_AREA_SMALLER, 4),
    ] {
        if rng.chance(odds) {
            flags |= f;
        }
    }
    let size_byte = rng.below(5) as u8;
    let size = ring_size(size_byte);
    let packed = flags & F_PACKED != 0;
    let mut image = vec![0u8; IMAGE];
    let put = |image: &mut Vec<u8>, at: u64, b: &[u8]| {
        image[at as usize..at as usize + b.len()].copy_from_slice(b);
    };
    // The driver's chains: distinct ids, one or two descriptors (packed: ring slots).
    let mut ids: Vec<u16> = (0..size).collect();
    let chains = rng.below(u64::from(size) + 1) as u16;
    let buffer = |rng: &mut Rng, write: bool| {
        let len = rng.pick(&[16u32, 64, 0, 0x100]);
        let addr = 0x800 + rng.below(0x700);
        (addr, len, write)
    };
    let state = if packed {
        let mut slot = 0u16;
        for _ in 0..chains {
            let n = if slot + 1 < size && rng.chance(64) {
                2
            } else {
                1
            };
            if slot + n > size {
                break;
            }
            let id = ids.swap_remove(rng.below(ids.len() as u64) as usize);
            for k in 0..n {
                let write = k + 1 == n && rng.chance(160);
                let (addr, len, write) = buffer(rng, write);
                let mut f = F_AVAIL;
                if k + 1 < n {
                    f |= F_NEXT;
                }
                if write {
                    f |= F_WRITE;
                }
                let d = PackedDescriptor {
                    addr,
                    len,
                    id,
                    flags: f,
                };
                put(
                    &mut image,
                    ADDRS.desc + 16 * u64::from(slot + k),
                    &d.to_bytes(),
                );
            }
            slot += n;
        }
        RingState::initial(true)
    } else {
        let any = rng.next() as u16;
        let used = rng.pick(&[0u16, 0, 5, 0xfffe, any]);
        put(&mut image, ADDRS.used + 2, &used.to_le_bytes());
        for j in 0..chains {
            let head = ids.swap_remove(rng.below(ids.len() as u64) as usize);
            let write = rng.chance(160);
            let (addr, len, write) = buffer(rng, write);
            let d = Descriptor {
                addr,
                len,
                flags: if write { Descriptor::F_WRITE } else { 0 },
                next: 0,
            };
            put(&mut image, ADDRS.desc + 16 * u64::from(head), &d.to_bytes());
            let slot = u64::from(used.wrapping_add(j) % size);
            put(&mut image, ADDRS.avail + 4 + 2 * slot, &head.to_le_bytes());
        }
        put(
            &mut image,
            ADDRS.avail + 2,
            &used.wrapping_add(chains).to_le_bytes(),
        );
        RingState::Split { next_avail: used }
    };
    let (area, file) = InflightArea::create(1, area_queue_size(flags, size), packed, None).unwrap();
    let snapshot = || {
        let mut b = vec![0u8; area.info().mmap_size as usize];
        file.read_exact_at(&mut b, 0).unwrap();
        b
    };
    let (mut region, image) = INFLIGHT_MEM.with(|mem| {
        mem.write(0, &image).unwrap();
        let read = || {
            let mut b = vec![0u8; IMAGE];
            mem.read(0, &mut b).unwrap();
            b
        };
        let mut ring = Ring::new(
            mem,
            size,
            ADDRS,
            state,
            flags & F_EVENT_IDX != 0,
            flags & F_INDIRECT != 0,
        )
        .unwrap();
        if ring.attach_inflight(mem, area.queue(0).unwrap()).is_err() {
            return (snapshot(), read());
        }
        let mut vq = Virtqueue::new(0, ring, flags & F_IN_ORDER != 0);
        let steps = rng.below(16);
        let crash = rng.below(steps + 1);
        let mut held = Vec::new();
        for step in 0.. {
            let (region, before) = (snapshot(), read());
            let op = rng.below(8);
            match op {
                0..=3 => held.extend(vq.pop(mem).ok().flatten()),
                4..=6 if !held.is_empty() => {
                    let c = held.remove(rng.below(held.len() as u64) as usize);
                    let _ = vq.add_used(mem, &c, c.writable_len().min(8));
                }
                _ => vq.signal(mem),
            }
            if step == crash {
                let image = if rng.chance(128) { read() } else { before };
                return (region, image);
            }
        }
        unreachable!()
    });
    // The image without its zero tail (the target fills it with zeroes).
    let end = image.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
    let edits = if edit {
        rng.pick(&[0, 0, 1, 1, 2, 3])
    } else {
        0
    };
    for _ in 0..edits {
        let at = if rng.chance(128) {
            rng.below(32)
        } else {
            rng.below(region.len() as u64)
        } as usize;
        match rng.below(4) {
            0 => region[at] ^= 1 << rng.below(8),
            1 => region[at] = rng.pick(&[0, 1, 2, 0x7f, 0xff]),
            2 => region[at] = rng.next() as u8,
            _ => region[at] = region[at].wrapping_add(1),
        }
    }
    let mut out = vec![flags, size_byte];
    let num = if packed && rng.chance(32) {
        rng.next() as u32
    } else {
        state.encode()
    };
    out.extend_from_slice(&num.to_le_bytes());
    out.extend_from_slice(&rng.bytes(OPS));
    if edit && rng.chance(16) {
        mutate(rng, &mut out);
    }
    out.extend_from_slice(&region);
    out.extend_from_slice(&image[..end]);
    out
}
