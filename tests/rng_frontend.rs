//! Our frontend drives `rng_backend` over a real unix socket.

#[path = "support/backend.rs"]
mod backend;

use std::time::Duration;

use backend::{page_logged, BackendProcess};
use vhost_user_sync::frontend::{DriverQueue, Frontend, FrontendMemory};
use vhost_user_sync::protocol::{virtio, ProtocolFeatures};

const T: Duration = Duration::from_secs(10);

struct Setup {
    mem: FrontendMemory,
    fe: Frontend,
    q: DriverQueue,
}

fn setup(be: &BackendProcess, want: u64) -> Setup {
    setup_at(&be.socket, want)
}

fn setup_at(socket: &std::path::Path, want: u64) -> Setup {
    let mem = FrontendMemory::new(&[(0, 1 << 20)]).unwrap();
    let mut fe = Frontend::connect(socket).unwrap();
    fe.negotiate(want, u64::MAX).unwrap();
    fe.set_mem_table(&mem).unwrap();
    let mut q = DriverQueue::new(&mem, 0, 64).unwrap();
    q.attach(&mut fe, &mem).unwrap();
    Setup { mem, fe, q }
}

fn fill_one(s: &mut Setup, len: u32) -> Vec<u8> {
    let buf = s.mem.alloc(len.into(), 8).unwrap();
    s.q.add(s.mem.table(), &[(buf, len, true)]).unwrap();
    s.q.kick(s.mem.table()).unwrap();
    let used = s.q.wait_used(s.mem.table(), T).unwrap();
    assert_eq!(used.len, len);
    let mut out = vec![0u8; len as usize];
    s.mem.table().read(buf, &mut out).unwrap();
    out
}

fn looks_random(b: &[u8]) -> bool {
    let distinct = b.iter().collect::<std::collections::HashSet<_>>().len();
    distinct > 200 && b.iter().filter(|&&x| x == 0).count() < b.len() / 50
}

#[test]
fn handshake_offers_the_transport_and_protocol_features() {
    let be = BackendProcess::start("rng_backend", &[]);
    let mut fe = Frontend::connect(&be.socket).unwrap();
    let features = fe.get_features().unwrap();
    for bit in [
        virtio::VERSION_1,
        virtio::RING_EVENT_IDX,
        virtio::RING_INDIRECT_DESC,
        virtio::PROTOCOL_FEATURES,
    ] {
        assert_ne!(
            features & bit,
            0,
            "feature {bit:#x} missing from {features:#x}"
        );
    }
    let p = fe.get_protocol_features().unwrap();
    assert!(p.contains(
        ProtocolFeatures::REPLY_ACK | ProtocolFeatures::MQ | ProtocolFeatures::CONFIGURE_MEM_SLOTS
    ));
    assert!(
        !p.contains(ProtocolFeatures::CONFIG),
        "rng has no config space"
    );
    fe.set_protocol_features(p).unwrap();
    assert_eq!(fe.get_queue_num().unwrap(), 1);
    assert_eq!(fe.get_max_mem_slots().unwrap(), 509);
}

#[test]
fn kick_fills_buffers_with_entropy_and_calls() {
    let be = BackendProcess::start("rng_backend", &[]);
    let mut s = setup(&be, !virtio::RING_EVENT_IDX);
    let a = fill_one(&mut s, 4096);
    let b = fill_one(&mut s, 4096);
    assert!(looks_random(&a) && looks_random(&b));
    assert_ne!(a, b);
}

#[test]
fn event_idx_suppresses_calls_until_used_event() {
    let be = BackendProcess::start("rng_backend", &[]);
    let mut s = setup(&be, u64::MAX);
    assert_ne!(s.fe.features() & virtio::RING_EVENT_IDX, 0);
    for _ in 0..20 {
        fill_one(&mut s, 256);
    }
    // With EVENT_IDX the backend publishes avail_event; our kicks follow it.
    assert!(s.q.kicks() <= 20);
}

