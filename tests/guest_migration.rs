//! Live migration of a running guest, proven with QEMU: two QEMU processes on this
//! machine, each with its own backend process, the destination started with `-incoming`
//! and the migration started over QMP while the guest works.
//!
//! - blk: both `blk_backend`s on one image (shared storage, image locks off). The
//!   guest's jobs write, read back and compare blocks with O_DIRECT in a loop; on the
//!   destination every block is verified and the image holds what the guest last wrote.
//! - net: each `net_backend` with its own tap, both taps in one bridge with the host's
//!   address. The guest pings the host across the switch, or receives a TCP stream from
//!   it (every byte checked); the destination announces the guest.
//!
//! Split and packed rings; a cancelled migration leaves the source serving. Downtime and
//! total time come from `query-migrate`.
//!
//! QEMU here is 9.0 or later, fetched by `tests/guest/fetch-migration-qemu.sh`: QEMU 7.2's
//! TCG loses guest writes during a migration (fixed upstream in 9.0), so its destination
//! guests crash now and then with no vhost-user device at all. The other guest tests use
//! the machine's QEMU.

#[path = "support/backend.rs"]
mod backend;
#[path = "support/churn.rs"]
mod churn;
#[path = "support/guest.rs"]
mod guest;
#[path = "support/netns.rs"]
mod netns;
#[path = "support/payload.rs"]
mod payload;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver};
use std::thread::JoinHandle;
use std::time::Duration;

use backend::{BackendProcess, TempDir};
use churn::{
    count_console_lines, try_wait_rounds, wait_ready, wait_rounds, ChurnDisk, StopGuestOnPanic,
    GUEST_T, JOBS,
};
use guest::{GuestConfig, GuestImage, GuestLock, GuestRun};
use netns::NetNs;
use payload::{crc32, pseudo_random};

/// A QMP connection.
struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Takes the connection QEMU makes to `listener` when it starts (`-qmp unix:PATH`
    /// without `server`), and negotiates capabilities.
    fn accept(listener: UnixListener) -> Qmp {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(listener.accept().map(|(s, _)| s));
        });
        let stream = rx
            .recv_timeout(GUEST_T)
            .expect("QEMU never connected to its QMP socket")
            .expect("accept on the QMP socket");
        stream.set_read_timeout(Some(GUEST_T)).unwrap();
        let mut q = Qmp {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        };
        let greeting = q.read();
        assert!(greeting.get("QMP").is_some(), "{greeting}");
        q.execute("qmp_capabilities", serde_json::json!({}));
        q
    }

    fn read(&mut self) -> serde_json::Value {
        self.try_read().unwrap_or_else(|e| panic!("{e}"))
    }

    /// The next message, or what went wrong (QEMU gone, not JSON).
    fn try_read(&mut self) -> Result<serde_json::Value, String> {
        let mut line = String::new();
        self.reader
            .read_line(&mut line)
            .map_err(|e| format!("QMP read: {e}"))?;
        serde_json::from_str(&line).map_err(|e| format!("QMP said {line:?}: {e}"))
    }

    /// Waits for event `name` whose `data.status` is one of `statuses`; returns it.
    fn wait_event(&mut self, name: &str, statuses: &[&str]) -> serde_json::Value {
        loop {
            let v = self.read();
            if v["event"] == name && statuses.iter().any(|s| v["data"]["status"] == *s) {
                return v;
            }
        }
    }

    /// Runs `command`; its `return` value, or the error QEMU answered (or why there was
    /// no answer). Events on the way are skipped.
    fn try_execute(
        &mut self,
        command: &str,
        arguments: serde_json::Value,
    ) -> Result<serde_json::Value, serde_json::Value> {
        let msg = serde_json::json!({"execute": command, "arguments": arguments});
        writeln!(self.writer, "{msg}").map_err(|e| serde_json::json!(e.to_string()))?;
        loop {
            let v = self.try_read().map_err(serde_json::Value::from)?;
            if v.get("event").is_some() {
                continue;
            }
            return match v.get("return") {
                Some(r) => Ok(r.clone()),
                None => Err(v),
            };
        }
    }

    /// Queue 0 of the virtio device named `device`, as QEMU and its vhost side see it.
    fn ring_status(&mut self, device: &str) -> String {
        let devices = self.try_execute("x-query-virtio", serde_json::json!({}));
        let Some(path) = devices
            .as_ref()
            .ok()
            .and_then(|d| d.as_array()?.iter().find(|d| d["name"] == device))
            .and_then(|d| d["path"].as_str().map(str::to_string))
        else {
            return format!("x-query-virtio: {devices:?}");
        };
        let mut out = String::new();
        for cmd in [
            "x-query-virtio-queue-status",
            "x-query-virtio-vhost-queue-status",
        ] {
            let v = self.try_execute(cmd, serde_json::json!({"path": path, "queue": 0}));
            out += &format!("{cmd}: {v:?}\n");
        }
        out
    }

    /// Runs `command`; returns its `return` value (events on the way are skipped).
    fn execute(&mut self, command: &str, arguments: serde_json::Value) -> serde_json::Value {
        self.try_execute(command, arguments)
            .unwrap_or_else(|e| panic!("QMP {command}: {e}"))
    }
}

