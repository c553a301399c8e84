//! `Virtqueue`: everything about one running ring: its layout, the chains in flight,
//! notification fds, broken state and dirty logging.

use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use log::{error, warn};

use super::in_flight::InFlight;
use super::{DescriptorChain, QueueError, QueueStats, Ring, RingState, StopAccount, Taken};
use crate::memory::{DirtyLog, MemoryTable};

/// Every ring start gets its own generation, so a chain from another ring, an earlier
/// start of the same ring or another connection is recognised.
static GENERATIONS: AtomicU64 = AtomicU64::new(1);

/// A running virtqueue, device side.
///
/// It hands out chains with an identity ([`Self::pop`]), takes them back used
/// ([`Self::add_used`]) or unused ([`Self::give_back`]) in any order, keeps IN_ORDER
/// when it was negotiated (used entries are written in the order the driver made chains
/// available, refused chains included), and accounts for the chains still out when the
/// ring stops ([`Self::stop`]).
///
/// # Example
/// ```
/// # use vhost_user_sync::queue::{Descriptor, Ring, RingAddrs, RingState, Virtqueue};
/// # use vhost_user_sync::memory::MemoryTable;
/// # use vhost_user_sync::protocol::payload::MemoryRegionDesc;
/// # use std::sync::atomic::Ordering;
/// # let fd = nix::sys::memfd::memfd_create("g", nix::sys::memfd::MFdFlags::empty()).unwrap();
/// # let file = std::fs::File::from(fd); file.set_len(0x10000).unwrap();
/// # let mem = MemoryTable::from_regions(&[MemoryRegionDesc { guest_phys_addr: 0, memory_size: 0x10000, userspace_addr: 0, mmap_offset: 0 }], vec![file]).unwrap();
/// let addrs = RingAddrs { desc: 0x0, avail: 0x1000, used: 0x2000 };
/// let ring = Ring::new(&mem, 8, addrs, RingState::initial(false), false, false).unwrap();
/// let mut vq = Virtqueue::new(0, ring, false);
/// // The driver offers descriptor 0, a 64-byte writable buffer.
/// let d = Descriptor { addr: 0x4000, len: 64, flags: Descriptor::F_WRITE, next: 0 };
/// mem.write(0, &d.to_bytes()).unwrap();
/// mem.store::<u16>(0x1004, 0, Ordering::Relaxed).unwrap();
/// mem.store::<u16>(0x1002, 1, Ordering::Release).unwrap();
/// let chain = vq.pop(&mem).unwrap().unwrap();
/// vq.add_used(&mem, &chain, 64).unwrap();
/// assert!(vq.add_used(&mem, &chain, 64).is_err()); // used twice
/// ```
#[derive(Debug)]
pub struct Virtqueue {
    name: Arc<str>,
    index: u16,
    ring: Ring,
    in_flight: InFlight,
    /// Chains handed back, by buffer id: offered again as they were checked (on a
    /// packed ring their slots may already hold used descriptors).
    returned: Vec<Option<DescriptorChain>>,
    generation: u64,
    broken: Option<QueueError>,
    stats: Arc<QueueStats>,
    buffer_log: Option<Arc<DirtyLog>>,
    kick: Option<File>,
    call: Option<Arc<File>>,
    /// One call to write regardless of suppression ([`Virtqueue::owe_call`]).
    call_owed: bool,
    err: Option<Arc<File>>,
    enabled: bool,
}

impl Virtqueue {
    /// Queue `index` running on `ring`; with `in_order`, used entries go back in avail
    /// order. Starts enabled, without fds.
    pub fn new(index: u16, ring: Ring, in_order: bool) -> Self {
        let size = ring.size();
        Virtqueue {
            name: Arc::from("virtqueue"),
            index,
            ring,
            in_flight: InFlight::new(size, in_order),
            returned: Vec::new(),
            generation: GENERATIONS.fetch_add(1, Ordering::Relaxed),
            broken: None,
            stats: Arc::default(),
            buffer_log: None,
            kick: None,
            call: None,
            call_owed: false,
            err: None,
            enabled: true,
        }
    }

