//! The listener: socket file handling, inherited fds, client mode, the serve loop and
//! containment of a panicking device.

#[path = "support/backend.rs"]
mod backend;

use std::os::fd::IntoRawFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::time::Duration;

use backend::TempDir;
use vhost_user_sync::device::{Device, DeviceError, DeviceInfo, Queue, QueueWorker};
use vhost_user_sync::frontend::{DriverQueue, Frontend, FrontendMemory};
use vhost_user_sync::sys::unix::SocketPlatformConnection;
use vhost_user_sync::VhostUserListener;
use vhost_user_sync_rng::RngDevice;

const T: Duration = Duration::from_secs(10);

fn serve_in_thread(
    mut l: VhostUserListener,
) -> (
    vhost_user_sync::backend::Shutdown,
    std::thread::JoinHandle<()>,
) {
    let shutdown = l.shutdown_handle();
    let t = std::thread::spawn(move || l.serve(|| RngDevice::new("/dev/urandom")).unwrap());
    (shutdown, t)
}

fn exercise(fe: &mut Frontend) {
    let mem = FrontendMemory::new(&[(0, 1 << 20)]).unwrap();
    fe.negotiate(u64::MAX, u64::MAX).unwrap();
    fe.set_mem_table(&mem).unwrap();
    let mut q = DriverQueue::new(&mem, 0, 16).unwrap();
    q.attach(fe, &mem).unwrap();
    let buf = mem.alloc(32, 8).unwrap();
    q.add(mem.table(), &[(buf, 32, true)]).unwrap();
    q.kick(mem.table()).unwrap();
    assert_eq!(q.wait_used(mem.table(), T).unwrap().len, 32);
}

#[test]
fn socket_file_is_0600_and_a_stale_socket_is_replaced() {
    let dir = TempDir::new("listener");
    let path = dir.path().join("s.sock");
    drop(UnixListener::bind(&path).unwrap()); // stale socket left behind
    let l = VhostUserListener::new(path.to_str().unwrap(), None).unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    drop(l);
    assert!(!path.exists(), "the listener removes its socket file");
}

#[test]
fn refuses_to_replace_files_and_symlinks() {
    let dir = TempDir::new("listener");
    let file = dir.path().join("file");
    std::fs::write(&file, b"keep me").unwrap();
    assert!(VhostUserListener::new(file.to_str().unwrap(), None).is_err());
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    assert!(VhostUserListener::new(link.to_str().unwrap(), None).is_err());
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
}

#[test]
fn keep_rds_and_parent_resources() {
    let dir = TempDir::new("listener");
    let path = dir.path().join("s.sock");
    let mut keep = Vec::new();
    let mut l = VhostUserListener::new(path.to_str().unwrap(), Some(&mut keep)).unwrap();
    assert_eq!(keep.len(), 1);
    let guard = l.take_parent_process_resources().unwrap();
    drop(l);
    assert!(
        path.exists(),
        "the child's listener no longer owns the file"
    );
    drop(guard);
    assert!(!path.exists(), "the parent's guard removes it");
}

#[test]
fn serves_again_after_disconnect_until_shutdown() {
    let dir = TempDir::new("listener");
    let path = dir.path().join("s.sock");
    let l = VhostUserListener::new(path.to_str().unwrap(), None).unwrap();
    let (shutdown, t) = serve_in_thread(l);
    for _ in 0..3 {
        let mut fe = Frontend::connect(&path).unwrap();
        exercise(&mut fe);
    }
    shutdown.trigger();
    t.join().unwrap();
}

#[test]
fn inherited_listening_fd() {
    let dir = TempDir::new("listener");
    let path = dir.path().join("s.sock");
    let fd = UnixListener::bind(&path).unwrap().into_raw_fd();
    let l = VhostUserListener::from_fd(fd).unwrap();
    let (shutdown, t) = serve_in_thread(l);
    exercise(&mut Frontend::connect(&path).unwrap());
    exercise(&mut Frontend::connect(&path).unwrap());
    shutdown.trigger();
    t.join().unwrap();
}