/// A backend's counters (Prometheus text from its statistics socket), or why not.
fn stats(socket: &std::path::Path) -> String {
    backend::stats_get(socket, "/metrics").unwrap_or_else(|e| e)
}

/// One side of a migration: a backend and the QEMU that uses it, on a thread.
struct Side {
    backend: BackendProcess,
    qmp: Qmp,
    console: Receiver<String>,
    qemu: JoinHandle<GuestRun>,
}

/// A source and a destination QEMU, each with its own backend process.
struct Migration {
    src: Side,
    dst: Side,
    channel: PathBuf,
    /// The vhost-user device as QEMU names it (for the ring dump).
    device: &'static str,
    /// The guest's disk (blk).
    disk: Option<ChurnDisk>,
    /// The namespace the taps live in (net): removed after the backends have gone.
    netns: Option<NetNs>,
    _dir: TempDir,
    stop: StopGuestOnPanic,
    // Dropped last: the guests run under the test's hold of the lock.
    _lock: GuestLock,
}

/// What a migration runs: a backend for each side and the guest configuration of a side
/// given its backend (the console, QMP, `-incoming` and the lock are added).
struct Plan {
    src: BackendProcess,
    dst: BackendProcess,
    guest: Box<dyn Fn(&BackendProcess) -> GuestConfig>,
    /// Returns once the guest on the source works (reads its console).
    working: fn(&Receiver<String>),
    device: &'static str,
    dir: TempDir,
    disk: Option<ChurnDisk>,
    netns: Option<NetNs>,
    lock: GuestLock,
}

impl Plan {
    /// Both sides on `blk_backend` and one image (shared storage: neither locks it); the
    /// guest's disk jobs run.
    fn blk(packed: bool, tag: &str) -> Plan {
        let lock = GuestLock::take();
        let disk = ChurnDisk::new(tag);
        let dir = TempDir::new(tag);
        let disk_arg = disk.arg();
        let backend = |name: &str| {
            let stats = dir.path().join(format!("{name}.stats"));
            let args = [
                "--image",
                &disk_arg,
                "--lock",
                "off",
                "--direct",
                "--stats-socket",
                &stats.to_string_lossy(),
            ];
            BackendProcess::start("blk_backend", &args)
        };
        Plan {
            src: backend("src"),
            dst: backend("dst"),
            guest: Box::new(move |be| GuestConfig {
                blk_socket: Some(be.socket.clone()),
                extra_cmdline: ChurnDisk::cmdline(),
                packed,
                ..GuestConfig::with_tests(&["blk_churn"])
            }),
            working: |console| {
                wait_ready(console);
                wait_rounds(console, 2, "on the source");
            },
            device: "virtio-blk",
            dir,
            disk: Some(disk),
            netns: None,
            lock,
        }
    }
}