#[test]
fn indirect_chains_are_served() {
    let be = BackendProcess::start("rng_backend", &[]);
    let mut s = setup(&be, u64::MAX);
    let table = s.mem.alloc(16 * 3, 16).unwrap();
    let bufs: Vec<u64> = (0..3).map(|_| s.mem.alloc(1000, 8).unwrap()).collect();
    let chain: Vec<(u64, u32, bool)> = bufs.iter().map(|&b| (b, 1000, true)).collect();
    s.q.add_indirect(s.mem.table(), table, &chain).unwrap();
    s.q.kick(s.mem.table()).unwrap();
    let used = s.q.wait_used(s.mem.table(), T).unwrap();
    assert_eq!(used.len, 3000);
    let mut all = vec![0u8; 3000];
    for (i, b) in bufs.iter().enumerate() {
        s.mem
            .table()
            .read(*b, &mut all[i * 1000..(i + 1) * 1000])
            .unwrap();
    }
    assert!(looks_random(&all));
}

#[test]
fn get_vring_base_returns_the_next_avail_index_and_restart_continues() {
    let be = BackendProcess::start("rng_backend", &[]);
    let mut s = setup(&be, u64::MAX);
    for _ in 0..5 {
        fill_one(&mut s, 64);
    }
    let base = s.fe.get_vring_base(0).unwrap();
    assert_eq!(base, 5);
    // The ring is stopped: any call for the last entry has been written by now; clear it.
    s.q.wait_call(Duration::ZERO).unwrap();
    // Stopped: a buffer posted now is not used until the ring is started again.
    let buf = s.mem.alloc(64, 8).unwrap();
    s.q.add(s.mem.table(), &[(buf, 64, true)]).unwrap();
    s.q.kick_now().unwrap();
    assert!(!s.q.wait_call(Duration::from_millis(200)).unwrap());
    assert!(s.q.pop_used(s.mem.table()).unwrap().is_none());
    // Restart from the returned base: the pending buffer is served (no kick lost).
    s.fe.set_vring_base(0, base).unwrap();
    let kick = s.q.kick_fd().try_clone().unwrap();
    s.fe.set_vring_fd(
        vhost_user_sync::protocol::FrontendRequest::SET_VRING_KICK,
        0,
        Some(&kick),
    )
    .unwrap();
    assert_eq!(s.q.wait_used(s.mem.table(), T).unwrap().len, 64);
    assert_eq!(s.fe.get_vring_base(0).unwrap(), 6);
}

#[test]
fn disabled_ring_keeps_the_kick_until_enabled() {
    let be = BackendProcess::start("rng_backend", &[]);
    let mut s = setup(&be, u64::MAX);
    s.fe.set_vring_enable(0, false).unwrap();
    let buf = s.mem.alloc(64, 8).unwrap();
    s.q.add(s.mem.table(), &[(buf, 64, true)]).unwrap();
    s.q.kick_now().unwrap();
    assert!(!s.q.wait_call(Duration::from_millis(200)).unwrap());
    s.fe.set_vring_enable(0, true).unwrap();
    assert_eq!(s.q.wait_used(s.mem.table(), T).unwrap().len, 64);
}

#[test]
fn memory_table_changes_while_running() {
    let be = BackendProcess::start("rng_backend", &[]);
    let mut s = setup(&be, u64::MAX);
    fill_one(&mut s, 128);
    // Same layout again (QEMU re-sends the table on hotplug): rings keep running.
    s.fe.set_mem_table(&s.mem).unwrap();
    fill_one(&mut s, 128);
    // A second region added and used for a buffer, then removed.
    let extra = FrontendMemory::new(&[(1 << 30, 1 << 16)]).unwrap();
    let region = extra.regions()[0];
    s.fe.add_mem_region(region, &extra.files()[0]).unwrap();
    s.q.add(s.mem.table(), &[(1 << 30, 512, true)]).unwrap();
    s.q.kick(s.mem.table()).unwrap();
    assert_eq!(s.q.wait_used(s.mem.table(), T).unwrap().len, 512);
    let mut got = vec![0u8; 512];
    extra.table().read(1 << 30, &mut got).unwrap();
    assert!(got.iter().any(|&b| b != 0));
    s.fe.remove_mem_region(region).unwrap();
    // A buffer in the removed region is refused (returned with length 0), the ring goes on.
    s.q.add(s.mem.table(), &[(1 << 30, 512, true)]).unwrap();
    s.q.kick(s.mem.table()).unwrap();
    assert_eq!(s.q.wait_used(s.mem.table(), T).unwrap().len, 0);
    fill_one(&mut s, 128);
}

