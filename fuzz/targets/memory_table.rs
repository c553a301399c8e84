//! Fuzz target: the guest memory table.
//!
//! The input is a script: an initial SET_MEM_TABLE of up to three regions, then
//! operations (add region, remove region, translate a frontend address, check a range,
//! slice, read, write, atomic load and store). Regions are memfd-backed and small
//! (at most 256 KiB of file each). Every result is compared with a model: a sorted list
//! of regions with a copy of their bytes.

use std::fs::File;
use std::sync::atomic::Ordering;

use vhost_user_sync::memory::{MemoryError, MemoryTable};
use vhost_user_sync::protocol::payload::MemoryRegionDesc;

/// Largest memfd created for one region.
const MAX_FILE: u64 = 256 * 1024;
/// Largest read or write.
const MAX_ACCESS: u64 = 128 * 1024;
/// Operations per input.
const MAX_OPS: usize = 64;

/// Pulls fields off the input; past its end every field is zero.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let n = N.min(self.0.len());
        out[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        out
    }
    fn u8(&mut self) -> u8 {
        self.bytes::<1>()[0]
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.bytes())
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.bytes())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.bytes())
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

struct Region {
    desc: MemoryRegionDesc,
    bytes: Vec<u8>,
}

impl Region {
    fn gpa(&self) -> u64 {
        self.desc.guest_phys_addr
    }
    fn end(&self) -> u64 {
        self.desc.guest_phys_addr + self.desc.memory_size
    }
}

/// The model: regions sorted by guest-physical address, with their contents.
#[derive(Default)]
struct Model(Vec<Region>);

impl Model {
    fn containing(&self, gpa: u64) -> Option<&Region> {
        self.0.iter().find(|r| r.gpa() <= gpa && gpa < r.end())
    }

    /// The region holding all of `[gpa, gpa + len)`, if one does.
    fn single(&self, gpa: u64, len: u64) -> Option<&Region> {
        let r = self.containing(gpa)?;
        (gpa.checked_add(len)? <= r.end()).then_some(r)
    }

    /// Whether every byte of `[gpa, gpa + len)` is in some region.
    fn covered(&self, gpa: u64, len: u64) -> bool {
        let Some(end) = gpa.checked_add(len) else {
            return false;
        };
        let mut at = gpa;
        while at < end {
            let Some(r) = self.containing(at) else {
                return false;
            };
            at = r.end().min(end);
        }
        true
    }

    fn read(&self, gpa: u64, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        let mut at = gpa;
        while out.len() < len {
            let r = self.containing(at).expect("covered range");
            let off = (at - r.gpa()) as usize;
            let n = (len - out.len()).min(r.bytes.len() - off);
            out.extend_from_slice(&r.bytes[off..off + n]);
            at += n as u64;
        }
        out
    }

    fn write(&mut self, gpa: u64, buf: &[u8]) {
        let mut done = 0;
        while done < buf.len() {
            let at = gpa + done as u64;
            let r = self
                .0
                .iter_mut()
                .find(|r| r.gpa() <= at && at < r.end())
                .expect("covered range");
            let off = (at - r.desc.guest_phys_addr) as usize;
            let n = (buf.len() - done).min(r.bytes.len() - off);
            r.bytes[off..off + n].copy_from_slice(&buf[done..done + n]);
            done += n;
        }
    }

    fn uaddr_to_gpa(&self, uaddr: u64, len: u64) -> Option<u64> {
        self.0.iter().find_map(|r| {
            let off = uaddr.checked_sub(r.desc.userspace_addr)?;
            (off.checked_add(len)? <= r.desc.memory_size).then(|| r.gpa() + off)
        })
    }

    /// Whether adding `desc` backed by `file_len` bytes must succeed.
    fn accepts(&self, desc: &MemoryRegionDesc, file_len: u64) -> bool {
        let valid = desc.memory_size != 0
            && desc.guest_phys_addr.checked_add(desc.memory_size).is_some()
            && desc.userspace_addr.checked_add(desc.memory_size).is_some()
            && desc.mmap_offset.checked_add(desc.memory_size).is_some();
        valid
            && desc.mmap_offset + desc.memory_size <= file_len
            && !self.0.iter().any(|r| {
                desc.guest_phys_addr < r.end() && r.gpa() < desc.guest_phys_addr + desc.memory_size
            })
    }

