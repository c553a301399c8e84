//! A Linux guest keeps writing and verifying its disk while `blk_backend` is killed
//! (SIGKILL) again and again: QEMU's vhost-user-blk-pci with `reconnect=1` waits for a
//! new backend on the same socket and image, hands it the in-flight area it kept, and
//! the guest's O_DIRECT write/read-back loop (four jobs, requests in flight) carries on
//! with every block verified. The image holds what the guest last wrote. On both I/O
//! engines, split and packed rings; and once with only the sandboxed device process
//! killed, which the program (its supervisor) replaces on the same socket by itself.

#[path = "support/backend.rs"]
mod backend;
#[path = "support/guest.rs"]
mod guest;

use std::os::unix::fs::FileExt;
use std::process::Command;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use backend::{BackendProcess, TempDir};
use guest::{md5, GuestConfig};
use nix::sys::signal::Signal;

const MIB: u64 = 1 << 20;
/// Backends killed in one guest run.
const KILLS: usize = 10;
/// Where the guest's jobs write (MiB); the stop marker is one MiB before.
const CHURN_OFF_MIB: u64 = 8;
const JOBS: u64 = 4;
/// How long the guest may take for anything the host waits on.
const GUEST_T: Duration = Duration::from_secs(180);

/// Waits until the guest's jobs have finished `rounds` more rounds between them.
fn wait_rounds(console: &Receiver<String>, rounds: usize, what: &str) {
    let deadline = Instant::now() + GUEST_T;
    let mut seen = 0;
    while seen < rounds {
        let left = deadline.saturating_duration_since(Instant::now());
        match console.recv_timeout(left) {
            Ok(line) if line.contains("VHU-INFO churn job=") => seen += 1,
            Ok(line) if line.contains("VHU-RESULT") || line.contains("VHU-FINAL") => {
                panic!("{what}: the guest finished early: {line}")
            }
            Ok(_) => {}
            Err(e) => panic!("{what}: the guest made no progress ({seen} of {rounds} rounds): {e}"),
        }
    }
}

/// Kills the QEMU serving `socket` when the test panics: the guest runs on a thread of
/// its own, and left running it would hold the guest lock that every later guest test
/// waits for.
struct StopGuestOnPanic(String);

impl Drop for StopGuestOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = Command::new("pkill")
                .args(["-KILL", "-f", &format!("qemu-system.*{}", self.0)])
                .status();
        }
    }
}

/// What each kill hits.
#[derive(Clone, Copy, PartialEq)]
enum Victim {
    /// The whole program (its device process dies with it); a new program is started.
    Program,
    /// Only the sandboxed device process: the program, its supervisor, starts another
    /// on the same socket by itself.
    DeviceProcess,
}

fn churn_through_kills(aio: &str, packed: bool) {
    churn(aio, packed, Victim::Program, KILLS);
}