#[test]
fn inherited_connected_fd_serves_one_connection() {
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    let l = VhostUserListener::from_fd(a.into_raw_fd()).unwrap();
    let (_shutdown, t) = serve_in_thread(l);
    let mut fe = Frontend::from_connection(SocketPlatformConnection::new(b).unwrap());
    exercise(&mut fe);
    drop(fe);
    t.join().unwrap(); // serve returns: nothing left to accept
}

#[test]
fn client_mode_connects_and_reconnects() {
    let dir = TempDir::new("listener");
    let path = dir.path().join("frontend.sock");
    let frontend_listener = UnixListener::bind(&path).unwrap();
    let l = VhostUserListener::client(path.to_str().unwrap(), Duration::from_millis(50));
    let (shutdown, t) = serve_in_thread(l);
    for _ in 0..2 {
        let (s, _) = frontend_listener.accept().unwrap();
        let mut fe = Frontend::from_connection(SocketPlatformConnection::new(s).unwrap());
        exercise(&mut fe);
    }
    shutdown.trigger();
    t.join().unwrap();
}

struct Panicky;
struct PanickyWorker;

impl Device for Panicky {
    type Worker = PanickyWorker;
    fn info(&self) -> DeviceInfo {
        DeviceInfo::new("panicky", 4, 1)
    }
    fn create_worker(&mut self, _: usize) -> std::io::Result<PanickyWorker> {
        Ok(PanickyWorker)
    }
}

impl QueueWorker for PanickyWorker {
    fn process_queue(&mut self, queue: &mut Queue<'_>) -> Result<(), DeviceError> {
        if queue.pop().is_some() {
            panic!("device bug");
        }
        Ok(())
    }
}

#[test]
fn a_panicking_device_closes_only_its_connection() {
    let dir = TempDir::new("listener");
    let path = dir.path().join("p.sock");
    let mut l = VhostUserListener::new(path.to_str().unwrap(), None).unwrap();
    let shutdown = l.shutdown_handle();
    let t = std::thread::spawn(move || l.serve(|| Panicky).unwrap());
    for _ in 0..2 {
        let mut fe = Frontend::connect(&path).unwrap();
        let mem = FrontendMemory::new(&[(0, 1 << 20)]).unwrap();
        fe.negotiate(u64::MAX, u64::MAX).unwrap();
        fe.set_mem_table(&mem).unwrap();
        let mut q = DriverQueue::new(&mem, 0, 16).unwrap();
        q.attach(&mut fe, &mem).unwrap();
        let buf = mem.alloc(32, 8).unwrap();
        q.add(mem.table(), &[(buf, 32, true)]).unwrap();
        q.kick(mem.table()).unwrap();
        // The backend closes the connection: reading from it ends with a disconnect.
        let closed = fe.read_reply().is_err();
        assert!(closed, "connection of the panicking device was not closed");
    }
    shutdown.trigger();
    t.join().unwrap();
}

struct PanickyConfig;

impl Device for PanickyConfig {
    type Worker = PanickyWorker;
    fn info(&self) -> DeviceInfo {
        DeviceInfo::new("panicky-config", 4, 1).with_config_size(8)
    }
    fn read_config(&self, _offset: u32, _data: &mut [u8]) {
        panic!("config bug");
    }
    fn create_worker(&mut self, _: usize) -> std::io::Result<PanickyWorker> {
        Ok(PanickyWorker)
    }
}

#[test]
fn a_panic_in_a_control_hook_closes_only_its_connection() {
    let dir = TempDir::new("listener");
    let path = dir.path().join("c.sock");
    let mut l = VhostUserListener::new(path.to_str().unwrap(), None).unwrap();
    let shutdown = l.shutdown_handle();
    let t = std::thread::spawn(move || l.serve(|| PanickyConfig).unwrap());
    for _ in 0..2 {
        let mut fe = Frontend::connect(&path).unwrap();
        fe.negotiate(u64::MAX, u64::MAX).unwrap();
        assert!(fe
            .protocol_features()
            .contains(vhost_user_sync::protocol::ProtocolFeatures::CONFIG));
        assert!(
            fe.get_config(0, 8).is_err(),
            "the connection closes instead of replying"
        );
    }
    shutdown.trigger();
    t.join().unwrap();
}

