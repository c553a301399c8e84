//! Fuzz target: the in-flight area (INFLIGHT_SHMFD) a frontend hands a backend that
//! starts again, for split and packed rings.
//!
//! The input is `[flags, size, state: u32, ops: 24 bytes]`, then one queue's region of
//! the area (its length follows from the layout and the area's queue size), then guest
//! memory: 4 KiB at guest-physical 0 in one memfd region, holding the ring at
//! [`ADDRS`]. The region is written into a memfd and mapped with `InflightArea::map`;
//! a ring is made with `Ring::new`, given its part with `Ring::attach_inflight` (as the
//! session does on SET_VRING_KICK) and run by a `Virtqueue`: chains popped, used
//! (newest or oldest first), handed back and signalled as the op bytes say. The ring
//! then stops, starts again on the same area (a new process), and every chain is taken
//! and used.
//!
//! Checked: nothing panics; the area is accepted exactly when a model of the recovery
//! rules accepts it, and a refusal is an `InflightError`; an accepted area resubmits
//! exactly the model's chains (ids inside the ring, none twice, oldest first), before
//! anything new from the ring, and leaves the region as the model does, with the ring
//! resuming where the model says. Every chain has readable buffers first, lengths that
//! add up and buffers inside memory; no id is popped while held, a handed-back chain
//! comes again first, nothing is used twice, and chains from before a stop are refused.
//! The region the backend leaves at a stop starts again (split always, packed when the
//! area is the ring's size), resubmitting the chains it held at the same ring position.
//! Once every chain is taken and used, nothing is left in flight in the region, and the
//! state a stop returns decodes.

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::chain_checks::check_chain;
use vhost_user_sync::memory::MemoryTable;
use vhost_user_sync::protocol::payload::{InflightInfo, MemoryRegionDesc};
use vhost_user_sync::queue::inflight::layout::{self, packed as lp, split as ls};
use vhost_user_sync::queue::packed::layout::{advance, F_USED};
use vhost_user_sync::queue::{
    DescriptorChain, InflightArea, QueueError, Ring, RingAddrs, RingState, Virtqueue,
};

/// Bytes of guest memory.
pub const IMAGE: usize = 0x1000;
/// Op bytes.
pub const OPS: usize = 24;
/// Parameter bytes before the area's region.
pub const PARAMS: usize = 1 + 1 + 4 + OPS;
/// Flag: the packed layout (ring and area).
pub const F_PACKED: u8 = 1;
/// Flag: EVENT_IDX.
pub const F_EVENT_IDX: u8 = 2;
/// Flag: INDIRECT_DESC.
pub const F_INDIRECT: u8 = 4;
/// Flag: IN_ORDER.
pub const F_IN_ORDER: u8 = 8;
/// Flag: the area's queue size is twice the ring's.
pub const F_AREA_LARGER: u8 = 0x10;
/// Flag: the area's queue size is half the ring's (it must be refused).
pub const F_AREA_SMALLER: u8 = 0x20;
/// Where the ring lies, for rings of up to 64 entries: descriptors, then the avail ring
/// (packed: driver event area), then the used ring (packed: device event area).
pub const ADDRS: RingAddrs = RingAddrs {
    desc: 0,
    avail: 0x400,
    used: 0x500,
};
/// The largest area queue size (twice the largest ring).
const MAX_AREA_QUEUE: u16 = 128;

/// The ring size the size byte selects: 4 to 64 entries.
pub fn ring_size(b: u8) -> u16 {
    4 << (b % 5)
}

/// The area's queue size for a ring of `size` entries under `flags`.
pub fn area_queue_size(flags: u8, size: u16) -> u16 {
    if flags & F_AREA_LARGER != 0 {
        size * 2
    } else if flags & F_AREA_SMALLER != 0 {
        size / 2
    } else {
        size
    }
}

/// Bytes of one queue's region in the input.
pub fn region_len(packed: bool, area_queue: u16) -> usize {
    layout::queue_region_len(packed, area_queue) as usize
}

thread_local! {
    static MEM: MemoryTable = guest_memory();
    static AREA: File = area_file();
}

