//! `Ring`: a driver queue plus what the benchmark tracks per request in flight (which
//! request slot a head belongs to and when it was posted), and waiting on call eventfds.

use std::fs::File;
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use vhost_user_sync::frontend::DriverQueue;
use vhost_user_sync::memory::MemoryTable;

use crate::error::{bail, Context, Result};

/// A finished request.
#[derive(Debug, Clone, Copy)]
pub struct Completion {
    /// The workload's slot the request was posted for.
    pub slot: u32,
    /// Bytes the device says it wrote.
    pub len: u32,
    /// From posting to being seen used.
    pub latency_ns: u64,
}

/// One virtqueue as the load generator drives it.
#[derive(Debug)]
pub struct Ring {
    q: DriverQueue,
    slot_of: Vec<u32>,
    posted: Vec<Instant>,
    busy: Vec<bool>,
    indirect: bool,
}

impl Ring {
    /// Wraps an attached queue of `size` entries; `indirect` when INDIRECT_DESC was
    /// negotiated.
    pub fn new(q: DriverQueue, size: u16, indirect: bool) -> Self {
        let n = usize::from(size);
        Ring {
            q,
            slot_of: vec![0; n],
            posted: vec![Instant::now(); n],
            busy: vec![false; n],
            indirect,
        }
    }

    /// Whether a request of `buffers` buffers fits in the free descriptors.
    pub fn has_room(&self, buffers: usize) -> bool {
        let need = if self.indirect && buffers > 1 {
            1
        } else {
            buffers
        };
        self.q.free_descriptors() >= need
    }

    /// Kicks actually written.
    pub fn kicks(&self) -> u64 {
        self.q.kicks()
    }

    /// The call eventfd.
    pub fn call_fd(&self) -> &File {
        self.q.call_fd()
    }

    /// The queue index.
    pub fn index(&self) -> u16 {
        self.q.index()
    }

    /// Posts the buffers `(gpa, len, device_writable)` of request `slot`, through the
    /// indirect table at `table` when there is one and INDIRECT_DESC was negotiated.
    /// Does not kick.
    pub fn submit(
        &mut self,
        mem: &MemoryTable,
        slot: u32,
        bufs: &[(u64, u32, bool)],
        table: Option<u64>,
    ) -> Result<()> {
        let head = match table {
            Some(t) if self.indirect && bufs.len() > 1 => self.q.add_indirect(mem, t, bufs),
            _ => self.q.add(mem, bufs),
        }
        .context(format_args!("posting on queue {}", self.q.index()))?;
        let h = usize::from(head);
        self.slot_of[h] = slot;
        self.posted[h] = Instant::now();
        self.busy[h] = true;
        Ok(())
    }

    /// Notifies the backend if it wants to be (EVENT_IDX / NO_NOTIFY are honoured).
    pub fn kick(&mut self, mem: &MemoryTable) -> Result<bool> {
        self.q
            .kick(mem)
            .context(format_args!("kicking queue {}", self.q.index()))
    }

    /// Whether the used ring holds entries not yet reaped.
    pub fn has_used(&self, mem: &MemoryTable) -> Result<bool> {
        let idx = mem
            .load::<u16>(self.q.used_gpa() + 2, Ordering::Acquire)
            .context("reading the used index")?;
        Ok(idx != self.q.used_idx())
    }

    /// Reaps every used entry, calling `f` for each; returns how many. `now` is the
    /// time the entries are taken as seen.
    pub fn reap(
        &mut self,
        mem: &MemoryTable,
        now: Instant,
        mut f: impl FnMut(Completion) -> Result<()>,
    ) -> Result<usize> {
        let mut n = 0;
        while let Some(u) = self
            .q
            .pop_used(mem)
            .context(format_args!("reaping queue {}", self.q.index()))?
        {
            let h = usize::from(u.id);
            if !self.busy[h] {
                bail!(
                    "queue {}: the backend used head {} that was not in flight",
                    self.q.index(),
                    u.id
                );
            }
            self.busy[h] = false;
            n += 1;
            f(Completion {
                slot: self.slot_of[h],
                len: u.len,
                latency_ns: now.saturating_duration_since(self.posted[h]).as_nanos() as u64,
            })?;
        }
        Ok(n)
    }
}

/// Sleeps until one of `fds` (call eventfds) fires or `timeout` passes; clears the ones
/// that fired. Returns whether any fired.
pub fn wait_calls<'a>(fds: impl IntoIterator<Item = &'a File>, timeout: Duration) -> Result<bool> {
    let files: Vec<&File> = fds.into_iter().collect();
    let mut pfds: Vec<PollFd<'_>> = files
        .iter()
        .map(|f| PollFd::new(f.as_fd(), PollFlags::POLLIN))
        .collect();
    let t = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
    let n = match poll(&mut pfds, t) {
        Ok(n) => n,
        Err(nix::errno::Errno::EINTR) => return Ok(false),
        Err(e) => bail!("polling call eventfds: {e}"),
    };
    if n == 0 {
        return Ok(false);
    }
    for (p, f) in pfds.iter().zip(&files) {
        if p.revents().is_some_and(|r| r.contains(PollFlags::POLLIN)) {
            let mut b = [0u8; 8];
            // Non-blocking eventfd: a failed read means someone else cleared it.
            let _ = nix::unistd::read(f, &mut b);
        }
    }
    Ok(true)
}
