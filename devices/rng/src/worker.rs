//! Queue events: every writable buffer is filled from the generator, or straight from
//! the entropy source in passthrough mode.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::sync::Arc;

use vhost_user_sync::device::{DeviceError, Queue, QueueWorker};
use vhost_user_sync::queue::DescriptorChain;

use crate::drbg::Drbg;
use crate::request::request_len;
use crate::RngMetrics;

/// Where a worker's bytes come from.
#[derive(Debug)]
pub enum EntropySource {
    /// A ChaCha20 generator keyed from the host's source.
    Generator(Box<Drbg>),
    /// Every request read from the file (one `readv` into the guest's buffers).
    Passthrough(File),
}

/// The data path of one rng device.
#[derive(Debug)]
pub struct RngWorker {
    source: EntropySource,
    metrics: Arc<RngMetrics>,
}

impl RngWorker {
    /// A worker serving from `source`.
    pub fn new(source: EntropySource, metrics: Arc<RngMetrics>) -> Self {
        RngWorker { source, metrics }
    }

    fn fill(&mut self, chain: &DescriptorChain, queue: &Queue<'_>) -> io::Result<usize> {
        let mut writer = chain.writer(queue.mem());
        let len = request_len(chain);
        match &mut self.source {
            EntropySource::Generator(g) => g.write_to(&mut writer, len),
            EntropySource::Passthrough(f) => writer.read_from_fd(f.as_fd(), len),
        }
    }
}

impl QueueWorker for RngWorker {
    fn process_queue(&mut self, queue: &mut Queue<'_>) -> Result<(), DeviceError> {
        while let Some(chain) = queue.pop() {
            let n = match self.fill(&chain, queue) {
                Ok(n) => n,
                Err(e) => {
                    queue.add_used(&chain, 0)?;
                    return Err(e.into());
                }
            };
            queue.add_used(&chain, n as u32)?;
            self.metrics.record(n);
        }
        Ok(())
    }
}
