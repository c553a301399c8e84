//! `blk_backend` and qemu-storage-daemon see each other's image locks: whichever starts
//! second on a writable image is refused with a message naming the image, two read-only
//! users share it, and `--lock off` serves an image another program holds.
//!
//! qemu-storage-daemon (Debian: qemu-system-common) is required under `CI`; elsewhere a
//! missing one skips these tests with a message.

#[path = "support/backend.rs"]
mod backend;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use backend::{example_path, required_program, BackendProcess, TempDir};

/// The tests start daemons on their own images, but one at a time keeps the logs apart.
static SERIAL: Mutex<()> = Mutex::new(());

fn qsd_program() -> Option<PathBuf> {
    required_program(
        "qemu-storage-daemon",
        "Debian: apt-get install qemu-system-common",
    )
}

/// A qemu-storage-daemon exporting `image` over vhost-user-blk; `--daemonize` returns
/// once the export is up (or failed), so no waiting is needed.
struct StorageDaemon {
    pid: i32,
}

impl StorageDaemon {
    fn start(program: &Path, dir: &Path, image: &Path, writable: bool) -> Result<Self, String> {
        let pidfile = dir.join("qsd.pid");
        let out = Command::new(program)
            .arg("--daemonize")
            .arg("--pidfile")
            .arg(&pidfile)
            .arg("--blockdev")
            .arg(format!(
                "driver=file,node-name=file0,filename={},read-only={}",
                image.display(),
                if writable { "off" } else { "on" }
            ))
            .arg("--export")
            .arg(format!(
                "type=vhost-user-blk,id=exp0,node-name=file0,addr.type=unix,addr.path={},writable={}",
                dir.join("qsd.sock").display(),
                if writable { "on" } else { "off" }
            ))
            .stdin(Stdio::null())
            .output()
            .expect("qemu-storage-daemon runs");
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        let pid = std::fs::read_to_string(&pidfile).expect("pid file written");
        Ok(StorageDaemon {
            pid: pid.trim().parse().expect("a pid"),
        })
    }
}

impl Drop for StorageDaemon {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.pid);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    }
}

fn image(dir: &TempDir) -> PathBuf {
    let path = dir.path().join("disk.img");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    path
}

/// Runs `blk_backend` on `image` expecting it to refuse to start; returns its log.
fn backend_refused(dir: &Path, image: &Path, extra: &[&str]) -> String {
    let out = Command::new(example_path("blk_backend"))
        .arg("--socket-path")
        .arg(dir.join("ours.sock"))
        .arg("--image")
        .arg(image)
        .args(extra)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "blk_backend started: {log}");
    log
}

#[test]
fn blk_backend_refuses_an_image_qemu_storage_daemon_writes() {
    let Some(qsd) = qsd_program() else { return };
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new("lock-qsd-first");
    let img = image(&dir);
    let _daemon = StorageDaemon::start(&qsd, dir.path(), &img, true).unwrap();
    let log = backend_refused(dir.path(), &img, &[]);
    assert!(log.contains(&img.display().to_string()), "{log}");
    assert!(log.contains("in use by another program"), "{log}");
    // A read-only backend is refused too: the daemon writes.
    let log = backend_refused(dir.path(), &img, &["--read-only"]);
    assert!(log.contains("in use by another program"), "{log}");
    // Locking off: served regardless.
    let be = BackendProcess::start(
        "blk_backend",
        &["--image", img.to_str().unwrap(), "--lock", "off"],
    );
    drop(be);
}

#[test]
fn qemu_storage_daemon_refuses_an_image_blk_backend_writes() {
    let Some(qsd) = qsd_program() else { return };
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new("lock-ours-first");
    let img = image(&dir);
    let be = BackendProcess::start("blk_backend", &["--image", img.to_str().unwrap()]);
    let err = StorageDaemon::start(&qsd, dir.path(), &img, true)
        .err()
        .expect("qemu-storage-daemon refused");
    assert!(err.contains("lock"), "{err}");
    // Once our backend has exited (killed: the locks go with the process), it starts.
    drop(be);
    let _daemon = StorageDaemon::start(&qsd, dir.path(), &img, true).unwrap();
}

#[test]
fn read_only_users_share_an_image() {
    let Some(qsd) = qsd_program() else { return };
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new("lock-readers");
    let img = image(&dir);
    let _daemon = StorageDaemon::start(&qsd, dir.path(), &img, false).unwrap();
    let be = BackendProcess::start(
        "blk_backend",
        &["--image", img.to_str().unwrap(), "--read-only"],
    );
    // A writer is refused by both.
    let log = backend_refused(dir.path(), &img, &[]);
    assert!(log.contains("refuses the write permission"), "{log}");
    drop(be);
}