/// The guest's address and the host's, on the bridge the two taps are in.
const GUEST_ADDR: &str = "10.77.0.2";
const HOST_ADDR: &str = "10.77.0.1";
/// Pings the guest sends, one every 0.2 s.
const PINGS: usize = 100;
/// The port the guest's `tcp_rx` listens on (`vhu.port` + 1, with the default 5001).
const GUEST_TCP_PORT: u16 = 5002;

/// What crosses the network while a guest migrates.
enum Traffic {
    /// The guest pings the host ([`PINGS`] times).
    Pings,
    /// The host sends a stream of `kib` KiB whose CRC-32 is `crc32` to the guest.
    Stream { kib: usize, crc32: u32 },
}

impl Plan {
    /// Both sides on `net_backend`, each with its own tap; the two taps and the host's
    /// address on one bridge in a namespace of the test's own.
    fn net(packed: bool, traffic: Traffic) -> Plan {
        let lock = GuestLock::take();
        let dir = TempDir::new("guest-migration-net");
        let ns = NetNs::create();
        ns.ip(&["link", "add", "vhubr0", "type", "bridge"]);
        let backend = |name: &str| {
            let stats = dir.path().join(format!("{name}.stats"));
            let tap = format!("vhutap-{name}");
            let args = ["--tap", &tap, "--stats-socket", &stats.to_string_lossy()];
            let be = BackendProcess::start_in_netns(ns.name(), "net_backend", &args);
            ns.ip(&["link", "set", &tap, "master", "vhubr0"]);
            ns.ip(&["link", "set", &tap, "up"]);
            be
        };
        let (src, dst) = (backend("src"), backend("dst"));
        ns.ip(&["addr", "add", &format!("{HOST_ADDR}/24"), "dev", "vhubr0"]);
        ns.ip(&["link", "set", "vhubr0", "up"]);
        let (test, traffic_cmdline, working): (_, _, fn(&Receiver<String>)) = match traffic {
            Traffic::Pings => ("net_churn", format!("vhu.pings={PINGS}"), |console| {
                let answered = |l: &str| l.contains("VHU-INFO net_churn") && l.ends_with(" ok");
                if let Err(e) = count_console_lines(console, 5, "pings answered", answered) {
                    panic!("{e}");
                }
            }),
            Traffic::Stream { kib, crc32 } => (
                "tcp_rx",
                format!("vhu.tcp_kib={kib} vhu.rx_crc32={crc32:08x}"),
                |console| {
                    let ready = |l: &str| l.contains("VHU-READY tcp_rx");
                    if let Err(e) = count_console_lines(console, 1, "listening", ready) {
                        panic!("{e}");
                    }
                },
            ),
        };
        Plan {
            src,
            dst,
            guest: Box::new(move |be| GuestConfig {
                net_socket: Some(be.socket.clone()),
                extra_cmdline: format!(
                    "vhu.ip={GUEST_ADDR}/24 vhu.peer={HOST_ADDR} {traffic_cmdline}"
                ),
                packed,
                ..GuestConfig::with_tests(&[test])
            }),
            working,
            device: "virtio-net",
            dir,
            disk: None,
            netns: Some(ns),
            lock,
        }
    }
}

