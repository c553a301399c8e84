//! Fuzz target: descriptor chains and split rings over an arbitrary guest memory image.
//!
//! Guest memory is 64 KiB at guest-physical 0, made of two memfd regions of 32 KiB
//! (so buffers can straddle a region edge); everything above is unmapped. The input
//! fills the image after a parameter block:
//!
//! - walk mode (byte 0 even): `[mode, flags, table: u64, size: u16, head: u16,
//!   plan: 16 bytes]` then the image. `DescriptorChain::walk` is compared with a model
//!   walker over the same bytes; an accepted chain is then read with `ChainReader` and
//!   written with `ChainWriter` (plain copies and the fd paths through a pipe), steered
//!   by the plan, and checked byte for byte against the image.
//! - queue mode (byte 0 odd): `[mode, flags, size: u16, desc: u16, avail: u16,
//!   used: u16, base: u16, pops: u8]` then the image. A `Virtqueue` over a split ring
//!   pops chains (each checked against the model walker), hands some back (they must come
//!   again), returns the others as used (a second use must be refused) and publishes.

use std::io::{Read, Write};
use std::os::fd::AsFd;

use vhost_user_sync::memory::MemoryTable;
use vhost_user_sync::protocol::payload::MemoryRegionDesc;
use vhost_user_sync::queue::{Descriptor, DescriptorChain, Ring, RingAddrs, RingState, Virtqueue};

/// Bytes of guest memory.
pub const IMAGE: usize = 0x10000;
/// Parameter bytes before the image in walk mode.
pub const WALK_PARAMS: usize = 1 + 1 + 8 + 2 + 2 + PLAN;
/// Parameter bytes before the image in queue mode.
pub const QUEUE_PARAMS: usize = 1 + 1 + 2 * 5 + 1;
/// Plan bytes in walk mode.
pub const PLAN: usize = 16;
/// Walk flag: the chain may use an indirect table.
pub const F_INDIRECT: u8 = 1;
/// Queue flag: EVENT_IDX.
pub const F_EVENT_IDX: u8 = 2;
/// Queue-mode flag: IN_ORDER negotiated.
pub const F_IN_ORDER: u8 = 4;
/// Chains longer than this (in bytes) are not read or written in full.
const MAX_STREAM: u32 = 256 * 1024;

thread_local! {
    static MEM: MemoryTable = guest_memory();
}

