//! Queue and tap events: TX chains go to the tap in one `writev` straight from guest
//! memory, tap frames land in guest buffers with one `readv`, control commands are
//! answered.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use vhost_user_sync::backend::BackendChannel;
use vhost_user_sync::device::{DeviceError, FdRegistry, Queue, QueueWorker, Queues};
use vhost_user_sync::queue::{ChainReader, ChainWriter, Descriptor, DescriptorChain, QueueError};

use crate::device::STATUS_LINK_UP;
use crate::features::{GUEST_TSO4, GUEST_TSO6, GUEST_UFO, MRG_RXBUF, STATUS};
use crate::link::LinkWatch;
use crate::persistence::NetState;
use crate::request::{ctrl, CtrlCommand, NetError, NetHdr, MAX_FRAME, NET_HDR_LEN};
use crate::tap::Tap;
use crate::tap_ring::{FrameWrite, TapRing};
use crate::NetMetrics;

/// The queue pair a worker runs, and its tap queue (none for the null backend).
#[derive(Debug)]
pub struct PairIo {
    /// Pair number (RX queue 2n, TX queue 2n+1).
    pub pair: u16,
    /// The tap queue of this pair.
    pub tap: Option<Tap>,
}

/// The data path of a net device on one worker.
#[derive(Debug)]
pub struct NetWorker {
    pairs: Vec<PairIo>,
    ctrl_queue: Option<u16>,
    max_pairs: u16,
    null_frame: Vec<u8>,
    /// Chains taken for one batch of generated RX packets (kept to reuse its storage).
    /// Chains popped as one batch (RX without a tap, and TX).
    batch: Vec<DescriptorChain>,
    /// Per pair slot: RX buffers taken from the ring and not filled yet.
    rx_pools: Vec<RxPool>,
    /// The buffers of the chains one tap read goes into (kept to reuse its storage).
    rx_descs: Vec<Descriptor>,
    acked: Arc<AtomicU64>,
    state: Arc<Mutex<NetState>>,
    metrics: Arc<NetMetrics>,
    link: Option<LinkWatch>,
    channel: Arc<Mutex<Option<BackendChannel>>>,
    /// TX frames to the taps a batch per system call (none: one `writev` per frame).
    tap_ring: Option<TapRing>,
}

/// Tap RX buffers held across frames, in the order the driver made them available.
#[derive(Debug, Default)]
struct RxPool {
    chains: VecDeque<DescriptorChain>,
    /// Bytes the held chains can take.
    room: usize,
    /// The largest frame the tap can hand over now, with its virtio header.
    frame_room: usize,
}

/// Chains taken from a ring at a time (TX, and RX without a tap).
const BATCH: usize = 32;

/// Device fd token of the link watch (pair taps use their slot number).
const LINK_TOKEN: usize = 1 << 19;

enum TxOutcome {
    Sent,
    TapFull,
}

impl NetWorker {
    /// A worker for `pairs`, answering the control queue if `ctrl_queue` is set.
    pub fn new(
        pairs: Vec<PairIo>,
        ctrl_queue: Option<u16>,
        max_pairs: u16,
        null_frame_len: usize,
        acked: Arc<AtomicU64>,
        state: Arc<Mutex<NetState>>,
        metrics: Arc<NetMetrics>,
    ) -> Self {
        let mac = state.lock().mac;
        let rx_pools = pairs.iter().map(|_| RxPool::default()).collect();
        NetWorker {
            rx_pools,
            rx_descs: Vec::new(),
            pairs,
            ctrl_queue,
            max_pairs,
            null_frame: null_frame(mac, null_frame_len),
            batch: Vec::with_capacity(BATCH),
            acked,
            state,
            metrics,
            link: None,
            channel: Arc::default(),
            tap_ring: None,
        }
    }