impl Migration {
    /// Starts the source with the guest working, and the destination waiting for the
    /// migration stream.
    fn start(image: GuestImage, plan: Plan) -> Migration {
        let Plan {
            src: src_be,
            dst: dst_be,
            guest,
            working,
            device,
            dir,
            disk,
            netns,
            lock,
        } = plan;
        let stop = StopGuestOnPanic(vec![
            src_be.socket.to_string_lossy().into_owned(),
            dst_be.socket.to_string_lossy().into_owned(),
        ]);
        let channel = dir.path().join("migration.sock");
        let side = |backend: BackendProcess, name: &str, incoming: bool| {
            let qmp_path = dir.path().join(format!("{name}.qmp"));
            let qmp_listener = UnixListener::bind(&qmp_path).expect("QMP socket");
            let mut extra_qemu_args =
                vec!["-qmp".to_string(), format!("unix:{}", qmp_path.display())];
            if incoming {
                extra_qemu_args.extend(["-incoming".into(), format!("unix:{}", channel.display())]);
            }
            let (tx, console) = std::sync::mpsc::channel();
            let cfg = GuestConfig {
                console: Some(tx),
                timeout: Duration::from_secs(600),
                extra_qemu_args,
                lock_held: true,
                ..guest(&backend)
            };
            let image = image.clone();
            let qemu = std::thread::spawn(move || image.run(&cfg));
            let qmp = Qmp::accept(qmp_listener);
            Side {
                backend,
                qmp,
                console,
                qemu,
            }
        };
        let mut src = side(src_be, "src", false);
        working(&src.console);
        let dst = side(dst_be, "dst", true);
        // MIGRATION events say how it goes; no polling.
        src.qmp.execute(
            "migrate-set-capabilities",
            serde_json::json!({"capabilities": [{"capability": "events", "state": true}]}),
        );
        Migration {
            src,
            dst,
            channel,
            device,
            disk,
            netns,
            _dir: dir,
            stop,
            _lock: lock,
        }
    }

    /// Ends a failed migration: kills both QEMUs and panics with what went wrong, both
    /// guests' consoles, the destination's ring state and its backend's counters.
    fn fail(mut self, what: Box<dyn std::any::Any + Send>) -> ! {
        let what = what
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| what.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        let rings = self.dst.qmp.ring_status(self.device);
        self.stop.kill_now();
        let stats = stats(&self._dir.path().join("dst.stats"));
        let run = |side: Side| side.qemu.join().ok();
        let (src, dst) = (run(self.src), run(self.dst));
        let report = |r: Option<GuestRun>| r.map_or("(its thread panicked)".into(), |r| r.report());
        panic!(
            "{what}\n--- source:\n{}\n--- destination:\n{}\n--- destination ring:\n{rings}\n\
             --- destination backend:\n{stats}",
            report(src),
            report(dst)
        );
    }

    /// Migrates, checks that the destination runs, quits the source and reports the
    /// figures; the source backend must have logged its writes for the migration.
    fn switch_over(&mut self, device: &str, packed: bool) {
        self.migrate();
        self.await_switch_over(device, packed);
    }

    /// The second half of [`Migration::switch_over`], for a test that does something
    /// while the migration runs.
    fn await_switch_over(&mut self, device: &str, packed: bool) {
        let end = self
            .src
            .qmp
            .wait_event("MIGRATION", &["completed", "failed", "cancelled"]);
        let done = self.src.qmp.execute("query-migrate", serde_json::json!({}));
        assert_eq!(end["data"]["status"], "completed", "{done}");
        let status = self.dst.qmp.execute("query-status", serde_json::json!({}));
        assert_eq!(status["status"], "running", "{status}");
        self.src.qmp.execute("quit", serde_json::json!({}));
        eprintln!(
            "{device} migration ({} ring): downtime {} ms, total {} ms, {} bytes of RAM sent",
            if packed { "packed" } else { "split" },
            done["downtime"],
            done["total-time"],
            done["ram"]["transferred"]
        );
        self.src.backend.wait_log("dirty log of", GUEST_T);
    }

    /// Ends a migration: a failure on the way (`going`) as [`Migration::fail`] reports
    /// it; otherwise the destination guest's run once it has ended. A destination
    /// kernel that crashed fails the test like anything else: it means a page the
    /// guest or a backend wrote never reached the destination.
    fn finish(self, going: std::thread::Result<()>) -> GuestRun {
        if let Err(e) = going {
            self.fail(e);
        }
        let Migration { src, dst, .. } = self;
        let _ = src.qemu.join();
        let run = dst.qemu.join().expect("destination thread");
        assert!(
            !kernel_crashed(&run.console),
            "the destination guest's kernel crashed:\n{}",
            run.report()
        );
        run
    }

    fn migrate(&mut self) {
        let uri = format!("unix:{}", self.channel.display());
        self.src
            .qmp
            .execute("migrate", serde_json::json!({ "uri": uri }));
    }
}