    /// Names the device in log lines.
    pub fn with_name(mut self, name: &str) -> Self {
        self.name = Arc::from(name);
        self
    }

    /// Queue index.
    pub fn index(&self) -> u16 {
        self.index
    }

    /// The ring layout.
    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// The ring layout, for what only it knows (tests, benchmarks).
    pub fn ring_mut(&mut self) -> &mut Ring {
        &mut self.ring
    }

    /// Queue size.
    pub fn size(&self) -> u16 {
        self.ring.size()
    }

    /// Whether used entries go back in avail order (IN_ORDER).
    pub fn in_order(&self) -> bool {
        self.in_flight.in_order()
    }

    /// Chains taken from the ring so far, refused ones included (a chain handed back and
    /// popped again counts once).
    pub fn taken(&self) -> u64 {
        self.in_flight.taken()
    }

    /// Chains the device holds (popped, neither used nor handed back and popped again).
    pub fn in_flight(&self) -> u32 {
        self.in_flight.outstanding()
    }

    /// Chains refused so far (returned to the guest with length 0).
    pub fn invalid_chains(&self) -> u64 {
        self.stats.malformed()
    }

    /// Counts into `stats` from now on (the session keeps one per queue for the whole
    /// connection, across restarts of the ring).
    pub fn set_stats(&mut self, stats: Arc<QueueStats>) {
        self.stats = stats;
    }

    /// The ring's counters.
    pub fn stats(&self) -> &QueueStats {
        &self.stats
    }

    /// Why the ring is broken, if it is.
    pub fn broken(&self) -> Option<&QueueError> {
        self.broken.as_ref()
    }

    /// Whether the ring is processed: enabled and not broken.
    pub fn is_live(&self) -> bool {
        self.enabled && self.broken.is_none()
    }

    /// Enabled (SET_VRING_ENABLE).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Enables or disables the ring.
    pub fn set_enabled(&mut self, enabled: bool) {
        self.enabled = enabled;
    }

    /// The kick eventfd, if there is one.
    pub fn kick(&self) -> Option<&File> {
        self.kick.as_ref()
    }

    /// Sets the kick eventfd.
    pub fn set_kick(&mut self, kick: Option<File>) {
        self.kick = kick;
    }

    /// Sets the call eventfd (SET_VRING_CALL); an owed call is written to it.
    pub fn set_call(&mut self, call: Option<Arc<File>>) {
        self.call = call;
        self.pay_owed_call();
    }

    /// Asks for one call (interrupt) regardless of notification suppression, written
    /// as soon as there is a call eventfd: a ring resuming after its previous process
    /// died owes the driver the interrupt that process may not have sent.
    pub fn owe_call(&mut self) {
        self.call_owed = true;
        self.pay_owed_call();
    }

    fn pay_owed_call(&mut self) {
        if self.call_owed && self.call.is_some() {
            self.call_owed = false;
            self.write_call();
        }
    }

    fn write_call(&self) {
        let Some(call) = &self.call else {
            return;
        };
        self.stats.called();
        if let Err(e) = nix::unistd::write(call.as_ref(), &1u64.to_ne_bytes()) {
            if e != nix::errno::Errno::EAGAIN {
                error!(
                    "{}: queue {}: call eventfd write failed: {e}",
                    self.name, self.index
                );
            }
        }
    }

    /// Sets the err eventfd (SET_VRING_ERR), written once when the ring breaks.
    pub fn set_err(&mut self, err: Option<Arc<File>>) {
        self.err = err;
    }

    /// Logs the device's writes into chains' buffers (None: stop logging).
    pub fn set_buffer_log(&mut self, log: Option<Arc<DirtyLog>>) {
        self.buffer_log = log;
    }

    /// Logs the device's ring writes at guest-physical `log_gpa` (None: stop).
    pub fn set_ring_log(&mut self, log: Option<(Arc<DirtyLog>, u64)>) {
        self.ring.set_used_log(log);
    }

