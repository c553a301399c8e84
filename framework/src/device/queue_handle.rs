//! `Queue`: what device code sees of one running virtqueue.

use std::fs::File;

use log::error;

use crate::memory::{DirtyLog, MemoryTable};
use crate::queue::{DescriptorChain, QueueError, SplitQueue};

/// One started, enabled queue, lent to device code for a batch of work.
///
/// # Example
/// ```no_run
/// # use vhost_user_sync::device::{Queue, DeviceError};
/// # use std::io::Write;
/// fn echo(queue: &mut Queue<'_>) -> Result<(), DeviceError> {
///     while let Some(chain) = queue.pop() {
///         let mut data = Vec::new();
///         std::io::copy(&mut chain.reader(queue.mem()), &mut data)?;
///         let mut w = chain.writer(queue.mem());
///         w.write_all(&data)?;
///         let n = w.written() as u32;
///         queue.add_used(&chain, n);
///     }
///     Ok(())
/// }
/// ```
pub struct Queue<'a> {
    pub(crate) index: u16,
    pub(crate) ring: &'a mut SplitQueue,
    pub(crate) mem: &'a MemoryTable,
    pub(crate) call: Option<&'a File>,
    pub(crate) error: &'a mut Option<QueueError>,
    pub(crate) log: Option<&'a DirtyLog>,
    /// `pop` found the ring empty.
    pub(crate) ran_dry: bool,
}

impl<'a> Queue<'a> {
    /// The queue's index.
    pub fn index(&self) -> u16 {
        self.index
    }

    /// Guest memory, for readers and writers over chains.
    pub fn mem(&self) -> &'a MemoryTable {
        self.mem
    }

    /// The next chain, or `None` when the ring is empty or broken (a broken ring is
    /// logged and stays stopped until the frontend restarts it).
    pub fn pop(&mut self) -> Option<DescriptorChain> {
        if self.error.is_some() {
            return None;
        }
        match self.ring.pop(self.mem) {
            Ok(None) => {
                self.ran_dry = true;
                None
            }
            Ok(c) => c,
            Err(e) => {
                *self.error = Some(e);
                None
            }
        }
    }

    /// Pops up to `max` chains onto `out`; returns how many. Taking a batch before
    /// working on it lets the reads of its descriptors (and then the accesses to its
    /// buffers) overlap instead of each chain waiting for its own cache lines, which the
    /// driver usually wrote from another CPU.
    ///
    /// # Example
    /// ```no_run
    /// # use vhost_user_sync::device::Queue;
    /// # fn f(queue: &mut Queue<'_>) {
    /// let mut batch = Vec::with_capacity(32);
    /// while queue.pop_batch(&mut batch, 32) > 0 {
    ///     for chain in batch.drain(..) {
    ///         queue.add_used(&chain, 0);
    ///     }
    /// }
    /// # }
    /// ```
    pub fn pop_batch(&mut self, out: &mut Vec<DescriptorChain>, max: usize) -> usize {
        let before = out.len();
        out.extend(std::iter::from_fn(|| self.pop()).take(max));
        out.len() - before
    }

    /// Whether the guest has chains waiting.
    pub fn has_available(&self) -> bool {
        self.error.is_none() && self.ring.has_available(self.mem).unwrap_or(false)
    }

    /// Returns `chain` to the guest with `len` bytes written into it.
    pub fn add_used(&mut self, chain: &DescriptorChain, len: u32) {
        if let Some(log) = self.log {
            let mut left = u64::from(len);
            for d in chain.writable() {
                if left == 0 {
                    break;
                }
                let n = left.min(d.len.into());
                log.mark(d.addr, n);
                left -= n;
            }
        }
        if let Err(e) = self.ring.add_used(self.mem, chain.head(), len) {
            *self.error = Some(e);
        }
    }

    /// Puts the last `count` popped chains back (they will be popped again).
    pub fn undo_pop(&mut self, count: u16) {
        self.ring.go_back(count);
    }

    /// Signals the guest now if it wants a signal for what was used so far. The
    /// framework also does this after every batch.
    pub fn notify(&mut self) {
        signal_if_needed(self.index, self.ring, self.mem, self.call, self.error);
    }
}

pub(crate) fn signal_if_needed(
    index: u16,
    ring: &mut SplitQueue,
    mem: &MemoryTable,
    call: Option<&File>,
    error: &mut Option<QueueError>,
) {
    match ring.needs_notification(mem) {
        Ok(true) => {
            if let Some(call) = call {
                if let Err(e) = nix::unistd::write(call, &1u64.to_ne_bytes()) {
                    if e != nix::errno::Errno::EAGAIN {
                        error!("queue {index}: call eventfd write failed: {e}");
                    }
                }
            }
        }
        Ok(false) => {}
        Err(e) => *error = Some(e),
    }
}

/// The running queues of one worker, for device events that feed queues (a tap that
/// became readable fills the RX queue).
pub struct Queues<'a> {
    pub(crate) inner: &'a mut dyn QueueAccess,
}

impl Queues<'_> {
    /// Runs `f` on queue `index` if it is started and enabled; signals the guest after.
    pub fn with_queue<R>(&mut self, index: u16, f: impl FnOnce(&mut Queue<'_>) -> R) -> Option<R> {
        let mut out = None;
        let mut f = Some(f);
        self.inner.with_queue(index, &mut |q| {
            if let Some(f) = f.take() {
                out = Some(f(q));
            }
        });
        out
    }
}

pub(crate) trait QueueAccess {
    fn with_queue(&mut self, index: u16, f: &mut dyn FnMut(&mut Queue<'_>));
}