#[test]
fn disconnect_and_reconnect_gets_fresh_state() {
    let be = BackendProcess::start("rng_backend", &[]);
    {
        let mut s = setup(&be, u64::MAX);
        for _ in 0..3 {
            fill_one(&mut s, 64);
        }
    }
    be.wait_log("frontend disconnected", T);
    let mut s = setup(&be, u64::MAX);
    // A fresh device: the ring starts at 0 again and serves.
    fill_one(&mut s, 64);
    assert_eq!(s.fe.get_vring_base(0).unwrap(), 1);
}

#[test]
fn sigterm_exits_cleanly_and_removes_the_socket() {
    let mut be = BackendProcess::start("rng_backend", &[]);
    let _s = setup(&be, u64::MAX);
    let status = be.signal_and_wait(nix::sys::signal::Signal::SIGTERM);
    assert!(status.success(), "{status:?}");
    assert!(!be.socket.exists());
}

#[test]
fn print_capabilities_is_json() {
    assert_eq!(
        backend::capabilities("rng_backend"),
        r#"{"type": "rng", "features": []}"#
    );
}

#[test]
fn dirty_log_marks_buffers_and_used_ring_while_log_all_is_acked() {
    let be = BackendProcess::start("rng_backend", &[]);
    let mut s = setup(&be, u64::MAX);
    assert_ne!(s.fe.features() & virtio::LOG_ALL, 0);
    assert!(s
        .fe
        .protocol_features()
        .contains(ProtocolFeatures::LOG_SHMFD));
    // One bit per 4 KiB page of the 1 MiB guest: 32 bytes.
    let log = FrontendMemory::new(&[(0, 4096)]).unwrap();
    s.fe.set_log_base(32, 0, &log.files()[0]).unwrap();
    // Used-ring logging for ring 0, at the used ring's guest-physical address.
    let mut addr = s.q.vring_addr(&s.mem);
    addr.flags = vhost_user_sync::protocol::payload::VringAddr::F_LOG;
    addr.log = s.q.used_gpa();
    s.fe.set_vring_addr(&addr).unwrap();
    let page = |gpa: u64| {
        let mut b = [0u8; 1];
        log.table().read(gpa / 4096 / 8, &mut b).unwrap();
        b[0] & (1 << ((gpa / 4096) % 8)) != 0
    };
    let buf = s.mem.alloc(4096, 4096).unwrap();
    s.q.add(s.mem.table(), &[(buf, 4096, true)]).unwrap();
    s.q.kick(s.mem.table()).unwrap();
    s.q.wait_used(s.mem.table(), T).unwrap();
    assert!(page(buf), "the written buffer's page is marked dirty");
    assert!(page(s.q.used_gpa()), "the used ring's page is marked dirty");
    assert!(!page(buf + 4096), "a page not written stays clean");
}

#[test]
fn one_process_serves_a_device_per_socket_at_the_same_time() {
    let be = BackendProcess::start("rng_backend", &["--socket-count", "3"]);
    let path = |i: usize| std::path::PathBuf::from(format!("{}{i}", be.socket.display()));
    let mut devices: Vec<Setup> = (0..3).map(|i| setup_at(&path(i), u64::MAX)).collect();
    for d in &mut devices {
        assert!(looks_random(&fill_one(d, 4096)));
    }
    // One frontend leaves; the others go on, and its socket takes a new frontend.
    drop(devices.remove(1));
    be.wait_log("frontend disconnected", T);
    for d in &mut devices {
        assert!(looks_random(&fill_one(d, 4096)));
    }
    let mut again = setup_at(&path(1), u64::MAX);
    assert!(looks_random(&fill_one(&mut again, 4096)));
}

