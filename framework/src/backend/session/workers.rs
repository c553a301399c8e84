//! The device's workers: spawned per connection, rebuilt after a reset.

use std::sync::Arc;
use std::time::Duration;

use super::{Result, Session};
use crate::backend::vring_config::VringConfig;
use crate::backend::worker::{FailureSignal, WorkerHandle};
use crate::backend::RequestError;
use crate::device::{Device, DeviceInfo};
use crate::memory::MemoryTable;
use crate::protocol::FrontendRequest as R;

impl<D: Device> Session<D> {
    /// RESET_DEVICE: rings stopped and forgotten, features cleared, fresh workers.
    pub(super) fn reset(&mut self, req: R) -> Result<()> {
        for i in 0..self.vrings.len() {
            self.stop_ring(i)?;
        }
        self.workers.clear();
        self.vrings
            .iter_mut()
            .for_each(|v| *v = VringConfig::default());
        self.acked_features = 0;
        self.status = 0;
        self.inflight = None;
        self.device.reset();
        // Without workers the session is not consistent: the error ends the connection.
        self.workers = spawn_workers(
            &mut self.device,
            &self.info,
            &self.mem,
            &self.failure,
            self.worker_timeout,
        )
        .map_err(|source| RequestError::NoWorkers {
            request: req.name(),
            source,
        })?;
        Ok(())
    }

    /// The worker that runs ring `ring` (the device's choice, clamped to the workers
    /// there are); `None` only when there are none (a failed rebuild, which closes the
    /// connection).
    pub(super) fn worker_index(&self, ring: usize) -> Option<usize> {
        let last = self.workers.len().checked_sub(1)?;
        Some(self.device.queue_worker(ring as u16).min(last))
    }

    /// The handle of ring `ring`'s worker (see [`Self::worker_index`]).
    pub(super) fn worker_for(&self, ring: usize) -> Option<&WorkerHandle> {
        self.worker_index(ring).map(|w| &self.workers[w])
    }
}

pub(super) fn spawn_workers<D: Device>(
    device: &mut D,
    info: &DeviceInfo,
    mem: &Arc<MemoryTable>,
    failure: &Arc<FailureSignal>,
    timeout: Duration,
) -> std::io::Result<Vec<WorkerHandle>> {
    (0..device.worker_count().max(1))
        .map(|i| {
            let w = device.create_worker(i)?;
            WorkerHandle::spawn(
                format!("{}-worker{i}", info.name),
                w,
                mem.clone(),
                failure.clone(),
                info.busy_poll,
                timeout,
            )
        })
        .collect()
}