fn memfd(len: usize) -> File {
    let fd = nix::sys::memfd::memfd_create("fuzz", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
        .expect("memfd_create");
    let f = File::from(fd);
    f.set_len(len as u64).expect("memfd set_len");
    f
}

fn guest_memory() -> MemoryTable {
    let region = MemoryRegionDesc {
        guest_phys_addr: 0,
        memory_size: IMAGE as u64,
        userspace_addr: 0x7f00_0000_0000,
        mmap_offset: 0,
    };
    MemoryTable::from_regions(&[region], vec![memfd(IMAGE)]).expect("guest memory")
}

fn area_file() -> File {
    memfd(region_len(true, MAX_AREA_QUEUE))
}

fn le16(b: &[u8], at: u64) -> u16 {
    let at = at as usize;
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: u64) -> u32 {
    let at = at as usize;
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le64(b: &[u8], at: u64) -> u64 {
    u64::from(le32(b, at)) | u64::from(le32(b, at + 4)) << 32
}

fn put16(b: &mut [u8], at: u64, v: u16) {
    let at = at as usize;
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

/// Runs the target on one input.
pub fn run(data: &[u8]) {
    let mut p = [0u8; PARAMS];
    let n = PARAMS.min(data.len());
    p[..n].copy_from_slice(&data[..n]);
    let flags = p[0];
    let packed = flags & F_PACKED != 0;
    let size = ring_size(p[1]);
    let area_queue = area_queue_size(flags, size);
    let num = u32::from_le_bytes([p[2], p[3], p[4], p[5]]);
    let rest = &data[n..];
    let mut region = vec![0u8; region_len(packed, area_queue)];
    let m = rest.len().min(region.len());
    region[..m].copy_from_slice(&rest[..m]);
    let rest = &rest[m..];
    let mut image = vec![0u8; IMAGE];
    let m = rest.len().min(IMAGE);
    image[..m].copy_from_slice(&rest[..m]);
    MEM.with(|mem| {
        AREA.with(|file| {
            mem.write(0, &image).expect("image fits");
            file.write_all_at(&region, 0).expect("region fits");
            let case = Case {
                mem,
                file,
                info: InflightInfo {
                    mmap_size: region.len() as u64,
                    mmap_offset: 0,
                    num_queues: 1,
                    queue_size: area_queue,
                },
                packed,
                size,
                flags,
            };
            case.run(num, &p[6..]);
        })
    });
}

/// One input: the ring's geometry and features, guest memory and the area's file.
struct Case<'a> {
    mem: &'a MemoryTable,
    file: &'a File,
    info: InflightInfo,
    packed: bool,
    size: u16,
    flags: u8,
}

/// What a start on the area must give: the ids resubmitted, oldest first, where the
/// ring resumes, and whether its avail position is its used position plus the slots
/// of the chains resubmitted (the frontend's packed state may say otherwise).
struct Expected {
    ids: Vec<u16>,
    state: RingState,
    aligned: bool,
}

impl Case<'_> {
    fn region(&self) -> Vec<u8> {
        let mut b = vec![0u8; self.info.mmap_size as usize];
        self.file.read_exact_at(&mut b, 0).expect("region readable");
        b
    }

    fn mem_u16(&self, at: u64) -> u16 {
        let mut b = [0u8; 2];
        self.mem.read(at, &mut b).expect("ring in memory");
        u16::from_le_bytes(b)
    }

    fn run(&self, num: u32, ops: &[u8]) {
        let state = RingState::decode(num, self.packed, self.size)
            .unwrap_or(RingState::initial(self.packed));
        let Ok((mut vq, first)) = self.start(state) else {
            return;
        };
        let mut run = Taking::new(self.size, &first.ids);
        for (i, &op) in ops.iter().enumerate() {
            run.op(self.mem, &mut vq, op, i);
            if vq.broken().is_some() {
                break;
            }
        }
        // A stop keeps the held chains in the area.
        let (stopped, account) = vq.stop(self.mem);
        let broken = vq.broken().is_some();
        // What GET_VRING_BASE would send decodes. (A packed state with used position
        // (0, wrap 0) encodes with an upper half of 0, which decodes as "used where
        // avail is": the ring restarts from the state itself.)
        RingState::decode(stopped.encode(), self.packed, self.size)
            .expect("the stopped state decodes");
        for c in &run.held {
            assert!(
                vq.add_used(self.mem, c, 0).is_err(),
                "a chain from before the stop"
            );
        }
        let taken = vq.taken();
        let unpopped = first.ids.len().saturating_sub(taken as usize);
        drop(vq);
        // A new process starts on what the backend left.
        let must_start = !self.packed || self.info.queue_size == self.size;
        let (mut vq, again) = match self.start(stopped) {
            Ok(started) => started,
            Err(e) => {
                assert!(!must_start, "the area the backend left is refused: {e}");
                return;
            }
        };
        // A split area keeps one flag per head: a head the driver offers again before
        // the used entry of its last use is published is cleared by that publish (the
        // driver broke the rules; only its own request loses its record). The counts
        // are exact when no head was taken twice and nothing was refused unseen.
        let exact = self.packed || (!run.taken_twice && run.taken_seen == taken);
        if !broken && !exact {
            assert!(again.ids.len() <= account.kept_in_flight as usize + unpopped);
        }
        if !broken && exact {
            assert_eq!(
                again.ids.len(),
                account.kept_in_flight as usize + unpopped,
                "resubmitted after a stop: {account:?}, {unpopped} never popped"
            );
            for c in &run.held {
                assert!(again.ids.contains(&c.id()), "held chain {} lost", c.id());
            }
            if first.aligned {
                assert_eq!(vq.ring().state(), stopped, "resumes where it stopped");
            }
        }
        // Every chain taken and used at once: the resubmitted ones first.
        let mut run = Taking::new(self.size, &again.ids);
        for _ in 0..2 * usize::from(self.size) + again.ids.len() {
            let Some(c) = run.pop(self.mem, &mut vq) else {
                break;
            };
            let _ = vq.add_used(self.mem, &c, 0);
        }
        vq.signal(self.mem);
        if vq.broken().is_none() && vq.in_flight() == 0 && vq.taken() as usize >= again.ids.len() {
            let region = self.region();
            let entry = |i| {
                if self.packed {
                    lp::entry(i, lp::E_INFLIGHT)
                } else {
                    ls::entry(i, ls::E_INFLIGHT)
                }
            };
            for i in 0..self.info.queue_size {
                assert_eq!(region[entry(i) as usize], 0, "entry {i} left in flight");
            }
        }
        let (s, _) = vq.stop(self.mem);
        RingState::decode(s.encode(), self.packed, self.size).expect("the state decodes");
    }

    /// Starts a ring in `state` on the area as the session does, and checks the result
    /// against the model.
    fn start(&self, state: RingState) -> Result<(Virtqueue, Expected), QueueError> {
        let mut region = self.region();
        let expected = if self.packed {
            self.packed_model(&mut region, state)
        } else {
            self.split_model(&mut region, state)
        };
        let mut ring = Ring::new(
            self.mem,
            self.size,
            ADDRS,
            state,
            self.flags & F_EVENT_IDX != 0,
            self.flags & F_INDIRECT != 0,
        )
        .expect("the ring fits");
        let file = self.file.try_clone().expect("dup");
        let area = InflightArea::map(&self.info, file, self.packed, None).expect("area maps");
        let part = area.queue(0).expect("queue 0");
        match (ring.attach_inflight(self.mem, part), expected) {
            (Err(e @ QueueError::Inflight(_)), None) => Err(e),
            (Err(e), None) => panic!("refused with {e}, not an in-flight error"),
            (Err(e), Some(x)) => panic!("refused ({e}), the model resubmits {:?}", x.ids),
            (Ok(n), None) => panic!("accepted with {n:?} chains, the model refuses"),
            (Ok(n), Some(x)) => {
                let n = n.unwrap_or(0);
                assert_eq!(usize::from(n), x.ids.len(), "resubmits {:?}", x.ids);
                let mut seen = vec![false; usize::from(self.size)];
                for &id in &x.ids {
                    assert!(id < self.size, "id {id}");
                    assert!(!seen[usize::from(id)], "id {id} resubmitted twice");
                    seen[usize::from(id)] = true;
                }
                assert!(ring.tracks_in_flight());
                assert_eq!(ring.state(), x.state, "where the ring resumes");
                assert!(self.region() == region, "the region after recovery");
                let vq = Virtqueue::new(0, ring, self.flags & F_IN_ORDER != 0);
                Ok((vq, x))
            }
        }
    }

    /// The split rules: what a start must resubmit, or `None` when the area must be
    /// refused. `region` becomes what recovery leaves.
    fn split_model(&self, region: &mut [u8], base: RingState) -> Option<Expected> {
        let (cap, size) = (self.info.queue_size, self.size);
        let ring_used = self.mem_u16(ADDRS.used + 2);
        let expected = |ids: Vec<u16>| Expected {
            state: RingState::Split {
                next_avail: ring_used.wrapping_add(ids.len() as u16),
            },
            ids,
            aligned: true,
        };
        if size > cap {
            return None;
        }
        match le16(region, ls::VERSION) {
            0 => {
                for i in 0..cap {
                    region[ls::entry(i, ls::E_INFLIGHT) as usize] = 0;
                }
                put16(region, ls::DESC_NUM, cap);
                put16(region, ls::LAST_BATCH_HEAD, 0);
                put16(region, ls::USED_IDX, ring_used);
                put16(region, ls::VERSION, layout::VERSION);
                // A new area: the ring starts where SET_VRING_BASE said. A resumed ring
                // reads again from the used index, which is where this one stopped
                // only if it started there.
                let aligned = base
                    == RingState::Split {
                        next_avail: ring_used,
                    };
                return Some(Expected {
                    state: base,
                    ids: Vec::new(),
                    aligned,
                });
            }
            layout::VERSION => {}
            _ => return None,
        }
        if le16(region, ls::DESC_NUM) != cap {
            return None;
        }
        let area_used = le16(region, ls::USED_IDX);
        if area_used != ring_used {
            // The last batch was published: its heads are no longer in flight.
            let batch = ring_used.wrapping_sub(area_used);
            if batch > size {
                return None;
            }
            let mut at = le16(region, ls::LAST_BATCH_HEAD);
            let mut heads = Vec::new();
            for _ in 0..batch {
                if at >= size {
                    return None;
                }
                heads.push(at);
                at = le16(region, ls::entry(at, ls::E_NEXT));
            }
            for h in heads {
                region[ls::entry(h, ls::E_INFLIGHT) as usize] = 0;
            }
            put16(region, ls::USED_IDX, ring_used);
        }
        let mut pending = Vec::new();
        for i in 0..cap {
            match region[ls::entry(i, ls::E_INFLIGHT) as usize] {
                0 => {}
                1 if i < size => pending.push((le64(region, ls::entry(i, ls::E_COUNTER)), i)),
                _ => return None,
            }
        }
        pending.sort_unstable();
        Some(expected(pending.into_iter().map(|p| p.1).collect()))
    }

    /// The packed rules, as [`Self::split_model`]; `state` is the frontend's.
    fn packed_model(&self, region: &mut [u8], state: RingState) -> Option<Expected> {
        let (cap, size) = (self.info.queue_size, self.size);
        let RingState::Packed {
            next_avail,
            avail_wrap,
            next_used,
            used_wrap,
        } = state
        else {
            unreachable!("a packed state")
        };
        let positions = |region: &mut [u8], at: (u16, bool)| {
            put16(region, lp::USED_IDX, at.0);
            put16(region, lp::OLD_USED_IDX, at.0);
            region[lp::USED_WRAP as usize] = at.1.into();
            region[lp::OLD_USED_WRAP as usize] = at.1.into();
            put16(region, lp::FREE_HEAD, cap);
            put16(region, lp::OLD_FREE_HEAD, cap);
        };
        if size > cap {
            return None;
        }
        match le16(region, lp::VERSION) {
            0 => {
                for i in 0..cap {
                    region[lp::entry(i, lp::E_INFLIGHT) as usize] = 0;
                }
                put16(region, lp::DESC_NUM, cap);
                positions(region, (next_used, used_wrap));
                put16(region, lp::VERSION, layout::VERSION);
                return Some(Expected {
                    ids: Vec::new(),
                    state,
                    aligned: (next_avail, avail_wrap) == (next_used, used_wrap),
                });
            }
            layout::VERSION => {}
            _ => return None,
        }
        if le16(region, lp::DESC_NUM) != cap {
            return None;
        }
        let position = |idx: u64, wrap: u64| {
            let (at, w) = (le16(region, idx), region[wrap as usize]);
            (at < size && w <= 1).then_some((at, w == 1))
        };
        let used = position(lp::USED_IDX, lp::USED_WRAP)?;
        let old = position(lp::OLD_USED_IDX, lp::OLD_USED_WRAP)?;
        let mut committed = used;
        if used != old {
            let flags = self.mem_u16(ADDRS.desc + 16 * u64::from(old.0) + 14);
            if (flags & F_USED != 0) == old.1 {
                // Handed over: the batch's chains, from free_head to old_free_head,
                // are no longer in flight.
                let stop = le16(region, lp::OLD_FREE_HEAD);
                let mut at = le16(region, lp::FREE_HEAD);
                let mut steps = 0;
                while at != stop {
                    if at >= cap || steps >= size {
                        return None;
                    }
                    let last = le16(region, lp::entry(at, lp::E_LAST));
                    if last >= cap {
                        return None;
                    }
                    region[lp::entry(at, lp::E_INFLIGHT) as usize] = 0;
                    at = le16(region, lp::entry(last, lp::E_NEXT));
                    steps += 1;
                }
            } else {
                committed = old;
            }
        }
        let mut owned = vec![false; usize::from(cap)];
        let mut ids = vec![false; usize::from(size)];
        let mut found = Vec::new();
        let mut heads = Vec::new();
        let mut slots = 0u32;
        for i in 0..cap {
            match region[lp::entry(i, lp::E_INFLIGHT) as usize] {
                0 => continue,
                1 => {}
                _ => return None,
            }
            let num = le16(region, lp::entry(i, lp::E_NUM));
            if num == 0 || num > size {
                return None;
            }
            let mut at = i;
            let mut id = 0;
            for k in 0..num {
                if at >= cap || owned[usize::from(at)] {
                    return None;
                }
                owned[usize::from(at)] = true;
                // The buffer id is the last entry's.
                id = le16(region, lp::entry(at, lp::E_ID));
                if k + 1 < num {
                    at = le16(region, lp::entry(at, lp::E_NEXT));
                }
            }
            if id >= size || ids[usize::from(id)] {
                return None;
            }
            ids[usize::from(id)] = true;
            heads.push((i, at));
            slots += u32::from(num);
            found.push((le64(region, lp::entry(i, lp::E_COUNTER)), id));
        }
        if slots > u32::from(size) {
            return None;
        }
        found.sort_unstable();
        // Each chain's `last` is set from its links.
        for (head, last) in heads {
            put16(region, lp::entry(head, lp::E_LAST), last);
        }
        positions(region, committed);
        let avail = advance(committed.0, committed.1, slots as u16, size);
        Some(Expected {
            ids: found.into_iter().map(|f| f.1).collect(),
            state: RingState::Packed {
                next_avail: avail.0,
                avail_wrap: avail.1,
                next_used: committed.0,
                used_wrap: committed.1,
            },
            aligned: true,
        })
    }
}

/// The chains a device holds while it takes them from a ring that resubmits `expected`
/// first.
struct Taking<'a> {
    size: u16,
    expected: &'a [u16],
    held: Vec<DescriptorChain>,
    handed_back: Option<u16>,
    /// Chains taken from the ring and seen here (refused ones are not).
    taken_seen: u64,
    /// Whether an id was taken from the ring twice.
    taken_twice: bool,
    seen: Vec<bool>,
}