/// Posts one buffer without waiting; returns whether the frontend had to kick.
fn post_one(s: &mut Setup, len: u32) -> bool {
    let buf = s.mem.alloc(len.into(), 8).unwrap();
    s.q.add(s.mem.table(), &[(buf, len, true)]).unwrap();
    s.q.kick(s.mem.table()).unwrap()
}

/// The avail_event the backend last published (EVENT_IDX).
fn avail_event(s: &Setup) -> u16 {
    let at = s.q.used_gpa() + 4 + 8 * 64;
    s.mem
        .table()
        .load::<u16>(at, std::sync::atomic::Ordering::Acquire)
        .unwrap()
}

#[test]
fn busy_polling_serves_chains_posted_without_a_kick() {
    // A polling period far longer than the test: every chain renews it.
    let be = BackendProcess::start("rng_backend", &["--busy-poll-us", "1000000"]);
    let mut s = setup(&be, u64::MAX);
    assert_ne!(s.fe.features() & virtio::RING_EVENT_IDX, 0);
    assert!(
        post_one(&mut s, 512),
        "an idle backend asks for the first kick"
    );
    s.q.wait_used(s.mem.table(), T).unwrap();
    for i in 0..20 {
        assert!(
            !post_one(&mut s, 512),
            "chain {i}: a polling backend does not ask for kicks"
        );
        let used = s.q.wait_used(s.mem.table(), T).unwrap();
        assert_eq!(used.len, 512);
    }
    assert_eq!(s.q.kicks(), 1);
}

#[test]
fn polling_ends_and_the_backend_asks_for_kicks_again() {
    let be = BackendProcess::start("rng_backend", &["--busy-poll-us", "2000"]);
    let mut s = setup(&be, u64::MAX);
    assert!(post_one(&mut s, 64));
    s.q.wait_used(s.mem.table(), T).unwrap();
    // Idle for longer than the polling period: the backend moves avail_event up to
    // what it took and sleeps.
    let deadline = std::time::Instant::now() + T;
    while avail_event(&s) != s.q.avail_idx() {
        assert!(
            std::time::Instant::now() < deadline,
            "avail_event stays at {} after polling, want {}",
            avail_event(&s),
            s.q.avail_idx()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(post_one(&mut s, 64), "the next chain needs a kick again");
    s.q.wait_used(s.mem.table(), T).unwrap();
}

#[test]
fn passthrough_reads_every_request_from_the_source() {
    let be = BackendProcess::start("rng_backend", &["--passthrough"]);
    let mut s = setup(&be, u64::MAX);
    let a = fill_one(&mut s, 4096);
    assert!(looks_random(&a));
}

#[test]
fn two_devices_serve_different_streams() {
    let be = BackendProcess::start("rng_backend", &["--socket-count", "2"]);
    let path = |i: usize| std::path::PathBuf::from(format!("{}{i}", be.socket.display()));
    let mut a = setup_at(&path(0), u64::MAX);
    let mut b = setup_at(&path(1), u64::MAX);
    let (x, y) = (fill_one(&mut a, 1024), fill_one(&mut b, 1024));
    assert!(looks_random(&x) && looks_random(&y));
    assert_ne!(x, y);
}

fn eventfd() -> std::fs::File {
    use nix::sys::eventfd::{EfdFlags, EventFd};
    let fd =
        EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC).unwrap();
    std::fs::File::from(std::os::fd::OwnedFd::from(fd))
}

/// Waits up to `timeout` for `f` to become readable.
fn readable(f: &std::fs::File, timeout: Duration) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let mut fds = [PollFd::new(f.as_fd(), PollFlags::POLLIN)];
    poll(&mut fds, PollTimeout::try_from(timeout).unwrap()).unwrap() == 1
}

#[test]
fn a_broken_ring_is_reported_on_the_err_eventfd() {
    for args in [&[][..], &["--busy-poll-us", "1000"][..]] {
        let be = BackendProcess::start("rng_backend", args);
        let mut s = setup(&be, u64::MAX);
        let err = eventfd();
        s.fe.set_vring_fd(
            vhost_user_sync::protocol::FrontendRequest::SET_VRING_ERR,
            0,
            Some(&err),
        )
        .unwrap();
        // A good chain first, then a head index beyond the ring: the ring breaks.
        fill_one(&mut s, 64);
        assert!(!readable(&err, Duration::ZERO), "{args:?}: no error yet");
        s.q.publish_raw(s.mem.table(), 999).unwrap();
        s.q.kick_now().unwrap();
        assert!(
            readable(&err, T),
            "{args:?}: the err eventfd was not written"
        );
        be.wait_log("is broken", T);
        // The connection goes on: the ring can be stopped and its index read.
        assert_eq!(s.fe.get_vring_base(0).unwrap(), 1, "{args:?}");
    }
}

