//! DPDK's virtio-user PMD, inside `dpdk-testpmd`, drives `net_backend --backend null` over
//! the split ring in both directions, and the packet counts of the two sides agree.
//!
//! testpmd runs interactively with its commands on a pipe: `start`, forwarding for a fixed
//! time, `stop`, `show port stats 0`, `quit`. Quitting stops the port (the rings are
//! stopped with GET_VRING_BASE) and disconnects; the backend, then stopped with SIGINT,
//! logs its totals. The comparison does not depend on timing:
//!
//! * TX (testpmd `txonly`, frontend to backend): every packet testpmd counts as sent was
//!   placed in the TX ring, and the backend takes each one before the ring is stopped,
//!   so `backend tx == testpmd TX-packets` (and the bytes agree).
//! * RX (testpmd `rxonly`, backend to frontend): the virtio PMD keeps its whole RX ring
//!   posted (it refills every buffer it reaps) and the null backend fills every posted
//!   buffer. The `QUEUE_SIZE` buffers posted when testpmd stops polling are filled but
//!   never reaped, so `backend rx == testpmd RX-packets + QUEUE_SIZE` (with RX-nombuf 0:
//!   every reaped buffer was replaced). The bytes agree the same way.
//!
//! Both counters are checked in both modes (in `txonly` testpmd still reaps the RX
//! buffers once, when forwarding starts).
//!
//! virtio-user never negotiates EVENT_IDX; the test checks that it did not, and that the
//! backend honoured the flags used instead, counting write syscalls (`/proc/PID/io`)
//! while testpmd forwards: `VRING_USED_F_NO_NOTIFY` (testpmd's writes, its kicks, stay
//! far below one per packet, which is what a backend that never sets the flag gets) and
//! `VRING_AVAIL_F_NO_INTERRUPT` (the backend writes nothing: no calls).
//!
//! Needs `dpdk-testpmd` and the virtio PMD (Debian 12: `dpdk-dev librte-net-virtio23
//! librte-mempool-ring23`). Without `dpdk-testpmd` the test is skipped with a message,
//! except when `CI` is set (to anything but empty, `0` or `false`): then it fails.

#[path = "support/backend.rs"]
mod backend;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backend::{required_program, BackendProcess};
use nix::sys::signal::Signal;

/// Ring size asked of virtio-user (both queues).
const QUEUE_SIZE: u64 = 256;
/// Frame size the null backend generates (testpmd's txonly frames are 64 bytes).
const RX_FRAME_LEN: u64 = 60;
/// How long testpmd forwards in each direction.
const FORWARD_FOR: Duration = Duration::from_secs(2);
/// Start-up and shut-down allowance (the machine may be busy).
const SLOW: Duration = Duration::from_secs(60);

/// virtio feature bits checked in the negotiated set.
const F_EVENT_IDX: u64 = 1 << 29;
const F_VERSION_1: u64 = 1 << 32;
const F_RING_PACKED: u64 = 1 << 34;
const F_IN_ORDER: u64 = 1 << 35;
const F_MRG_RXBUF: u64 = 1 << 15;

/// The DPDK tests share the CPUs with a busy-polling testpmd: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// `dpdk-testpmd`, or `None` after saying why the test is skipped (a failure under CI).
fn testpmd() -> Option<PathBuf> {
    required_program(
        "dpdk-testpmd",
        "Debian: apt-get install dpdk-dev librte-net-vhost23 librte-net-virtio23 \
         librte-mempool-ring23",
    )
}

/// The CPUs this process may run on, in the cpuset syntax EAL takes (`0-1`).
fn allowed_cpus() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .map(|v| v.trim().to_string())
        })
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "0".into())
}

/// `syscr` and `syscw` of a process (`/proc/PID/io`: read and write syscalls of all its
/// threads, live and exited).
fn syscalls(pid: u32) -> (u64, u64) {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    let field = |name: &str| -> u64 {
        io.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/io: {io}"))
    };
    (field("syscr:"), field("syscw:"))
}

/// A running testpmd: its stdin for commands, its stdout and stderr collected together.
struct Testpmd {
    child: Child,
    stdin: Option<ChildStdin>,
    out: Arc<Mutex<Vec<u8>>>,
    prefix: String,
}