#[test]
fn socket_mode_is_configurable() {
    let dir = TempDir::new("listener");
    let path = dir.path().join("m.sock");
    let l = VhostUserListener::with_mode(path.to_str().unwrap(), 0o660, None).unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    drop(l);
    assert!(!path.exists());
}

#[test]
fn only_a_stale_socket_is_replaced() {
    let dir = TempDir::new("listener");
    // A FIFO and a directory at the path are left alone.
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    assert!(VhostUserListener::new(fifo.to_str().unwrap(), None).is_err());
    assert!(std::fs::symlink_metadata(&fifo)
        .unwrap()
        .file_type()
        .is_fifo());
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    assert!(VhostUserListener::new(sub.to_str().unwrap(), None).is_err());
    assert!(sub.is_dir());
}

#[test]
fn nothing_follows_a_symlink_planted_at_the_path() {
    let dir = TempDir::new("listener");
    // A dangling symlink: nothing is created at its target.
    let target = dir.path().join("elsewhere.sock");
    let link = dir.path().join("dangling");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    assert!(VhostUserListener::new(link.to_str().unwrap(), None).is_err());
    assert!(std::fs::symlink_metadata(&target).is_err());
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    // A symlink to a (stale) socket: neither the link nor the socket is replaced.
    let real = dir.path().join("real.sock");
    drop(UnixListener::bind(&real).unwrap());
    let to_socket = dir.path().join("to-socket");
    std::os::unix::fs::symlink(&real, &to_socket).unwrap();
    assert!(VhostUserListener::new(to_socket.to_str().unwrap(), None).is_err());
    assert!(std::fs::symlink_metadata(&to_socket)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(std::fs::symlink_metadata(&real)
        .unwrap()
        .file_type()
        .is_socket());
}

#[test]
fn dropping_the_listener_removes_only_its_socket() {
    let dir = TempDir::new("listener");
    let path = dir.path().join("s.sock");
    let l = VhostUserListener::new(path.to_str().unwrap(), None).unwrap();
    // Someone replaced the socket file with a regular file: it is not removed.
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, b"not ours").unwrap();
    drop(l);
    assert_eq!(std::fs::read(&path).unwrap(), b"not ours");
}

#[test]
fn backend_programs_refuse_a_path_that_is_not_a_socket() {
    let dir = TempDir::new("listener");
    let file = dir.path().join("file");
    std::fs::write(&file, b"keep me").unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    for program in ["rng_backend", "net_backend"] {
        for path in [&file, &link] {
            let out = std::process::Command::new(backend::example_path(program))
                .arg("--socket-path")
                .arg(path)
                .args(if program == "net_backend" {
                    &["--backend", "null"][..]
                } else {
                    &[][..]
                })
                .output()
                .unwrap();
            assert!(
                !out.status.success(),
                "{program} accepted {}",
                path.display()
            );
        }
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
}

#[test]
fn serve_all_serves_every_listener_with_its_own_devices() {
    let dir = TempDir::new("serve-all");
    let shutdown = vhost_user_sync::backend::Shutdown::new();
    let paths: Vec<_> = (0..4)
        .map(|i| dir.path().join(format!("d{i}.sock")))
        .collect();
    let mut listeners: Vec<_> = paths
        .iter()
        .map(|p| {
            VhostUserListener::new(p.to_str().unwrap(), None)
                .unwrap()
                .with_shutdown(shutdown.clone())
        })
        .collect();
    let made = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = made.clone();
    let t = std::thread::spawn(move || {
        VhostUserListener::serve_all(&mut listeners, |i| {
            record.lock().unwrap().push(i);
            RngDevice::new("/dev/urandom")
        })
    });
    // Two frontends connected at once, on different listeners, are both served.
    let mut first = Frontend::connect(&paths[2]).unwrap();
    exercise(&mut first);
    let mut second = Frontend::connect(&paths[0]).unwrap();
    exercise(&mut second);
    drop(first);
    // A listener serves again once its frontend has left.
    let mut again = Frontend::connect(&paths[2]).unwrap();
    exercise(&mut again);
    assert_eq!(*made.lock().unwrap(), [2, 0, 2]);
    shutdown.trigger();
    t.join().unwrap().unwrap();
}