/// The guest image, booted by the QEMU that migrates TCG guests without losing their
/// writes (9.0 or later; see `tests/guest/fetch-migration-qemu.sh` for why not the
/// machine's QEMU 7.2). `None` after a SKIP line where it cannot be had; in CI a
/// failure instead.
fn migration_guest() -> Option<GuestImage> {
    let image = guest::require_guest()?;
    match image.with_migration_qemu() {
        Ok(image) => Some(image),
        Err(why) => {
            guest::skip_or_fail(&format!("no QEMU for migrations: {why}"));
            None
        }
    }
}

/// [`migration_guest`], where the test can make network namespaces too.
fn net_migration_guest() -> Option<GuestImage> {
    if let Some(why) = netns::unavailable() {
        guest::skip_or_fail(&why);
        return None;
    }
    migration_guest()
}

#[test]
fn a_guest_writing_its_disk_migrates_to_another_qemu_and_backend() {
    migrate_blk(false);
}

#[test]
fn a_guest_on_packed_rings_migrates_too() {
    migrate_blk(true);
}

/// Whether a guest's console shows its kernel crashing.
fn kernel_crashed(console: &str) -> bool {
    [
        "Kernel panic",
        "BUG: ",
        "Oops: ",
        "general protection fault",
    ]
    .iter()
    .any(|sign| console.contains(sign))
}

/// The guest's jobs run on the source, then on the destination after the migration;
/// every block verified, the image holds the last data.
fn migrate_blk(packed: bool) {
    let Some(image) = migration_guest() else {
        return;
    };
    let mut m = Migration::start(image, Plan::blk(packed, "guest-migration"));
    let going = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        m.switch_over("blk", packed);
        // The guest goes on writing and verifying on the destination.
        if let Err(e) = try_wait_rounds(&m.dst.console, 2 * JOBS as usize, "on the destination") {
            panic!("{e}");
        }
    }));
    let disk = m.disk.take().expect("a disk");
    disk.stop();
    let run = m.finish(going);
    disk.verify(&run, 1);
}

/// A guest pinging the host through `net_backend` and a tap migrates to another QEMU
/// whose backend has a tap in the same bridge: the destination announces the guest
/// (QEMU's SEND_RARP, written to its tap), the pings go on, and at most a short run of
/// them is lost.
fn migrate_net(packed: bool) {
    let Some(image) = net_migration_guest() else {
        return;
    };
    let mut m = Migration::start(image, Plan::net(packed, Traffic::Pings));
    let going = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        m.switch_over("net", packed);
        m.dst.backend.wait_log("(RARP)", GUEST_T);
    }));
    let run = m.finish(going);
    run.assert_pass();
    let r = run.expect_pass("net_churn");
    let field = |k: &str| r.field_u64(k).unwrap_or(0);
    eprintln!(
        "net migration: {} of {PINGS} pings answered, {} lost, at most {} in a row",
        field("received"),
        field("lost"),
        field("worst_run")
    );
    // A ping waits a second for its answer: a handful lost covers the switch-over.
    assert!(field("worst_run") <= 5, "{}", run.report());
    assert!(field("received") + 10 >= PINGS as u64, "{}", run.report());
}

#[test]
fn a_guest_pinging_the_host_migrates_with_its_network() {
    migrate_net(false);
}

#[test]
fn a_guest_on_packed_rings_migrates_with_its_network() {
    migrate_net(true);
}

/// The size of the stream the host sends the guest across a migration.
const STREAM_KIB: usize = 16 * 1024;

