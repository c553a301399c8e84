//! Fuzz target: packed rings over an arbitrary guest memory image.
//!
//! Guest memory is 64 KiB at guest-physical 0 in one memfd region. The input is
//! `[flags, size: u16, desc: u16, driver: u16, device: u16, ops: 16 bytes]` then the
//! image. A `Virtqueue` over a `PackedRing` pops chains, uses them (newest or oldest
//! first), hands some back, and stops, as the op bytes say. Checked: nothing panics; a
//! ring is accepted exactly when its parts fit and are aligned; every chain popped has
//! an id inside the ring, readable buffers before writable ones, lengths that add up and
//! buffers inside memory; a handed-back chain comes again first; a chain is never
//! accepted twice; the device writes nothing outside the descriptor ring and its own
//! event area; and the state a stop returns decodes to a ring that can be started.

use crate::chain_checks::check_chain;
use vhost_user_sync::memory::MemoryTable;
use vhost_user_sync::protocol::payload::MemoryRegionDesc;
use vhost_user_sync::queue::{DescriptorChain, Ring, RingAddrs, RingState, Virtqueue};

/// Bytes of guest memory.
pub const IMAGE: usize = 0x10000;
/// Parameter bytes before the image.
pub const PARAMS: usize = 1 + 2 * 4 + OPS;
/// Op bytes.
pub const OPS: usize = 16;
/// Flag: EVENT_IDX.
pub const F_EVENT_IDX: u8 = 1;
/// Flag: INDIRECT_DESC.
pub const F_INDIRECT: u8 = 2;
/// Flag: IN_ORDER.
pub const F_IN_ORDER: u8 = 4;

thread_local! {
    static MEM: MemoryTable = guest_memory();
}

fn guest_memory() -> MemoryTable {
    let fd = nix::sys::memfd::memfd_create("fuzz", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
        .expect("memfd_create");
    let f = std::fs::File::from(fd);
    f.set_len(IMAGE as u64).expect("memfd set_len");
    let region = MemoryRegionDesc {
        guest_phys_addr: 0,
        memory_size: IMAGE as u64,
        userspace_addr: 0x7f00_0000_0000,
        mmap_offset: 0,
    };
    MemoryTable::from_regions(&[region], vec![f]).expect("guest memory")
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

/// Runs the target on one input.
pub fn run(data: &[u8]) {
    let mut p = [0u8; PARAMS];
    let n = PARAMS.min(data.len());
    p[..n].copy_from_slice(&data[..n]);
    let mut image = vec![0u8; IMAGE];
    let rest = &data[n..];
    let m = rest.len().min(IMAGE);
    image[..m].copy_from_slice(&rest[..m]);
    MEM.with(|mem| {
        mem.write(0, &image).expect("image fits");
        ring(mem, &p, &image);
    });
}

fn ring(mem: &MemoryTable, p: &[u8], image: &[u8]) {
    let flags = p[0];
    let size = le16(p, 1);
    let addrs = RingAddrs {
        desc: le16(p, 3).into(),
        avail: le16(p, 5).into(),
        used: le16(p, 7).into(),
    };
    let ops = &p[9..9 + OPS];
    let fits = |at: u64, len: u64| at + len <= IMAGE as u64;
    let ok = (1..=0x8000).contains(&size)
        && fits(addrs.desc, 16 * u64::from(size))
        && fits(addrs.avail, 4)
        && fits(addrs.used, 4)
        && addrs.desc.is_multiple_of(16)
        && addrs.avail.is_multiple_of(4)
        && addrs.used.is_multiple_of(4);
    let built = Ring::new(
        mem,
        size,
        addrs,
        RingState::initial(true),
        flags & F_EVENT_IDX != 0,
        flags & F_INDIRECT != 0,
    );
    let ring = match built {
        Ok(r) => {
            assert!(ok, "ring accepted: size {size} {addrs:x?}");
            r
        }
        Err(e) => {
            assert!(!ok, "ring refused: {e}");
            return;
        }
    };
    let mut vq = Virtqueue::new(0, ring, flags & F_IN_ORDER != 0);
    let mut held: Vec<DescriptorChain> = Vec::new();
    let mut handed_back: Option<u16> = None;
    for (i, &op) in ops.iter().enumerate() {
        match op % 4 {
            0 | 1 => {
                if let Ok(Some(c)) = vq.pop(mem) {
                    check_chain(mem, &c, size);
                    if let Some(id) = handed_back.take() {
                        assert_eq!(c.id(), id, "a handed-back chain comes first");
                    }
                    assert!(
                        held.iter().all(|h| h.id() != c.id()),
                        "id {} popped while held",
                        c.id()
                    );
                    held.push(c);
                }
            }
            2 if !held.is_empty() => {
                let c = if op & 0x10 != 0 {
                    held.remove(0)
                } else {
                    held.pop().expect("held")
                };
                let len = c.writable_len().min(i as u32 * 8);
                if vq.add_used(mem, &c, len).is_ok() && vq.broken().is_none() {
                    assert!(vq.add_used(mem, &c, len).is_err(), "used twice");
                }
            }
            3 if !held.is_empty() && handed_back.is_none() => {
                let c = held.pop().expect("held");
                vq.give_back(&c).expect("a held chain can be handed back");
                assert!(vq.give_back(&c).is_err(), "handed back twice");
                handed_back = Some(c.id());
            }
            _ => {}
        }
        if vq.broken().is_some() {
            break;
        }
        vq.signal(mem);
    }
    let (state, _) = vq.stop(mem);
    for c in &held {
        assert!(
            vq.add_used(mem, c, 0).is_err(),
            "a chain from before the stop"
        );
    }
    let state = RingState::decode(state.encode(), true, size).expect("state decodes");
    // The device wrote only into its ring and its own event area.
    let mut now = vec![0u8; IMAGE];
    mem.read(0, &mut now).expect("image readable");
    let ring_end = addrs.desc + 16 * u64::from(size);
    for (at, (a, b)) in image.iter().zip(&now).enumerate() {
        let at = at as u64;
        let inside =
            (addrs.desc..ring_end).contains(&at) || (addrs.used..addrs.used + 4).contains(&at);
        assert!(inside || a == b, "byte {at:#x} changed outside the ring");
    }
    Ring::new(mem, size, addrs, state, false, false).expect("the ring restarts from its state");
}