    /// Sends TX frames to the taps through `ring`, a batch per system call.
    pub(crate) fn with_tap_ring(mut self, ring: Option<TapRing>) -> Self {
        self.tap_ring = ring;
        self
    }

    /// Also watches the tap's link state, telling the frontend of changes on `channel`.
    pub fn with_link_watch(
        mut self,
        link: Option<LinkWatch>,
        channel: Arc<Mutex<Option<BackendChannel>>>,
    ) -> Self {
        self.link = link;
        self.channel = channel;
        self
    }

    fn link_event(&mut self) {
        let Some(up) = self.link.as_mut().and_then(LinkWatch::poll_change) else {
            return;
        };
        log::info!("net: link {}", if up { "up" } else { "down" });
        self.state.lock().status = if up { STATUS_LINK_UP } else { 0 };
        if self.acked.load(Ordering::Acquire) & STATUS == 0 {
            return;
        }
        let channel = self.channel.lock().clone();
        match channel.map(|c| c.config_changed()) {
            Some(Err(e)) => log::warn!("net: CONFIG_CHANGE_MSG failed: {e}"),
            Some(Ok(_)) => {}
            None => log::info!("net: no backend channel to announce the link change on"),
        }
    }

    fn pair_slot(&self, pair: u16) -> Option<usize> {
        self.pairs.iter().position(|p| p.pair == pair)
    }

    fn tx(&mut self, q: &mut Queue<'_>, slot: usize) -> Result<(), QueueError> {
        if self.tap_ring.is_some() && self.pairs[slot].tap.is_some() {
            self.tx_batched(q, slot)?;
            if self.tap_ring.is_some() {
                return Ok(());
            }
            // The ring failed: what is left goes one `writev` per frame, now.
        }
        let features = self.acked.load(Ordering::Acquire);
        let (mut packets, mut bytes) = (0u64, 0u64);
        // The chains are taken in batches (walked where they are kept); on a full tap
        // the rest of the batch goes back, oldest first, for the tap's writable event.
        let mut batch = std::mem::take(&mut self.batch);
        let mut tap_full = false;
        while !tap_full && q.pop_batch(&mut batch, BATCH) > 0 {
            // By reference: a chain is not moved out of its slot (see `pop_batch`).
            for chain in &batch {
                if tap_full {
                    q.give_back(chain)?;
                    continue;
                }
                match tx_one(q, chain, self.pairs[slot].tap.as_ref(), features) {
                    Ok(TxOutcome::Sent) => {
                        packets += 1;
                        bytes += u64::from(chain.readable_len()) - NET_HDR_LEN as u64;
                        q.add_used(chain, 0)?;
                    }
                    Ok(TxOutcome::TapFull) => {
                        q.give_back(chain)?;
                        tap_full = true;
                    }
                    Err(e) => drop_tx(&self.metrics, q, chain, e)?,
                }
            }
            batch.clear();
        }
        batch.clear();
        self.batch = batch;
        self.count_tx(packets, bytes);
        Ok(())
    }

