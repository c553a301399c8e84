//! The device: one request queue, no config space, no device feature bits.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use vhost_user_sync::device::{Device, DeviceError, DeviceInfo};
use vhost_user_sync::sandbox::SandboxNeeds;

use crate::drbg::Drbg;
use crate::persistence::RngState;
use crate::worker::{EntropySource, RngWorker};
use crate::RngMetrics;

/// Virtio device id of an entropy device.
pub const VIRTIO_ID_RNG: u32 = 4;

/// A virtio-rng device whose entropy comes from `source` (by default `/dev/urandom`).
///
/// By default the bytes come from a ChaCha20 generator ([`Drbg`]) that each worker keys
/// from `source` and reseeds from it every megabyte; [`RngDevice::passthrough`] reads
/// every request from `source` instead (for a hardware generator whose output should
/// reach the guest unchanged).
///
/// # Example
/// ```
/// use vhost_user_sync::device::Device;
/// use vhost_user_sync_rng::RngDevice;
/// let dev = RngDevice::new("/dev/urandom");
/// assert_eq!(dev.info().num_queues, 1);
/// let raw = RngDevice::new("/dev/hwrng").passthrough();
/// ```
#[derive(Debug, Clone)]
pub struct RngDevice {
    source: EntropyFile,
    passthrough: bool,
    metrics: Arc<RngMetrics>,
}

impl RngDevice {
    /// A device whose entropy comes from the file at `source`.
    pub fn new(source: impl Into<PathBuf>) -> Self {
        RngDevice {
            source: EntropyFile::Path(source.into()),
            passthrough: false,
            metrics: Arc::default(),
        }
    }

    /// A device whose entropy comes from `source`, already open (shared by every
    /// worker and connection): nothing to open once the process is sandboxed.
    ///
    /// ```
    /// use vhost_user_sync::device::Device;
    /// use vhost_user_sync_rng::RngDevice;
    /// let source = std::sync::Arc::new(std::fs::File::open("/dev/urandom")?);
    /// let dev = RngDevice::from_file(source);
    /// assert_eq!(dev.sandbox_needs().paths().count(), 0);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn from_file(source: Arc<File>) -> Self {
        RngDevice {
            source: EntropyFile::Open(source),
            passthrough: false,
            metrics: Arc::default(),
        }
    }

    /// Serves every request with a read of the source, not from the generator.
    pub fn passthrough(mut self) -> Self {
        self.passthrough = true;
        self
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
        // The counters move with a migration.
        DeviceInfo::new("rng", VIRTIO_ID_RNG, 1).with_device_state()
    }

    fn save_state(&mut self) -> Result<Vec<u8>, DeviceError> {
        Ok(RngState {
            requests: self.metrics.requests(),
            bytes: self.metrics.bytes(),
        }
        .to_bytes())
    }

    /// The counters go on from the saved counts.
    fn load_state(&mut self, state: &[u8]) -> Result<(), DeviceError> {
        let s = RngState::from_bytes(state).map_err(DeviceError::Other)?;
        self.metrics.add(s.requests, s.bytes);
        Ok(())
    }

    fn create_worker(&mut self, _index: usize) -> std::io::Result<RngWorker> {
        let source = match &self.source {
            EntropyFile::Path(p) => File::open(p)?,
            EntropyFile::Open(f) => f.try_clone()?,
        };
        let source = if self.passthrough {
            EntropySource::Passthrough(source)
        } else {
            EntropySource::Generator(Box::new(Drbg::new(source)?))
        };
        Ok(RngWorker::new(source, self.metrics.clone()))
    }

    fn sandbox_needs(&self) -> SandboxNeeds {
        crate::sandbox::needs(&self.source)
    }
}

/// Where a device's entropy comes from.
#[derive(Debug, Clone)]
pub enum EntropyFile {
    /// Opened by each worker.
    Path(PathBuf),
    /// Opened once; each worker reads through its own duplicate of the fd.
    Open(Arc<File>),
}