/// A TCP connection from the host into the guest carries on across the migration: a
/// quarter of the stream is sent before it starts, half while it runs and the last
/// quarter once the destination runs; the guest receives all of it, every byte right
/// (its CRC-32 is checked).
fn migrate_tcp(packed: bool) {
    let Some(image) = net_migration_guest() else {
        return;
    };
    let data = pseudo_random(STREAM_KIB * 1024);
    let traffic = Traffic::Stream {
        kib: STREAM_KIB,
        crc32: crc32(&data),
    };
    let mut m = Migration::start(image, Plan::net(packed, traffic));
    // The sender waits at each step for the test to say go on; it gives up when the
    // test drops its end.
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (sent_tx, sent_rx) = mpsc::channel::<()>();
    let ns = m.netns.as_ref().expect("a namespace");
    let sender = ns.spawn(move || -> Result<(), String> {
        let to = std::net::SocketAddr::from((
            GUEST_ADDR.parse::<std::net::Ipv4Addr>().unwrap(),
            GUEST_TCP_PORT,
        ));
        let mut s = TcpStream::connect_timeout(&to, GUEST_T)
            .map_err(|e| format!("connecting to the guest: {e}"))?;
        s.set_write_timeout(Some(GUEST_T))
            .map_err(|e| format!("timeout: {e}"))?;
        let quarter = data.len() / 4;
        let steps = [
            &data[..quarter],
            &data[quarter..3 * quarter],
            &data[3 * quarter..],
        ];
        for (i, part) in steps.iter().enumerate() {
            if i > 0 {
                go_rx.recv().map_err(|_| "the test gave up".to_string())?;
            }
            s.write_all(part)
                .map_err(|e| format!("sending part {i} to the guest: {e}"))?;
            let _ = sent_tx.send(());
        }
        s.shutdown(std::net::Shutdown::Write)
            .map_err(|e| format!("shutdown: {e}"))
    });
    let going = {
        let go_tx = go_tx;
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let sent = |what: &str| {
                sent_rx
                    .recv_timeout(GUEST_T)
                    .unwrap_or_else(|_| panic!("the sender did not get {what} out"));
            };
            sent("the first quarter");
            m.migrate();
            go_tx.send(()).expect("the sender is gone");
            m.await_switch_over("net", packed);
            sent("the half sent during the migration");
            go_tx.send(()).expect("the sender is gone");
            sent("the last quarter");
        }))
    };
    let sender = sender.join().expect("sender thread");
    let run = m.finish(going);
    if let Err(e) = sender {
        panic!("{e}\n{}", run.report());
    }
    run.assert_pass();
    let r = run.expect_pass("tcp_rx");
    eprintln!(
        "net migration ({} ring): {} bytes received across it, {}",
        if packed { "packed" } else { "split" },
        r.field_u64("bytes").unwrap_or(0),
        r.field("kbit_s")
            .map_or("?".to_string(), |k| format!("{k} kbit/s"))
    );
}

#[test]
fn a_tcp_stream_into_the_guest_carries_on_across_its_migration() {
    migrate_tcp(false);
}

#[test]
fn a_tcp_stream_on_packed_rings_carries_on_across_its_migration() {
    migrate_tcp(true);
}

/// A migration cancelled half way (QMP `migrate_cancel`) leaves the source running and
/// its backend serving: the guest's jobs finish there with every block verified.
#[test]
fn a_cancelled_migration_leaves_the_source_serving() {
    let Some(image) = migration_guest() else {
        return;
    };
    let mut m = Migration::start(image, Plan::blk(false, "guest-migration-cancel"));
    // Slow enough never to finish on its own.
    m.src.qmp.execute(
        "migrate-set-parameters",
        serde_json::json!({"max-bandwidth": 1 << 20}),
    );
    m.migrate();
    m.src.qmp.wait_event("MIGRATION", &["active"]);
    m.src.backend.wait_log("dirty log of", GUEST_T);
    m.src.qmp.execute("migrate_cancel", serde_json::json!({}));
    m.src.qmp.wait_event("MIGRATION", &["cancelled"]);
    let status = m.src.qmp.execute("query-status", serde_json::json!({}));
    assert_eq!(status["status"], "running", "{status}");
    // The destination gives up when its stream ends.
    let Migration { src, dst, disk, .. } = m;
    let disk = disk.expect("a disk");
    let _ = dst.qemu.join();
    // The guest goes on, on the source.
    wait_rounds(&src.console, 2 * JOBS as usize, "after the cancel");
    disk.stop();
    let run = src.qemu.join().expect("source thread");
    disk.verify(&run, 1);
}
