//! A Linux guest keeps writing and verifying its disk while `blk_backend` is killed
//! (SIGKILL) again and again: QEMU's vhost-user-blk-pci with `reconnect=1` waits for a
//! new backend on the same socket and image, hands it the in-flight area it kept, and
//! the guest's O_DIRECT write/read-back loop (four jobs, requests in flight) carries on
//! with every block verified. The image holds what the guest last wrote. On both I/O
//! engines, split and packed rings; and once with only the sandboxed device process
//! killed, which the program (its supervisor) replaces on the same socket by itself.

#[path = "support/backend.rs"]
mod backend;
#[path = "support/churn.rs"]
mod churn;
#[path = "support/guest.rs"]
mod guest;

use backend::BackendProcess;
use churn::{wait_ready, wait_rounds, ChurnDisk, StopGuestOnPanic, GUEST_T};
use guest::{GuestConfig, GuestLock};
use nix::sys::signal::Signal;

/// Backends killed in one guest run.
const KILLS: usize = 10;

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
    // Held before any deadline starts: a test queued behind another guest must not run
    // out of time while it waits. Dropped last, after a panicking test's QEMU is killed.
    let _guest_lock = GuestLock::take();
    let disk = ChurnDisk::new("guest-blk-reconnect");
    let disk_arg = disk.arg();
    let args = ["--image", disk_arg.as_str(), "--aio", aio, "--direct"];
    let first = BackendProcess::start("blk_backend", &args);
    let socket = first.socket.clone();
    let (tx, console) = std::sync::mpsc::channel();
    let cfg = GuestConfig {
        blk_socket: Some(socket.clone()),
        blk_reconnect: true,
        packed,
        console: Some(tx),
        timeout: std::time::Duration::from_secs(600),
        extra_cmdline: ChurnDisk::cmdline(),
        lock_held: true,
        ..GuestConfig::with_tests(&["info", "blk_churn"])
    };
    let _stop = StopGuestOnPanic(vec![socket.to_string_lossy().into_owned()]);
    let guest = std::thread::spawn(move || image.run(&cfg));
    wait_ready(&console);
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
    disk.stop();
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
    disk.verify(&run, 2 * kills as u64);
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