    /// [`Self::tx`] through the tap ring: each batch's frames go to the tap in one
    /// system call, in ring order. A frame the tap refuses is used (and logged) as with
    /// `writev`; the frames after it were not tried and go back to the ring to be taken
    /// again; on a full tap they go back for the tap's writable event.
    fn tx_batched(&mut self, q: &mut Queue<'_>, slot: usize) -> Result<(), QueueError> {
        let features = self.acked.load(Ordering::Acquire);
        let (mut packets, mut bytes) = (0u64, 0u64);
        let mut batch = std::mem::take(&mut self.batch);
        let mut tap_full = false;
        let mut result = Ok(());
        while result.is_ok() && !tap_full {
            // Once the ring has failed no batch is taken here: `tx` sends the rest.
            let (Some(ring), Some(tap)) = (self.tap_ring.as_mut(), self.pairs[slot].tap.as_ref())
            else {
                break;
            };
            if q.pop_batch(&mut batch, BATCH) == 0 {
                break;
            }
            for (i, chain) in batch.iter().enumerate() {
                let pushed = check_tx(q, chain, features).and_then(|f| {
                    ring.push(i, tap.file().as_fd(), &f.header, &f.reader, f.len)
                        .map_err(TxError::Io)
                });
                if let Err(e) = pushed {
                    drop_tx(&self.metrics, q, chain, e)?;
                }
            }
            let mut answered = false;
            let written = ring.write_batch(|i, outcome| {
                answered |= outcome != FrameWrite::NotTried;
                if result.is_err() {
                    return;
                }
                let chain = &batch[i];
                result = match outcome {
                    FrameWrite::Written(_) => {
                        packets += 1;
                        bytes += u64::from(chain.readable_len()) - NET_HDR_LEN as u64;
                        q.add_used(chain, 0)
                    }
                    FrameWrite::Full => {
                        tap_full = true;
                        q.give_back(chain)
                    }
                    FrameWrite::NotTried => q.give_back(chain),
                    FrameWrite::Failed(errno) => {
                        log::warn!(
                            "net: tap write failed: {}",
                            io::Error::from_raw_os_error(errno)
                        );
                        q.add_used(chain, 0)
                    }
                };
            });
            if let Err(e) = written {
                // Which frames the tap took is not known: none is sent twice, and any
                // may be lost, as on a wire. One `writev` per frame from here on.
                log::error!("net: tap ring failed ({e}); one writev per frame from now on");
                self.tap_ring = None;
                for chain in &batch {
                    // Those used already (refused before the ring) say so; nothing else.
                    let _ = q.add_used(chain, 0);
                }
            } else if !answered {
                // Every frame came back untried (the kernel cancelled them all): taking
                // them again would go round for ever.
                log::error!("net: the tap ring wrote nothing; one writev per frame from now on");
                self.tap_ring = None;
            }
            batch.clear();
        }
        batch.clear();
        self.batch = batch;
        self.count_tx(packets, bytes);
        self.metrics
            .tx_ring_frames
            .fetch_add(packets, Ordering::Relaxed);
        result
    }