    fn add(&mut self, desc: MemoryRegionDesc) {
        let at = self.0.partition_point(|r| r.gpa() < desc.guest_phys_addr);
        self.0.insert(
            at,
            Region {
                desc,
                bytes: vec![0; desc.memory_size as usize],
            },
        );
    }
}

fn memfd(len: u64) -> File {
    let fd = nix::sys::memfd::memfd_create("fuzz", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
        .expect("memfd_create");
    let f = File::from(fd);
    f.set_len(len).expect("memfd set_len");
    f
}

/// A small signed step, for addresses near region edges.
fn delta(input: &mut Input<'_>) -> i64 {
    i64::from(input.u8() as i8)
}

/// An address: raw, small, or near the start, middle or end of a region.
fn address(input: &mut Input<'_>, model: &Model) -> u64 {
    let tag = input.u8();
    if model.0.is_empty() || tag & 3 == 0 {
        return if tag & 4 != 0 {
            input.u64()
        } else {
            u64::from(input.u32())
        };
    }
    let r = &model.0[usize::from(input.u8()) % model.0.len()];
    let base = match tag & 3 {
        1 => r.gpa(),
        2 => r.end(),
        _ => r.gpa() + r.desc.memory_size / 2,
    };
    base.wrapping_add_signed(delta(input))
}

/// A region description and the length of its file.
fn region(input: &mut Input<'_>, model: &Model) -> (MemoryRegionDesc, u64) {
    let tag = input.u8();
    let memory_size = if tag & 0x80 != 0 {
        input.u64()
    } else {
        u64::from(input.u16()) + 1
    };
    let guest_phys_addr = match (tag >> 2) & 3 {
        0 => u64::from(input.u16()) << 8,
        1 if !model.0.is_empty() => {
            let r = &model.0[usize::from(input.u8()) % model.0.len()];
            r.end().wrapping_add_signed(delta(input))
        }
        2 if !model.0.is_empty() => {
            let r = &model.0[usize::from(input.u8()) % model.0.len()];
            r.gpa()
                .wrapping_sub(memory_size)
                .wrapping_add_signed(delta(input))
        }
        _ => input.u64(),
    };
    let userspace_addr = if tag & 0x40 != 0 {
        input.u64()
    } else {
        0x7f00_0000_0000 + (u64::from(input.u16()) << 12)
    };
    let mmap_offset = if tag & 0x20 != 0 {
        input.u64()
    } else {
        u64::from(input.u16())
    };
    let file_len = mmap_offset
        .saturating_add(memory_size)
        .saturating_add_signed(delta(input))
        .min(MAX_FILE);
    (
        MemoryRegionDesc {
            guest_phys_addr,
            memory_size,
            userspace_addr,
            mmap_offset,
        },
        file_len,
    )
}

/// The table's regions must be the model's, sorted and disjoint.
fn check_regions(table: &MemoryTable, model: &Model) {
    assert_eq!(table.len(), model.0.len());
    assert_eq!(table.is_empty(), model.0.is_empty());
    let mut prev_end = 0u64;
    for (i, (r, m)) in table.regions().zip(&model.0).enumerate() {
        assert_eq!(r.desc(), &m.desc);
        assert!(i == 0 || r.gpa() >= prev_end, "regions overlap or unsorted");
        assert_eq!(r.gpa_end(), m.end());
        prev_end = r.gpa_end();
    }
}

fn access_len(input: &mut Input<'_>) -> u64 {
    let tag = input.u8();
    match tag & 3 {
        0 => u64::from(tag >> 2),
        1 | 2 => u64::from(input.u16()),
        _ => input.u64(),
    }
}

/// Runs the target on one input.
pub fn run(data: &[u8]) {
    let mut input = Input(data);
    let mut model = Model::default();

    // SET_MEM_TABLE: all or nothing.
    let count = input.u8() % 4;
    let mut descs = Vec::new();
    let mut files = Vec::new();
    let mut staged = Model::default();
    let mut all_ok = true;
    for _ in 0..count {
        let (desc, file_len) = region(&mut input, &staged);
        all_ok &= staged.accepts(&desc, file_len);
        if all_ok {
            staged.add(desc);
        }
        descs.push(desc);
        files.push(memfd(file_len));
    }
    let mut table = match MemoryTable::from_regions(&descs, files) {
        Ok(t) => {
            assert!(all_ok, "table accepted: {descs:x?}");
            model = staged;
            t
        }
        Err(e) => {
            assert!(!all_ok, "table refused: {e}: {descs:x?}");
            MemoryTable::empty()
        }
    };
    check_regions(&table, &model);

    for _ in 0..MAX_OPS {
        if input.is_empty() {
            break;
        }
        match input.u8() % 10 {
            0 => {
                let (desc, file_len) = region(&mut input, &model);
                let expect = model.accepts(&desc, file_len);
                match table.with_region(desc, memfd(file_len)) {
                    Ok(t) => {
                        assert!(expect, "region accepted: {desc:x?} file {file_len:#x}");
                        table = t;
                        model.add(desc);
                    }
                    Err(e) => assert!(!expect, "region refused: {e}: {desc:x?}"),
                }
                check_regions(&table, &model);
            }
            1 => {
                let mut desc = if model.0.is_empty() {
                    region(&mut input, &model).0
                } else {
                    model.0[usize::from(input.u8()) % model.0.len()].desc
                };
                match input.u8() % 4 {
                    0 => desc.userspace_addr ^= 0x1000,
                    1 => desc.memory_size = desc.memory_size.wrapping_add(1),
                    // mmap_offset does not take part in the match.
                    2 => desc.mmap_offset ^= 0x100,
                    _ => {}
                }
                let pos = model.0.iter().position(|r| {
                    r.desc.guest_phys_addr == desc.guest_phys_addr
                        && r.desc.memory_size == desc.memory_size
                        && r.desc.userspace_addr == desc.userspace_addr
                });
                match (table.without_region(&desc), pos) {
                    (Ok(t), Some(pos)) => {
                        table = t;
                        model.0.remove(pos);
                    }
                    (Err(MemoryError::NoSuchRegion { .. }), None) => {}
                    (got, pos) => panic!("remove {desc:x?}: {:?} vs {pos:?}", got.err()),
                }
                check_regions(&table, &model);
            }
            2 => {
                let uaddr = if model.0.is_empty() || input.u8() & 1 == 0 {
                    input.u64()
                } else {
                    let r = &model.0[usize::from(input.u8()) % model.0.len()];
                    r.desc
                        .userspace_addr
                        .wrapping_add_signed(delta(&mut input))
                        .wrapping_add(u64::from(input.u16()))
                };
                let len = access_len(&mut input);
                let got = table.uaddr_to_gpa(uaddr, len).ok();
                assert_eq!(got, model.uaddr_to_gpa(uaddr, len), "{uaddr:#x}+{len:#x}");
            }
            3 => {
                let gpa = address(&mut input, &model);
                let len = access_len(&mut input);
                assert_eq!(
                    table.check_range(gpa, len).is_ok(),
                    len == 0 || model.covered(gpa, len),
                    "check_range {gpa:#x}+{len:#x}"
                );
            }
            4 => {
                let gpa = address(&mut input, &model);
                let len = access_len(&mut input).min(MAX_ACCESS) as usize;
                match table.slice(gpa, len) {
                    Ok(s) => {
                        assert!(model.single(gpa, len as u64).is_some(), "{gpa:#x}+{len:#x}");
                        assert_eq!(s.len(), len);
                        let mut buf = vec![0u8; len];
                        s.copy_to(&mut buf[..]);
                        assert_eq!(buf, model.read(gpa, len));
                    }
                    Err(_) => {
                        assert!(model.single(gpa, len as u64).is_none(), "{gpa:#x}+{len:#x}")
                    }
                }
            }
            5 => {
                let gpa = address(&mut input, &model);
                let len = access_len(&mut input);
                match table.slices(gpa, len) {
                    Ok(slices) => {
                        assert!(len == 0 || model.covered(gpa, len));
                        let total: u64 = slices.iter().map(|s| s.len() as u64).sum();
                        assert_eq!(total, len);
                        assert!(slices.iter().all(|s| !s.is_empty()));
                        assert!(slices.len() <= model.0.len());
                    }
                    Err(_) => assert!(len != 0 && !model.covered(gpa, len)),
                }
            }
            6 => {
                let gpa = address(&mut input, &model);
                let len = access_len(&mut input).min(MAX_ACCESS) as usize;
                let mut buf = vec![0xa5u8; len];
                match table.read(gpa, &mut buf) {
                    Ok(()) => {
                        assert!(model.covered(gpa, len as u64), "read {gpa:#x}+{len:#x}");
                        assert_eq!(buf, model.read(gpa, len), "read {gpa:#x}+{len:#x}");
                    }
                    Err(_) => assert!(!model.covered(gpa, len as u64)),
                }
            }
            7 => {
                let gpa = address(&mut input, &model);
                let len = access_len(&mut input).min(MAX_ACCESS) as usize;
                let seed = input.u8();
                let buf: Vec<u8> = (0..len).map(|i| seed.wrapping_add(i as u8)).collect();
                match table.write(gpa, &buf) {
                    Ok(()) => {
                        assert!(model.covered(gpa, len as u64), "write {gpa:#x}+{len:#x}");
                        model.write(gpa, &buf);
                    }
                    Err(_) => assert!(!model.covered(gpa, len as u64)),
                }
                // Whatever happened, memory must still match the model (a refused
                // write must not have written a part).
                let end = gpa.saturating_add(len as u64);
                for r in model.0.iter().filter(|r| r.gpa() < end && gpa < r.end()) {
                    let mut back = vec![0u8; r.bytes.len()];
                    table.read(r.gpa(), &mut back).expect("region readable");
                    assert!(
                        back == r.bytes,
                        "memory differs from the model in {:x?}",
                        r.desc
                    );
                }
            }
            8 => {
                let gpa = address(&mut input, &model);
                let width = 2u64 << (input.u8() % 3);
                let aligned = |r: &Region| {
                    (r.desc.mmap_offset.wrapping_add(gpa - r.gpa())).is_multiple_of(width)
                };
                let expect = model.single(gpa, width).filter(|r| aligned(r)).map(|_| {
                    let mut b = [0u8; 8];
                    b[..width as usize].copy_from_slice(&model.read(gpa, width as usize));
                    u64::from_ne_bytes(b)
                });
                let got = match width {
                    2 => table.load::<u16>(gpa, Ordering::Acquire).map(u64::from),
                    4 => table.load::<u32>(gpa, Ordering::Acquire).map(u64::from),
                    _ => table.load::<u64>(gpa, Ordering::Acquire),
                };
                assert_eq!(got.ok(), expect, "load{width} {gpa:#x}");
            }
            _ => {
                let gpa = address(&mut input, &model);
                let width = 2u64 << (input.u8() % 3);
                let v = input.u64();
                let aligned = |r: &Region| {
                    (r.desc.mmap_offset.wrapping_add(gpa - r.gpa())).is_multiple_of(width)
                };
                let expect = model.single(gpa, width).is_some_and(aligned);
                let got = match width {
                    2 => table.store::<u16>(gpa, v as u16, Ordering::Release),
                    4 => table.store::<u32>(gpa, v as u32, Ordering::Release),
                    _ => table.store::<u64>(gpa, v, Ordering::Release),
                };
                assert_eq!(got.is_ok(), expect, "store{width} {gpa:#x}");
                if expect {
                    model.write(gpa, &v.to_ne_bytes()[..width as usize]);
                }
            }
        }
    }
}