fn setup_packed(socket: &std::path::Path, mem: FrontendMemory, want: u64, size: u16) -> Setup {
    let mut fe = Frontend::connect(socket).unwrap();
    let (acked, _) = fe.negotiate_packed(want, u64::MAX).unwrap();
    assert_ne!(
        acked & virtio::RING_PACKED,
        0,
        "the backend offers packed rings"
    );
    fe.set_mem_table(&mem).unwrap();
    let mut q = DriverQueue::new_packed(&mem, 0, size).unwrap();
    q.attach(&mut fe, &mem).unwrap();
    Setup { mem, fe, q }
}

#[test]
fn packed_rings_are_served_with_and_without_event_idx_and_indirect() {
    let be = BackendProcess::start("rng_backend", &[]);
    for want in [u64::MAX, !virtio::RING_EVENT_IDX] {
        // 48 entries: packed rings need not be a power of two; 100 requests wrap twice.
        let mem = FrontendMemory::new(&[(0, 1 << 20)]).unwrap();
        let mut s = setup_packed(&be.socket, mem, want, 48);
        let mut all = Vec::new();
        for _ in 0..100 {
            all.extend(fill_one(&mut s, 64));
        }
        assert!(looks_random(&all));
        // An indirect chain of three writable buffers.
        let table = s.mem.alloc(48, 16).unwrap();
        let bufs: Vec<(u64, u32, bool)> = (0..3)
            .map(|_| (s.mem.alloc(32, 8).unwrap(), 32, true))
            .collect();
        s.q.add_indirect(s.mem.table(), table, &bufs).unwrap();
        s.q.kick(s.mem.table()).unwrap();
        assert_eq!(s.q.wait_used(s.mem.table(), T).unwrap().len, 96);
        assert_eq!(s.q.free_descriptors(), 48);
    }
}

#[test]
fn packed_ring_state_round_trips_across_a_reconnect() {
    let be = BackendProcess::start("rng_backend", &[]);
    let mem = FrontendMemory::new(&[(0, 1 << 20)]).unwrap();
    let mut s = setup_packed(&be.socket, mem, u64::MAX, 32);
    for _ in 0..45 {
        fill_one(&mut s, 64);
    }
    // Nothing in flight: the backend's positions are the driver's, wrap counters
    // included (45 slots into a ring of 32: lap 2).
    let base = s.fe.get_vring_base(0).unwrap();
    assert_eq!(base, s.q.ring_state().encode());
    assert_eq!(base, 0x000d_000d, "slot 13, both wrap counters 0");
    // A new connection (a fresh device) resumes from the driver's state.
    let Setup { mem, fe, mut q } = s;
    drop(fe);
    let mut fe = Frontend::connect(&be.socket).unwrap();
    fe.negotiate_packed(u64::MAX, u64::MAX).unwrap();
    fe.set_mem_table(&mem).unwrap();
    q.attach(&mut fe, &mem).unwrap();
    let mut s = Setup { mem, fe, q };
    for _ in 0..40 {
        fill_one(&mut s, 64);
    }
    assert_eq!(s.fe.get_vring_base(0).unwrap(), s.q.ring_state().encode());
}

