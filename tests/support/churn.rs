//! The host side of the guest's `blk_churn` test (see `tests/guest/init`): a disk image
//! the guest's jobs write, read back and compare with O_DIRECT, the console lines that
//! show their progress, the stop marker, and the check that the image holds what each
//! job last wrote.
//!
//! Include with `#[path = "support/churn.rs"] mod churn;` after `backend` and `guest`.
#![allow(dead_code)]

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use crate::backend::TempDir;
use crate::guest::{md5, GuestRun};

const MIB: u64 = 1 << 20;
/// Where the jobs write (MiB); the stop marker is one MiB before.
pub const CHURN_OFF_MIB: u64 = 8;
/// Jobs writing at once.
pub const JOBS: u64 = 4;
/// How long the guest may take for anything the host waits on.
pub const GUEST_T: Duration = Duration::from_secs(180);

/// The guest's disk, in a directory of its own.
pub struct ChurnDisk {
    _dir: TempDir,
    path: PathBuf,
}

impl ChurnDisk {
    /// A 32 MiB image of zeros.
    pub fn new(tag: &str) -> ChurnDisk {
        let dir = TempDir::new(tag);
        let path = dir.path().join("disk.img");
        std::fs::File::create(&path)
            .unwrap()
            .set_len(32 * MIB)
            .unwrap();
        ChurnDisk { _dir: dir, path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The image path as a program argument.
    pub fn arg(&self) -> String {
        self.path.to_string_lossy().into_owned()
    }

    /// The kernel command line that starts the jobs.
    pub fn cmdline() -> String {
        format!("vhu.churn_jobs={JOBS} vhu.churn_off_mib={CHURN_OFF_MIB}")
    }

    /// Tells the jobs to stop: they read the marker's sector with O_DIRECT every round.
    pub fn stop(&self) {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&self.path)
            .unwrap()
            .write_all_at(b"VHU-STOP", (CHURN_OFF_MIB - 1) * MIB)
            .unwrap();
    }

    /// Checks that `run` passed `blk_churn` with at least `min_rounds` rounds and that
    /// the image holds each job's last data.
    pub fn verify(&self, run: &GuestRun, min_rounds: u64) {
        run.assert_pass();
        let r = run.expect_pass("blk_churn");
        let rounds = r.field_u64("rounds").unwrap_or(0);
        assert!(
            rounds >= min_rounds,
            "only {rounds} rounds\n{}",
            run.report()
        );
        let f = std::fs::File::open(&self.path).unwrap();
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
}

/// Waits until the guest says its jobs run (other tests may finish before them).
pub fn wait_ready(console: &Receiver<String>) {
    let deadline = Instant::now() + GUEST_T;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = console
            .recv_timeout(left)
            .unwrap_or_else(|e| panic!("the guest never started its jobs: {e}"));
        if line.contains("VHU-READY blk_churn") {
            return;
        }
    }
}

/// Waits until the jobs have finished `rounds` more rounds between them.
pub fn wait_rounds(console: &Receiver<String>, rounds: usize, what: &str) {
    if let Err(e) = try_wait_rounds(console, rounds, what) {
        panic!("{e}");
    }
}

/// [`wait_rounds`], returning what went wrong instead of panicking (the caller adds the
/// guest's report).
pub fn try_wait_rounds(
    console: &Receiver<String>,
    rounds: usize,
    what: &str,
) -> Result<(), String> {
    count_console_lines(console, rounds, what, |l| l.contains("VHU-INFO churn job="))
}

/// Waits (at most [`GUEST_T`]) for `n` console lines that `counts` accepts; an error
/// when the guest prints its results first or stops printing.
pub fn count_console_lines(
    console: &Receiver<String>,
    n: usize,
    what: &str,
    counts: impl Fn(&str) -> bool,
) -> Result<(), String> {
    let deadline = Instant::now() + GUEST_T;
    let mut seen = 0;
    while seen < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match console.recv_timeout(left) {
            Ok(line) if counts(&line) => seen += 1,
            Ok(line) if line.contains("VHU-RESULT") || line.contains("VHU-FINAL") => {
                return Err(format!("{what}: the guest finished early: {line}"));
            }
            Ok(_) => {}
            Err(e) => {
                return Err(format!(
                    "{what}: the guest made no progress ({seen} of {n} lines): {e}"
                ))
            }
        }
    }
    Ok(())
}

/// Kills every QEMU whose command line mentions the given text (a socket path) when the
/// test panics: the guests run on threads of their own, and one left running would hold
/// the guest lock that every later guest test waits for.
pub struct StopGuestOnPanic(pub Vec<String>);

impl StopGuestOnPanic {
    /// Kills the QEMUs now (to collect a hung guest's console).
    pub fn kill_now(&self) {
        for tag in &self.0 {
            let _ = Command::new("pkill")
                .args(["-KILL", "-f", &format!("qemu-system.*{tag}")])
                .status();
        }
    }
}

impl Drop for StopGuestOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.kill_now();
        }
    }
}