fn churn(aio: &str, packed: bool, victim: Victim, kills: usize) {
    let Some(image) = guest::require_guest() else {
        return;
    };
    let dir = TempDir::new("guest-blk-reconnect");
    let disk = dir.path().join("disk.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(32 * MIB)
        .unwrap();
    let disk_arg = disk.to_string_lossy().into_owned();
    let args = ["--image", disk_arg.as_str(), "--aio", aio, "--direct"];
    let first = BackendProcess::start("blk_backend", &args);
    let socket = first.socket.clone();
    let (tx, console) = std::sync::mpsc::channel();
    let cfg = GuestConfig {
        blk_socket: Some(socket.clone()),
        blk_reconnect: true,
        packed,
        console: Some(tx),
        timeout: Duration::from_secs(600),
        extra_cmdline: format!("vhu.churn_jobs={JOBS} vhu.churn_off_mib={CHURN_OFF_MIB}"),
        ..GuestConfig::with_tests(&["info", "blk_churn"])
    };
    let _stop = StopGuestOnPanic(socket.to_string_lossy().into_owned());
    let guest = std::thread::spawn(move || image.run(&cfg));
    let deadline = Instant::now() + GUEST_T;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = console
            .recv_timeout(left)
            .unwrap_or_else(|e| panic!("the guest never started its jobs: {e}"));
        if line.contains("VHU-READY blk_churn") {
            break;
        }
    }
    first.wait_log("in-flight area of 1 queue(s)", GUEST_T);
    // The first backend holds the socket's directory: every backend is kept until the
    // end (a killed one only as its log).
    let mut backends = vec![first];
    let mut resubmitted = 0;
    for kill in 1..=kills {
        wait_rounds(&console, 2, &format!("before kill {kill}"));
        let be = backends.last_mut().expect("a backend");
        if victim == Victim::DeviceProcess {
            let device = be.device_pid();
            assert_ne!(device, be.pid(), "no sandboxed device process to kill");
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(device), Signal::SIGKILL).unwrap();
            be.wait_log("starting another", GUEST_T);
            let lines = be.log_until("in-flight area of 1 queue(s)", GUEST_T);
            assert!(
                lines.iter().any(|l| l.contains("frontend connected")),
                "kill {kill}: {lines:#?}"
            );
            let started = be.log_until("ring 0: in-flight records on", GUEST_T);
            resubmitted += started
                .iter()
                .filter(|l| l.contains("submitted again"))
                .count();
            continue;
        }
        let status = be.signal_and_wait(Signal::SIGKILL);
        assert!(!status.success(), "kill {kill}: {status}");
        let next = BackendProcess::start_on(&socket, "blk_backend", &args);
        // QEMU reconnects within a second or so and starts the device again, handing
        // the area back.
        let lines = next.log_until("in-flight area of 1 queue(s)", GUEST_T);
        assert!(
            lines.iter().any(|l| l.contains("frontend connected")),
            "kill {kill}: {lines:#?}"
        );
        backends.push(next);
        // What the new backend found in flight is logged when its ring starts.
        let started = backends
            .last()
            .expect("just pushed")
            .log_until("ring 0: in-flight records on", GUEST_T);
        resubmitted += started
            .iter()
            .filter(|l| l.contains("submitted again"))
            .count();
    }
    wait_rounds(&console, 2, "after the last restart");
    // Tell the jobs to stop (they read this sector with O_DIRECT each round).
    std::fs::OpenOptions::new()
        .write(true)
        .open(&disk)
        .unwrap()
        .write_all_at(b"VHU-STOP", (CHURN_OFF_MIB - 1) * MIB)
        .unwrap();
    let run = guest.join().expect("guest thread");
    eprintln!(
        "{aio}, {} ring: guest run with {kills} kills of the {} took {:.1}s; {resubmitted} \
         restart(s) found requests in flight",
        if packed { "packed" } else { "split" },
        if victim == Victim::Program {
            "backend program"
        } else {
            "device process"
        },
        run.elapsed.as_secs_f64()
    );
    run.assert_pass();
    let r = run.expect_pass("blk_churn");
    let rounds = r.field_u64("rounds").unwrap_or(0);
    assert!(
        rounds >= 2 * kills as u64,
        "only {rounds} rounds\n{}",
        run.report()
    );
    let f = std::fs::File::open(&disk).unwrap();
    for j in 0..JOBS {
        let mut b = vec![0u8; 64 << 10];
        f.read_exact_at(&mut b, (CHURN_OFF_MIB + j) * MIB).unwrap();
        let want = r
            .field(&format!("md5_{j}"))
            .unwrap_or_else(|| panic!("no md5_{j}\n{}", run.report()));
        assert_eq!(
            md5(&b),
            want,
            "job {j}: the image does not hold its last data"
        );
    }
}

#[test]
fn guest_disk_survives_backend_kills_on_io_uring() {
    churn_through_kills("io-uring", false);
}

#[test]
fn guest_disk_survives_backend_kills_on_sync_io() {
    churn_through_kills("sync", false);
}

#[test]
fn guest_disk_on_a_packed_ring_survives_backend_kills_on_io_uring() {
    churn_through_kills("io-uring", true);
}

#[test]
fn guest_disk_on_a_packed_ring_survives_backend_kills_on_sync_io() {
    churn_through_kills("sync", true);
}

/// The supervisor's own restart: the program stays, its device process is killed, and
/// QEMU reconnects to the one it starts on the same socket (fewer kills than the
/// supervisor's limit of 5 failures a minute).
#[test]
fn guest_disk_survives_device_process_kills_under_the_supervisor() {
    churn("io-uring", false, Victim::DeviceProcess, 4);
}
