//! Guest memory and the dirty log: memory tables and regions, SET_LOG_BASE/FD, and
//! handing both to the workers.

use std::fs::File;
use std::sync::Arc;

use log::{info, warn};

use super::{u64_reply, Reply, Result, Session};
use crate::backend::RequestError;
use crate::device::Device;
use crate::memory::{DirtyLog, MemoryTable};
use crate::protocol::payload::{LogBase, MemoryTableDesc, SingleRegion, VringAddr};
use crate::protocol::{virtio, FrontendRequest as R, ProtocolFeatures as P};
use crate::queue::RingAddrs;

impl<D: Device> Session<D> {
    /// SET_MEM_TABLE: a new table of regions, mapped and handed to every worker.
    pub(super) fn set_mem_table(&mut self, req: R, body: &[u8], fds: Vec<File>) -> Result<Reply> {
        self.need_owner(req)?;
        let table = MemoryTableDesc::decode(body)?;
        let mem = self.mem.replaced(&table.regions, fds)?;
        info!(
            "{}: memory table with {} region(s)",
            self.info.name,
            mem.len()
        );
        self.install_memory(mem)?;
        Ok(Reply::Done)
    }

    /// ADD_MEM_REG: the table with one more region.
    pub(super) fn add_mem_reg(&mut self, req: R, body: &[u8], mut fds: Vec<File>) -> Result<Reply> {
        let name = req.name();
        self.need_owner(req)?;
        self.need(req, P::CONFIGURE_MEM_SLOTS, "CONFIGURE_MEM_SLOTS")?;
        let region = SingleRegion::decode(name, body)?;
        let file = fds.pop().ok_or(RequestError::BadOrder {
            request: name,
            why: "no fd",
        })?;
        let mem = self.mem.with_region(region.0, file)?;
        self.install_memory(mem)?;
        Ok(Reply::Done)
    }

    /// REM_MEM_REG: the table without one region.
    pub(super) fn rem_mem_reg(&mut self, req: R, body: &[u8], fds: Vec<File>) -> Result<Reply> {
        let name = req.name();
        self.need_owner(req)?;
        self.need(req, P::CONFIGURE_MEM_SLOTS, "CONFIGURE_MEM_SLOTS")?;
        let region = SingleRegion::decode(name, body)?;
        drop(fds);
        let mem = self.mem.without_region(&region.0)?;
        self.install_memory(mem)?;
        Ok(Reply::Done)
    }

    /// SET_LOG_BASE: the dirty log, mapped and handed to every worker.
    pub(super) fn set_log_base(
        &mut self,
        req: R,
        body: &[u8],
        mut fds: Vec<File>,
    ) -> Result<Reply> {
        let name = req.name();
        self.need(req, P::LOG_SHMFD, "LOG_SHMFD")?;
        let base = LogBase::decode(body)?;
        let file = fds.pop().ok_or(RequestError::BadOrder {
            request: name,
            why: "no fd",
        })?;
        self.log = Some(Arc::new(DirtyLog::map_watched(
            file,
            base.mmap_size,
            base.mmap_offset,
            Some(self.notice.clone()),
        )?));
        info!(
            "{}: dirty log of {} bytes set (migration); {}",
            self.info.name,
            base.mmap_size,
            if self.acked_features & virtio::LOG_ALL != 0 {
                "logging"
            } else {
                "logging once VHOST_F_LOG_ALL is acked"
            }
        );
        self.push_log_state()?;
        u64_reply(0)
    }

    /// SET_LOG_FD: kept open, as the frontend expects.
    pub(super) fn set_log_fd(&mut self, req: R, _body: &[u8], mut fds: Vec<File>) -> Result<Reply> {
        self.need(req, P::LOG_SHMFD, "LOG_SHMFD")?;
        self.log_fd = fds.pop();
        Ok(Reply::Done)
    }

    /// The log in force: SET_LOG_BASE's, while VHOST_F_LOG_ALL is acked.
    pub(super) fn active_log(&self) -> Option<Arc<DirtyLog>> {
        self.log
            .clone()
            .filter(|_| self.acked_features & virtio::LOG_ALL != 0)
    }

    /// The used-ring log address of ring `i`, if it logs.
    pub(super) fn used_log_addr(&self, i: usize) -> Option<u64> {
        self.vrings[i]
            .addr
            .filter(|a| a.flags & VringAddr::F_LOG != 0)
            .map(|a| a.log)
    }

    /// Tells every worker whether to log and where each running ring logs its used ring.
    pub(super) fn push_log_state(&mut self) -> Result<()> {
        let log = self.active_log();
        let mut per_worker: Vec<Vec<(u16, Option<u64>)>> = vec![Vec::new(); self.workers.len()];
        for i in 0..self.vrings.len() {
            if let (true, Some(w)) = (self.vrings[i].started, self.worker_index(i)) {
                per_worker[w].push((i as u16, self.used_log_addr(i)));
            }
        }
        for (w, rings) in self.workers.iter().zip(per_worker) {
            w.set_log(log.clone(), rings)?;
        }
        Ok(())
    }

    /// Sends a new table to every worker and waits until each has switched; the old
    /// table is unmapped when the last reference (ours) drops here. A running ring that
    /// the new table does not hold refuses the change; a stopped ring's addresses that it
    /// does not hold are forgotten (SET_VRING_ADDR must set them again).
    pub(super) fn install_memory(&mut self, mem: MemoryTable) -> Result<()> {
        let mut per_worker: Vec<Vec<(u16, RingAddrs)>> = vec![Vec::new(); self.workers.len()];
        for i in 0..self.vrings.len() {
            if self.vrings[i].started {
                let addrs = self.ring_addrs(&mem, i)?;
                if let Some(w) = self.worker_index(i) {
                    per_worker[w].push((i as u16, addrs));
                }
            }
        }
        for i in 0..self.vrings.len() {
            let v = &self.vrings[i];
            if v.started || v.addr.is_none() {
                continue;
            }
            if let Err(e) = self.ring_addrs(&mem, i) {
                warn!(
                    "{}: ring {i}'s addresses do not fit the new memory table ({e}); \
                     they are forgotten until SET_VRING_ADDR sets them again",
                    self.info.name
                );
                self.vrings[i].addr = None;
            }
        }
        let mem = Arc::new(mem);
        for (w, rings) in self.workers.iter().zip(per_worker) {
            w.set_memory(mem.clone(), rings)?;
        }
        self.mem = mem;
        Ok(())
    }
}