/// SIGUSR1 logs the counters of the device and of each queue, over every connection so
/// far, while the program runs on.
#[test]
fn sigusr1_logs_the_queue_counters_across_connections() {
    let be = BackendProcess::start("rng_backend", &[]);
    let usr1 = || {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(be.pid()),
            nix::sys::signal::Signal::SIGUSR1,
        )
        .unwrap()
    };
    {
        let mut s = setup(&be, u64::MAX);
        for _ in 0..3 {
            fill_one(&mut s, 100);
        }
        usr1();
        let device = be.wait_log("stats: listener 0: device", T);
        assert!(device.contains("connected, 1 connection(s)"), "{device}");
        let queue = be.wait_log("stats: listener 0 queue 0:", T);
        for field in [
            "chains=3 ",
            "used=3 ",
            "bytes_written=300 ",
            "bytes_read=0 ",
            "malformed=0 ",
            "in_flight=0 ",
            "broken=0",
        ] {
            assert!(queue.contains(field), "{field} in {queue}");
        }
        assert!(
            !queue.contains("kicks=0 ") && !queue.contains("calls=0 "),
            "{queue}"
        );
    }
    be.wait_log("frontend disconnected", T);
    let mut s = setup(&be, u64::MAX);
    fill_one(&mut s, 50);
    usr1();
    let device = be.wait_log("stats: listener 0: device", T);
    assert!(device.contains("connected, 2 connection(s)"), "{device}");
    let queue = be.wait_log("stats: listener 0 queue 0:", T);
    assert!(
        queue.contains("chains=4 ") && queue.contains("bytes_written=350 "),
        "{queue}"
    );
}

/// One HTTP request on the statistics socket; returns the body.
fn stats_request(socket: &std::path::Path, path: &str) -> String {
    backend::stats_get(socket, path).unwrap_or_else(|e| panic!("{e}"))
}

/// `--stats-socket` answers with the counters as JSON, or in the Prometheus text format
/// at /metrics, while the device runs.
#[test]
fn the_stats_socket_serves_json_and_prometheus() {
    let dir = backend::TempDir::new("stats");
    let socket = dir.path().join("stats.sock");
    let be = BackendProcess::start("rng_backend", &["--stats-socket", socket.to_str().unwrap()]);
    let mut s = setup(&be, u64::MAX);
    fill_one(&mut s, 100);
    fill_one(&mut s, 28);
    let doc: serde_json::Value = serde_json::from_str(&stats_request(&socket, "/")).unwrap();
    let dev = &doc["devices"][0];
    assert_eq!(dev["connected"], true, "{doc}");
    assert_eq!(dev["device"], "rng", "{doc}");
    assert_eq!(dev["connections"], 1, "{doc}");
    let q = &dev["queues"][0];
    assert_eq!(
        (&q["chains"], &q["used"], &q["bytes_written"]),
        (&2.into(), &2.into(), &128.into()),
        "{doc}"
    );
    assert_eq!(
        (&q["malformed"], &q["broken"], &q["in_flight"]),
        (&0.into(), &0.into(), &0.into()),
        "{doc}"
    );
    let metrics = stats_request(&socket, "/metrics");
    for line in [
        "# TYPE vhost_user_queue_chains_total counter",
        "vhost_user_queue_chains_total{listener=\"0\",queue=\"0\"} 2",
        "vhost_user_queue_bytes_written_total{listener=\"0\",queue=\"0\"} 128",
        "# TYPE vhost_user_queue_in_flight gauge",
        "vhost_user_connected{listener=\"0\"} 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} missing in\n{metrics}"
        );
    }
    // Every sample line is `name{labels} value` with a number.
    for l in metrics.lines().filter(|l| !l.starts_with('#')) {
        let value = l.rsplit(' ').next().unwrap();
        assert!(value.parse::<u64>().is_ok(), "{l}");
    }
    // A client that sends nothing and goes away does not stop the endpoint.
    drop(std::os::unix::net::UnixStream::connect(&socket).unwrap());
    assert!(stats_request(&socket, "/").contains("\"chains\": 2"));
}

/// `/proc/PID/status` field `name`.
fn status_field(pid: i32, name: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{name}:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no {name} for {pid}"))
}

