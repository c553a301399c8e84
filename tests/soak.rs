//! Soak: many connect/disconnect cycles with traffic against each backend program, with
//! its fd count and resident memory printed along the way and required to stay flat.
//!
//! Not part of the quick test command (each test is `#[ignore]`); run it with
//! `bash tests/soak.sh` (SOAK_CYCLES sets the cycles per backend, default 10000).

#[path = "support/backend.rs"]
mod backend;

use std::time::{Duration, Instant};

use backend::{BackendProcess, TempDir};
use vhost_user_sync::frontend::{DriverQueue, Frontend, FrontendMemory};

const T: Duration = Duration::from_secs(10);
/// The programs' own start-up lines, and only warnings from the library.
const QUIET: &str = "warn,rng_backend=info,net_backend=info,blk_backend=info";

fn cycles() -> u64 {
    std::env::var("SOAK_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

/// Open fds and resident KiB of process `pid`.
fn usage(pid: i32) -> (usize, u64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (fds, rss)
}

type Request = dyn Fn(&FrontendMemory, &mut [DriverQueue]);

/// One connection: handshake, memory, the queues, a request, disconnect. With `probe`,
/// the backend's usage is read right after the handshake: the program serves one
/// connection at a time, so every earlier connection is gone by then, and this one is
/// always at the same step.
fn session(
    be: &BackendProcess,
    queues: u16,
    request: &Request,
    probe: bool,
) -> Option<(usize, u64)> {
    let mem = FrontendMemory::new(&[(0, 1 << 20)]).unwrap();
    let mut fe = Frontend::connect(&be.socket).unwrap();
    fe.negotiate(u64::MAX, u64::MAX).unwrap();
    let seen = probe.then(|| usage(be.device_pid()));
    fe.set_mem_table(&mem).unwrap();
    let mut qs: Vec<DriverQueue> = (0..queues)
        .map(|i| {
            let mut q = DriverQueue::new(&mem, i, 64).unwrap();
            q.attach(&mut fe, &mem).unwrap();
            q
        })
        .collect();
    request(&mem, &mut qs);
    seen
}

fn soak(name: &str, be: &BackendProcess, queues: u16, request: &Request) {
    // Warm up: the first connections grow allocator pools and thread caches.
    for _ in 0..100 {
        session(be, queues, request, false);
    }
    let probe = || session(be, queues, request, true).unwrap_or_default();
    let (fds0, rss0) = probe();
    let n = cycles();
    let start = Instant::now();
    eprintln!("soak {name}: start: {fds0} fds, {rss0} KiB resident");
    let mut peak = rss0;
    let mut last = (fds0, rss0);
    for i in 1..=n {
        let probing = i % 1000 == 0 || i == n;
        if let Some((fds, rss)) = session(be, queues, request, probing) {
            peak = peak.max(rss);
            last = (fds, rss);
            eprintln!(
                "soak {name}: {i} cycles in {:.1} s: {fds} fds, {rss} KiB resident",
                start.elapsed().as_secs_f64()
            );
            assert_eq!(fds, fds0, "{name}: fds grew after {i} cycles");
        }
    }
    let (fds, rss) = last;
    println!(
        "soak {name}: {n} connect/disconnect cycles with traffic in {:.1} s; fds {fds0} -> {fds}; \
         resident {rss0} -> {rss} KiB (peak {peak} KiB)",
        start.elapsed().as_secs_f64()
    );
    // Flat: no fd more, and memory within allocator noise.
    assert_eq!(fds, fds0);
    assert!(
        rss <= rss0 + 2048,
        "{name}: resident memory grew {rss0} -> {rss} KiB"
    );
}

#[test]
#[ignore = "long; run with tests/soak.sh"]
fn rng_backend_soak() {
    let be = BackendProcess::start_with(&[], Some(QUIET), "rng_backend", &[]);
    soak("rng_backend", &be, 1, &|mem, qs| {
        let buf = mem.alloc(256, 8).unwrap();
        qs[0].add(mem.table(), &[(buf, 256, true)]).unwrap();
        qs[0].kick(mem.table()).unwrap();
        assert_eq!(qs[0].wait_used(mem.table(), T).unwrap().len, 256);
    });
}

#[test]
#[ignore = "long; run with tests/soak.sh"]
fn net_backend_soak() {
    let be = BackendProcess::start_with(&[], Some(QUIET), "net_backend", &["--backend", "null"]);
    soak("net_backend", &be, 2, &|mem, qs| {
        // One TX frame (header + 60 bytes) and one RX buffer filled by the null backend.
        let tx = mem.alloc(72, 8).unwrap();
        qs[1].add(mem.table(), &[(tx, 72, false)]).unwrap();
        qs[1].kick(mem.table()).unwrap();
        qs[1].wait_used(mem.table(), T).unwrap();
        let rx = mem.alloc(2048, 8).unwrap();
        qs[0].add(mem.table(), &[(rx, 2048, true)]).unwrap();
        qs[0].kick(mem.table()).unwrap();
        assert!(qs[0].wait_used(mem.table(), T).unwrap().len > 12);
    });
}

#[test]
#[ignore = "long; run with tests/soak.sh"]
fn blk_backend_soak() {
    let dir = TempDir::new("soak-blk");
    let image = dir.path().join("disk.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let be = BackendProcess::start_with(
        &[],
        Some(QUIET),
        "blk_backend",
        &["--image", image.to_str().unwrap()],
    );
    soak("blk_backend", &be, 1, &|mem, qs| {
        // A 4 KiB read of sector 8.
        let hdr = mem.alloc(16, 8).unwrap();
        let mut h = [0u8; 16];
        h[8..].copy_from_slice(&8u64.to_le_bytes());
        mem.table().write(hdr, &h).unwrap();
        let data = mem.alloc(4096, 512).unwrap();
        let status = mem.alloc(1, 1).unwrap();
        mem.table().write(status, &[0xff]).unwrap();
        qs[0]
            .add(
                mem.table(),
                &[(hdr, 16, false), (data, 4096, true), (status, 1, true)],
            )
            .unwrap();
        qs[0].kick(mem.table()).unwrap();
        qs[0].wait_used(mem.table(), T).unwrap();
        let mut s = [0xffu8];
        mem.table().read(status, &mut s).unwrap();
        assert_eq!(s[0], 0, "blk status");
    });
}