    /// Counted once per call: shared counters cost a cache line each.
    fn count_tx(&self, packets: u64, bytes: u64) {
        self.metrics
            .tx_packets
            .fetch_add(packets, Ordering::Relaxed);
        self.metrics.tx_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// The largest frame tap `slot` can hand the guest, with its virtio header: with GSO
    /// offloads a 64 KiB frame, otherwise the tap's MTU plus Ethernet and VLAN headers.
    fn frame_room(&self, slot: usize) -> usize {
        let features = self.acked.load(Ordering::Acquire);
        if features & (GUEST_TSO4 | GUEST_TSO6 | GUEST_UFO) != 0 {
            return NET_HDR_LEN + MAX_FRAME;
        }
        let mtu = self.pairs[slot]
            .tap
            .as_ref()
            .and_then(|t| t.mtu().ok())
            .unwrap_or(1500);
        NET_HDR_LEN + usize::from(mtu) + 18
    }

    /// Frames from the tap into the guest's RX buffers. Buffers are taken from the ring
    /// as frames need them and held across frames and calls: with MRG_RXBUF a frame is
    /// read only once the held buffers can take the largest frame the tap may hand over
    /// (or the driver has given every buffer it can), so nothing is cut short; without
    /// it, each frame goes into one chain. Used chains are always the oldest held ones.
    fn rx(&mut self, q: &mut Queue<'_>, slot: usize) -> Result<(), QueueError> {
        if self.pairs[slot].tap.is_none() {
            return self.rx_null(q);
        }
        let mrg = self.acked.load(Ordering::Acquire) & MRG_RXBUF != 0;
        if self.rx_pools[slot].frame_room == 0 {
            self.rx_pools[slot].frame_room = self.frame_room(slot);
        }
        let ring_size = usize::from(q.size());
        loop {
            let pool = &mut self.rx_pools[slot];
            let want = if mrg { pool.frame_room } else { 1 };
            while pool.room < want || pool.chains.is_empty() {
                let Some(c) = q.pop() else { break };
                let first = c.writable().first().map_or(0, |d| d.len as usize);
                if first < NET_HDR_LEN {
                    let e = NetError::HeaderTooShort { len: first };
                    self.metrics.malformed(&self.metrics.rx_malformed, &e);
                    q.add_used(&c, 0)?;
                    continue;
                }
                pool.room += c.writable_len() as usize;
                pool.chains.push_back(c);
            }
            let every_buffer = q.in_flight() as usize >= ring_size;
            if pool.chains.is_empty() || (mrg && pool.room < want && !every_buffer) {
                // Too little room for a whole frame: wait for the driver's next buffers
                // (its kick brings us back); the frame stays in the tap.
                return Ok(());
            }
            let (chains, room) = if mrg {
                (pool.chains.len(), pool.room)
            } else {
                (1, pool.chains[0].writable_len() as usize)
            };
            self.rx_descs.clear();
            for c in pool.chains.iter().take(chains) {
                self.rx_descs.extend_from_slice(c.writable());
            }
            let tap = self.pairs[slot].tap.as_ref().map(|t| t.file().as_fd());
            let Some(tap) = tap else { return Ok(()) };
            let n = match ChainWriter::new(q.mem(), &self.rx_descs).read_from_fd(tap, room) {
                Ok(n) => n,
                Err(e) => {
                    if e.kind() != io::ErrorKind::WouldBlock {
                        log::warn!("net: tap read failed: {e}");
                    }
                    return Ok(());
                }
            };
            // The frame fills the oldest chains; the rest stay held for the next one.
            let pool = &mut self.rx_pools[slot];
            let mut used = 0usize;
            let mut covered = 0usize;
            for c in pool.chains.iter() {
                if covered >= n && used > 0 {
                    break;
                }
                covered += c.writable_len() as usize;
                used += 1;
            }
            if mrg {
                let at = pool.chains[0].writable()[0].addr + 10;
                if let Err(e) = q.mem().write(at, &(used as u16).to_le_bytes()) {
                    log::warn!("net: rx header: {e}");
                }
            }
            let mut left = n;
            for c in pool.chains.drain(..used) {
                let take = left.min(c.writable_len() as usize);
                pool.room -= c.writable_len() as usize;
                q.add_used(&c, take as u32)?;
                left -= take;
            }
            self.metrics.rx_packets.fetch_add(1, Ordering::Relaxed);
            self.metrics
                .rx_bytes
                .fetch_add(n.saturating_sub(NET_HDR_LEN) as u64, Ordering::Relaxed);
        }
    }

    fn rx_null(&mut self, q: &mut Queue<'_>) -> Result<(), QueueError> {
        let (mut packets, mut bytes) = (0u64, 0u64);
        let mut batch = std::mem::take(&mut self.batch);
        // A batch of chains first, then filling them: their cache-line transfers from
        // the driver's CPU overlap (see `Queue::pop_batch`).
        let frame_len = self.null_frame.len();
        while q.pop_batch(&mut batch, BATCH) > 0 {
            for c in &batch {
                if let Some(d) = c.writable().first() {
                    q.mem()
                        .prefetch_for_write(d.addr, frame_len.min(d.len as usize));
                }
            }
            for c in &batch {
                if c.writable()
                    .first()
                    .is_none_or(|d| (d.len as usize) < NET_HDR_LEN)
                {
                    self.metrics.malformed(
                        &self.metrics.rx_malformed,
                        &NetError::HeaderTooShort { len: 0 },
                    );
                    q.add_used(c, 0)?;
                    continue;
                }
                // Header and frame in one write (the packet is prepared once per worker).
                let mut w = c.writer(q.mem());
                let n = w.write(&self.null_frame).unwrap_or(0);
                q.add_used(c, n as u32)?;
                packets += 1;
                bytes += n.saturating_sub(NET_HDR_LEN) as u64;
            }
            batch.clear();
        }
        self.batch = batch;
        self.metrics
            .rx_packets
            .fetch_add(packets, Ordering::Relaxed);
        self.metrics.rx_bytes.fetch_add(bytes, Ordering::Relaxed);
        Ok(())
    }

    fn control(&mut self, q: &mut Queue<'_>) -> Result<(), QueueError> {
        while let Some(c) = q.pop() {
            let status = match self.control_one(q, &c) {
                Ok(()) => ctrl::OK,
                Err(e) => {
                    self.metrics.ctrl_errors.fetch_add(1, Ordering::Relaxed);
                    log::warn!("net: {e}");
                    ctrl::ERR
                }
            };
            let mut w = c.writer(q.mem());
            let n = w.write(&[status]).unwrap_or(0);
            q.add_used(&c, n as u32)?;
        }
        Ok(())
    }

    fn control_one(&mut self, q: &Queue<'_>, c: &DescriptorChain) -> Result<(), NetError> {
        if c.readable_len() as usize > 64 * 1024 || c.writable_len() == 0 {
            return Err(NetError::BadControl(
                "request too large or no room for the ack",
            ));
        }
        let mut req = vec![0u8; c.readable_len() as usize];
        c.reader(q.mem())
            .read_exact_bytes(&mut req)
            .map_err(|_| NetError::BadControl("unreadable"))?;
        match CtrlCommand::parse(&req)? {
            CtrlCommand::QueuePairs(n) if n >= 1 && n <= self.max_pairs => Ok(()),
            CtrlCommand::QueuePairs(_) => Err(NetError::BadControl("queue pairs out of range")),
            CtrlCommand::MacAddr(mac) => {
                self.state.lock().mac = mac;
                Ok(())
            }
            CtrlCommand::RxMode { .. }
            | CtrlCommand::MacTable { .. }
            | CtrlCommand::AnnounceAck => Ok(()),
        }
    }
}

enum TxError {
    Malformed(NetError),
    Io(io::Error),
}

/// Uses `chain` without sending its frame: a malformed one is counted, a failed write
/// logged.
fn drop_tx(
    metrics: &NetMetrics,
    q: &mut Queue<'_>,
    chain: &DescriptorChain,
    why: TxError,
) -> Result<(), QueueError> {
    match why {
        TxError::Malformed(e) => metrics.malformed(&metrics.tx_malformed, &e),
        TxError::Io(e) => log::warn!("net: tap write failed: {e}"),
    }
    q.add_used(chain, 0)
}

/// A TX chain checked: the copy of its header, a reader at the frame after it, and the
/// frame's length.
struct TxFrame<'q> {
    header: [u8; NET_HDR_LEN],
    reader: ChainReader<'q>,
    len: usize,
}