impl<'a> Taking<'a> {
    fn new(size: u16, expected: &'a [u16]) -> Self {
        Taking {
            size,
            expected,
            held: Vec::new(),
            handed_back: None,
            taken_seen: 0,
            taken_twice: false,
            seen: vec![false; usize::from(size)],
        }
    }

    /// Pops a chain and checks it: a handed-back chain comes first, then the chains
    /// resubmitted (the first taken from the ring, in the model's order), then new ones.
    fn pop(&mut self, mem: &MemoryTable, vq: &mut Virtqueue) -> Option<DescriptorChain> {
        let before = vq.taken();
        let c = vq.pop(mem).ok().flatten()?;
        check_chain(mem, &c, self.size);
        let after = vq.taken();
        if let Some(id) = self.handed_back.take() {
            assert_eq!(c.id(), id, "a handed-back chain comes first");
            assert_eq!(after, before, "a handed-back chain is not taken again");
        } else {
            assert!(after > before, "chain {} from nowhere", c.id());
            self.taken_seen += 1;
            self.taken_twice |= std::mem::replace(&mut self.seen[usize::from(c.id())], true);
            // Its sequence number: refused chains before it took theirs.
            if let Some(&id) = self.expected.get((after - 1) as usize) {
                assert_eq!(c.id(), id, "resubmission #{}", after - 1);
            }
        }
        assert!(
            self.held.iter().all(|h| h.id() != c.id()),
            "id {} popped while held",
            c.id()
        );
        Some(c)
    }

    fn op(&mut self, mem: &MemoryTable, vq: &mut Virtqueue, op: u8, i: usize) {
        match op % 8 {
            0..=2 => {
                if let Some(c) = self.pop(mem, vq) {
                    self.held.push(c);
                }
            }
            3 | 4 if !self.held.is_empty() => {
                let c = if op % 8 == 4 {
                    self.held.remove(0)
                } else {
                    self.held.pop().expect("held")
                };
                let len = c.writable_len().min(i as u32 * 8);
                if vq.add_used(mem, &c, len).is_ok() && vq.broken().is_none() {
                    assert!(vq.add_used(mem, &c, len).is_err(), "used twice");
                }
            }
            5 if !self.held.is_empty() && self.handed_back.is_none() => {
                let c = self.held.pop().expect("held");
                vq.give_back(&c).expect("a held chain can be handed back");
                assert!(vq.give_back(&c).is_err(), "handed back twice");
                self.handed_back = Some(c.id());
            }
            6 => vq.signal(mem),
            7 => {
                let _ = vq.enable_notification(mem);
                let _ = vq.disable_notification(mem);
            }
            _ => {}
        }
    }
}
