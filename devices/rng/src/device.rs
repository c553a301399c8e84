//! The device: one request queue, no config space, no device feature bits.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use vhost_user_sync::device::{Device, DeviceInfo};

use crate::{worker::RngWorker, RngMetrics};

/// Virtio device id of an entropy device.
pub const VIRTIO_ID_RNG: u32 = 4;

/// A virtio-rng device reading from `source` (by default `/dev/urandom`).
///
/// # Example
/// ```
/// use vhost_user_sync::device::Device;
/// use vhost_user_sync_rng::RngDevice;
/// let dev = RngDevice::new("/dev/urandom");
/// assert_eq!(dev.info().num_queues, 1);
/// ```
#[derive(Debug, Clone)]
pub struct RngDevice {
    source: PathBuf,
    metrics: Arc<RngMetrics>,
}

impl RngDevice {
    /// A device whose entropy comes from the file at `source`.
    pub fn new(source: impl Into<PathBuf>) -> Self {
        RngDevice {
            source: source.into(),
            metrics: Arc::default(),
        }
    }

    /// Shares `metrics` (so that a program can report across connections).
    pub fn with_metrics(mut self, metrics: Arc<RngMetrics>) -> Self {
        self.metrics = metrics;
        self
    }
}

impl Device for RngDevice {
    type Worker = RngWorker;

    fn info(&self) -> DeviceInfo {
        DeviceInfo::new("rng", VIRTIO_ID_RNG, 1)
    }

    fn create_worker(&mut self, _index: usize) -> std::io::Result<RngWorker> {
        Ok(RngWorker::new(
            File::open(&self.source)?,
            self.metrics.clone(),
        ))
    }
}