/// Checks a TX chain's header (as copied) against the frame and the acked features.
fn check_tx<'q>(
    q: &'q Queue<'_>,
    chain: &'q DescriptorChain,
    features: u64,
) -> Result<TxFrame<'q>, TxError> {
    let first = chain.readable().first().map_or(0, |d| d.len as usize);
    if first < NET_HDR_LEN {
        return Err(TxError::Malformed(NetError::HeaderTooShort { len: first }));
    }
    let mut r = chain.reader(q.mem());
    let mut raw = [0u8; NET_HDR_LEN];
    r.read_exact_bytes(&mut raw).map_err(TxError::Io)?;
    let frame_len = chain.readable_len() as usize - NET_HDR_LEN;
    // The header is checked as copied; the copy (not guest memory) goes to the tap.
    NetHdr::from_bytes(&raw)
        .validate(frame_len, features)
        .map_err(TxError::Malformed)?;
    Ok(TxFrame {
        header: raw,
        reader: r,
        len: frame_len,
    })
}

fn tx_one(
    q: &Queue<'_>,
    chain: &DescriptorChain,
    tap: Option<&Tap>,
    features: u64,
) -> Result<TxOutcome, TxError> {
    let mut frame = check_tx(q, chain, features)?;
    let Some(tap) = tap else {
        return Ok(TxOutcome::Sent);
    };
    match frame
        .reader
        .write_to_fd_with_prefix(tap.file().as_fd(), &frame.header, frame.len)
    {
        Ok(_) => Ok(TxOutcome::Sent),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(TxOutcome::TapFull),
        Err(e) => Err(TxError::Io(e)),
    }
}