#[test]
fn the_program_serves_from_a_confined_process_by_default() {
    let be = BackendProcess::start("rng_backend", &[]);
    let mut s = setup(&be, u64::MAX);
    assert!(looks_random(&fill_one(&mut s, 4096)));
    let device = be.device_pid();
    assert_ne!(device, be.pid(), "no device process under the program");
    // The strongest mode this machine allows is chosen, and said.
    let (mode, _) = vhost_user_sync::sandbox::SandboxMode::strongest_available();
    be.wait_log(&format!("sandbox: {mode}"), Duration::from_secs(10));
    assert_eq!(status_field(device, "Seccomp"), "2");
    assert_eq!(status_field(device, "NoNewPrivs"), "1");
    assert_eq!(status_field(device, "CapEff"), "0000000000000000");
    if mode == vhost_user_sync::sandbox::SandboxMode::Namespace {
        for ns in ["mnt", "pid", "net", "ipc"] {
            let of = |pid: i32| std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
            assert_ne!(of(device), of(be.pid()), "{ns} namespace shared");
        }
    }
    // The program itself holds no guest memory and runs no device thread.
    let threads = std::fs::read_dir(format!("/proc/{}/task", be.pid()))
        .unwrap()
        .count();
    assert_eq!(threads, 1, "the supervisor is one thread");
}

#[test]
fn sandbox_none_and_seccomp_none_serve_in_one_process() {
    let be = BackendProcess::start("rng_backend", &["--sandbox", "none", "--seccomp", "none"]);
    let mut s = setup(&be, u64::MAX);
    assert!(looks_random(&fill_one(&mut s, 4096)));
    assert_eq!(be.device_pid(), be.pid());
    assert_eq!(status_field(be.pid(), "Seccomp"), "0");
}

/// Threads of process `pid`.
fn threads(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count()
}

/// Waits until process `pid` has `n` threads (a connection's threads end just after
/// the frontend sees it closed).
fn wait_threads(pid: i32, n: usize) {
    let deadline = std::time::Instant::now() + T;
    while threads(pid) != n {
        assert!(
            std::time::Instant::now() < deadline,
            "{} threads, not {n}",
            threads(pid)
        );
        std::thread::yield_now();
    }
}

#[test]
fn idle_devices_share_a_thread_and_a_connected_one_has_two() {
    let be = BackendProcess::start("rng_backend", &["--socket-count", "16"]);
    let socket = |i: usize| std::path::PathBuf::from(format!("{}{i}", be.socket.display()));
    let mut a = setup_at(&socket(3), u64::MAX);
    assert!(looks_random(&fill_one(&mut a, 4096)));
    let device = be.device_pid();
    let with_one = threads(device);
    let mut b = setup_at(&socket(11), u64::MAX);
    assert!(looks_random(&fill_one(&mut b, 4096)));
    // A connected device: its connection thread and its worker.
    assert_eq!(threads(device), with_one + 2);
    drop(a);
    drop(b);
    // Sixteen idle devices: the main thread (waiting on every socket), signals and
    // statistics. Nothing per device.
    let idle = with_one - 2;
    assert!(idle <= 4, "{idle} threads for 16 idle devices");
    wait_threads(device, idle);
}

/// Fills one page-aligned 4 KiB buffer; returns its address.
fn fill_page(s: &mut Setup) -> u64 {
    let buf = s.mem.alloc(4096, 4096).unwrap();
    s.q.add(s.mem.table(), &[(buf, 4096, true)]).unwrap();
    s.q.kick(s.mem.table()).unwrap();
    s.q.wait_used(s.mem.table(), T).unwrap();
    buf
}

/// QEMU turns VHOST_F_LOG_ALL on when a migration starts and off when it is cancelled,
/// and hands over a bigger log when memory grows, all while the rings run: each change
/// applies to the running ring from the next request on.
#[test]
fn logging_follows_log_all_and_a_new_log_base_while_the_ring_runs() {
    let be = BackendProcess::start("rng_backend", &[]);
    let mut s = setup(&be, !virtio::LOG_ALL);
    let first = FrontendMemory::new(&[(0, 4096)]).unwrap();
    s.fe.set_log_base(32, 0, &first.files()[0]).unwrap();
    let features = s.fe.features();
    assert_eq!(features & virtio::LOG_ALL, 0);
    let before = fill_page(&mut s);
    assert!(!page_logged(&first, before), "no logging without LOG_ALL");
    // The migration starts.
    s.fe.set_features(features | virtio::LOG_ALL).unwrap();
    let during = fill_page(&mut s);
    assert!(page_logged(&first, during), "logged once LOG_ALL is on");
    // A new log: writes go there from now on.
    let second = FrontendMemory::new(&[(0, 4096)]).unwrap();
    s.fe.set_log_base(32, 0, &second.files()[0]).unwrap();
    let after_switch = fill_page(&mut s);
    assert!(page_logged(&second, after_switch), "the new log is used");
    assert!(
        !page_logged(&first, after_switch),
        "the old log is left alone"
    );
    // The migration is cancelled.
    s.fe.set_features(features).unwrap();
    let cancelled = fill_page(&mut s);
    assert!(
        !page_logged(&second, cancelled),
        "no logging after LOG_ALL is off"
    );
}

