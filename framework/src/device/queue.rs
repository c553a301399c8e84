//! `Queue`: what device code sees of one running virtqueue.

use std::sync::Arc;

use crate::memory::MemoryTable;
use crate::queue::{DescriptorChain, QueueError, Virtqueue};

/// One started, enabled queue, lent to device code for a batch of work.
///
/// Chains popped here belong to the device until it uses them ([`Self::add_used`]) or
/// hands them back ([`Self::give_back`]). It may keep them across calls and events and
/// use them in any order; with `VIRTIO_F_IN_ORDER` negotiated the framework still
/// returns them to the driver in the order they were made available. The same code runs
/// on split and packed rings.
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
///         queue.add_used(&chain, n)?;
///     }
///     Ok(())
/// }
/// ```
pub struct Queue<'a> {
    pub(crate) vq: &'a mut Virtqueue,
    pub(crate) mem: &'a Arc<MemoryTable>,
    /// `pop` found the ring empty.
    pub(crate) ran_dry: bool,
    /// Chains this loan may still hand out: a ring's worth. A driver that refills as fast
    /// as the device takes (or buffers that overlap the avail ring, which the device's
    /// own writes refill) would otherwise keep device code in one call for ever, and the
    /// worker could not answer the connection.
    budget: u32,
    /// `pop` returned `None` because the budget was spent, not because the ring is empty:
    /// the worker runs the queue again after it has looked at its commands and events.
    pub(crate) budget_spent: bool,
}

impl<'a> Queue<'a> {
    pub(crate) fn new(vq: &'a mut Virtqueue, mem: &'a Arc<MemoryTable>) -> Self {
        let budget = u32::from(vq.size()).max(1);
        Queue {
            vq,
            mem,
            ran_dry: false,
            budget,
            budget_spent: false,
        }
    }

    /// The queue's index.
    pub fn index(&self) -> u16 {
        self.vq.index()
    }

    /// Guest memory, for readers and writers over chains.
    pub fn mem(&self) -> &'a MemoryTable {
        self.mem
    }

    /// A handle on the guest memory this queue's chains point into, for I/O that outlives
    /// the call (requests submitted to the kernel and completed later): the mappings stay
    /// in place while a handle is held, also after the frontend has sent a new memory
    /// table.
    ///
    /// # Example
    /// ```no_run
    /// # use vhost_user_sync::device::Queue;
    /// # fn submit(queue: &mut Queue<'_>) {
    /// let mem = queue.shared_mem();
    /// // ... start I/O into the chain's buffers, keep `mem` until it completes
    /// # drop(mem);
    /// # }
    /// ```
    pub fn shared_mem(&self) -> Arc<MemoryTable> {
        Arc::clone(self.mem)
    }

    /// Queue size (how many chains the driver can have outstanding at most).
    pub fn size(&self) -> u16 {
        self.vq.size()
    }

    /// Whether the driver negotiated `VIRTIO_F_IN_ORDER` (the framework keeps the order;
    /// a device needs this only to know that completing out of order gains nothing).
    pub fn in_order(&self) -> bool {
        self.vq.in_order()
    }

    /// How many chains the device holds on this queue.
    pub fn in_flight(&self) -> u32 {
        self.vq.in_flight()
    }

    /// The next chain, or `None` when the ring is empty or broken (a broken ring is
    /// logged, reported to the frontend and stays stopped until restarted). Chains the
    /// device handed back come first. One call of the device takes at most a ring's worth
    /// of chains; after that `pop` says `None` and the framework calls the device again
    /// soon, once the worker has seen to its commands and other events.
    pub fn pop(&mut self) -> Option<DescriptorChain> {
        let mut chain = DescriptorChain::start(0);
        self.pop_into(&mut chain).then_some(chain)
    }

    /// Pops into `chain` (replacing it); whether a chain was taken.
    #[inline]
    fn pop_into(&mut self, chain: &mut DescriptorChain) -> bool {
        if self.budget == 0 {
            self.budget_spent = true;
            return false;
        }
        match self.vq.pop_into(self.mem, chain) {
            Ok(true) => {
                self.budget -= 1;
                true
            }
            Ok(false) => {
                self.ran_dry = true;
                false
            }
            Err(_) => false,
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
    /// # fn f(queue: &mut Queue<'_>) -> Result<(), vhost_user_sync::queue::QueueError> {
    /// let mut batch = Vec::with_capacity(32);
    /// while queue.pop_batch(&mut batch, 32) > 0 {
    ///     for chain in batch.drain(..) {
    ///         queue.add_used(&chain, 0)?;
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn pop_batch(&mut self, out: &mut Vec<DescriptorChain>, max: usize) -> usize {
        let before = out.len();
        // Each chain is walked where it stays: a slot is pushed, then filled.
        for _ in 0..max {
            out.push(DescriptorChain::start(0));
            let last = out.len() - 1;
            if !self.pop_into(&mut out[last]) {
                out.truncate(last);
                break;
            }
        }
        out.len() - before
    }

    /// Whether chains are waiting (made available by the driver, or handed back).
    pub fn has_available(&self) -> bool {
        self.vq.has_available(self.mem)
    }

    /// Returns `chain` to the driver with `len` bytes written into it (clamped to its
    /// writable length).
    ///
    /// Fails, changing nothing, for a chain this queue does not hold: one used or handed
    /// back already, or one from another queue or from before the ring was restarted.
    #[inline]
    pub fn add_used(&mut self, chain: &DescriptorChain, len: u32) -> Result<(), QueueError> {
        self.vq.add_used(self.mem, chain, len)
    }

    /// Hands back `chain` unused (the device took more than it could use): the next
    /// [`Self::pop`] returns it again. Only a chain the device holds can be handed back.
    pub fn give_back(&mut self, chain: &DescriptorChain) -> Result<(), QueueError> {
        self.vq.give_back(chain)
    }

    /// Signals the guest now if it wants a signal for what was used so far. The
    /// framework also does this after every batch.
    pub fn notify(&mut self) {
        self.vq.signal(self.mem);
    }
}