    /// Points the ring at `addrs` (the same ring in a new memory table).
    pub fn set_addrs(&mut self, addrs: super::RingAddrs) {
        self.ring.set_addrs(addrs);
    }

    /// Marks the ring broken with `e` (the first cause is kept), logs it and writes the
    /// err eventfd once.
    pub fn set_broken(&mut self, e: QueueError) {
        let name = &self.name;
        if self.broken.is_some() {
            return;
        }
        error!(
            "{name}: queue {} is broken and stays stopped until restarted: {e}",
            self.index
        );
        if let Some(err) = &self.err {
            if let Err(e) = nix::unistd::write(err.as_ref(), &1u64.to_ne_bytes()) {
                if e != nix::errno::Errno::EAGAIN {
                    warn!(
                        "{name}: queue {}: err eventfd write failed: {e}",
                        self.index
                    );
                }
            }
        }
        self.broken = Some(e);
        self.stats.set_broken(true);
    }

    /// Whether chains are waiting: handed back, or made available by the driver.
    pub fn has_available(&self, mem: &MemoryTable) -> bool {
        self.broken.is_none()
            && (self.in_flight.has_returned() || self.ring.has_available(mem).unwrap_or(true))
    }

    /// The next chain: a handed-back one first, then what the driver made available.
    /// Chains that break the rules are refused (returned with length 0, in their turn
    /// with IN_ORDER) and skipped. `Ok(None)`: nothing available. An error breaks the
    /// ring (recorded; later pops return `Ok(None)`).
    pub fn pop(&mut self, mem: &MemoryTable) -> Result<Option<DescriptorChain>, QueueError> {
        let mut chain = DescriptorChain::start(0);
        Ok(self.pop_into(mem, &mut chain)?.then_some(chain))
    }

    /// [`Self::pop`] into `chain` (replacing what it held): `Ok(true)` when a chain was
    /// taken. Walking straight into the place the chain is kept saves moving it out
    /// through every layer (the device API's batch pop uses this).
    #[inline]
    pub fn pop_into(
        &mut self,
        mem: &MemoryTable,
        chain: &mut DescriptorChain,
    ) -> Result<bool, QueueError> {
        if self.broken.is_some() {
            return Ok(false);
        }
        match self.pop_inner(mem, chain) {
            Ok(taken) => Ok(taken),
            Err(e) => Err(self.break_with(e)),
        }
    }

    #[cold]
    fn break_with(&mut self, e: QueueError) -> QueueError {
        let copy = e.to_string();
        self.set_broken(e);
        QueueError::Broken(copy)
    }

    #[inline]
    fn pop_inner(
        &mut self,
        mem: &MemoryTable,
        chain: &mut DescriptorChain,
    ) -> Result<bool, QueueError> {
        // Chains refused in this call. More than a ring's worth means the driver's side
        // keeps moving while the device only refuses (for example a used ring laid over
        // the avail ring: each used entry offers new ones), and without a bound this
        // call would never return.
        let mut refused: u16 = 0;
        loop {
            if self.in_flight.has_returned() {
                if let Some(t) = self.in_flight.take_returned() {
                    if let Some(c) = self
                        .returned
                        .get_mut(usize::from(t.id))
                        .and_then(Option::take)
                    {
                        *chain = c;
                        return Ok(true);
                    }
                }
            }
            match self.ring.next_into(mem, chain)? {
                Taken::Empty => return Ok(false),
                Taken::Chain => {
                    let seq = self.in_flight.begin(
                        chain.id(),
                        chain.token.position,
                        chain.token.slots,
                    )?;
                    chain.token.generation = self.generation;
                    chain.token.seq = seq;
                    self.stats.taken();
                    return Ok(true);
                }
                Taken::Refused {
                    id,
                    position,
                    slots,
                    error,
                } => {
                    if refused == self.ring.size() {
                        return Err(QueueError::RefusedRingful {
                            size: self.ring.size(),
                        });
                    }
                    refused += 1;
                    self.count_invalid(&error);
                    let (ring, in_flight) = (&mut self.ring, &mut self.in_flight);
                    in_flight.refuse(id, position, slots, |(id, len, slots)| {
                        ring.add_used(mem, id, len, slots)
                    })?;
                }
            }
        }
    }