fn guest_memory() -> MemoryTable {
    let half = (IMAGE / 2) as u64;
    let mut descs = Vec::new();
    let mut files = Vec::new();
    for i in 0..2 {
        let fd = nix::sys::memfd::memfd_create("fuzz", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
            .expect("memfd_create");
        let f = std::fs::File::from(fd);
        f.set_len(half).expect("memfd set_len");
        files.push(f);
        descs.push(MemoryRegionDesc {
            guest_phys_addr: i * half,
            memory_size: half,
            userspace_addr: 0x7f00_0000_0000 + i * 0x100_0000,
            mmap_offset: 0,
        });
    }
    MemoryTable::from_regions(&descs, files).expect("guest memory")
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

/// Runs the target on one input.
pub fn run(data: &[u8]) {
    let Some(&mode) = data.first() else {
        return;
    };
    let params = if mode & 1 == 0 {
        WALK_PARAMS
    } else {
        QUEUE_PARAMS
    };
    let mut p = [0u8; WALK_PARAMS];
    let n = params.min(data.len());
    p[..n].copy_from_slice(&data[..n]);
    let mut image = vec![0u8; IMAGE];
    let rest = &data[n..];
    let m = rest.len().min(IMAGE);
    image[..m].copy_from_slice(&rest[..m]);
    MEM.with(|mem| {
        mem.write(0, &image).expect("image fits");
        if mode & 1 == 0 {
            walk(mem, &p, image);
        } else {
            queue(mem, &p);
        }
    });
}

fn in_image(addr: u64, len: u64) -> bool {
    addr.checked_add(len).is_some_and(|end| end <= IMAGE as u64)
}

/// The model's descriptor read: 16 bytes of the image, little endian.
fn model_desc(image: &[u8], table: u64, index: u16) -> Option<Descriptor> {
    let at = table.checked_add(u64::from(index) * 16)?;
    if !in_image(at, 16) {
        return None;
    }
    let b = &image[at as usize..at as usize + 16];
    let mut addr = [0u8; 8];
    addr.copy_from_slice(&b[..8]);
    Some(Descriptor {
        addr: u64::from_le_bytes(addr),
        len: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
        flags: le16(b, 12),
        next: le16(b, 14),
    })
}

/// A plain reading of the split-ring rules: what the chain at `head` must be, or
/// `None` when it must be refused.
fn model_walk(
    image: &[u8],
    table: u64,
    size: u16,
    head: u16,
    indirect_ok: bool,
) -> Option<Vec<Descriptor>> {
    let mut out: Vec<Descriptor> = Vec::new();
    let (mut readable, mut writable, mut any_writable) = (0u32, 0u32, false);
    let mut push = |d: Descriptor, out: &mut Vec<Descriptor>| -> Option<()> {
        if d.flags & Descriptor::F_WRITE != 0 {
            writable = writable.checked_add(d.len)?;
            any_writable = true;
        } else {
            if any_writable {
                return None;
            }
            readable = readable.checked_add(d.len)?;
        }
        out.push(d);
        Some(())
    };
    let mut index = head;
    let mut seen = 0u32;
    loop {
        if index >= size {
            return None;
        }
        seen += 1;
        if seen > u32::from(size) {
            return None;
        }
        let d = model_desc(image, table, index)?;
        if d.flags & Descriptor::F_INDIRECT != 0 {
            if !indirect_ok || d.flags & Descriptor::F_NEXT != 0 || !out.is_empty() {
                return None;
            }
            if d.len == 0 || d.len % 16 != 0 || !in_image(d.addr, d.len.into()) {
                return None;
            }
            let count = d.len / 16;
            let (mut i, mut seen) = (0u32, 0u32);
            loop {
                if i >= count {
                    return None;
                }
                seen += 1;
                if seen > count {
                    return None;
                }
                let e = model_desc(image, d.addr, i as u16)?;
                if e.flags & Descriptor::F_INDIRECT != 0 {
                    return None;
                }
                push(e, &mut out)?;
                if e.flags & Descriptor::F_NEXT == 0 {
                    break;
                }
                i = e.next.into();
            }
            break;
        }
        push(d, &mut out)?;
        if d.flags & Descriptor::F_NEXT == 0 {
            break;
        }
        index = d.next;
    }
    if out
        .iter()
        .any(|d| d.len != 0 && !in_image(d.addr, d.len.into()))
    {
        return None;
    }
    Some(out)
}

/// The invariants of an accepted chain that do not need the model.
fn check_chain(chain: &DescriptorChain, head: u16) {
    assert_eq!(chain.id(), head);
    let all = chain.descriptors();
    let (r, w) = (chain.readable(), chain.writable());
    assert!(!all.is_empty());
    assert_eq!(r.len() + w.len(), all.len());
    assert_eq!(&all[..r.len()], r);
    assert!(r.iter().all(|d| !d.is_write() && !d.is_indirect()));
    assert!(w.iter().all(|d| d.is_write() && !d.is_indirect()));
    let sum = |ds: &[Descriptor]| ds.iter().map(|d| u64::from(d.len)).sum::<u64>();
    assert_eq!(sum(r), u64::from(chain.readable_len()));
    assert_eq!(sum(w), u64::from(chain.writable_len()));
    for d in all {
        assert!(
            d.len == 0 || in_image(d.addr, d.len.into()),
            "buffer {:#x}+{:#x} outside guest memory",
            d.addr,
            d.len
        );
    }
}

/// The bytes of `descs` in order, from the image.
fn stream_of(image: &[u8], descs: &[Descriptor]) -> Vec<u8> {
    let mut out = Vec::new();
    for d in descs.iter().filter(|d| d.len > 0) {
        out.extend_from_slice(&image[d.addr as usize..d.addr as usize + d.len as usize]);
    }
    out
}

/// Guest-physical address of byte `pos` of the stream over `descs`.
fn stream_addr(descs: &[Descriptor], mut pos: u64) -> u64 {
    for d in descs {
        if pos < u64::from(d.len) {
            return d.addr + pos;
        }
        pos -= u64::from(d.len);
    }
    unreachable!("position beyond the buffers")
}

fn walk(mem: &MemoryTable, p: &[u8], mut image: Vec<u8>) {
    let flags = p[1];
    let mut t = [0u8; 8];
    t.copy_from_slice(&p[2..10]);
    let table = u64::from_le_bytes(t);
    let size = le16(p, 10);
    let head = le16(p, 12);
    let plan = &p[14..14 + PLAN];
    let indirect = flags & F_INDIRECT != 0;

    let expect = model_walk(&image, table, size, head, indirect);
    let chain = match (DescriptorChain::walk(mem, table, size, head, indirect), expect) {
        (Ok(chain), Some(descs)) => {
            assert_eq!(chain.descriptors(), &descs[..]);
            chain
        }
        (Err(_), None) => return,
        (got, expect) => panic!(
            "walk(table {table:#x}, size {size}, head {head}, indirect {indirect}): {got:?}, model {expect:?}"
        ),
    };
    check_chain(&chain, head);
    if chain.readable_len() <= MAX_STREAM {
        read_chain(mem, &chain, &image, plan);
    }
    if chain.writable_len() <= MAX_STREAM {
        write_chain(mem, &chain, &mut image, plan);
        let mut back = vec![0u8; IMAGE];
        mem.read(0, &mut back).expect("image readable");
        assert!(
            back == image,
            "guest memory differs from the model after writes"
        );
    }
}

fn step_len(b: u8) -> usize {
    usize::from(b >> 2) * 67 + 1
}

fn read_chain(mem: &MemoryTable, chain: &DescriptorChain, image: &[u8], plan: &[u8]) {
    let want = stream_of(image, chain.readable());
    let mut r = chain.reader(mem);
    let mut pos = 0usize;
    for &b in plan {
        assert_eq!(r.remaining(), want.len() - pos);
        assert_eq!(r.consumed(), pos);
        let n = step_len(b);
        let left = want.len() - pos;
        match b & 3 {
            0 => {
                let mut buf = vec![0u8; n];
                let k = r.read(&mut buf).expect("read");
                assert_eq!(k, n.min(left));
                assert_eq!(buf[..k], want[pos..pos + k]);
                pos += k;
            }
            1 => {
                let k = r.skip(n).expect("skip");
                assert_eq!(k, n.min(left));
                pos += k;
            }
            2 => {
                let mut buf = vec![0u8; n];
                match r.read_exact_bytes(&mut buf) {
                    Ok(()) => {
                        assert!(n <= left);
                        assert_eq!(buf, want[pos..pos + n]);
                        pos += n;
                    }
                    Err(_) => assert!(n > left),
                }
            }
            _ => {
                let Ok((mut rx, tx)) = std::io::pipe() else {
                    continue;
                };
                let prefix = &plan[..usize::from(b >> 4)];
                let k = r
                    .write_to_fd_with_prefix(tx.as_fd(), prefix, n)
                    .expect("write to pipe");
                assert!(k >= prefix.len(), "prefix cut short");
                let taken = k - prefix.len();
                assert!(taken <= n.min(left));
                assert!(taken > 0 || n.min(left) == 0);
                drop(tx);
                let mut got = Vec::new();
                rx.read_to_end(&mut got).expect("pipe read");
                assert_eq!(got.len(), k);
                assert_eq!(&got[..prefix.len()], prefix);
                assert_eq!(got[prefix.len()..], want[pos..pos + taken]);
                pos += taken;
            }
        }
    }
    let mut tail = Vec::new();
    r.read_to_end(&mut tail).expect("read to end");
    assert_eq!(tail, want[pos..]);
    assert_eq!(r.remaining(), 0);
    assert_eq!(r.consumed(), want.len());
}

fn write_chain(mem: &MemoryTable, chain: &DescriptorChain, image: &mut [u8], plan: &[u8]) {
    let descs = chain.writable();
    let room = chain.writable_len() as usize;
    let mut w = chain.writer(mem);
    let mut pos = 0usize;
    let apply = |image: &mut [u8], pos: usize, bytes: &[u8]| {
        for (i, &byte) in bytes.iter().enumerate() {
            image[stream_addr(descs, (pos + i) as u64) as usize] = byte;
        }
    };
    for (step, &b) in plan.iter().enumerate() {
        assert_eq!(w.available(), room - pos);
        assert_eq!(w.written(), pos);
        let n = step_len(b);
        let left = room - pos;
        let bytes: Vec<u8> = (0..n).map(|i| (i as u8) ^ (step as u8) ^ b).collect();
        if b & 1 == 0 {
            let k = w.write(&bytes).expect("write");
            assert_eq!(k, n.min(left));
            apply(image, pos, &bytes[..k]);
            pos += k;
        } else {
            let Ok((rx, mut tx)) = std::io::pipe() else {
                continue;
            };
            tx.write_all(&bytes).expect("pipe write");
            drop(tx);
            let k = w.read_from_fd(rx.as_fd(), n).expect("read from pipe");
            assert!(k <= n.min(left));
            assert!(k > 0 || n.min(left) == 0);
            apply(image, pos, &bytes[..k]);
            pos += k;
        }
    }
    assert_eq!(w.written(), pos);
    assert_eq!(w.available(), room - pos);
}

fn queue(mem: &MemoryTable, p: &[u8]) {
    let flags = p[1];
    let size = le16(p, 2);
    let addrs = RingAddrs {
        desc: le16(p, 4).into(),
        avail: le16(p, 6).into(),
        used: le16(p, 8).into(),
    };
    let base = le16(p, 10);
    let pops = p[12];
    let event_idx = flags & F_EVENT_IDX != 0;
    let indirect = flags & F_INDIRECT != 0;
    let n = u64::from(size);
    let fits = size != 0
        && size.is_power_of_two()
        && in_image(addrs.desc, 16 * n)
        && in_image(addrs.avail, 6 + 2 * n)
        && in_image(addrs.used, 6 + 8 * n)
        && addrs.desc.is_multiple_of(16)
        && addrs.avail.is_multiple_of(2)
        && addrs.used.is_multiple_of(4);
    let state = RingState::Split { next_avail: base };
    let ring = match Ring::new(mem, size, addrs, state, event_idx, indirect) {
        Ok(r) => {
            assert!(fits, "ring accepted: size {size} {addrs:x?}");
            r
        }
        Err(e) => {
            assert!(!fits, "ring refused: {e}");
            return;
        }
    };
    let mut q = Virtqueue::new(0, ring, flags & F_IN_ORDER != 0);
    let aligned = addrs.avail.is_multiple_of(2) && addrs.used.is_multiple_of(4);
    let mut image = vec![0u8; IMAGE];
    let mut handed_back: Option<u16> = None;
    for i in 0..pops {
        match q.pop(mem) {
            Ok(Some(chain)) => {
                assert!(chain.id() < size);
                if let Some(id) = handed_back.take() {
                    assert_eq!(chain.id(), id, "a handed-back chain comes first");
                }
                mem.read(0, &mut image).expect("image readable");
                let expect = model_walk(&image, addrs.desc, size, chain.id(), indirect);
                assert_eq!(Some(chain.descriptors()), expect.as_deref());
                check_chain(&chain, chain.id());
                if i % 7 == 3 {
                    q.give_back(&chain)
                        .expect("a held chain can be handed back");
                    assert!(q.give_back(&chain).is_err(), "handed back twice");
                    handed_back = Some(chain.id());
                    continue;
                }
                let len = chain.writable_len().min(u32::from(i));
                let added = q.add_used(mem, &chain, len);
                // Used entries are 4-byte stores: a misaligned used ring refuses them.
                assert_eq!(
                    added.is_ok(),
                    addrs.used.is_multiple_of(4),
                    "add_used: {added:?}"
                );
                if added.is_err() {
                    break;
                }
                assert!(q.add_used(mem, &chain, len).is_err(), "used twice");
            }
            Ok(None) => {
                assert!(!q.has_available(mem));
                break;
            }
            Err(_) => break,
        }
    }
    if aligned && q.broken().is_none() {
        q.signal(mem);
        let idx = mem.load::<u16>(addrs.used + 2, std::sync::atomic::Ordering::Acquire);
        let Ring::Split(r) = q.ring() else {
            unreachable!("a split ring was made")
        };
        assert_eq!(idx.ok(), Some(r.next_used()));
        q.disable_notification(mem).expect("disable_notification");
        q.enable_notification(mem).expect("enable_notification");
    }
}