impl Testpmd {
    /// `ring` is the virtio-user devargs that choose the ring layout and its options.
    fn start(bin: &Path, socket: &Path, mode: &str, ring: &str, prefix: &str) -> Self {
        let vdev = format!(
            "net_virtio_user0,path={},queues=1,queue_size={QUEUE_SIZE},{ring}",
            socket.display()
        );
        let (reader, writer) = std::io::pipe().unwrap();
        // testpmd prints with stdio: line-buffer it (stdout is a pipe, not a terminal).
        let mut child = Command::new("stdbuf")
            .arg("-oL")
            .arg(bin)
            .arg(format!("--lcores=(0,1)@({})", allowed_cpus()))
            // virtio-user shares its memory by fd: no-huge memory in one memfd.
            .args(["--no-huge", "-m", "256", "--single-file-segments"])
            .args(["--no-pci", "--no-telemetry"])
            .arg(format!("--file-prefix={prefix}"))
            .arg("--log-level=pmd.net.virtio.init:debug")
            .args(["--vdev", &vdev, "--", "-i", "--nb-cores=1"])
            .arg(format!("--forward-mode={mode}"))
            .arg(format!("--rxd={QUEUE_SIZE}"))
            .arg(format!("--txd={QUEUE_SIZE}"))
            .arg("--total-num-mbufs=4096")
            .stdin(Stdio::piped())
            .stdout(writer.try_clone().unwrap())
            .stderr(writer)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let stdin = child.stdin.take();
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = out.clone();
        std::thread::spawn(move || {
            let mut reader = reader;
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Testpmd {
            child,
            stdin,
            out,
            prefix: prefix.into(),
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    /// Waits until the output from byte `from` on contains `needle`; returns the offset
    /// just past it. Panics (with the output) on timeout or when testpmd exits first.
    fn wait_for(&mut self, needle: &str, from: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.text();
            if let Some(at) = text.get(from..).and_then(|t| t.find(needle)) {
                return from + at + needle.len();
            }
            let exited = self.child.try_wait().unwrap();
            if exited.is_some() || Instant::now() > deadline {
                // Let the reader thread catch up with the last output.
                std::thread::sleep(Duration::from_millis(200));
                panic!(
                    "testpmd: no {needle:?} ({}); its output:\n{}",
                    match exited {
                        Some(s) => format!("exited: {s}"),
                        None => "timed out".into(),
                    },
                    self.text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends one command line; returns the output offset it was sent at.
    fn command(&mut self, cmd: &str) -> usize {
        let at = self.text().len();
        let stdin = self.stdin.as_mut().expect("stdin closed");
        stdin.write_all(format!("{cmd}\n").as_bytes()).unwrap();
        stdin.flush().unwrap();
        at
    }

    /// Waits for testpmd to exit after `quit`.
    fn wait_exit(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "testpmd: {status}\n{}", self.text());
                return;
            }
            assert!(
                Instant::now() < deadline,
                "testpmd did not exit:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Testpmd {
    fn drop(&mut self) {
        drop(self.stdin.take());
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // EAL's runtime directory for this file prefix.
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .filter(|_| !nix::unistd::geteuid().is_root())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/run"));
        let _ = std::fs::remove_dir_all(base.join("dpdk").join(&self.prefix));
    }
}

/// The value after `key` (`"RX-packets:"`) in `text`.
fn stat(text: &str, key: &str) -> u64 {
    let at = text
        .find(key)
        .unwrap_or_else(|| panic!("no {key} in:\n{text}"));
    text[at + key.len()..]
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("bad {key} in:\n{text}"))
}

/// The numbers of the backend's `exiting: tx P packets B bytes, rx P packets B bytes,
/// malformed tx N rx N` line, in that order.
fn exit_counts(line: &str) -> [u64; 6] {
    let tail = &line[line.find("exiting:").expect("an exiting: line") + 8..];
    let numbers: Vec<u64> = tail
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter_map(|w| w.parse().ok())
        .collect();
    numbers
        .try_into()
        .unwrap_or_else(|n| panic!("unexpected totals {n:?} in {line:?}"))
}

#[derive(Debug)]
struct Counts {
    tx_packets: u64,
    tx_bytes: u64,
    rx_packets: u64,
    rx_bytes: u64,
}

/// Split rings, virtio-user's defaults otherwise.
const SPLIT: &str = "packed_vq=0";

/// One bounded testpmd run in `mode` with the ring devargs `ring` against a fresh null
/// backend; checks the counts and notification behaviour and returns testpmd's counts.
fn run(mode: &str, ring: &str) -> Option<Counts> {
    let bin = testpmd()?;
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let frame_len = RX_FRAME_LEN.to_string();
    let mut be = BackendProcess::start(
        "net_backend",
        &["--backend", "null", "--frame-len", &frame_len],
    );
    let tag: String = ring.chars().filter(char::is_ascii_digit).collect();
    let prefix = format!("vhu-dpdk-{}-{mode}-{tag}", std::process::id());
    let mut tp = Testpmd::start(&bin, &be.socket, mode, ring, &prefix);

    let ready = tp.wait_for("testpmd> ", 0, SLOW);
    be.wait_log("frontend connected", SLOW);
    let features = {
        let text = tp.text();
        let key = "features after negotiate = ";
        let at = text[..ready]
            .find(key)
            .unwrap_or_else(|| panic!("no negotiated features in:\n{text}"));
        let hex = text[at + key.len()..].split_whitespace().next().unwrap();
        u64::from_str_radix(hex.trim_start_matches("0x"), 16).unwrap()
    };
    assert_eq!(
        features & F_EVENT_IDX,
        0,
        "virtio-user negotiated EVENT_IDX: {features:#x}"
    );
    let packed = ring.contains("packed_vq=1");
    assert_eq!(
        features & F_RING_PACKED != 0,
        packed,
        "ring layout as asked ({ring}): {features:#x}"
    );
    for (arg, bit) in [("in_order=1", F_IN_ORDER), ("mrg_rxbuf=1", F_MRG_RXBUF)] {
        if ring.contains(arg) {
            assert_ne!(features & bit, 0, "{arg} not negotiated: {features:#x}");
        }
    }
    assert_ne!(features & F_VERSION_1, 0, "no VERSION_1: {features:#x}");

    let at = tp.command("start");
    tp.wait_for("packet forwarding - ports=1", at, SLOW);
    // Write syscalls while forwarding: testpmd's are its kicks (and a few lines of
    // output), the backend's would be its calls (it logs nothing meanwhile).
    let (_, fe_writes0) = syscalls(tp.child.id());
    let (_, be_writes0) = syscalls(be.device_pid() as u32);
    std::thread::sleep(FORWARD_FOR);
    let at = tp.command("stop");
    tp.wait_for("Accumulated forward statistics", at, SLOW);
    let kicks = syscalls(tp.child.id()).1 - fe_writes0;
    let calls = syscalls(be.device_pid() as u32).1 - be_writes0;
    let at = tp.command("show port stats 0");
    let end = tp.wait_for("Tx-bps:", at, SLOW);
    let text = tp.text();
    let nic = &text[text[at..end].find("NIC statistics").map_or(at, |i| at + i)..end];
    let got = Counts {
        tx_packets: stat(nic, "TX-packets:"),
        tx_bytes: stat(nic, "TX-bytes:"),
        rx_packets: stat(nic, "RX-packets:"),
        rx_bytes: stat(nic, "RX-bytes:"),
    };
    assert_eq!(
        stat(nic, "RX-nombuf:"),
        0,
        "testpmd ran out of mbufs:\n{nic}"
    );
    assert_eq!(stat(nic, "TX-errors:"), 0, "{nic}");
    tp.command("quit");
    tp.wait_exit(SLOW);

    be.wait_log("frontend disconnected", SLOW);
    be.signal_and_wait(Signal::SIGINT);
    let line = be.wait_log("exiting:", SLOW);
    let [tx, tx_bytes, rx, rx_bytes, tx_malformed, rx_malformed] = exit_counts(&line);
    eprintln!(
        "{mode} ({ring}): testpmd {got:?}; backend tx {tx} ({tx_bytes} B) rx {rx} ({rx_bytes} B); \
         while forwarding: testpmd writes (kicks) {kicks}, backend writes (calls) {calls}"
    );
    assert_eq!((tx_malformed, rx_malformed), (0, 0), "{line}");

    // TX: everything testpmd sent was taken by the backend.
    assert_eq!(
        tx, got.tx_packets,
        "frames taken by the backend vs testpmd TX-packets"
    );
    assert_eq!(tx_bytes, got.tx_bytes, "TX bytes");
    // RX: everything testpmd reaped, plus the one ring of buffers it left posted.
    assert_eq!(
        rx,
        got.rx_packets + QUEUE_SIZE,
        "frames generated by the backend vs testpmd RX-packets + {QUEUE_SIZE} posted buffers"
    );
    assert_eq!(
        rx_bytes,
        got.rx_bytes + QUEUE_SIZE * RX_FRAME_LEN,
        "RX bytes"
    );

    // Notification suppression. A backend that never sets NO_NOTIFY gets a kick after
    // nearly every burst, which here means about one per packet; one that sets it while
    // it works gets few (about one per 30 packets when a busy machine keeps it waiting
    // for the CPU, far fewer otherwise). virtio-user polls and sets NO_INTERRUPT on
    // every ring: a backend that honours it never writes its call eventfds.
    let total = got.tx_packets + got.rx_packets;
    assert!(
        kicks <= 200 + total / 8,
        "testpmd wrote {kicks} times (kicks) for {total} packets: NO_NOTIFY not honoured?"
    );
    assert_eq!(
        calls, 0,
        "the backend wrote {calls} times (calls) while virtio-user asked for no interrupts"
    );
    Some(got)
}

#[test]
fn testpmd_txonly_frames_all_reach_the_backend() {
    if let Some(c) = run("txonly", SPLIT) {
        assert!(c.tx_packets > 0, "testpmd sent nothing");
    }
}

#[test]
fn testpmd_rxonly_receives_every_generated_frame() {
    if let Some(c) = run("rxonly", SPLIT) {
        assert!(c.rx_packets > 0, "testpmd received nothing");
        assert_eq!(c.tx_packets, 0);
    }
}

/// Packed rings without and with IN_ORDER and MRG_RXBUF.
const PACKED: [&str; 2] = [
    "packed_vq=1,in_order=0,mrg_rxbuf=0",
    "packed_vq=1,in_order=1,mrg_rxbuf=1",
];

#[test]
fn testpmd_txonly_on_packed_rings() {
    for ring in PACKED {
        if let Some(c) = run("txonly", ring) {
            assert!(c.tx_packets > 0, "testpmd sent nothing ({ring})");
        }
    }
}

#[test]
fn testpmd_rxonly_on_packed_rings() {
    for ring in PACKED {
        if let Some(c) = run("rxonly", ring) {
            assert!(c.rx_packets > 0, "testpmd received nothing ({ring})");
            assert_eq!(c.tx_packets, 0);
        }
    }
}
