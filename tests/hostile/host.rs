//! A backend process serving several devices at once, one listener per thread (as
//! architecture.md describes): rng, net (null), `panicky`, a device with a bug,
//! `fragile`, whose workers cannot be rebuilt after a reset, and `stuck`, whose worker
//! blocks in device code. It
//! is this test binary itself, started again with `VHU_HOSTILE_HOST=DIR`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use vhost_user_sync::device::{Device, DeviceError, DeviceInfo, Queue, QueueWorker};
use vhost_user_sync::VhostUserListener;
use vhost_user_sync_net::{NetBackend, NetConfig, NetDevice, NetMetrics};
use vhost_user_sync_rng::RngDevice;

use crate::backend::TempDir;
use crate::hostile::{Kind, Proc};

/// The environment variable that turns this binary into the host.
pub const HOST_ENV: &str = "VHU_HOSTILE_HOST";

/// The running host process.
pub struct Host {
    pub proc: Proc,
    /// Where its sockets are: `rng.sock`, `net.sock`, `panicky.sock`, `fragile.sock`,
    /// `stuck.sock`.
    pub dir: PathBuf,
}

impl Host {
    pub fn socket(&self, kind: Kind) -> PathBuf {
        self.dir.join(format!("{}.sock", kind.device_name()))
    }
}

/// Starts the host and waits until its five listeners are up.
pub fn start() -> Host {
    let dir = TempDir::new("hostile-host");
    let path = dir.path().to_path_buf();
    let mut cmd = Command::new(std::env::current_exe().expect("test binary"));
    cmd.env(HOST_ENV, &path);
    let proc = Proc::spawn("host", cmd, dir, 5);
    Host { proc, dir: path }
}

/// A device whose worker panics on the first chain it takes: a bug in device code.
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
            panic!("deliberate device bug");
        }
        Ok(())
    }
}

/// A device whose workers cannot be built a second time: RESET_DEVICE's rebuild fails
/// (a resource the worker needs is gone).
struct Fragile {
    built: usize,
}

impl Device for Fragile {
    type Worker = PanickyWorker;
    fn info(&self) -> DeviceInfo {
        DeviceInfo::new("fragile", 4, 1)
    }
    fn create_worker(&mut self, _: usize) -> std::io::Result<PanickyWorker> {
        self.built += 1;
        if self.built > 1 {
            return Err(std::io::Error::other("the worker's resource is gone"));
        }
        Ok(PanickyWorker)
    }
}

/// A device whose worker blocks in `process_queue` on a source that does not answer:
/// it opens a FIFO for reading, which waits until someone opens it for writing (the
/// suite does, to release it).
struct Stuck {
    fifo: PathBuf,
}
struct StuckWorker {
    fifo: PathBuf,
}

impl Device for Stuck {
    type Worker = StuckWorker;
    fn info(&self) -> DeviceInfo {
        DeviceInfo::new("stuck", 4, 1)
    }
    fn create_worker(&mut self, _: usize) -> std::io::Result<StuckWorker> {
        Ok(StuckWorker {
            fifo: self.fifo.clone(),
        })
    }
}

impl QueueWorker for StuckWorker {
    fn process_queue(&mut self, queue: &mut Queue<'_>) -> Result<(), DeviceError> {
        if let Some(chain) = queue.pop() {
            let mut byte = [0u8; 1];
            let read = std::fs::File::open(&self.fifo).and_then(|mut f| {
                use std::io::Read;
                f.read(&mut byte)
            });
            log::info!("stuck: released ({read:?})");
            queue.add_used(&chain, 0)?;
        }
        Ok(())
    }
}

/// The FIFO the stuck device blocks on, in the host's directory.
pub fn stuck_fifo(dir: &Path) -> PathBuf {
    dir.join("stuck.fifo")
}

/// How long the host waits for a worker before it gives a device up as stuck.
pub const WORKER_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);

fn listen(dir: &Path, name: &str) -> VhostUserListener {
    let path = dir.join(format!("{name}.sock"));
    let l = VhostUserListener::new(&path.to_string_lossy(), None)
        .unwrap_or_else(|e| panic!("listen {}: {e}", path.display()));
    log::info!("listening on {}", path.display());
    l
}

/// The host's main: serves until killed.
pub fn run(dir: PathBuf) {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let mut rng = listen(&dir, "rng");
    let mut net = listen(&dir, "net");
    let mut panicky = listen(&dir, "panicky");
    let mut fragile = listen(&dir, "fragile");
    let fifo = stuck_fifo(&dir);
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    let mut stuck = listen(&dir, "stuck").with_worker_timeout(WORKER_TIMEOUT);
    let metrics = Arc::new(NetMetrics::default());
    let threads = vec![
        std::thread::spawn(move || {
            let _ = rng.serve(|| RngDevice::new("/dev/urandom"));
        }),
        std::thread::spawn(move || {
            let backend = NetBackend::Null { frame_len: 60 };
            let _ = net.serve(|| {
                NetDevice::new(NetConfig::default(), &backend, metrics.clone())
                    .expect("null net device")
            });
        }),
        std::thread::spawn(move || {
            let _ = panicky.serve(|| Panicky);
        }),
        std::thread::spawn(move || {
            let _ = fragile.serve(|| Fragile { built: 0 });
        }),
        std::thread::spawn(move || {
            let _ = stuck.serve(|| Stuck { fifo: fifo.clone() });
        }),
    ];
    for t in threads {
        let _ = t.join();
    }
}