    fn count_invalid(&mut self, e: &QueueError) {
        self.stats.refused();
        let n = self.stats.malformed();
        if n <= 10 || n.is_multiple_of(1000) {
            warn!(
                "{}: queue {}: dropping invalid chain (#{n}): {e}",
                self.name, self.index
            );
        }
    }

    fn check_own(&self, chain: &DescriptorChain) -> Result<(), QueueError> {
        if chain.token.generation != self.generation {
            return Err(QueueError::ForeignChain {
                id: chain.id(),
                queue: self.index,
            });
        }
        Ok(())
    }

    /// Returns `chain` to the driver with `len` bytes written into it (at most its
    /// writable length). Marks the written bytes in the dirty log while logging.
    ///
    /// A chain that is not held by the device (used already, handed back, from another
    /// ring or an earlier start of this one) is refused with an error and changes
    /// nothing. On a broken ring nothing is written.
    pub fn add_used(
        &mut self,
        mem: &MemoryTable,
        chain: &DescriptorChain,
        len: u32,
    ) -> Result<(), QueueError> {
        self.check_own(chain)?;
        if self.broken.is_some() {
            return Ok(());
        }
        let len = len.min(chain.writable_len());
        let (ring, in_flight) = (&mut self.ring, &mut self.in_flight);
        let written = in_flight.complete(chain.id(), chain.token.seq, len, |(id, len, slots)| {
            ring.add_used(mem, id, len, slots)
        });
        match written {
            // Not held: nothing was written, nothing is logged.
            Err(e @ (QueueError::ChainNotInFlight { .. } | QueueError::BadIndex { .. })) => {
                return Err(e)
            }
            Err(e) => return Err(self.break_with(e)),
            Ok(()) => {}
        }
        self.stats.completed(chain.readable_len(), len);
        // The bytes are marked before the ring stops (and the log is read), whether the
        // used entry went out now or waits for its turn with IN_ORDER: as many as the
        // used length says, or as far as guest memory may have been written if that is
        // more (a read that failed half way, a length the device got wrong).
        if self.buffer_log.is_some() {
            self.log_written(chain, len.max(chain.reach()));
        }
        Ok(())
    }

    /// Marks the first `len` bytes of `chain`'s writable buffers in the dirty log.
    #[cold]
    fn log_written(&self, chain: &DescriptorChain, len: u32) {
        if let Some(log) = &self.buffer_log {
            let mut left = u64::from(len.min(chain.writable_len()));
            for d in chain.writable() {
                if left == 0 {
                    break;
                }
                let n = left.min(d.len.into());
                log.mark(d.addr, n);
                left -= n;
            }
        }
    }

    /// Hands back `chain` unused: the next [`Self::pop`] offers it again (handed-back
    /// chains come first, oldest first). Only a chain the device holds can be handed
    /// back.
    pub fn give_back(&mut self, chain: &DescriptorChain) -> Result<(), QueueError> {
        self.check_own(chain)?;
        self.in_flight.give_back(chain.id(), chain.token.seq)?;
        // Whatever the device wrote into it before changing its mind is guest memory
        // written all the same.
        self.log_written(chain, chain.reach());
        chain.clear_reach();
        let id = usize::from(chain.id());
        if self.returned.len() <= id {
            self.returned.resize_with(id + 1, || None);
        }
        self.returned[id] = Some(chain.clone());
        Ok(())
    }

