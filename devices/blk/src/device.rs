//! The device: queues, features, config space and the cache mode.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use vhost_user_sync::backend::BackendChannel;
use vhost_user_sync::device::{Device, DeviceError, DeviceInfo};

use crate::disk::DiskImage;
use crate::features::*;
use crate::persistence::BlkState;
use crate::request::{Limits, ID_BYTES, SECTOR_SIZE};
use crate::worker::BlkWorker;
use crate::BlkMetrics;

/// Virtio device id of a block device.
pub const VIRTIO_ID_BLOCK: u32 = 2;
/// Bytes of config space served: up to `write_zeroes_may_unmap` and its padding.
pub const CONFIG_SIZE: u32 = 60;
/// Offset of the `writeback` byte in the config space.
pub const CONFIG_WRITEBACK: u32 = 32;
/// Largest buffer piece a request may use (`size_max`).
pub const SEGMENT_SIZE_MAX: u32 = 1 << 20;
/// Sectors per DISCARD / WRITE_ZEROES segment.
pub const MAX_DISCARD_SECTORS: u32 = 1 << 22;
/// Segments per DISCARD / WRITE_ZEROES request.
pub const MAX_DISCARD_SEG: u32 = 32;

/// Settings of a block device.
#[derive(Debug, Clone)]
pub struct BlkConfig {
    /// Request queues (MQ when more than one).
    pub num_queues: u16,
    /// Run each queue on its own worker thread.
    pub worker_per_queue: bool,
    /// Start in writeback mode (FLUSH makes writes durable); otherwise every write is
    /// made durable before it completes. The driver may switch with CONFIG_WCE.
    pub writeback: bool,
    /// The id GET_ID returns (at most 20 bytes are used).
    pub serial: String,
    /// Largest queue size accepted.
    pub max_queue_size: u16,
    /// How requests reach the image.
    pub aio: Aio,
}

/// How a block device's requests reach the image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Aio {
    /// [`Aio::IoUring`], except for an image in memory (tmpfs, ramfs, hugetlbfs):
    /// [`Aio::Sync`] there, since a copy to or from memory finishes inside the system
    /// call, and such files cannot be read or written without blocking, so io_uring
    /// would hand every request to a kernel thread.
    #[default]
    Auto,
    /// Reads, writes, flushes, discards and write-zeroes go to the kernel through one
    /// io_uring per worker and complete out of order, up to a queue's depth in flight;
    /// where io_uring is not available the worker says so in the log and runs
    /// [`Aio::Sync`].
    IoUring,
    /// One blocking `preadv`/`pwritev`/`fdatasync` per request, in ring order.
    Sync,
}

impl Aio {
    /// Whether requests on `disk` go through io_uring (where the kernel has it).
    ///
    /// ```no_run
    /// use vhost_user_sync_blk::{Aio, DiskImage, DiskOptions};
    /// let disk = DiskImage::open("/dev/shm/disk.img", DiskOptions::default())?;
    /// assert!(!Aio::Auto.wants_io_uring(&disk));
    /// assert!(Aio::IoUring.wants_io_uring(&disk));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn wants_io_uring(self, disk: &DiskImage) -> bool {
        match self {
            Aio::Auto => !disk.in_memory(),
            Aio::IoUring => true,
            Aio::Sync => false,
        }
    }
}

impl Default for BlkConfig {
    fn default() -> Self {
        BlkConfig {
            num_queues: 1,
            worker_per_queue: false,
            writeback: true,
            serial: "vhost-user-sync".to_string(),
            max_queue_size: 1024,
            aio: Aio::default(),
        }
    }
}

/// State the device and its workers share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) disk: Arc<DiskImage>,
    pub(crate) acked: AtomicU64,
    pub(crate) writeback: AtomicBool,
    pub(crate) channel: Mutex<Option<BackendChannel>>,
    pub(crate) metrics: Arc<BlkMetrics>,
    pub(crate) id: [u8; ID_BYTES],
}

impl Shared {
    /// What requests may do now.
    pub(crate) fn limits(&self) -> Limits {
        let acked = self.acked.load(Ordering::Acquire);
        Limits {
            capacity: self.disk.capacity(),
            read_only: self.disk.options().read_only,
            discard: acked & DISCARD != 0,
            write_zeroes: acked & WRITE_ZEROES != 0,
            max_discard_sectors: MAX_DISCARD_SECTORS,
            max_discard_seg: MAX_DISCARD_SEG,
            max_write_zeroes_sectors: MAX_DISCARD_SECTORS,
            max_write_zeroes_seg: MAX_DISCARD_SEG,
        }
    }

    /// Whether a write must be durable before it completes: the driver chose
    /// writethrough, or cannot flush.
    pub(crate) fn writethrough(&self) -> bool {
        let acked = self.acked.load(Ordering::Acquire);
        acked & FLUSH == 0 || !self.writeback.load(Ordering::Acquire)
    }
}

/// A virtio-blk device over a [`DiskImage`].
///
/// # Example
/// ```
/// use std::sync::Arc;
/// use vhost_user_sync::device::Device;
/// use vhost_user_sync_blk::{BlkConfig, BlkDevice, DiskImage, DiskOptions};
/// let path = std::env::temp_dir().join(format!("blk-doc-{}.img", std::process::id()));
/// std::fs::File::create(&path).unwrap().set_len(1 << 20).unwrap();
/// let disk = Arc::new(DiskImage::open(&path, DiskOptions::default()).unwrap());
/// let dev = BlkDevice::new(BlkConfig::default(), disk, Default::default());
/// let mut capacity = [0u8; 8];
/// dev.read_config(0, &mut capacity);
/// assert_eq!(u64::from_le_bytes(capacity), 2048);
/// # std::fs::remove_file(&path).unwrap();
/// ```
#[derive(Debug)]
pub struct BlkDevice {
    config: BlkConfig,
    shared: Arc<Shared>,
}