/// QEMU re-sends SET_VRING_ADDR with VHOST_VRING_F_LOG set when a migration starts and
/// cleared when it ends, while the ring runs: used-ring logging follows from the next
/// request on.
#[test]
fn used_ring_logging_follows_set_vring_addr_while_the_ring_runs() {
    let be = BackendProcess::start("rng_backend", &[]);
    let mut s = setup(&be, u64::MAX);
    let log = FrontendMemory::new(&[(0, 4096)]).unwrap();
    s.fe.set_log_base(32, 0, &log.files()[0]).unwrap();
    let used = s.q.used_gpa();
    let clear = || log.table().write(0, &[0u8; 32]).unwrap();
    fill_page(&mut s);
    assert!(
        !page_logged(&log, used),
        "no used-ring logging without the flag"
    );
    let mut addr = s.q.vring_addr(&s.mem);
    addr.flags = vhost_user_sync::protocol::payload::VringAddr::F_LOG;
    addr.log = used;
    s.fe.set_vring_addr(&addr).unwrap();
    fill_page(&mut s);
    assert!(page_logged(&log, used), "logged once the flag is set");
    addr.flags = 0;
    s.fe.set_vring_addr(&addr).unwrap();
    clear();
    let buf = fill_page(&mut s);
    assert!(page_logged(&log, buf), "buffers are still logged (LOG_ALL)");
    assert!(
        !page_logged(&log, used),
        "the used ring is not, with the flag cleared"
    );
}

/// rng's counters (requests and bytes served; never key material) move to another
/// backend process with the device state, as a migration moves them, and go on there.
#[test]
fn the_counters_move_to_another_backend_process_and_go_on() {
    use vhost_user_sync::backend::state_stream;
    use vhost_user_sync_rng::persistence::{RngState, STATE_LEN};

    let a = BackendProcess::start("rng_backend", &[]);
    let b = BackendProcess::start("rng_backend", &[]);
    let mut src = setup(&a, u64::MAX);
    fill_one(&mut src, 100);
    fill_one(&mut src, 28);
    src.fe.get_vring_base(0).unwrap();
    let state = src.fe.save_device_state().unwrap();
    let parts = state_stream::decode(&state).unwrap();
    assert_eq!(parts.device.len(), STATE_LEN, "counters only");
    assert_eq!(
        RngState::from_bytes(parts.device),
        Ok(RngState {
            requests: 2,
            bytes: 128
        })
    );
    // b: loaded in the stopped phase, before its ring starts.
    let mem = FrontendMemory::new(&[(0, 1 << 20)]).unwrap();
    let mut fe = Frontend::connect(&b.socket).unwrap();
    fe.negotiate(u64::MAX, u64::MAX).unwrap();
    fe.set_mem_table(&mem).unwrap();
    fe.load_device_state(&state).unwrap();
    let mut q = DriverQueue::new(&mem, 0, 64).unwrap();
    q.attach(&mut fe, &mem).unwrap();
    let mut dst = Setup { mem, fe, q };
    assert!(looks_random(&fill_one(&mut dst, 1000)));
    dst.fe.get_vring_base(0).unwrap();
    let again = dst.fe.save_device_state().unwrap();
    assert_eq!(
        RngState::from_bytes(state_stream::decode(&again).unwrap().device),
        Ok(RngState {
            requests: 3,
            bytes: 1128
        }),
        "b counts on from a's counts"
    );
}