    /// Stops the ring and says where it resumes (what GET_VRING_BASE returns).
    ///
    /// Chains the device still holds are accounted for: the unused ones at the end of the
    /// avail order are read again after a restart (the ring resumes at the oldest of
    /// them); held chains older than a used one cannot be, and are returned to the
    /// driver with length 0. Chains popped afterwards are not accepted back. With an
    /// in-flight area, held chains stay recorded there instead and the next start
    /// resubmits them.
    pub fn stop(&mut self, mem: &MemoryTable) -> (RingState, StopAccount) {
        let (ring, in_flight) = (&mut self.ring, &mut self.in_flight);
        let broken = self.broken.is_some();
        if ring.tracks_in_flight() {
            let account = in_flight.stop_keeping();
            if !broken {
                self.signal(mem);
            }
            self.returned.clear();
            self.generation = GENERATIONS.fetch_add(1, Ordering::Relaxed);
            return (self.ring.state(), account);
        }
        let account = in_flight
            .stop(|(id, len, slots)| {
                if broken {
                    Ok(())
                } else {
                    ring.add_used(mem, id, len, slots)
                }
            })
            .unwrap_or_default();
        if let Some(t) = account.resume_at {
            ring.rewind(t.position);
        }
        if !broken {
            if account.returned_empty > 0 {
                self.signal(mem);
            } else {
                let _ = self.ring.publish_used(mem);
            }
        }
        self.returned.clear();
        self.generation = GENERATIONS.fetch_add(1, Ordering::Relaxed);
        (self.ring.state(), account)
    }

    /// Asks the driver not to kick while the device drains the ring.
    pub fn disable_notification(&mut self, mem: &MemoryTable) -> Result<(), QueueError> {
        self.ring.disable_notification(mem)
    }

    /// Asks the driver to kick for the next entry; returns whether entries arrived in the
    /// meantime (they came without a kick: process again).
    pub fn enable_notification(&mut self, mem: &MemoryTable) -> Result<bool, QueueError> {
        self.ring.enable_notification(mem)
    }