impl BlkDevice {
    /// A device for one connection over `disk` (shared by every connection).
    pub fn new(config: BlkConfig, disk: Arc<DiskImage>, metrics: Arc<BlkMetrics>) -> Self {
        let mut id = [0u8; ID_BYTES];
        let serial = config.serial.as_bytes();
        let n = serial.len().min(ID_BYTES);
        id[..n].copy_from_slice(&serial[..n]);
        let shared = Arc::new(Shared {
            disk,
            acked: AtomicU64::new(0),
            writeback: AtomicBool::new(config.writeback),
            channel: Mutex::new(None),
            metrics,
            id,
        });
        BlkDevice { config, shared }
    }

    /// The cache mode and counters, as they are saved.
    pub fn state(&self) -> BlkState {
        BlkState {
            writeback: self.shared.writeback.load(Ordering::Acquire),
            counters: self.shared.metrics.snapshot(),
        }
    }

    fn config_bytes(&self) -> [u8; CONFIG_SIZE as usize] {
        let disk = &self.shared.disk;
        let mut c = [0u8; CONFIG_SIZE as usize];
        let mut put = |at: usize, bytes: &[u8]| c[at..at + bytes.len()].copy_from_slice(bytes);
        put(0, &disk.capacity().to_le_bytes());
        put(8, &SEGMENT_SIZE_MAX.to_le_bytes());
        let seg_max = u32::from(self.config.max_queue_size.saturating_sub(2).max(1));
        put(12, &seg_max.to_le_bytes());
        put(20, &disk.block_size().to_le_bytes());
        // Topology: physical block = logical block, no offset, minimum I/O one block.
        put(26, &1u16.to_le_bytes());
        put(
            32,
            &[u8::from(self.shared.writeback.load(Ordering::Acquire))],
        );
        put(34, &self.config.num_queues.to_le_bytes());
        put(36, &MAX_DISCARD_SECTORS.to_le_bytes());
        put(40, &MAX_DISCARD_SEG.to_le_bytes());
        let alignment = disk.block_size() / SECTOR_SIZE as u32;
        put(44, &alignment.to_le_bytes());
        put(48, &MAX_DISCARD_SECTORS.to_le_bytes());
        put(52, &MAX_DISCARD_SEG.to_le_bytes());
        put(56, &[1]);
        c
    }
}

impl Device for BlkDevice {
    type Worker = BlkWorker;

    fn save_state(&mut self) -> Result<Vec<u8>, DeviceError> {
        Ok(self.state().to_bytes())
    }

    /// The cache mode takes the saved one; the counters go on from the saved counts.
    fn load_state(&mut self, state: &[u8]) -> Result<(), DeviceError> {
        let s = BlkState::from_bytes(state).map_err(DeviceError::Other)?;
        self.shared.writeback.store(s.writeback, Ordering::Release);
        self.shared.metrics.add(&s.counters);
        Ok(())
    }

    fn sandbox_needs(&self) -> vhost_user_sync::sandbox::SandboxNeeds {
        crate::sandbox::needs(self.config.aio)
    }

    fn info(&self) -> DeviceInfo {
        let mut features = SIZE_MAX | SEG_MAX | BLK_SIZE | TOPOLOGY | FLUSH | CONFIG_WCE | MQ;
        if self.shared.disk.options().read_only {
            features |= RO;
        } else {
            features |= DISCARD | WRITE_ZEROES;
        }
        DeviceInfo::new("blk", VIRTIO_ID_BLOCK, self.config.num_queues)
            .with_features(features)
            .with_config_size(CONFIG_SIZE)
            .with_max_queue_size(self.config.max_queue_size)
            // Writes have effects: a request in flight when the backend dies is
            // submitted again by the next one.
            .with_inflight_tracking()
            // The cache mode and the counters move with a migration.
            .with_device_state()
    }

    fn read_config(&self, offset: u32, data: &mut [u8]) {
        let c = self.config_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = c.get(offset as usize + i).copied().unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset: u32, data: &[u8]) -> Result<(), DeviceError> {
        // Only the cache mode is writable.
        match (offset, data) {
            (CONFIG_WRITEBACK, [mode]) => {
                let writeback = *mode != 0;
                log::info!(
                    "blk: driver chose {} mode",
                    if writeback {
                        "writeback"
                    } else {
                        "writethrough"
                    }
                );
                self.shared.writeback.store(writeback, Ordering::Release);
                Ok(())
            }
            _ => Err(DeviceError::ReadOnlyConfig { offset }),
        }
    }

    fn set_features(&mut self, features: u64) {
        self.shared.acked.store(features, Ordering::Release);
    }

    fn worker_count(&self) -> usize {
        if self.config.worker_per_queue {
            usize::from(self.config.num_queues)
        } else {
            1
        }
    }

    fn queue_worker(&self, queue: u16) -> usize {
        if self.config.worker_per_queue {
            usize::from(queue)
        } else {
            0
        }
    }

    fn create_worker(&mut self, index: usize) -> io::Result<BlkWorker> {
        let worker = BlkWorker::new(self.shared.clone(), self.config.aio);
        // Worker 0 also watches the image for a resize.
        if index == 0 {
            return worker.with_resize_watch();
        }
        Ok(worker)
    }

    fn set_backend_channel(&mut self, channel: BackendChannel) {
        *self.shared.channel.lock() = Some(channel);
    }

    fn reset(&mut self) {
        self.shared.acked.store(0, Ordering::Release);
        self.shared
            .writeback
            .store(self.config.writeback, Ordering::Release);
    }
}