impl QueueWorker for NetWorker {
    fn process_queue(&mut self, q: &mut Queue<'_>) -> Result<(), DeviceError> {
        let index = q.index();
        if Some(index) == self.ctrl_queue {
            self.control(q)?;
        } else if let Some(slot) = self.pair_slot(index / 2) {
            if index.is_multiple_of(2) {
                self.rx(q, slot)?;
            } else {
                self.tx(q, slot)?;
            }
        }
        Ok(())
    }

    fn queue_state_changed(&mut self, index: u16, _running: bool) {
        // Held RX buffers belong to the ring as it ran: the framework accounted for them
        // when it stopped (they are read again after a restart).
        if Some(index) != self.ctrl_queue && index.is_multiple_of(2) {
            if let Some(slot) = self.pair_slot(index / 2) {
                self.rx_pools[slot] = RxPool::default();
            }
        }
    }

    fn register_fds(&mut self, registry: &mut FdRegistry<'_>) -> io::Result<()> {
        for (slot, p) in self.pairs.iter().enumerate() {
            if let Some(tap) = &p.tap {
                registry.register_readable_writable(tap.file().as_raw_fd(), slot)?;
            }
        }
        if let Some(w) = &self.link {
            registry.register_readable(w.fd(), LINK_TOKEN)?;
        }
        Ok(())
    }

    fn handle_event(&mut self, token: usize, queues: &mut Queues<'_>) -> Result<(), DeviceError> {
        if token == LINK_TOKEN {
            self.link_event();
            return Ok(());
        }
        let Some(pair) = self.pairs.get(token).map(|p| p.pair) else {
            return Ok(());
        };
        if let Some(Err(e)) = queues.with_queue(2 * pair + 1, |q| self.tx(q, token)) {
            log::warn!("net: tx: {e}");
        }
        if let Some(Err(e)) = queues.with_queue(2 * pair, |q| self.rx(q, token)) {
            log::warn!("net: rx: {e}");
        }
        Ok(())
    }
}

/// A generated RX packet: the virtio header (one buffer) and a broadcast frame.
fn null_frame(mac: [u8; 6], len: usize) -> Vec<u8> {
    let mut f = NetHdr {
        num_buffers: 1,
        ..NetHdr::default()
    }
    .to_bytes()
    .to_vec();
    let frame = f.len();
    f.resize(frame + len.max(14), 0);
    f[frame..frame + 6].copy_from_slice(&[0xff; 6]);
    f[frame + 6..frame + 12].copy_from_slice(&mac);
    // local experimental ethertype
    f[frame + 12..frame + 14].copy_from_slice(&0x88b5u16.to_be_bytes());
    f
}

/// A RARP announcement for `mac`, with a zero virtio header in front (tap format).
pub fn rarp_frame(mac: [u8; 6]) -> Vec<u8> {
    let mut f = vec![0u8; NET_HDR_LEN];
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&0x8035u16.to_be_bytes()); // RARP
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 3]); // ethernet/IPv4, reverse request
    for _ in 0..2 {
        f.extend_from_slice(&mac);
        f.extend_from_slice(&[0; 4]);
    }
    f.resize(NET_HDR_LEN + 60, 0);
    f
}