    /// Makes used entries visible and writes the call eventfd if the driver wants an
    /// interrupt for them.
    pub fn signal(&mut self, mem: &MemoryTable) {
        self.stats.set_in_flight(self.in_flight.outstanding());
        match self.ring.needs_notification(mem) {
            Ok(true) => self.write_call(),
            Ok(false) => {}
            Err(e) => self.set_broken(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{Descriptor, RingAddrs};

    const A: RingAddrs = RingAddrs {
        desc: 0,
        avail: 0x1000,
        used: 0x2000,
    };
    const SIZE: u16 = 8;

    /// A ring of 8 whose descriptors 0..8 are 8-byte writable buffers, except those in
    /// `bad` (outside memory: their chains are refused).
    fn setup(in_order: bool, bad: &[u16]) -> (MemoryTable, Virtqueue) {
        let m = crate::memory::test_table(0x10000);
        for i in 0..SIZE {
            let d = Descriptor {
                addr: if bad.contains(&i) {
                    0xffff_0000
                } else {
                    0x4000 + 0x100 * u64::from(i)
                },
                len: 8,
                flags: Descriptor::F_WRITE,
                next: 0,
            };
            m.write(16 * u64::from(i), &d.to_bytes()).unwrap();
        }
        let ring = Ring::new(&m, SIZE, A, RingState::initial(false), false, false).unwrap();
        (m, Virtqueue::new(0, ring, in_order))
    }

    /// The driver offers `heads` after what it offered before.
    fn offer(m: &MemoryTable, heads: &[u16]) {
        let mut idx = m.load::<u16>(A.avail + 2, Ordering::Acquire).unwrap();
        for &h in heads {
            let at = A.avail + 4 + 2 * u64::from(idx % SIZE);
            m.store::<u16>(at, h, Ordering::Relaxed).unwrap();
            idx = idx.wrapping_add(1);
        }
        m.store::<u16>(A.avail + 2, idx, Ordering::Release).unwrap();
    }

    /// The used ring as the driver sees it: (id, len) per published entry.
    fn used(m: &MemoryTable, vq: &mut Virtqueue) -> Vec<(u32, u32)> {
        vq.signal(m);
        let n = m.load::<u16>(A.used + 2, Ordering::Acquire).unwrap();
        (0..n)
            .map(|i| {
                let at = A.used + 4 + 8 * u64::from(i % SIZE);
                (
                    m.load::<u32>(at, Ordering::Relaxed).unwrap(),
                    m.load::<u32>(at + 4, Ordering::Relaxed).unwrap(),
                )
            })
            .collect()
    }

    fn pop(m: &MemoryTable, vq: &mut Virtqueue) -> DescriptorChain {
        vq.pop(m).unwrap().expect("a chain")
    }

    /// A log over the test memory, and chain 0 made one writable buffer over pages 5, 6
    /// and 7.
    fn logging(vq: &mut Virtqueue, m: &MemoryTable) -> Arc<DirtyLog> {
        let d = Descriptor {
            addr: 0x5000,
            len: 0x3000,
            flags: Descriptor::F_WRITE,
            next: 0,
        };
        m.write(0, &d.to_bytes()).unwrap();
        let log = crate::memory::test_log();
        vq.set_buffer_log(Some(log.clone()));
        log
    }

    use crate::memory::dirty_pages;

    #[test]
    fn what_the_device_wrote_is_logged_whatever_length_it_reports() {
        use std::io::Write;
        let (m, mut vq) = setup(false, &[]);
        let log = logging(&mut vq, &m);
        offer(&m, &[0]);
        let c = pop(&m, &mut vq);
        c.writer(&m).write_all(&[7u8; 0x2000]).unwrap();
        // A request that failed after its data was written: used length 0.
        vq.add_used(&m, &c, 0).unwrap();
        assert_eq!(dirty_pages(&log), [5, 6]);
    }

    #[test]
    fn buffers_handed_to_the_kernel_are_logged_even_if_the_read_fails() {
        let (m, mut vq) = setup(false, &[]);
        let log = logging(&mut vq, &m);
        offer(&m, &[0]);
        let c = pop(&m, &mut vq);
        let (_iovecs, bytes) = c.writer(&m).host_iovecs(0x3000).unwrap();
        assert_eq!(bytes, 0x3000);
        // An I/O error: only the status byte is reported.
        vq.add_used(&m, &c, 1).unwrap();
        assert_eq!(dirty_pages(&log), [5, 6, 7]);
    }

    #[test]
    fn a_chain_written_then_handed_back_is_logged() {
        use std::io::Write;
        let (m, mut vq) = setup(false, &[]);
        let log = logging(&mut vq, &m);
        offer(&m, &[0]);
        let c = pop(&m, &mut vq);
        c.writer(&m).write_all(&[1u8; 0x800]).unwrap();
        vq.give_back(&c).unwrap();
        assert_eq!(dirty_pages(&log), [5]);
        // Offered again and used short: the earlier write stays logged, nothing more.
        let again = pop(&m, &mut vq);
        vq.add_used(&m, &again, 0).unwrap();
        assert_eq!(dirty_pages(&log), [5]);
    }

    #[test]
    fn a_refused_chain_is_returned_empty_at_once_without_in_order() {
        let (m, mut vq) = setup(false, &[1]);
        offer(&m, &[0, 1, 2]);
        let a = pop(&m, &mut vq);
        let c = pop(&m, &mut vq);
        assert_eq!((a.id(), c.id(), vq.invalid_chains()), (0, 2, 1));
        assert_eq!(used(&m, &mut vq), vec![(1, 0)]);
        vq.add_used(&m, &c, 8).unwrap();
        vq.add_used(&m, &a, 4).unwrap();
        assert_eq!(used(&m, &mut vq), vec![(1, 0), (2, 8), (0, 4)]);
    }

    #[test]
    fn in_order_keeps_avail_order_across_refusals_and_late_completions() {
        let (m, mut vq) = setup(true, &[1]);
        offer(&m, &[0, 1, 2, 3]);
        let a = pop(&m, &mut vq);
        let c = pop(&m, &mut vq); // 1 was refused on the way
        let d = pop(&m, &mut vq);
        vq.add_used(&m, &d, 3).unwrap();
        vq.add_used(&m, &c, 2).unwrap();
        assert!(used(&m, &mut vq).is_empty(), "chain 0 is still held");
        vq.add_used(&m, &a, 1).unwrap();
        assert_eq!(used(&m, &mut vq), vec![(0, 1), (1, 0), (2, 2), (3, 3)]);
        assert_eq!(vq.in_flight(), 0);
    }

    #[test]
    fn a_chain_handed_back_from_the_middle_comes_again_first() {
        let (m, mut vq) = setup(false, &[]);
        offer(&m, &[5, 6, 7]);
        let [a, b, c] = [0; 3].map(|_| pop(&m, &mut vq));
        vq.give_back(&b).unwrap();
        assert!(vq.give_back(&b).is_err(), "handed back twice");
        assert!(
            vq.add_used(&m, &b, 0).is_err(),
            "used after being handed back"
        );
        let again = pop(&m, &mut vq);
        assert_eq!(again.id(), 6);
        assert!(vq.pop(&m).unwrap().is_none());
        for ch in [&c, &again, &a] {
            vq.add_used(&m, ch, 1).unwrap();
        }
        assert_eq!(used(&m, &mut vq), vec![(7, 1), (6, 1), (5, 1)]);
    }

    #[test]
    fn chains_used_twice_or_from_elsewhere_change_nothing() {
        let (m, mut vq) = setup(false, &[]);
        let (_, mut other) = setup(false, &[]);
        offer(&m, &[0, 1]);
        let a = pop(&m, &mut vq);
        vq.add_used(&m, &a, 8).unwrap();
        assert!(matches!(
            vq.add_used(&m, &a, 8),
            Err(QueueError::ChainNotInFlight { id: 0 })
        ));
        let b = pop(&m, &mut vq);
        assert!(matches!(
            other.add_used(&m, &b, 8),
            Err(QueueError::ForeignChain { id: 1, .. })
        ));
        assert!(other.give_back(&b).is_err());
        assert_eq!(used(&m, &mut vq), vec![(0, 8)]);
        assert!(vq.broken().is_none());
        // After a stop the chain is stale.
        vq.stop(&m);
        assert!(matches!(
            vq.add_used(&m, &b, 8),
            Err(QueueError::ForeignChain { .. })
        ));
    }

    #[test]
    fn stop_reads_the_unused_tail_again_and_returns_older_chains_empty() {
        let (m, mut vq) = setup(false, &[]);
        offer(&m, &[0, 1, 2, 3]);
        let [a, b, _c, _d] = [0; 4].map(|_| pop(&m, &mut vq));
        vq.add_used(&m, &b, 8).unwrap();
        let (state, account) = vq.stop(&m);
        // 2 and 3 resume; 0 sits before a used chain and goes back empty.
        assert_eq!(state, RingState::Split { next_avail: 2 });
        assert_eq!((account.rewound, account.returned_empty), (2, 1));
        assert_eq!(used(&m, &mut vq), vec![(1, 8), (0, 0)]);
        drop(a);
    }

    #[test]
    fn a_head_offered_again_while_held_breaks_the_ring() {
        let (m, mut vq) = setup(false, &[]);
        offer(&m, &[4, 4]);
        let _a = pop(&m, &mut vq);
        assert!(vq.pop(&m).is_err());
        assert!(matches!(
            vq.broken(),
            Some(QueueError::IdInFlight { id: 4 })
        ));
        assert!(
            vq.pop(&m).unwrap().is_none(),
            "a broken ring offers nothing"
        );
    }

    #[test]
    fn a_used_ring_over_the_avail_ring_cannot_keep_pop_refusing() {
        let m = crate::memory::test_table(0x10000);
        let outside = Descriptor {
            addr: 0xffff_0000,
            len: 8,
            flags: 0,
            next: 0,
        };
        // Descriptor 0 (every head here) is refused; the used index is the avail index,
        // so each refusal offers another entry.
        m.write(0, &outside.to_bytes()).unwrap();
        let a = RingAddrs { used: A.avail, ..A };
        m.store::<u16>(A.avail + 2, 4, Ordering::Release).unwrap();
        let ring = Ring::new(&m, 8, a, RingState::initial(false), false, false).unwrap();
        let mut vq = Virtqueue::new(0, ring, false);
        assert!(vq.pop(&m).is_err());
        assert!(matches!(
            vq.broken(),
            Some(QueueError::RefusedRingful { size: 8 })
        ));
    }
}
