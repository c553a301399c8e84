//! Queue events: every writable buffer is filled straight from the entropy source.

use std::fs::File;
use std::os::fd::AsFd;
use std::sync::Arc;

use vhost_user_sync::device::{DeviceError, Queue, QueueWorker};

use crate::request::request_len;
use crate::RngMetrics;

/// The data path of one rng device.
#[derive(Debug)]
pub struct RngWorker {
    source: File,
    metrics: Arc<RngMetrics>,
}

impl RngWorker {
    /// A worker reading from `source`.
    pub fn new(source: File, metrics: Arc<RngMetrics>) -> Self {
        RngWorker { source, metrics }
    }
}

impl QueueWorker for RngWorker {
    fn process_queue(&mut self, queue: &mut Queue<'_>) -> Result<(), DeviceError> {
        while let Some(chain) = queue.pop() {
            let n = match chain
                .writer(queue.mem())
                .read_from_fd(self.source.as_fd(), request_len(&chain))
            {
                Ok(n) => n,
                Err(e) => {
                    queue.add_used(&chain, 0);
                    return Err(e.into());
                }
            };
            queue.add_used(&chain, n as u32);
            self.metrics.record(n);
        }
        Ok(())
    }
}
